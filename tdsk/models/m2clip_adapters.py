"""The adapters of M2-CLIP (Wang et al., "M2-CLIP: A Multimodal, Multi-task Adapting Framework
for Video Action Recognition", AAAI 2024, arXiv 2401.11649; docs/m2clip.md).

* :class:`TEDAdapter`: the Temporal Enhancement and Difference adapter of the visual blocks
  (paper Fig. 2(b), Eq. 2-4): ``out = x + TE(x) + [0; LTD(x)]`` on the tokens ``[B*T, 1+P, C]``
  of a frozen ViT block. ``TE``: fc1 -> depthwise Conv1d over time (k=3, zero-initialised)
  -> fc2 on every token; ``LTD`` (:class:`LocalTemporalDifference`): the backward difference
  of the patch tokens over time (zero for the first frame) -> fc1 -> depthwise Conv3d
  ``(1, 3, 3)`` over the patch grid (zero-initialised) -> fc2; the class token gets no LTD term;
* :class:`FrameAdapter`: the temporal adapter on the frame embeddings ``[B, T, E]`` (fc1 ->
  depthwise Conv1d over time, zero-initialised -> fc2, residual);
* :class:`TextAdapter`: the bottleneck MLP (fc1 -> GELU -> fc2, residual) of the text blocks.

Every adapter owns its residual (a slot of :func:`tdsk.models.adapted_clip.adapted_block_forward`).
The zero-initialised depthwise convolutions make the visual adapters the identity at
initialisation (the frozen CLIP's output, unchanged); the text adapter is not (its
bottleneck starts from the default ``nn.Linear`` initialisation, as in the release).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tdsk.ops.local_temporal_diff import local_temporal_diff

__all__ = ["TEDAdapter", "TemporalEnhancement", "LocalTemporalDifference", "FrameAdapter", "TextAdapter"]


def _zero_bottleneck(fc1: nn.Linear, conv: nn.Module, fc2: nn.Linear) -> None:
    """The release's initialisation: a zero depthwise convolution, zero biases."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    nn.init.zeros_(fc1.bias)
    nn.init.zeros_(fc2.bias)


class TemporalEnhancement(nn.Module):
    """``TE``: fc1 -> depthwise Conv1d over time -> fc2 on ``[B, T, L, C]`` (every token)."""

    def __init__(self, channels: int, width: int, kernel: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(channels, width)
        self.conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.fc2 = nn.Linear(width, channels)
        _zero_bottleneck(self.fc1, self.conv, self.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, length, _ = x.shape
        h = self.fc1(x)                                                   # [B, T, L, w]
        w = h.shape[-1]
        h = self.conv(h.permute(0, 2, 3, 1).reshape(b * length, w, t))   # over T
        return self.fc2(h.reshape(b, length, w, t).permute(0, 3, 1, 2))


class LocalTemporalDifference(nn.Module):
    """``LTD``: frame-to-frame difference of the patch tokens ``[B, T, P, C]`` -> fc1 ->
    depthwise Conv3d ``(1, 3, 3)`` over the ``g x g`` grid -> fc2."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, width)
        self.conv = nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1), groups=width)
        self.fc2 = nn.Linear(width, channels)
        _zero_bottleneck(self.fc1, self.conv, self.fc2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, t, p, _ = patches.shape
        g = int(round(p ** 0.5))
        if g * g != p:
            raise ValueError(f"LocalTemporalDifference: {p} patch tokens are not a square grid")
        h = self.fc1(local_temporal_diff(patches))                     # [B, T, P, w]
        w = h.shape[-1]
        h = self.conv(h.reshape(b, t, g, g, w).permute(0, 4, 1, 2, 3))  # [B, w, T, g, g]
        return self.fc2(h.permute(0, 2, 3, 4, 1).reshape(b, t, p, w))


class TEDAdapter(nn.Module):
    """The TED-Adapter on the tokens of one frozen block, ``[B*T, 1+P, C] -> [B*T, 1+P, C]``
    (frames ``b``-major, ``T = num_frames``): ``x + TE(x) + [0; LTD(x_patches)]``."""

    def __init__(self, channels: int, width: int, num_frames: int, kernel: int = 3):
        super().__init__()
        self.num_frames = int(num_frames)
        self.te = TemporalEnhancement(channels, width, kernel)
        self.ltd = LocalTemporalDifference(channels, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, length, c = x.shape
        t = self.num_frames
        if bt % t:
            raise ValueError(f"TEDAdapter: {bt} frames are not a multiple of num_frames={t}")
        v = x.reshape(bt // t, t, length, c)
        delta = self.ltd(v[:, :, 1:])
        delta = torch.cat([torch.zeros_like(delta[:, :, :1]), delta], dim=2)  # the class token: no LTD
        return x + (self.te(v) + delta).reshape(bt, length, c)


class FrameAdapter(nn.Module):
    """Temporal adapter on frame embeddings ``[B, T, E] -> [B, T, E]`` (residual)."""

    def __init__(self, channels: int, width: int, kernel: int = 3):
        super().__init__()
        self.te = TemporalEnhancement(channels, width, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.te(x.unsqueeze(2)).squeeze(2)


class TextAdapter(nn.Module):
    """``x + fc2(GELU(fc1(x)))`` on text tokens ``[K, ctx, W]``."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width, channels)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))
