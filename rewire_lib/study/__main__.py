import sys

from rewire_lib.study.driver import main

if __name__ == "__main__":
    sys.exit(main())
