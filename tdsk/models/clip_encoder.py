"""Frozen spatial encoder: an open_clip ViT run on the centre frames (docs/model.md §3).

``FrozenCLIPEncoder`` holds the open_clip ``VisionTransformer`` parts that TDS-CLIP
uses -- ``conv1`` (patch embedding), ``class_embedding``, ``positional_embedding``,
``ln_pre`` and ``transformer.resblocks`` -- and returns the output ``z_l`` of every
block ``l = 1..L`` (the "taps" of the side network, docs/model.md §5). ``ln_post`` and
``proj`` are not part of it (docs/model.md §3: they are dropped and never reach the output),
except for the mean-pool baseline, which keeps them (``keep_head=True``).

Memory and precision:

* all parameters are frozen (``requires_grad=False``) and the module stays in eval
  mode (``train()`` is a no-op for it);
* the forward runs under ``torch.no_grad()`` -- no activation of the frozen tower is
  ever saved for backward; only the taps are handed on;
* under autocast the tower runs in the autocast dtype and the taps are stored in it
  (bf16/fp16: half the memory of fp32 taps); in plain fp32 they are fp32 (parity).

Weights (``pretrained``): an open_clip pretrained tag (e.g. ``'openai'``, downloaded
when online; offline it fails at once with a clear message), a local file (an
open_clip/OpenAI state dict, an OpenAI TorchScript archive, or an official TDS-CLIP
checkpoint: the ``visual.*`` ViT tensors are taken), or ``None`` for random init
(logged). OpenAI fp16 weights are held in fp32, as in the official code.
"""
import logging
import os
import socket
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdsk._checkpoint_io import read_state_dict
from tdsk._logging import log_once, logger
from tdsk.models._common import autocast_dtype
from tdsk.ops.attention import attention
from tdsk.schema import ConfigError

__all__ = ["FrozenCLIPEncoder", "TDSK_VIT_CONFIGS", "register_vit_config", "vision_config", "load_clip_visual_state_dict"]

# Tiny ViTs for CPU tests and the demo (open_clip ``vision_cfg`` dicts). ``head_width``
# 64 as in CLIP; ``embed_dim`` only matters for the baseline's projection.
TDSK_VIT_CONFIGS = {
    "tdsk-ViT-Tiny-16": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64,
                                                         "head_width": 64, "patch_size": 16}},
    "tdsk-ViT-Demo-8": {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64,
                                                        "head_width": 64, "patch_size": 8}},
}

def register_vit_config(name: str, vision_cfg: dict, embed_dim: int = 64) -> None:
    """Make a custom ViT (an open_clip ``vision_cfg`` dict) buildable as ``arch=name``."""
    TDSK_VIT_CONFIGS[name] = {"embed_dim": int(embed_dim), "vision_cfg": dict(vision_cfg)}


_UNSUPPORTED_VISION_KEYS = ("timm_model_name", "attentional_pool", "ls_init_value", "no_ln_pre")


def vision_config(arch: str) -> dict:
    """``{'embed_dim': int, 'vision_cfg': dict}`` of a tdsk tiny ViT or any open_clip ViT name."""
    if arch in TDSK_VIT_CONFIGS:
        cfg = TDSK_VIT_CONFIGS[arch]
        return {"embed_dim": cfg["embed_dim"], "vision_cfg": dict(cfg["vision_cfg"])}
    import open_clip  # noqa: PLC0415

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(
            f"unknown CLIP architecture {arch!r}: not an open_clip model name "
            f"(see open_clip.list_models()) nor one of tdsk's {sorted(TDSK_VIT_CONFIGS)}"
        )
    vcfg = dict(cfg["vision_cfg"])
    for key in _UNSUPPORTED_VISION_KEYS:
        if vcfg.get(key):
            raise ValueError(f"CLIP architecture {arch!r} is not a plain ViT ({key}={vcfg[key]!r}); "
                             "TDS-CLIP needs a ViT with a class token and per-block outputs")
    if isinstance(vcfg.get("layers"), (list, tuple)):
        raise ValueError(f"CLIP architecture {arch!r} is a ResNet; TDS-CLIP needs a ViT")
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": vcfg}


# ---------------------------------------------------------------------------
# loading CLIP weights
# ---------------------------------------------------------------------------

