"""`python -m rewire_lib.isotropy ...`: the isotropy command line (rewire_lib.isotropy.cli)."""
from rewire_lib.isotropy.cli import main

raise SystemExit(main())
