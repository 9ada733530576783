"""``python -m tdsk.prepare`` is :mod:`tdsk.cli.prepare` (``python -m tdsk.data.prepare``) under a shorter
name: importing it gives that module itself."""
import sys

import tdsk.cli.prepare as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved  # the same module object under both names