def load_clip_visual_state_dict(path: str) -> dict:
    """The ViT tensors of a CLIP file, keyed as in the open_clip ``VisionTransformer``.

    Accepts keys with a ``visual.`` prefix (CLIP / official TDS-CLIP checkpoints; a
    ``module.`` prefix is dropped) or without (a bare vision tower). The file is read
    with ``weights_only=True``, or as TorchScript (OpenAI's released files).
    """
    sd = read_state_dict(path, what="CLIP weights", torchscript=True)
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def _network_reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


class PretrainedUnavailableError(ConfigError, RuntimeError):
    """A ``clip_pretrained`` tag that needs the model hub on an offline machine: a user's
    recipe choice (a :class:`ConfigError`, one error line from the tools; it was an 80-line
    traceback from ``tdsk.train``), and a ``RuntimeError`` as before for library callers."""


def _pretrained_tag_state_dict(arch: str, tag: str, quick_gelu: bool, full: bool = False) -> dict:
    """Visual state dict of open_clip's ``create_model(arch, pretrained=tag)`` (``full``: the
    whole CLIP's, text tower included, keyed as OpenAI's files).

    Offline (``HF_HUB_OFFLINE=1`` or no route to the hub) only a cached copy is used;
    without one this fails at once (no retry loop) and says to pass a local file.
    """
    import open_clip  # noqa: PLC0415

    offline = _env_offline() or not _network_reachable()
    saved = os.environ.get("HF_HUB_OFFLINE")
    try:
        if offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
            try:  # huggingface_hub reads the variable at import: patch its constant too
                import huggingface_hub.constants as hf_constants  # noqa: PLC0415

                old_const = hf_constants.HF_HUB_OFFLINE
                hf_constants.HF_HUB_OFFLINE = True
            except Exception:
                hf_constants = None
        try:
            if offline:  # open_clip logs the failed download at ERROR before raising: the error below says it
                logging.disable(logging.ERROR)
            try:
                model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu, device="cpu")
            finally:
                if offline:
                    logging.disable(logging.NOTSET)
        except Exception as exc:
            if offline:
                raise PretrainedUnavailableError(
                    f"model.clip_pretrained={tag!r} for {arch} needs a download from the model hub, but this "
                    f"machine is offline (HF_HUB_OFFLINE set or hub unreachable) and no cached copy exists. "
                    f"Pass a local file instead: model.clip_pretrained=/path/to/{arch}.pt (an open_clip/OpenAI "
                    f"state dict or TorchScript file; docs/training.md), or model.clip_pretrained=null for "
                    f"random init ({type(exc).__name__})"
                ) from exc
            raise
        finally:
            if offline and hf_constants is not None:
                hf_constants.HF_HUB_OFFLINE = old_const
    finally:
        if offline:
            if saved is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = saved
    sd = model.state_dict() if full else model.visual.state_dict()
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


# ---------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------

def _is_plain_block(block: nn.Module) -> bool:
    return (
        isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
        and isinstance(getattr(block, "ls_1", None), nn.Identity)
        and isinstance(getattr(block, "ls_2", None), nn.Identity)
        and not hasattr(block, "ln_1_kv")
        and block.attn._qkv_same_embed_dim
        and block.attn.in_proj_bias is not None
        and list(block.mlp._modules) == ["c_fc", "gelu", "c_proj"]
    )


