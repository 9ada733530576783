"""MSTA: the Multi-modal Spatio-Temporal Adapter (Chen et al., "Efficient Transfer Learning for
Video-language Foundation Models", CVPR 2025, Fig. 2; docs/msta.md).

No model code of MSTA is released; this follows the paper and the adapter it builds on,
MMA (Yang et al., "MMA: Multi-Modal Adapter for Vision-Language Models", CVPR 2024):

* both CLIP towers stay frozen (:mod:`~tdsk.models.adapted_clip`). At each adapted block
  ``l`` of a tower, a bottleneck branch reads the block's input ``x`` through the block's own
  ``LN_1`` and its output is added after the MLP residual::

      x_out = Block(x) + s * Up_m(Shared(Down_m(LN_1(x))))

  ``Down_m = ReLU(Linear(C_m -> d))`` and ``Up_m = Linear(d -> C_m)`` belong to the tower
  ``m`` (visual or text), ``Shared = ReLU(Linear(d -> d))`` is ONE module used by both towers
  at that layer (the multi-modal shared projection), ``s`` is ``model.adapter_scale``. As in
  MMA the branch's gradient is rescaled by ``1 / s`` on the way into the adapter weights
  (and by ``s`` on the way back to ``x``), so the adapter weights learn as if unscaled while
  the forward pass and the gradient reaching the tower are the true ones;
* video: every frame goes through the adapted ViT; the video embedding is the mean over
  time of the frame embeddings (the paper used ViCLIP-B, a video CLIP that open_clip does
  not have: docs/msta.md);
* classifier: ``exp(s_CLIP) * cos(v, t_k)`` with ``t_k`` the *adapted* text tower's
  embedding of ``model.text_prompt`` with class ``k``'s name: recomputed at every training
  step (the text adapters train), cached in eval (:class:`~tdsk.models.adapted_clip.ClassTextCache`);
* description-guided consistency (the paper's Sec. 3): the *frozen* text tower embeds the
  LLM-written descriptions of each class (``model.descriptions``, the first
  ``descriptions_per_class`` sentences, embeddings averaged and normalised; computed once,
  the buffer ``description_embeddings``); training adds
  ``consistency_weight * mean_k (1 - cos(t_k, d_k))`` to the cross-entropy (the form is a
  choice of tdsk: the paper publishes no code; docs/msta.md §Consistency).

``forward(video)`` returns the logits ``[B, K]``; in training, with descriptions, a dict
``{"logits", "consistency_loss"}`` (the registry's ``logits_of``/``loss`` read it).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk._logging import log_once
from tdsk.models.adapted_clip import AdaptedTextTower, AdaptedVisionTower, ClassTextCache, _run_blocks, \
    adapted_block_forward, tokenize
from tdsk.models.text_tower import text_embeddings_deferred
from tdsk.models.video import VideoClassifier, as_video, parse_td_layers
from tdsk.schema import ConfigError

__all__ = ["MSTA", "SharedAdapters", "adapter_layers", "read_descriptions", "consistency_loss",
           "msta_param_groups", "msta_loss", "msta_logits"]

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


# ----------------------------------------------------------------------------- configuration

def adapter_layers(cfg: Dict, vision_layers: int, text_layers: int) -> tuple:
    """``(visual, text)``: the 0-based adapted blocks of each tower (``model.adapter_layers``,
    ``model.text_adapter_layers``), checked against the towers' depths; the k-th of each share
    one projection, so both lists have the same length."""
    vis = parse_td_layers(cfg["adapter_layers"], vision_layers, key="model.adapter_layers")
    spec = cfg.get("text_adapter_layers")
    key = "model.text_adapter_layers" if spec is not None else "model.adapter_layers"
    if spec is None:
        spec = cfg["adapter_layers"]
        if text_layers != vision_layers and spec == "all":
            raise ConfigError(f"model.adapter_layers=all: the towers have {vision_layers} (visual) and {text_layers} "
                              "(text) blocks; set model.text_adapter_layers to as many text blocks")
    txt = parse_td_layers(spec, text_layers, key=key)
    if not vis:
        raise ConfigError("model.adapter_layers: MSTA needs at least one adapted block")
    if len(txt) != len(vis):
        raise ConfigError(f"{key}={spec!r}: {len(txt)} text blocks for {len(vis)} visual blocks "
                          f"(model.adapter_layers={cfg['adapter_layers']!r}); each pair shares one projection")
    return vis, txt


def _descriptions_path(path: str) -> str:
    """``path`` as given (``~`` expanded), else relative to tdsk's recipes folder (the demo's file)."""
    p = os.path.expanduser(str(path))
    if not os.path.isfile(p) and not os.path.isabs(p) and os.path.isfile(os.path.join(_CONFIG_DIR, p)):
        return os.path.join(_CONFIG_DIR, p)
    return p


def read_descriptions(path: str, class_names: Sequence[str], per_class: int,
                      key: str = "model.descriptions") -> List[List[str]]:
    """The first ``per_class`` sentences of every class from a JSON file ``{class: [sentence, ...]}``.

    A class is looked up by its name, else by its index as a string (the published files key
    the classes ``"0"``, ``"1"``, ...). Raises :class:`ConfigError` (naming ``key``) for a
    missing or unreadable file, a value that is not a list of strings, or classes the file
    does not describe; a class with fewer sentences uses what there is (logged once).
    """
    p = _descriptions_path(path)
    if not os.path.isfile(p):
        raise ConfigError(f"{key}: no such file {path!r}")
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}={path!r}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}={path!r}: expected a JSON object {{class name: [sentence, ...]}}, "
                          f"got {type(data).__name__}")
    out, missing, short = [], [], []
    for i, name in enumerate(class_names):
        value = data.get(str(name), data.get(str(i)))
        if value is None or value == []:
            missing.append(str(name))
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ConfigError(f"{key}={path!r}: the entry of class {name!r} must be a list of non-empty sentences")
        if len(value) < per_class:
            short.append(str(name))
        out.append(value[:per_class])
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ConfigError(f"{key}={path!r}: no sentences for {len(missing)} of {len(class_names)} classes: "
                          f"{', '.join(repr(m) for m in missing[:5])}{more}")
    if short:
        log_once(f"msta-short-descriptions-{p}", f"{key}={path!r}: {len(short)} classes have fewer than "
                 f"{per_class} sentences (model.descriptions_per_class), e.g. {short[:3]}: using what there is",
                 logging.WARNING)
    return out


# ----------------------------------------------------------------------------- the adapters

class _GradScale(torch.autograd.Function):
    """Identity forward; the gradient times ``scale`` backward (MMA's gradient scale layer)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    return _GradScale.apply(x, scale) if torch.is_grad_enabled() else x


def _linear(i: int, o: int, relu: bool) -> nn.Module:
    lin = nn.Linear(i, o)
    nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")  # MMA's initialisation
    nn.init.zeros_(lin.bias)
    return nn.Sequential(lin, nn.ReLU()) if relu else nn.Sequential(lin)


class SharedAdapters(nn.Module):
    """The adapters of both towers at ``n`` adapted layers (MSTA Fig. 2; MMA Sec. 3.2).

    ``visual_down[i]``: ``ReLU(Linear(C_v -> d))``, ``text_down[i]``: ``ReLU(Linear(C_t -> d))``,
    ``shared[i]``: ``ReLU(Linear(d -> d))`` (one module, both towers), ``visual_up[i]`` /
    ``text_up[i]``: ``Linear(d -> C_m)``. :meth:`branch` is the bottleneck of tower ``m`` at
    the i-th adapted layer (without the scale).
    """

    def __init__(self, visual_width: int, text_width: int, dim: int, n: int):
        super().__init__()
        self.visual_down = nn.ModuleList([_linear(visual_width, dim, True) for _ in range(n)])
        self.text_down = nn.ModuleList([_linear(text_width, dim, True) for _ in range(n)])
        self.shared = nn.ModuleList([_linear(dim, dim, True) for _ in range(n)])
        self.visual_up = nn.ModuleList([_linear(dim, visual_width, False) for _ in range(n)])
        self.text_up = nn.ModuleList([_linear(dim, text_width, False) for _ in range(n)])

    def branch(self, tower: str, i: int, h: torch.Tensor) -> torch.Tensor:
        down, up = (self.visual_down, self.visual_up) if tower == "visual" else (self.text_down, self.text_up)
        return up[i](self.shared[i](down[i](h)))


class _ParallelBranch:
    """The two slots of one adapted block (:func:`~tdsk.models.adapted_clip.adapted_block_forward`):
    ``pre_attn`` computes the branch on the block's input (through the block's ``ln_1``) and
    returns the tokens unchanged, ``post_mlp`` adds it after the MLP residual (MMA's placement)."""

    def __init__(self, adapters: SharedAdapters, tower: str, i: int, ln: nn.Module, scale: float):
        self.adapters, self.tower, self.i, self.ln, self.scale = adapters, tower, i, ln, scale
        self._y: Optional[torch.Tensor] = None

    def pre_attn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(_grad_scale(x, self.scale))
        y = self.adapters.branch(self.tower, self.i, h.to(self.adapters.shared[self.i][0].weight.dtype))
        self._y = _grad_scale(y * self.scale, 1.0 / self.scale)
        return x

    def post_mlp(self, x: torch.Tensor) -> torch.Tensor:
        y, self._y = self._y, None
        return x + y.to(x.dtype)

    def slots(self) -> Dict:
        return {"pre_attn": self.pre_attn, "post_mlp": self.post_mlp}


def consistency_loss(class_text: torch.Tensor, descriptions: torch.Tensor) -> torch.Tensor:
    """``mean_k (1 - cos(class_text[k], descriptions[k]))`` of two ``[K, E]`` tensors."""
    return (1.0 - F.cosine_similarity(class_text.float(), descriptions.float(), dim=-1)).mean()


# ----------------------------------------------------------------------------- the model

class MSTA(VideoClassifier):
    """The MSTA classifier. Build it with :func:`tdsk.models.build_model` (``model.variant: msta``).

    Attributes: ``encoder`` (the frozen ViT, :class:`~tdsk.models.adapted_clip.AdaptedVisionTower`),
    ``text`` (the frozen text tower), ``adapters`` (:class:`SharedAdapters`, the only trainable
    part), ``logit_scale`` (CLIP's, a buffer), ``description_embeddings`` ``[K, E]`` (a buffer;
    ``None`` without ``model.descriptions``), ``class_names``, ``visual_layers`` /
    ``text_layers`` (0-based adapted blocks).
    """

    variant = "msta"
    open_vocabulary = True

    def __init__(self, config: Dict, class_names: Optional[Sequence[str]] = None):
        super().__init__(config)
        c = self.config
        ckpt = bool(c.get("checkpoint", False))
        self.encoder = AdaptedVisionTower(c["arch"], c["clip_pretrained"], c["quick_gelu"], c["input_size"],
                                          checkpoint=ckpt)
        self.text = AdaptedTextTower(c["arch"], c["clip_pretrained"], c["quick_gelu"], checkpoint=ckpt)
        self.visual_layers, self.text_layers = adapter_layers(c, self.encoder.layers, self.text.layers)
        self.scale = float(c["adapter_scale"])
        self.adapters = SharedAdapters(self.encoder.width, self.text.width, int(c["adapter_dim"]),
                                       len(self.visual_layers))
        self.register_buffer("logit_scale", torch.tensor(self.text.logit_scale_init, dtype=torch.float32))
        self.class_names: Optional[List[str]] = None
        if class_names is not None:
            self._set_names(class_names)
        elif not text_embeddings_deferred():
            raise ConfigError("model.variant=msta needs the class names: set data.labels in the recipe "
                              "(or pass build_model(..., class_names=[...]))")
        self._class_text = ClassTextCache()
        self._prefix = ClassTextCache()
        self._descriptions_file = c.get("descriptions")  # kept: use_classes may turn the term off, then on again
        self.register_buffer("description_embeddings", self._description_embeddings(self.class_names))
        # the eval-mode class texts as a buffer: what torch.export / ONNX bake into the graph
        self.register_buffer("class_text", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh_class_text())

    # -- classes -----------------------------------------------------------------------------------
    def _set_names(self, names: Sequence[str]) -> None:
        names = [str(n) for n in names]
        blank = [i for i, n in enumerate(names) if not n.strip()]
        if blank:
            raise ConfigError(f"class names {blank[:5]} are blank: MSTA's classifier needs a name per class")
        if self.class_names is None and len(names) != self.num_classes:
            raise ConfigError(f"model.num_classes={self.num_classes} but {len(names)} class names were given "
                              "(data.labels)")
        self.class_names = names

    def _description_embeddings(self, names: Optional[Sequence[str]], path: Optional[str] = None
                                ) -> Optional[torch.Tensor]:
        """The frozen text tower's mean description embedding per class, normalised (``[K, E]``),
        from ``path`` (default ``model.descriptions``)."""
        c = self.config
        path = path if path is not None else c.get("descriptions")
        if not path:
            return None
        if names is None or text_embeddings_deferred():  # loaded from the checkpoint right after
            return torch.zeros(self.num_classes, self.text.embed_dim)
        sentences = read_descriptions(path, names, int(c["descriptions_per_class"]))
        flat = [s for group in sentences for s in group]
        with torch.no_grad():
            emb = F.normalize(self.text.encode(flat).float(), dim=-1)
        out, i = [], 0
        for group in sentences:
            out.append(F.normalize(emb[i:i + len(group)].mean(0), dim=-1))
            i += len(group)
        return torch.stack(out)

    def use_classes(self, class_names: Sequence[str]) -> None:
        """Classify among ``class_names`` from now on, with the current weights (``class_names``,
        ``num_classes`` and ``config['num_classes']`` follow). Their description embeddings are
        read from ``model.descriptions`` when it describes them all (they only matter for
        training); otherwise the consistency term is off (logged) and ``config['descriptions']``
        becomes ``None``, so that a model folder saved now describes a model without the buffer."""
        names = [str(n) for n in class_names]
        if not names or any(not n.strip() for n in names):
            raise ValueError("use_classes: give one non-blank name per class")
        self.class_names, self.num_classes = names, len(names)
        self.config["num_classes"] = len(names)
        desc = None
        if self._descriptions_file:
            try:
                desc = self._description_embeddings(names, self._descriptions_file)
            except ConfigError as exc:
                log_once(f"msta-use-classes-{exc}", f"MSTA.use_classes: no consistency term for these classes ({exc})",
                         logging.INFO)
        self.description_embeddings = desc.to(self.logit_scale.device) if desc is not None else None
        if self._descriptions_file:
            self.config["descriptions"] = self._descriptions_file if desc is not None else None
        self.class_text = None
        self._refresh_class_text()

    # -- the towers with adapters -----------------------------------------------------------------
    def _slots(self, tower: str, blocks: Sequence[nn.Module], layers: Sequence[int]) -> List[Optional[Dict]]:
        slots: List[Optional[Dict]] = [None] * len(blocks)
        for i, b in enumerate(layers):
            slots[b] = _ParallelBranch(self.adapters, tower, i, blocks[b].ln_1, self.scale).slots()
        return slots

    def frame_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[F, 3, H, W]`` -> adapted CLIP image embeddings ``[F, E]``."""
        tokens = self.encoder(frames, self._slots("visual", self.encoder.transformer.resblocks, self.visual_layers))
        return self.encoder.head(tokens[:, 0])

    def _prompt_tokens(self, names: Sequence[str]) -> torch.Tensor:
        tokens = tokenize([self.config["text_prompt"].format(n) for n in names], self.text.context_length)
        # causal attention: the tokens after the last end-of-text token never reach it
        return tokens[:, :int(tokens.argmax(dim=-1).max()) + 1].to(self.logit_scale.device)

    def _encode_class_texts(self, names: Sequence[str]) -> torch.Tensor:
        """The adapted text tower's embeddings ``[K, E]`` of the prompts of ``names``. The blocks
        before the first adapted one do not depend on a trainable weight: their output is cached."""
        tokens = self._prompt_tokens(names)
        blocks, first, cut = self.text.blocks, self.text_layers[0], tokens.shape[1]
        mask = self.text.tower.attn_mask
        mask = mask[:cut, :cut] if mask is not None else None

        def prefix():
            return _run_blocks(blocks[:first], self.text.embed(tokens)[0], None, mask, False)

        key = (tuple(names), self.config["text_prompt"], str(tokens.device))
        x = self._prefix.get(key, list(self.text.parameters()), prefix)
        slots = self._slots("text", blocks, self.text_layers)
        x = _run_blocks(blocks[first:], x, slots[first:], mask, self.text.checkpoint)
        return self.text.project(x, tokens)

    def class_text_embeddings(self) -> torch.Tensor:
        """``[K, E]`` adapted text embeddings of the model's classes: with a graph in training,
        cached otherwise (until a trainable weight changes). While the model is being compiled
        or exported: the buffer ``class_text`` (filled by ``eval()``, ``load_state_dict`` and
        every eager evaluation), so the exported graph holds the class embeddings, not the text
        tower."""
        if torch.compiler.is_compiling() and not (self.training and torch.is_grad_enabled()):
            if self.class_text is None:
                raise RuntimeError("MSTA: put the model in eval mode (model.eval()) before compiling or exporting it")
            return self.class_text
        if self.class_names is None:
            raise ValueError("MSTA has no class names: build it with class_names=[...] (data.labels) or call "
                             "use_classes(names)")
        text = self.text_embeddings_for(self.class_names)
        if not text.requires_grad:
            self.class_text = text
        return text

    def _refresh_class_text(self) -> None:
        if self.training or self.class_names is None or self.logit_scale.is_meta:
            return
        with torch.no_grad():
            self.class_text_embeddings()

    def train(self, mode: bool = True):
        super().train(mode)
        if not mode:
            self._refresh_class_text()
        return self

    def text_embeddings_for(self, class_names: Sequence[str]) -> torch.Tensor:
        """``[K', E]`` adapted text embeddings of ``model.text_prompt`` with each of ``class_names``
        (the current weights), for :meth:`classify`."""
        names = [str(n) for n in class_names]
        params = list(self.adapters.parameters()) + list(self.text.parameters())
        key = (tuple(names), self.config["text_prompt"])
        return self._class_text.get(key, params, lambda: self._encode_class_texts(names))

    # -- classifier --------------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return int(self.encoder.embed_dim)

    def classify(self, emb: torch.Tensor, text_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Video embeddings ``[B, E]`` -> logits ``[B, K]`` against the model's classes, or against
        ``text_embeddings`` ``[K', E]`` (e.g. :meth:`text_embeddings_for` of other names)."""
        text = self.class_text_embeddings() if text_embeddings is None else text_embeddings.to(emb.device)
        v = F.normalize(emb.float(), dim=-1)
        t = F.normalize(text.float(), dim=-1)
        return self.logit_scale.exp() * v @ t.t()

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """Video embeddings ``[B, E]``: the mean over time of the adapted frame embeddings."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t = video.shape[:2]
        return self.frame_embeddings(video[:, :, 0].flatten(0, 1)).unflatten(0, (b, t)).mean(dim=1)

    # -- split forward: frame embeddings once per frame (tdsk.timeline) -----------------------------
    def frame_taps(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """``[frame_embeddings(frames)]``: MSTA's frames are independent until the temporal mean."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frame_taps: frames must be Tensor[F, 3, H, W], got {tuple(frames.shape)}")
        return [self.frame_embeddings(frames)]

    def features_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Video embeddings ``[B, E]`` from :meth:`frame_taps` of ``video``'s ``B*T`` frames."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t = video.shape[:2]
        z = taps[0]
        if z.dim() != 2 or z.shape[0] != b * t:
            raise ValueError(f"features_from_taps: expected [frame embeddings Tensor[B*T={b * t}, E]], "
                             f"got {tuple(z.shape)}")
        return z.unflatten(0, (b, t)).mean(dim=1)

    def forward_from_taps(self, video: torch.Tensor, taps: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classify(self.features_from_taps(video, taps))

    def cam_activations(self, video: torch.Tensor):
        """``(A [B, T, N, C], logits [B, K])`` for Grad-CAM (:mod:`tdsk.explain`): the patch tokens
        entering the ViT's last block, per frame (the last block's output patches do not reach
        the class token)."""
        video = as_video(video, self.num_segments, self.num_local, self.encoder.image_size)
        b, t = video.shape[:2]
        blocks = self.encoder.transformer.resblocks
        slots = self._slots("visual", blocks, self.visual_layers)
        with torch.no_grad():
            z = self.encoder.embed(video[:, :, 0].flatten(0, 1))
            for blk, s in zip(list(blocks)[:-1], slots[:-1]):
                z = adapted_block_forward(blk, z, s)
            text = self.class_text_embeddings()
        patches = z[:, 1:].detach().unflatten(0, (b, t)).requires_grad_(True)
        with torch.enable_grad():
            y = adapted_block_forward(blocks[-1], torch.cat([z[:, :1], patches.flatten(0, 1)], dim=1), slots[-1])
            logits = self.classify(self.encoder.head(y[:, 0]).unflatten(0, (b, t)).mean(dim=1), text)
        return patches, logits

    def forward(self, video: torch.Tensor):
        """``video[B, T, 1, 3, H, W]`` -> logits ``[B, K]`` (training with descriptions: a dict
        ``{"logits", "consistency_loss"}``, the latter already weighted)."""
        text = self.class_text_embeddings()
        logits = self.classify(self.features(video), text)
        w = float(self.config.get("consistency_weight", 0.0))
        if self.training and torch.is_grad_enabled() and self.description_embeddings is not None and w > 0:
            return {"logits": logits, "consistency_loss": w * consistency_loss(text, self.description_embeddings)}
        return logits


# ----------------------------------------------------------------------------- registry hooks

def msta_logits(outputs):
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def msta_loss(outputs, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """Cross-entropy of the logits (``criterion``, label smoothing/mixup included) plus the
    weighted consistency term when the forward pass returned one."""
    loss = criterion(msta_logits(outputs).float(), targets)
    if isinstance(outputs, dict) and "consistency_loss" in outputs:
        loss = loss + outputs["consistency_loss"]
    return loss


def msta_param_groups(model: nn.Module, solver) -> List[dict]:
    """One group: every adapter weight at ``solver.lr`` with ``solver.weight_decay`` (MMA's and the
    logs' AdamW over the whole adapter learner, docs/msta.md §Recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return [{"params": params, "name": "adapters", "lr": float(solver["lr"]), "lr_scale": 1.0,
             "weight_decay": float(solver.get("weight_decay", 0.0))}]
