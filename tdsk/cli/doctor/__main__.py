"""``python -m tdsk.doctor``."""
import sys

from tdsk.cli.doctor import main

if __name__ == "__main__":
    sys.exit(main())
