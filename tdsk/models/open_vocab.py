"""Open vocabulary: the contract a model with a text classifier follows, and the helpers the
tools use on it (docs/protocols.md). The engine and the tools never name a family; they ask
the model:

* ``model.open_vocabulary -> bool``: it classifies by the text embeddings of class names
  (absent means ``False``);
* ``model.class_names: list[str] | None``;
* ``model.text_embeddings_for(names) -> Tensor[K', E]`` and
  ``model.classify(emb, text_embeddings=None)``;
* ``model.use_classes(names)``: switch the classifier to these classes (the text embeddings
  recomputed with the model's text weights); ``class_names``, ``num_classes`` and
  ``config["num_classes"]`` follow.
"""
from __future__ import annotations

from typing import List, Sequence

import torch.nn as nn

from tdsk.data.labels import check_names
from tdsk.models.registry import unwrap

__all__ = ["NoTextClassifierError", "is_open_vocabulary", "require_open_vocabulary", "use_classes"]


class NoTextClassifierError(ValueError):
    """Zero-shot / open-vocabulary use of a model that has no text classifier."""


def is_open_vocabulary(model: nn.Module) -> bool:
    """Whether ``model`` (DDP / ``torch.compile`` wrappers looked through) classifies by text embeddings."""
    return bool(getattr(unwrap(model), "open_vocabulary", False))


def require_open_vocabulary(model: nn.Module) -> nn.Module:
    """The unwrapped model, or :class:`NoTextClassifierError` (one line naming its variant and classifier)."""
    inner = unwrap(model)
    if not is_open_vocabulary(inner):
        cfg = getattr(inner, "config", None) or {}
        raise NoTextClassifierError(
            f"this model has no text classifier (model.variant={getattr(inner, 'variant', cfg.get('variant', '?'))}, "
            f"classifier={cfg.get('classifier', 'linear')}): zero-shot / open-vocabulary needs one")
    return inner


def use_classes(model: nn.Module, names: Sequence[str], source: str = "classes") -> List[str]:
    """Switch ``model``'s classifier to ``names`` (checked: non-empty, no blank or repeated name;
    ``source`` names where they came from in messages). Returns the names."""
    inner = require_open_vocabulary(model)
    names = [str(n) for n in names]
    check_names(names, source)
    inner.use_classes(names)
    return names
