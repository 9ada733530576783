"""What the tdsk video models share (a leaf of :mod:`tdsk.models`: the model classes and
:mod:`~tdsk.models.factory` import it, it imports neither).

* :func:`as_video`: the input layouts a model accepts (``[B, T, M, 3, H, W]`` or the
  official ``[B*T, M*3, H, W]``) and their checks;
* :class:`VideoClassifier`: the base class (model section, clip shape, trainable parameters);
* :func:`parse_td_layers`: the ``model.td_layers`` spec as layer indices.
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from tdsk.ops.temporal_diff import official_frames_view
from tdsk.schema import ConfigError

__all__ = ["as_video", "VideoClassifier", "parse_td_layers"]


def as_video(x: torch.Tensor, num_segments: int, num_local: int, image_size: Optional[int] = None) -> torch.Tensor:
    """``[B, T, M, 3, H, W]`` as is, or the official ``[B*T, M*3, H, W]`` viewed as it.

    Raises ``TypeError`` for non-floating input (frames must be CLIP-normalised floats)
    and ``ValueError`` for a layout, or an ``H x W`` other than ``image_size``, that the
    model cannot take.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(
            f"video must be a floating tensor of CLIP-normalised frames, got "
            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__} (normalise uint8 frames first, "
            "e.g. tdsk.data.normalize)"
        )
    if image_size is not None and x.dim() in (4, 6) and tuple(x.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"video frames must be {image_size}x{image_size} (model.input_size), got {tuple(x.shape[-2:])}"
        )
    if x.dim() == 6:
        if x.shape[2] != num_local or x.shape[3] != 3:
            raise ValueError(
                f"video must be Tensor[B, T, M={num_local}, 3, H, W], got shape {tuple(x.shape)}"
            )
        return x
    if x.dim() == 4:
        return official_frames_view(x, num_segments, num_local)
    raise ValueError(
        f"video must be Tensor[B, T, M, 3, H, W] or the official Tensor[B*T, M*3, H, W], got {tuple(x.shape)}"
    )


class VideoClassifier(nn.Module):
    """What every tdsk video model shares: its model section and clip shape, and the
    optimiser's view of it (the frozen CLIP tower has ``requires_grad=False``)."""

    def __init__(self, config: Dict):
        super().__init__()
        self.config = dict(config)
        self.num_segments = int(self.config["num_segments"])
        self.num_local = int(self.config["num_local"])
        self.num_classes = int(self.config["num_classes"])

    @property
    def feature_dim(self) -> Optional[int]:
        """Width of :meth:`features` (the classifier's input)."""
        head = getattr(self, "head", None)
        return int(head.in_features) if isinstance(head, nn.Linear) else None

    def trainable_parameters(self) -> List[nn.Parameter]:
        """The parameters an optimiser should see (everything but the frozen tower)."""
        return [p for p in self.parameters() if p.requires_grad]


def parse_td_layers(spec, layers: int, key: str = "model.td_layers") -> List[int]:
    """``'all'`` | ``'1-6'`` | ``'1-3,7'`` | ``[1, 2]`` (1-based) -> sorted 0-based layer indices
    (``key``: the recipe key the errors name)."""
    if spec is None or spec == "all":
        return list(range(layers))
    if spec == "none" or spec == []:
        return []
    if not isinstance(spec, (str, list, tuple)):
        raise ConfigError(f"{key}={spec!r}: use all, none, a range such as '1-6', or a list "
                          f"of 1-based layer numbers such as [{spec}]")
    items = []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    try:
        for part in parts:
            if isinstance(part, str) and "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                items.extend(range(lo, hi + 1))
            else:
                items.append(int(part))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={spec!r}: use all, none, a range such as '1-6', '1-3,7' "
                          "or a list of 1-based layer numbers") from None
    bad = [i for i in items if not 1 <= i <= layers]
    if bad:
        raise ConfigError(f"{key}={spec!r}: layers {bad} outside 1..{layers}")
    return sorted({i - 1 for i in items})
