"""tdsk: fused temporal-difference kernels and a fast TDS-CLIP implementation.

Sub-packages:

* :mod:`tdsk.ops` -- the public ops (``temporal_pool_diff``, ``frame_diff_concat``,
  ``local_temporal_diff``, side attention), registered as ``torch.ops.tdsk.*`` custom ops.
* :mod:`tdsk.models` -- the TDS-CLIP model (frozen open_clip ViT + side network).
* :mod:`tdsk.data` -- frame sampling, decoders and loaders.
* :class:`tdsk.Recognizer` (:mod:`tdsk.inference`) -- a trained model ready for
  inference: ``tdsk.Recognizer.from_pretrained(path).predict("video.mp4")``.
* :mod:`tdsk.cli` -- the command-line tools (``python -m tdsk.train`` etc.), apart from the
  library above, which never imports them.

Importing ``tdsk`` never fails because an optional part (the C++ extension
``tdsk._C``, Triton, xformers, DALI) is missing; the fallback is logged once.
Heavy sub-packages (models, data) are imported lazily.
"""
import importlib

__version__ = "0.1.0"

from tdsk import ops  # noqa: E402  (registers torch.ops.tdsk.*)

_LAZY = {"models", "data", "configs"}


def __getattr__(name):
    if name == "Recognizer":
        return importlib.import_module("tdsk.inference").Recognizer
    if name in _LAZY:
        return importlib.import_module(f"tdsk.{name}")
    raise AttributeError(f"module 'tdsk' has no attribute {name!r}")


__all__ = ["ops", "models", "data", "Recognizer", "__version__"]
