"""The command-line tools, apart from the library (the library never imports them):

``python -m tdsk.train`` (:mod:`.train`), ``tdsk.evaluate``, ``tdsk.predict``, ``tdsk.export``,
``tdsk.extract``, ``tdsk.doctor``, ``tdsk.data.check`` (:mod:`.check`), ``tdsk.data.prepare``
(:mod:`.prepare`), ``tdsk.serve`` (:mod:`.serve`; the ``serve`` extra)
and the demo package (:mod:`.demo`). What they share lives in :mod:`._common`.
The old module paths (``tdsk.train``, ``tdsk.data.check``, ...) are small shims that give these
modules themselves, so commands and imports written for them keep working.
"""
