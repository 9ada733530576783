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
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

from tdsk.models.video import parse_td_layers
from tdsk.schema import ConfigError, ModelConfig, check_model_section, model_schema

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
    known = [f.name for f in dataclasses.fields(model_schema(section.get("variant", "tds_clip")))]
    unknown = sorted(set(section) - set(known))
    try:
        return dataclasses.asdict(check_model_section(section, "model"))
    except ConfigError as exc:
        if unknown:  # name every unknown key, not only the first
            raise ConfigError(f"unknown model config keys {unknown}: {exc}") from None
        raise


def _recipe_class_names(name_or_config) -> Optional[List[str]]:
    """The class names of a whole recipe's ``data.labels`` (``None`` without one)."""
    if isinstance(name_or_config, dict):
        recipe = name_or_config
    elif isinstance(name_or_config, str):
        from tdsk.config import read_recipe  # noqa: PLC0415

        path = name_or_config if os.path.isfile(name_or_config) else os.path.join(CONFIG_DIR, f"{name_or_config}.yaml")
        recipe = read_recipe(path) if os.path.isfile(path) else {}
    else:
        return None
    labels = (recipe.get("data") or {}).get("labels") if isinstance(recipe.get("data"), dict) else None
    if not labels:
        return None
    from tdsk.data.labels import read_labels  # noqa: PLC0415

    return list(read_labels(os.path.expanduser(str(labels))))


def build_model(name_or_config: Union[str, Dict], class_names: Optional[Sequence[str]] = None,
                **overrides) -> nn.Module:
    """Build a model of the family ``model.variant`` names (:mod:`tdsk.models.registry`).

    Args:
        name_or_config: a config name (``ssv1_b16``, ``ssv2_dist_b16``, ``tiny`` ...: see
            :func:`list_models`), a YAML path, or a dict (the ``model:`` section or a whole
            config).
        class_names: the class names, in label order (a text-classifier family such as DiST
            needs them; default: the recipe's ``data.labels`` when a whole recipe is given).
        **overrides: model-section keys (see the module doc), e.g.
            ``clip_pretrained=None``, ``side_checkpoint=True``, ``variant='baseline'``.

    Returns:
        the family's model (:class:`~tdsk.models.tds_clip.TDSCLIP`,
        :class:`~tdsk.models.baseline.MeanPoolCLIP`, :class:`~tdsk.models.dist.DiST` ...), in
        train mode, with the frozen tower's parameters ``requires_grad=False``.
    """
    from tdsk.models.registry import family  # noqa: PLC0415

    cfg = model_config(name_or_config, **overrides)
    fam = family(cfg["variant"])
    if class_names is None and fam.needs_class_names is not None and fam.needs_class_names(cfg):
        class_names = _recipe_class_names(name_or_config)
    if class_names is not None and cfg.get("num_classes") is None:
        cfg["num_classes"] = len(class_names)
    return fam.build(cfg, class_names)
