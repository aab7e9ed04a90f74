import sys

from rewire_study.driver import main

if __name__ == "__main__":
    sys.exit(main())
