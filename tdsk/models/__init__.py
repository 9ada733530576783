"""TDS-CLIP and its relatives: a frozen open_clip ViT + a small trainable network.

Families (``model.variant``, :mod:`~tdsk.models.registry`): ``tds_clip`` (TDS-CLIP),
``baseline`` (frozen-CLIP mean-pool), ``dist`` (DiST, :mod:`~tdsk.models.dist`,
docs/dist.md). ``families()`` lists them.

Public API
----------
``build_model(name_or_config, **overrides) -> nn.Module``
    ``name_or_config``: ``ssv1_b16``, ``ssv1_l14``, ``ssv2_b16``, ``ssv2_l14``,
    ``k400_b16``, ``k400_l14``, ``demo``, ``tiny`` (``tdsk/configs/<name>.yaml``,
    section ``model:``), a YAML path, or a dict. Overrides are model-section keys
    (see :mod:`tdsk.models.factory`), e.g. ``clip_pretrained=None`` (random CLIP),
    ``side_checkpoint=True``, ``variant='baseline'`` (frozen-CLIP mean-pool).
``model(video)``
    ``video: Tensor[B, T, M, 3, H, W]`` normalised with CLIP mean/std (or the official
    ``Tensor[B*T, M*3, H, W]``) -> logits ``Tensor[B, K]``. Attributes
    ``num_segments``, ``num_local``, ``num_classes``; ``model.trainable_parameters()``
    (the frozen tower has ``requires_grad=False``).
``load_checkpoint(model, path)``
    official TDS-CLIP training checkpoints or tdsk's own (``model.state_dict()``),
    strict, read with ``weights_only=True``.
``export_official(model, path)``
    writes the official ``{'epoch', 'model_state_dict'}`` format.
``save_pretrained(model, folder, labels=None, recipe=None, include_clip=True, card=None)`` / ``from_pretrained(folder)``
    model folders (``config.json`` + ``model.safetensors`` + ``labels.txt`` + ``README.md``),
    loaded with no pickle (:mod:`~tdsk.models.pretrained`); ``load_pretrained(folder)``
    also returns the recipe and the class names.

Components (one module per paper part): :mod:`~tdsk.models.clip_encoder` (frozen
ViT), :mod:`~tdsk.models.sme_adapter`, :mod:`~tdsk.models.td_adapter`,
:mod:`~tdsk.models.tds_block` (+ CLS shift, side attention),
:mod:`~tdsk.models.side_network`, :mod:`~tdsk.models.tds_clip`,
:mod:`~tdsk.models.baseline`, :mod:`~tdsk.models.official` (the official checkpoint
format); shared by the models: :mod:`~tdsk.models.video` (input layout, base class) and
:mod:`~tdsk.models._common` (recompute segments, BatchNorm). Checkpoint file I/O is
:mod:`tdsk._checkpoint_io`.
"""
from tdsk.models import families as _families  # noqa: F401  (registers tds_clip, baseline, dist)
from tdsk.models.clip_encoder import register_vit_config
from tdsk.models.factory import MODEL_DEFAULTS, build_model, list_models, model_config
from tdsk.models.official import export_official, load_checkpoint, official_key_map, official_state_dict
from tdsk.models.pretrained import from_pretrained, is_model_folder, load_pretrained, save_pretrained
from tdsk.models.registry import families, family_of, logits_of

__all__ = [
    "build_model",
    "load_checkpoint",
    "export_official",
    "official_state_dict",
    "official_key_map",
    "model_config",
    "list_models",
    "MODEL_DEFAULTS",
    "register_vit_config",
    "save_pretrained",
    "from_pretrained",
    "load_pretrained",
    "is_model_folder",
    "families",
    "family_of",
    "logits_of",
]
