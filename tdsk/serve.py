"""``python -m tdsk.serve``: the HTTP server tool lives in :mod:`tdsk.cli.serve` (the tools live apart from
the library); importing this name gives that module itself, and ``python -m tdsk.serve`` runs it."""
import sys

import tdsk.cli.serve as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved  # the same module object under the short name (attributes, patches agree)
