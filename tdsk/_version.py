"""tdsk's version, from the installed distribution's metadata (what pip installed), else the
package's ``__version__``. Tools must not do ``from tdsk import __version__``: run from a folder
that holds a clone named ``tdsk``, Python may take that folder for a namespace package ``tdsk``
(no ``__init__``), and the import fails."""
from __future__ import annotations

import sys
from typing import Optional


def version() -> Optional[str]:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("tdsk")
    except Exception:
        return getattr(sys.modules.get("tdsk"), "__version__", None)
