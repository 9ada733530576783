"""TDS-CLIP: frozen open_clip ViT + temporal-difference side network + linear head (docs/model.md §3-7).

``TDSCLIP.forward(video)``:

1. the centre frame ``m = M//2`` of every segment goes through the frozen ViT
   (:class:`~tdsk.models.clip_encoder.FrozenCLIPEncoder`, no autograd), which
   returns the output of each of its ``L`` blocks;
2. the side network (:class:`~tdsk.models.side_network.SideNetwork`) runs the
   SME-Adapter on all ``M`` local frames and ``L`` TDS blocks fed by those taps, then
   ``BN_post`` and global average pooling (docs/model.md §7);
3. ``fc``: Linear ``D -> K`` gives the logits (docs/model.md §7; dropout ``p = 0`` is omitted).

Inputs: ``video: Tensor[B, T, M, 3, H, W]`` normalised with CLIP's mean/std, or the
official ``Tensor[B*T, M*3, H, W]`` layout (``T = model.num_segments``).
"""
from typing import Dict

import torch
import torch.nn as nn

from tdsk.models.clip_encoder import FrozenCLIPEncoder
from tdsk.models.side_network import SideNetwork
from tdsk.models.video import VideoClassifier, as_video, parse_td_layers

__all__ = ["TDSCLIP", "VideoClassifier", "as_video"]  # the last two are tdsk.models.video's


class TDSCLIP(VideoClassifier):
    """The TDS-CLIP classifier. Build it with :func:`tdsk.models.build_model`.

    Attributes: ``encoder`` (frozen), ``side`` (trainable), ``head`` (trainable, ``fc``),
    ``num_segments``, ``num_local``, ``num_classes``, ``config`` (the model section).
    """

    variant = "tds_clip"

    def __init__(self, config: Dict):
        super().__init__(config)
        c = self.config
        self.encoder = FrozenCLIPEncoder(c["arch"], c["clip_pretrained"], c["quick_gelu"], c["input_size"])
        enc = self.encoder
        self.side = SideNetwork(
            clip_width=enc.width, layers=enc.layers, side_dim=int(c["side_dim"]), patch_size=enc.patch_size,
            grid_size=enc.grid_size, num_local=self.num_local, td_variant=c["td_variant"],
            td_layers=parse_td_layers(c["td_layers"], enc.layers), td_reduction=int(c["td_reduction"]), pool_kernel=int(c["pool_kernel"]),
            td_channel_mix=float(c["td_channel_mix"]), fusion_alpha=float(c["fusion_alpha"]),
            sme_mode=c["sme_mode"], side_checkpoint=c["side_checkpoint"], num_segments=self.num_segments,
            recompute_cheap=bool(c["recompute_cheap"]),
        )
        self.head = nn.Linear(int(c["side_dim"]), self.num_classes)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled side features ``[B, D]`` (before ``fc``)."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t, m = video.shape[:3]
        centre = video[:, :, m // 2].reshape(b * t, *video.shape[3:])
        taps = self.encoder(centre)
        return self.side(video, taps)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video[B, T, M, 3, H, W]`` (or ``[B*T, M*3, H, W]``) -> logits ``[B, K]``."""
        return self.head(self.features(video))
