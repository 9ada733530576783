"""DiST: a frozen CLIP as spatial encoder, a light temporal encoder on all frames, and an
integration branch between them (Qing et al., "Disentangling Spatial and Temporal Learning
for Efficient Image-to-Video Transfer Learning", ICCV 2023, Fig. 2; docs/dist.md).

``DiST.forward(video)``:

1. ``video[B, T, 1, 3, H, W]`` (CLIP-normalised; ``T = model.num_segments``). The frozen ViT
   (:class:`~tdsk.models.clip_encoder.FrozenCLIPEncoder`, no autograd, the same tower and
   taps as TDS-CLIP) sees every ``alpha``-th frame, ``T' = T / alpha`` frames, and returns
   every block's output;
2. :class:`DiSTNetwork` (``dist_net``, the only trainable part): the temporal stem and
   temporal blocks on all ``T`` frames, the integration branch fed by the taps, the bridges
   between the two (:mod:`~tdsk.models.dist_blocks`), then the adaptive pooling
   (:mod:`~tdsk.models.dist_pooling`) and the projection to CLIP's embedding width ``E``;
3. the classifier: ``exp(s) * cos(v, t_k)`` against the frozen CLIP text embedding ``t_k`` of
   every class name (:mod:`~tdsk.models.text_tower`, computed once and kept as the buffer
   ``text_embeddings``; ``s`` is CLIP's ``logit_scale``), or a plain ``Linear(E -> K)``
   (``model.classifier: linear``).

Returns the logits ``[B, K]``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from tdsk.models.clip_encoder import FrozenCLIPEncoder
from tdsk.models.dist_blocks import IntegrationBlock, IntegrationToTemporal, TemporalBlock, TemporalToIntegration
from tdsk.models.dist_pooling import AdaptivePooling
from tdsk.models.text_tower import class_text_embeddings, text_embeddings_deferred
from tdsk.models.video import VideoClassifier, as_video
from tdsk.schema import ConfigError

__all__ = ["DiST", "DiSTNetwork", "dist_param_groups"]


def _parameters_to_buffers(module: nn.Module) -> None:
    """Turn ``module``'s parameters into (persistent) buffers of the same names."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                del sub._parameters[name]
                sub.register_buffer(name, p.detach())


