"""``tdsk.extract`` moved to :mod:`tdsk.cli.extract` (the tools live apart from the library); this name
stays valid: importing it gives the module :mod:`tdsk.cli.extract` itself, and ``python -m tdsk.extract``
runs it."""
import sys

import tdsk.cli.extract as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved  # the same module object under the old name (attributes, patches agree)
