"""``python -m tdsk.demo`` (and ``python -m tdsk.cli.demo``): generate the demo data, print its folder."""
import sys

from tdsk.cli.demo.dataset import main

if __name__ == "__main__":
    sys.exit(main())