class DiSTNetwork(nn.Module):
    """The trainable network of DiST (official name ``dist_net``).

    ``forward(frames[B, T, 3, H, W], taps)`` with ``taps``: ``L`` tensors ``[B*T', N+1, C]``
    (batch-first, frames b-major) -> video embedding ``[B, E]``.
    """

    def __init__(self, width: int, layers: int, embed_dim: int, patch_size: int, num_frames: int, alpha: int,
                 temporal_dim: int = 96, integration_dim: int = 384, temporal_patch: int = 5,
                 temporal_kernel: int = 3, temporal_mlp_ratio: float = 1.0, integration_mlp_ratio: float = 1.0,
                 integration_temporal_mlp_ratio: float = 0.25, pooling_layers: int = 2):
        super().__init__()
        self.num_frames, self.alpha = int(num_frames), int(alpha)
        frames = self.num_frames // self.alpha
        self.frames = frames
        self.temporal_stem = nn.Conv3d(3, temporal_dim, (temporal_patch, patch_size, patch_size),
                                       stride=(1, patch_size, patch_size), padding=(temporal_patch // 2, 0, 0))
        self.input_linears = nn.ModuleList([nn.Linear(width, integration_dim) for _ in range(layers)])
        self.integration2temporal_nets = nn.ModuleList(
            [IntegrationToTemporal(integration_dim, temporal_dim, alpha, frames) for _ in range(layers)])
        self.temporal2integration_nets = nn.ModuleList(
            [TemporalToIntegration(temporal_dim, integration_dim, alpha, frames) for _ in range(layers)])
        self.temporal_nets = nn.ModuleList(
            [TemporalBlock(temporal_dim, temporal_kernel, temporal_mlp_ratio) for _ in range(layers)])
        self.integration_nets = nn.ModuleList(
            [IntegrationBlock(integration_dim, frames, temporal_kernel, integration_mlp_ratio,
                              integration_temporal_mlp_ratio) for _ in range(layers)])
        self.adapooling_nets = nn.ModuleList([AdaptivePooling(integration_dim, frames) for _ in range(pooling_layers)])
        self.proj_spatial_cls_token = nn.Linear(width, integration_dim)
        self.ln_post = nn.LayerNorm(integration_dim)
        self.proj = nn.Parameter(integration_dim ** -0.5 * torch.randn(integration_dim, embed_dim))
        self.aggregated_cls_token = nn.Parameter(torch.zeros(1, 1, integration_dim))
        self.aggregated_spatial_cls_token = nn.Parameter(torch.zeros(1, 1, integration_dim))
        nn.init.trunc_normal_(self.aggregated_cls_token, std=0.02)
        nn.init.trunc_normal_(self.aggregated_spatial_cls_token, std=0.02)
        for m in self.modules():  # the paper's initialisation: truncated normal weights, zero biases
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # The last layer's bridge into the temporal stream feeds nothing (the temporal stream
        # ends there): it exists in the official checkpoints, never gets a gradient, and is
        # kept as buffers so that DDP, the optimiser and the frozen-tower checks see only
        # what trains (docs/dist.md §Parameters).
        _parameters_to_buffers(self.integration2temporal_nets[-1])

    def forward(self, frames: torch.Tensor, taps: Sequence[torch.Tensor],
                capture: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """``capture`` (a list): receives the temporal stream after the last temporal block as
        ``[b, T, g*g, D]``, a tensor the output is computed from (for Grad-CAM)."""
        b, t = frames.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"DiST: expected {self.num_frames} frames, got {t}")
        x_t = self.temporal_stem(frames.transpose(1, 2))            # [b, D, T, g, g]
        res = 0.0
        mid = None
        last = len(taps) - 1
        for i, z in enumerate(taps):
            x_t = self.temporal_nets[i](x_t)
            if capture is not None and i == last:
                d, g = x_t.shape[1], x_t.shape[-1]
                a = x_t.permute(0, 2, 3, 4, 1).reshape(b, t, g * g, d)   # [b, T, N, D]
                capture.append(a)
                x_t = a.reshape(b, t, g, g, d).permute(0, 4, 1, 2, 3)
            mid = self.input_linears[i](z.transpose(0, 1)) + res  # [L, b*T', I]
            new_t = self.integration2temporal_nets[i](mid) + x_t if i < last else None
            mid = mid + self.temporal2integration_nets[i](x_t)
            res = self.integration_nets[i](mid)
            x_t = new_t
        tokens = res + mid
        # repeat (a copy), not expand: a view of a parameter handed to a module confuses
        # module-level autograd hooks (torch.utils.flop_counter) under no_grad
        video_q = self.aggregated_cls_token.repeat(1, b, 1).to(tokens.dtype)
        frame_q = self.aggregated_spatial_cls_token.repeat(1, b * self.frames, 1).to(tokens.dtype)
        for pool in self.adapooling_nets:
            video_q, frame_q = pool(tokens, video_q, frame_q)
        cls_mean = taps[-1][:, 0].reshape(b, self.frames, -1).mean(dim=1)  # last block's class tokens
        return self.ln_post(video_q[0] + self.proj_spatial_cls_token(cls_mean.to(video_q.dtype))) @ self.proj.to(
            video_q.dtype)


class DiST(VideoClassifier):
    """The DiST classifier. Build it with :func:`tdsk.models.build_model` (``model.variant: dist``).

    Attributes: ``encoder`` (frozen), ``dist_net`` (trainable), ``text_embeddings`` ``[K, E]``
    and ``logit_scale`` (buffers; ``classifier: text``) or ``head`` (``classifier: linear``),
    ``class_names``, ``alpha``, ``num_segments`` (``T``), ``num_local`` (1), ``num_classes``.
    """

    variant = "dist"

    def __init__(self, config: Dict, class_names: Optional[Sequence[str]] = None):
        super().__init__(config)
        c = self.config
        self.alpha = int(c["alpha"])
        self.encoder = FrozenCLIPEncoder(c["arch"], c["clip_pretrained"], c["quick_gelu"], c["input_size"])
        enc = self.encoder
        self.dist_net = DiSTNetwork(
            enc.width, enc.layers, enc.embed_dim, enc.patch_size, self.num_segments, self.alpha,
            temporal_dim=int(c["temporal_dim"]), integration_dim=int(c["integration_dim"]),
            temporal_patch=int(c["temporal_patch"]), temporal_kernel=int(c["temporal_kernel"]),
            temporal_mlp_ratio=float(c["temporal_mlp_ratio"]), integration_mlp_ratio=float(c["integration_mlp_ratio"]),
            integration_temporal_mlp_ratio=float(c["integration_temporal_mlp_ratio"]),
            pooling_layers=int(c["pooling_layers"]))
        self.class_names: Optional[List[str]] = [str(n) for n in class_names] if class_names is not None else None
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"model.num_classes={self.num_classes} but {len(self.class_names)} class names were "
                              "given (data.labels)")
        if c["classifier"] == "text":
            names = self.class_names
            if names is None and text_embeddings_deferred():  # the buffer is loaded right after
                names = [str(i) for i in range(self.num_classes)]
            if names is None:
                raise ConfigError("model.classifier=text needs the class names: set data.labels in the recipe "
                                  "(or pass build_model(..., class_names=[...])), or use model.classifier=linear")
            emb, scale = class_text_embeddings(c["arch"], names, c["text_pretrained"] or c["clip_pretrained"],
                                               c["quick_gelu"], c["text_prompt"],
                                               key="model.text_pretrained" if c["text_pretrained"]
                                               else "model.clip_pretrained")
            self.register_buffer("text_embeddings", emb)
            self.register_buffer("logit_scale", torch.tensor(scale, dtype=torch.float32))
            self.head = None
        else:
            self.head = nn.Linear(enc.embed_dim, self.num_classes)

    @property
    def feature_dim(self) -> int:
        return int(self.encoder.embed_dim)

    # -- classifier --------------------------------------------------------------------------------
    def set_class_text_embeddings(self, embeddings: torch.Tensor, logit_scale: Optional[float] = None) -> None:
        """Replace the classes' text embeddings ``[K, E]`` (e.g. of an official checkpoint's text tower)."""
        if self.head is not None:
            raise ValueError("this DiST classifies with a linear head (model.classifier=linear), not text embeddings")
        if tuple(embeddings.shape) != tuple(self.text_embeddings.shape):
            raise ValueError(f"text embeddings must be {tuple(self.text_embeddings.shape)}, got {tuple(embeddings.shape)}")
        self.text_embeddings.copy_(embeddings)
        if logit_scale is not None:
            self.logit_scale.fill_(float(logit_scale))

    @property
    def open_vocabulary(self) -> bool:
        """Whether the classifier scores text embeddings of class names (``classifier: text``;
        the open-vocabulary contract, :mod:`tdsk.models.open_vocab`)."""
        return self.head is None

    def use_classes(self, class_names: Sequence[str]) -> None:
        """Switch the classifier to ``class_names`` (zero-shot / open vocabulary, docs/protocols.md):
        their text embeddings are computed with the recipe's text weights and ``text_prompt``;
        ``class_names``, ``num_classes`` and ``config["num_classes"]`` follow. ``logit_scale`` is kept."""
        names = [str(n) for n in class_names]
        emb = self.text_embeddings_for(names).to(self.text_embeddings.device, self.text_embeddings.dtype)
        self.text_embeddings = emb  # a registered buffer: replaced (the class count may change)
        self.class_names = names
        self.num_classes = len(names)
        self.config["num_classes"] = len(names)

    def classify(self, emb: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Video embeddings ``[B, E]`` -> logits ``[B, K]``. ``text_embeddings`` ``[K', E]``: score
        against these classes instead of the model's own (open vocabulary; text classifier only)."""
        if self.head is not None:
            if text_embeddings is not None:
                raise ValueError("this DiST classifies with a linear head (model.classifier=linear), not text "
                                 "embeddings: it cannot take other class names")
            return self.head(emb)
        emb = emb.float()
        text = self.text_embeddings if text_embeddings is None else text_embeddings.to(emb.device).float()
        v = emb / emb.norm(dim=1, keepdim=True)
        t = text / text.norm(dim=1, keepdim=True)
        return self.logit_scale.exp() * v @ t.t()

    def text_embeddings_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K', E]`` text embeddings of other class names (the recipe's text tower weights and
        ``text_prompt``), for :meth:`classify`; text classifier only."""
        if self.head is not None:
            raise ValueError("this DiST classifies with a linear head (model.classifier=linear): it cannot take "
                             "other class names")
        c = self.config
        emb, _ = class_text_embeddings(c["arch"], class_names, c["text_pretrained"] or c["clip_pretrained"],
                                       c["quick_gelu"], c["text_prompt"],
                                       key="model.text_pretrained" if c["text_pretrained"] else "model.clip_pretrained")
        return emb

    # -- split forward: the frozen taps once per frame (tdsk.timeline) ---------------------------------
    def frame_taps(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """Frozen-CLIP taps of frames ``[F, 3, H, W]`` -> ``L x [F, N+1, C]`` (no autograd)."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frame_taps: frames must be Tensor[F, 3, H, W], got {tuple(frames.shape)}")
        return self.encoder(frames)

    def features_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Video embeddings ``[B, E]`` from ``video[B, T, 1, 3, H, W]`` and the taps of *all* its
        ``T`` frames (``L x [B*T, N+1, C]``, as :meth:`frame_taps` of ``video[:, :, 0]``); DiST
        uses every ``alpha``-th frame's."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t = video.shape[:2]
        taps = list(taps)
        if taps and (taps[0].dim() != 3 or taps[0].shape[0] != b * t or taps[0].shape[-1] != self.encoder.width):
            raise ValueError(f"features_from_taps: each tap must be Tensor[B*T={b * t}, N+1, {self.encoder.width}], "
                             f"got {tuple(taps[0].shape)}")
        taps = [z.unflatten(0, (b, t))[:, ::self.alpha].flatten(0, 1) for z in taps]
        return self.dist_net(video[:, :, 0], taps)

    def forward_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, K]`` from the local frames and precomputed taps (see :meth:`features_from_taps`)."""
        return self.classify(self.features_from_taps(video, taps))

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Video embeddings ``[B, E]`` (before the classifier)."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        frames = video[:, :, 0]                                           # [B, T, 3, H, W]
        sparse = frames[:, ::self.alpha].flatten(0, 1)                     # [B*T', 3, H, W]
        return self.dist_net(frames, self.encoder(sparse))

    def cam_activations(self, video: torch.Tensor):
        """``(A [B, T, N, D], logits [B, K])`` for Grad-CAM (:mod:`tdsk.explain`): the temporal
        stream after the last temporal block, one map per frame on the patch grid; ``logits``
        is a differentiable function of ``A``."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        frames = video[:, :, 0]
        with torch.no_grad():
            taps = self.encoder(frames[:, ::self.alpha].flatten(0, 1))
        captured: List[torch.Tensor] = []
        with torch.enable_grad():
            logits = self.classify(self.dist_net(frames, taps, capture=captured))
        return captured[0], logits

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``video[B, T, 1, 3, H, W]`` -> logits ``[B, K]``."""
        return self.classify(self.features(video))


def dist_param_groups(model: nn.Module, solver) -> List[dict]:
    """DiST's optimiser groups (paper Sec. 4.1; docs/dist.md §Recipe).

    Every trainable parameter of ``dist_net`` trains at ``solver.lr x solver.clip_ratio`` (the
    official ``NEW_NET_LRMULT``, 10); class/query tokens, position embeddings, biases and
    other 1-D parameters have no weight decay, the rest ``solver.weight_decay``. A linear
    ``head`` (``classifier: linear``) trains at ``solver.lr`` with weight decay.
    """
    base, wd = float(solver["lr"]), float(solver.get("weight_decay", 0.0))
    mult = float(solver.get("clip_ratio", 1.0))
    groups: Dict[str, list] = {"decay": [], "no_decay": [], "head": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head."):
            groups["head"].append(p)
        elif name.endswith(("cls_token", "positional_embedding")) or name.endswith(".bias") or p.ndim <= 1:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    settings = {"decay": (mult, wd), "no_decay": (mult, 0.0), "head": (1.0, wd)}
    out = [{"params": ps, "name": g, "lr": base * settings[g][0], "lr_scale": settings[g][0],
            "weight_decay": settings[g][1]} for g, ps in groups.items() if ps]
    if not out:
        raise ValueError("the model has no trainable parameters")
    return out
