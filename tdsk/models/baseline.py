"""Mean-pool baseline: frozen CLIP per-frame features averaged over T + a linear head.

The reference point of the demo (``model.variant: baseline``): every centre frame goes
through the frozen CLIP ViT (``ln_post`` and ``proj`` included, i.e. the CLIP image
embedding of the class token), the ``T`` embeddings are averaged, and a trainable
``Linear(embed_dim -> K)`` gives the logits. No temporal modelling, no side network:
only the head trains.
"""
from typing import Dict

import torch
import torch.nn as nn

from tdsk.models.clip_encoder import FrozenCLIPEncoder
from tdsk.models.video import VideoClassifier, as_video

__all__ = ["MeanPoolCLIP"]


class MeanPoolCLIP(VideoClassifier):
    """``forward(video[B, T, M, 3, H, W]) -> logits[B, K]``; only ``head`` is trainable."""

    variant = "baseline"

    def __init__(self, config: Dict):
        super().__init__(config)
        c = self.config
        self.encoder = FrozenCLIPEncoder(c["arch"], c["clip_pretrained"], c["quick_gelu"], c["input_size"],
                                         keep_head=True)
        dim = self.encoder.embed_dim if self.encoder.proj is not None else self.encoder.width
        self.head = nn.Linear(dim, self.num_classes)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t, m = video.shape[:3]
        centre = video[:, :, m // 2].reshape(b * t, *video.shape[3:])
        return self.encoder.image_features(centre).float().view(b, t, -1).mean(dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(video))