def frozen_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One CLIP residual attention block on batch-first tokens ``x: [B, L, C]`` (docs/model.md §3).

    ``z <- z + MHA(LN1(z)); z <- z + c_proj(act(c_fc(LN2(z))))`` with the block's own
    parameters and activation (QuickGELU for OpenAI weights), attention through
    :func:`tdsk.ops.attention.attention` (counted by the FLOP counter, no
    probability matrix kept).
    """
    if not _is_plain_block(block):
        return block(x)
    attn = block.attn
    b, length, width = x.shape
    heads = attn.num_heads
    h = block.ln_1(x)
    # ``in_proj`` is a module only on a weight-quantised copy (tdsk.models.quantize): the
    # fused q/k/v projection is a bare parameter of nn.MultiheadAttention otherwise
    in_proj = getattr(attn, "in_proj", None)
    qkv = in_proj(h) if in_proj is not None else F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(b, length, 3, heads, width // heads)
    o = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    x = x + attn.out_proj(o.reshape(b, length, width))
    return x + block.mlp(block.ln_2(x))


class FrozenCLIPEncoder(nn.Module):
    """Frozen open_clip ViT; ``forward(frames[B*T, 3, H, W]) -> [z_1 .. z_L]``, each ``[B*T, N+1, C]``.

    Args:
        arch: open_clip model name (``ViT-B-16``, ``ViT-L-14``, ...) or a tdsk tiny ViT.
        pretrained: tag, local file path, or ``None`` (random init, logged).
        quick_gelu: build the blocks with QuickGELU (OpenAI weights).
        image_size: input size; default the architecture's.
        keep_head: keep ``ln_post`` and ``proj`` (the mean-pool baseline uses them).
    """

    def __init__(self, arch: str, pretrained: Optional[str] = None, quick_gelu: bool = True,
                 image_size: Optional[int] = None, keep_head: bool = False):
        super().__init__()
        from open_clip.model import _build_vision_tower  # noqa: PLC0415

        cfg = vision_config(arch)
        vcfg = cfg["vision_cfg"]
        if image_size is not None:
            vcfg["image_size"] = image_size
        tower = _build_vision_tower(cfg["embed_dim"], vcfg, quick_gelu=quick_gelu)
        self.arch = arch
        self.image_size = int(vcfg["image_size"])
        self.patch_size = int(vcfg["patch_size"])
        self.width = int(vcfg["width"])
        self.layers = int(vcfg["layers"])
        self.embed_dim = int(cfg["embed_dim"])
        self.conv1 = tower.conv1
        self.class_embedding = tower.class_embedding
        self.positional_embedding = tower.positional_embedding
        self.ln_pre = tower.ln_pre
        self.transformer = tower.transformer
        self.keep_head = keep_head
        if keep_head:
            self.ln_post = tower.ln_post
            self.proj = tower.proj
        if self.conv1.bias is not None:
            raise ValueError(f"{arch}: patch embedding with a bias is not supported")
        if pretrained is None:
            log_once(f"clip-random-{arch}", f"frozen CLIP {arch}: random initialisation (clip_pretrained=None)",
                     logging.INFO)
        else:
            self.load_pretrained(pretrained, quick_gelu)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    # The frozen tower is always in eval mode (there is no BN/dropout in it, but a
    # caller's model.train() must not change that promise).
    def train(self, mode: bool = True):
        return super().train(False)

    def load_pretrained(self, pretrained: str, quick_gelu: bool = True) -> None:
        if os.path.exists(str(pretrained)):
            sd = load_clip_visual_state_dict(str(pretrained))
            source = f"file {pretrained}"
        else:
            if os.sep in str(pretrained) or str(pretrained).endswith((".pt", ".pth", ".bin", ".safetensors")):
                raise FileNotFoundError(f"clip_pretrained: no such file {pretrained!r}")
            sd = _pretrained_tag_state_dict(self.arch, str(pretrained), quick_gelu)
            source = f"open_clip tag {pretrained!r}"
        own = self.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise ValueError(
                f"CLIP weights from {source} lack {len(missing)} tensors of {self.arch}, e.g. {missing[:5]}"
            )
        bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"CLIP weights from {source} do not fit {self.arch} (image size {self.image_size}): "
                + "; ".join(f"{k}: file {s} vs model {m}" for k, s, m in bad[:5])
            )
        self.load_state_dict({k: sd[k] for k in own}, strict=True)
        logger.info("frozen CLIP %s: weights from %s", self.arch, source)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + position embedding + ln_pre: ``[B*T, N+1, C]``."""
        x = self.conv1(frames)
        x = x.flatten(2).transpose(1, 2)  # row-major patch order n = i*g + j
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, frames: torch.Tensor, tap_dtype: Optional[torch.dtype] = None) -> List[torch.Tensor]:
        """All block outputs ``z_1 .. z_L`` (``[B*T, N+1, C]`` each), computed without autograd.

        ``tap_dtype``: dtype the taps are stored in; default the autocast dtype when
        autocast is on for ``frames``' device, else ``frames.dtype``.
        """
        if tap_dtype is None:
            tap_dtype = autocast_dtype(frames.device) or frames.dtype
        taps = []
        with torch.no_grad():
            x = self.embed(frames)
            for block in self.transformer.resblocks:
                x = frozen_block_forward(block, x)
                taps.append(x.to(tap_dtype))
        return taps

    def image_features(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding ``proj(ln_post(z_L[:, 0]))`` (needs ``keep_head=True``)."""
        with torch.no_grad():
            x = self.embed(frames)
            for block in self.transformer.resblocks:
                x = frozen_block_forward(block, x)
            x = self.ln_post(x[:, 0])
            return x @ self.proj.to(x.dtype) if self.proj is not None else x
