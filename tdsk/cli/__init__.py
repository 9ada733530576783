"""The command-line tools, apart from the library (the library never imports them):

``python -m tdsk.train`` (:mod:`.train`), ``tdsk.evaluate``, ``tdsk.predict``, ``tdsk.export``,
``tdsk.extract``, ``tdsk.doctor``, ``tdsk.data.check`` (:mod:`.check`), ``tdsk.data.prepare``
(:mod:`.prepare`) and the demo package (:mod:`.demo`). What they share lives in :mod:`._common`.
The old module paths (``tdsk.train``, ``tdsk.data.check``, ...) are aliases of these modules
(:mod:`tdsk._moved`), so commands and imports written for them keep working.
"""
