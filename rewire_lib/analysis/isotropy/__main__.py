"""`python -m rewire_lib.analysis.isotropy ...`: the isotropy command line (rewire_lib.analysis.isotropy.cli)."""
from rewire_lib.analysis.isotropy.cli import main

raise SystemExit(main())
