"""`python -m rewire_lib.isotropy ...`: the isotropy command line (rewire_lib.isotropy_cli)."""
from rewire_lib.isotropy_cli import main

raise SystemExit(main())
