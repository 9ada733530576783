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
from typing import Dict, List, Sequence

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
        taps = self.frame_taps(centre)
        return self.side(video, taps)

    # -- split forward: frozen taps computed once per frame, side network per window ----------------
    # ``forward(video) == forward_from_taps(video, frame_taps(centre frames))``: the frozen CLIP
    # sees each centre frame on its own (no op mixes frames), so the taps of a frame can be
    # computed once and reused by every window that contains it (tdsk.timeline). The side
    # network's temporal ops (depthwise conv, max-pool, CLS shift) span the window, so it is
    # re-run per window.

    def frame_taps(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """Frozen-CLIP taps of a batch of centre frames.

        ``frames[F, 3, H, W]`` (CLIP-normalised) -> ``L`` tensors ``[F, N+1, C]``, the output of
        every frozen block (docs/model.md §3), computed without autograd, stored in the autocast
        dtype under autocast (fp32 otherwise). Frame ``f``'s taps depend on frame ``f`` only.
        """
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frame_taps: frames must be Tensor[F, 3, H, W], got {tuple(frames.shape)}")
        return self.encoder(frames)

    def project_taps(self, taps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The side network's per-layer tap projections ``u_l = Linear_l(LN_l(z_l))`` of
        :meth:`frame_taps`' output: ``L x [F, N+1, C] -> L x [F, N+1, D]`` (docs/model.md §5).
        Per frame, like the taps: cache these instead of ``z`` (smaller, and the projection
        is not recomputed per window); pass them with ``projected=True``."""
        return self.side.project_taps(list(taps))

    def features_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor],
                           projected: bool = False) -> torch.Tensor:
        """Pooled side features ``[B, D]`` from the local frames and precomputed frozen taps.

        ``video[B, T, M, 3, H, W]`` (or the official layout); ``taps``: ``L`` tensors
        ``[B*T, N+1, C]`` (b-major, t-minor), i.e. :meth:`frame_taps` of the centre frames
        ``video[:, :, M//2]`` (possibly computed in other batches and stacked), or with
        ``projected=True`` their :meth:`project_taps` (``[B*T, N+1, D]``).
        """
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t = video.shape[:2]
        taps = list(taps)
        width = self.side.side_dim if projected else self.encoder.width
        if taps and (taps[0].dim() != 3 or taps[0].shape[0] != b * t or taps[0].shape[-1] != width):
            raise ValueError(f"features_from_taps: each {'projected ' if projected else ''}tap must be "
                             f"Tensor[B*T={b * t}, N+1, {width}], got {tuple(taps[0].shape)}")
        if projected:
            return self.side.forward_projected(video, taps)
        return self.side(video, taps)

    def forward_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor],
                          projected: bool = False) -> torch.Tensor:
        """Logits ``[B, K]`` from the local frames and precomputed taps (see :meth:`features_from_taps`)."""
        return self.head(self.features_from_taps(video, taps, projected))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video[B, T, M, 3, H, W]`` (or ``[B*T, M*3, H, W]``) -> logits ``[B, K]``."""
        return self.head(self.features(video))
