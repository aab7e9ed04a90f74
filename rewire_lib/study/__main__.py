import sys

from rewire_lib.study.driver import main

sys.exit(main())
