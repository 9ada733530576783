"""``build_model``: model configs as data (``tdsk/configs/<name>.yaml``, section ``model:``).

Keys of the ``model:`` section (defaults in :data:`MODEL_DEFAULTS`):

===================  ==========================================================================
``variant``          ``tds_clip`` (default) or ``baseline`` (frozen-CLIP mean-pool + linear head)
``arch``             open_clip ViT name (``ViT-B-16``, ``ViT-L-14``, ``ViT-B-32`` ...) or a tdsk
                     tiny ViT (``tdsk-ViT-Tiny-16``, ``tdsk-ViT-Demo-8``)
``clip_pretrained``  open_clip tag (``openai``), local file path, or ``null`` (random init)
``quick_gelu``       build the frozen blocks with QuickGELU (OpenAI weights)
``num_classes``      ``K``
``num_segments``     ``T`` (8 in the official recipes)
``num_local``        ``M`` local frames per segment (5; 1 = SME-Adapter off; odd)
``input_size``       crop size (224)
``side_dim``         side width ``D`` (320 for B, 512 for L); ``D // 64`` heads
``td_variant``       ``pool`` (paper) | ``conv`` | ``direct`` | ``none``
``td_layers``        layers with a TD-Adapter: ``all``, ``"1-6"``, ``"7-12"``, or a list (1-based)
``td_reduction``     TD-Adapter bottleneck ``R = D // td_reduction`` (16)
``pool_kernel``      temporal max-pool window ``k`` (3; 5, 7 in the ablation)
``td_channel_mix``   ``q = (1-a) delta + a mean_c(delta)`` (0.5)
``fusion_alpha``     ``S0 = BN(Conv(V)) + alpha BN(Conv(Delta))`` (0.5)
``sme_mode``         ``kernel`` | ``folded`` (same numbers and checkpoint keys)
``side_checkpoint``  ``false`` | ``true`` (two segments of L/2 layers) | layers per segment
``recompute_cheap``  with ``side_checkpoint`` off: run each side layer's tap + temporal branch and
                     its MLP as recompute segments (``true``, default: ~0.38x the official
                     training memory); ``false`` saves their activations (faster for tiny models)
===================  ==========================================================================
"""
import copy
import dataclasses
import os
from typing import Dict, List, Union

import torch.nn as nn

from tdsk.models.video import parse_td_layers
from tdsk.schema import ConfigError, ModelConfig, check_section

__all__ = ["MODEL_DEFAULTS", "build_model", "list_models", "model_config", "parse_td_layers"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Defaults and types live in one place, the recipe schema (tdsk.schema.ModelConfig).
MODEL_DEFAULTS: Dict = dataclasses.asdict(ModelConfig())


def list_models() -> List[str]:
    """Names of the shipped configs (``tdsk/configs/*.yaml``): :func:`tdsk.config.available_configs`."""
    from tdsk.config import available_configs  # noqa: PLC0415  (import tdsk.models stays free of it)

    return available_configs()


def _read_yaml(path: str) -> Dict:
    """The ``model:`` section of a recipe file, its ``_base_`` chain resolved."""
    from tdsk.config import read_recipe  # noqa: PLC0415

    data = read_recipe(path)
    if "model" not in data:
        raise ValueError(f"{path}: no 'model:' section")
    return data["model"]


def model_config(name_or_config: Union[str, Dict], **overrides) -> Dict:
    """The complete, validated model section for a config name, a YAML path or a dict.

    A dict may be the ``model:`` section itself or a whole config holding one.
    """
    if isinstance(name_or_config, dict):
        section = name_or_config.get("model", name_or_config)
        if not isinstance(section, dict):
            raise TypeError("build_model: the 'model' entry of the config must be a mapping")
        section = copy.deepcopy(section)
    elif isinstance(name_or_config, str):
        if os.path.isfile(name_or_config):
            section = _read_yaml(name_or_config)
        else:
            path = os.path.join(CONFIG_DIR, f"{name_or_config}.yaml")
            if not os.path.isfile(path):
                raise ValueError(f"unknown model config {name_or_config!r}; known: {list_models()} "
                                 "(or pass a YAML path / a dict)")
            section = _read_yaml(path)
    else:
        raise TypeError(f"build_model: expected a config name, path or dict, got {type(name_or_config).__name__}")
    section.update(overrides)
    unknown = sorted(set(section) - set(MODEL_DEFAULTS))
    try:
        return dataclasses.asdict(check_section(ModelConfig, section, "model"))
    except ConfigError as exc:
        if unknown:  # name every unknown key, not only the first
            raise ConfigError(f"unknown model config keys {unknown}: {exc}") from None
        raise


def build_model(name_or_config: Union[str, Dict], **overrides) -> nn.Module:
    """Build a TDS-CLIP model (or the mean-pool baseline) from a config.

    Args:
        name_or_config: a config name (``ssv1_b16``, ``ssv1_l14``, ``ssv2_b16``,
            ``ssv2_l14``, ``k400_b16``, ``k400_l14``, ``demo``, ``tiny``), a YAML path,
            or a dict (the ``model:`` section or a whole config).
        **overrides: model-section keys (see the module doc), e.g.
            ``clip_pretrained=None``, ``side_checkpoint=True``, ``variant='baseline'``.

    Returns:
        :class:`~tdsk.models.tds_clip.TDSCLIP` or :class:`~tdsk.models.baseline.MeanPoolCLIP`,
        in train mode, with the frozen tower's parameters ``requires_grad=False``.
    """
    from tdsk.models.baseline import MeanPoolCLIP  # noqa: PLC0415
    from tdsk.models.clip_encoder import vision_config  # noqa: PLC0415
    from tdsk.models.tds_clip import TDSCLIP  # noqa: PLC0415

    cfg = model_config(name_or_config, **overrides)
    if cfg["variant"] == "baseline":
        return MeanPoolCLIP(cfg)
    parse_td_layers(cfg["td_layers"], int(vision_config(cfg["arch"])["vision_cfg"]["layers"]))  # validate early
    return TDSCLIP(cfg)
