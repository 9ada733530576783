"""One schema for the whole recipe: a dataclass per section, defaults in one place.

A recipe (see :mod:`tdsk.config`) has the sections ``model``, ``data``, ``solver``,
``train``, ``eval`` and ``output``. Each is described here (``data`` by
:class:`DataConfig`, also importable as ``tdsk.data.DataConfig``). :func:`validate_recipe`
checks every key of every section when a run starts, before anything is built:

* unknown keys are errors that name the closest valid keys (a YAML typo such as
  ``solver: {epoch: 1}`` must not train with the default number of epochs);
* each value has the type of its field (``solver.lr=abc``, ``train.batch_size=2.5`` and
  ``data.num_segments=4.0`` are refused; an int is accepted where a float is expected);
* ranges and choices are checked with the key named.

This module imports nothing else from tdsk, so every part of the package may use it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "ConfigError",
    "CommonModelConfig",
    "ModelConfig",
    "DiSTConfig",
    "MSTAConfig",
    "M2CLIPConfig",
    "register_model_schema",
    "model_schema",
    "model_variants",
    "check_model_section",
    "DataConfig",
    "SS_FLIP_LABEL_PAIRS",
    "label_swap",
    "SolverConfig",
    "TrainConfig",
    "EvalConfig",
    "OutputConfig",
    "SECTIONS",
    "check_section",
    "section_keys",
    "validate_recipe",
    "closest_keys",
]


class ConfigError(ValueError):
    """A recipe name, file, key or value that cannot be used (the message names the key)."""


# ----------------------------------------------------------------------------- sections

@dataclass
class CommonModelConfig:
    """The ``model:`` keys every family shares: which family, which frozen CLIP, the clip shape.

    A family adds its own keys in a subclass registered with :func:`register_model_schema`
    (:class:`ModelConfig` for ``tds_clip`` and ``baseline``, :class:`DiSTConfig` for
    ``dist``). The ``variant`` key chooses the subclass that checks the section.
    """

    variant: str = "tds_clip"
    arch: str = "ViT-B-16"
    clip_pretrained: Optional[str] = "openai"
    quick_gelu: bool = True
    num_classes: Optional[int] = 174  # null: the number of names in data.labels
    num_segments: int = 8
    num_local: int = 5
    input_size: int = 224

    def validate(self, prefix: str = "model") -> None:
        _choice(prefix, "variant", self.variant, tuple(model_variants()))
        for key in ("num_segments", "input_size"):
            _at_least(prefix, key, getattr(self, key), 1)
        if self.num_classes is not None:
            _at_least(prefix, "num_classes", self.num_classes, 1)
        if self.num_local < 1 or self.num_local % 2 == 0:
            raise ConfigError(f"{prefix}.num_local (M) must be odd and >= 1, got {self.num_local}")


@dataclass
class ModelConfig(CommonModelConfig):
    """``model:`` of TDS-CLIP and the mean-pool baseline (read by :func:`tdsk.models.build_model`;
    the keys are documented there)."""

    side_dim: int = 320
    td_variant: str = "pool"
    td_layers: Union[str, List[int]] = "all"
    td_reduction: int = 16
    pool_kernel: int = 3
    td_channel_mix: float = 0.5
    fusion_alpha: float = 0.5
    sme_mode: str = "kernel"
    side_checkpoint: Union[bool, int] = False
    recompute_cheap: bool = True

    def validate(self, prefix: str = "model") -> None:
        super().validate(prefix)
        _choice(prefix, "td_variant", self.td_variant, ("pool", "conv", "direct", "none"))
        _choice(prefix, "sme_mode", self.sme_mode, ("kernel", "folded"))
        for key in ("side_dim", "td_reduction"):
            _at_least(prefix, key, getattr(self, key), 1)
        if self.pool_kernel < 1 or self.pool_kernel % 2 == 0:
            raise ConfigError(f"{prefix}.pool_kernel must be odd and >= 1, got {self.pool_kernel}")
        if not isinstance(self.side_checkpoint, bool) and self.side_checkpoint < 0:
            raise ConfigError(f"{prefix}.side_checkpoint must be a bool or a number of layers >= 0, "
                              f"got {self.side_checkpoint}")
        if isinstance(self.td_layers, list) and any(i < 1 for i in self.td_layers):
            raise ConfigError(f"{prefix}.td_layers: layer numbers are 1-based, got {self.td_layers}")


@dataclass
class DiSTConfig(CommonModelConfig):
    """``model:`` of DiST (defaults: the official B/16 recipe, docs/dist.md)."""

    variant: str = "dist"
    num_segments: int = 16            # T: frames of the temporal encoder
    num_local: int = 1                # DiST takes one frame per segment
    alpha: int = 2                    # the frozen CLIP sees frames 0, alpha, 2*alpha, ...
    temporal_dim: int = 96            # D: width of the temporal encoder
    integration_dim: int = 384        # I: width of the integration branch
    temporal_patch: int = 5           # temporal extent of the stem's Conv3d (k_t, p, p)
    temporal_kernel: int = 3          # temporal kernel of the temporal and integration blocks
    temporal_mlp_ratio: float = 1.0   # temporal block's hidden width / D
    integration_mlp_ratio: float = 1.0            # integration FFN hidden width / I
    integration_temporal_mlp_ratio: float = 0.25  # integration temporal FFN hidden width / I
    pooling_layers: int = 2           # adaptive spatial/temporal pooling blocks (SSv2 2, K400 4)
    classifier: str = "text"          # text (frozen CLIP text embeddings of the class names) | linear
    text_prompt: str = "{}"           # class name -> text; the official recipe uses the bare name
    text_pretrained: Optional[str] = None  # CLIP text tower weights; null: those of clip_pretrained

    def validate(self, prefix: str = "model") -> None:
        super().validate(prefix)
        if self.num_local != 1:
            raise ConfigError(f"{prefix}.num_local must be 1 for model.variant=dist (one frame per segment), "
                              f"got {self.num_local}")
        for key in ("alpha", "temporal_dim", "integration_dim", "temporal_patch", "pooling_layers"):
            _at_least(prefix, key, getattr(self, key), 1)
        if self.integration_dim % 64:
            raise ConfigError(f"{prefix}.integration_dim must be a multiple of 64 (heads of width 64), "
                              f"got {self.integration_dim}")
        for key in ("temporal_patch", "temporal_kernel"):
            if getattr(self, key) < 1 or getattr(self, key) % 2 == 0:
                raise ConfigError(f"{prefix}.{key} must be odd and >= 1, got {getattr(self, key)}")
        if self.num_segments % self.alpha:
            raise ConfigError(f"{prefix}.num_segments={self.num_segments} must be a multiple of "
                              f"{prefix}.alpha={self.alpha} (CLIP sees every alpha-th frame)")
        for key in ("temporal_mlp_ratio", "integration_mlp_ratio", "integration_temporal_mlp_ratio"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{prefix}.{key} must be > 0, got {getattr(self, key)}")
        _choice(prefix, "classifier", self.classifier, ("text", "linear"))
        if "{}" not in self.text_prompt:
            raise ConfigError(f"{prefix}.text_prompt must contain {{}} (where the class name goes), "
                              f"got {self.text_prompt!r}")


@dataclass
class MSTAConfig(CommonModelConfig):
    """``model:`` of MSTA (Chen et al., CVPR 2025; defaults: the released training logs, docs/msta.md)."""

    variant: str = "msta"
    num_segments: int = 8             # frames, each through the adapted CLIP ViT; the video is their mean
    num_local: int = 1                # one frame per segment
    adapter_dim: int = 128            # width of the adapters' bottleneck (and of the shared projection)
    adapter_layers: Union[str, List[int]] = "8-12"   # 1-based blocks with adapters ('8-12', '1-3,7', [8, 9], all)
    text_adapter_layers: Optional[Union[str, List[int]]] = None  # text blocks; null: adapter_layers
    adapter_scale: float = 0.005      # the adapters' output is multiplied by this
    text_prompt: str = "a photo of a {}."   # class name -> text of the adapted text branch
    descriptions: Optional[str] = None      # JSON {class: [sentences]} for the consistency term; null: none
    descriptions_per_class: int = 2   # sentences per class averaged into the frozen description embedding
    consistency_weight: float = 1.0   # weight of (1 - cos(adapted class text, frozen descriptions))
    checkpoint: bool = False          # activation checkpointing in both towers

    def validate(self, prefix: str = "model") -> None:
        super().validate(prefix)
        if self.num_local != 1:
            raise ConfigError(f"{prefix}.num_local must be 1 for model.variant=msta (one frame per segment), "
                              f"got {self.num_local}")
        for key in ("adapter_dim", "descriptions_per_class"):
            _at_least(prefix, key, getattr(self, key), 1)
        if not (self.adapter_scale > 0 and math.isfinite(self.adapter_scale)):
            raise ConfigError(f"{prefix}.adapter_scale must be > 0, got {self.adapter_scale}")
        if not (self.consistency_weight >= 0 and math.isfinite(self.consistency_weight)):
            raise ConfigError(f"{prefix}.consistency_weight must be >= 0, got {self.consistency_weight}")
        if "{}" not in self.text_prompt:
            raise ConfigError(f"{prefix}.text_prompt must contain {{}} (where the class name goes), "
                              f"got {self.text_prompt!r}")


@dataclass
class M2CLIPConfig(CommonModelConfig):
    """``model:`` of M2-CLIP (defaults: the official K400 B/16 "12x384" model, docs/m2clip.md)."""

    variant: str = "m2clip"
    num_segments: int = 8             # T: frames (one per segment)
    num_local: int = 1
    adapter_width: int = 384          # TED-Adapter bottleneck
    adapter_pre_attn: bool = False    # a TED-Adapter before attention too (the SSv2 "24x384" model)
    text_adapter_width: int = 384
    text_adapter_layers: int = 2      # text blocks (+ the decoder block, last) with adapters, from the end
    text_adapter_pre_attn: bool = False
    frame_adapter_width: Optional[int] = None  # null: half the embedding width (the release's)
    text_prompt: str = "A video of {}"
    head_dropout: float = 0.5         # before the linear head
    eval_logits: str = "similarity"   # what the model outputs: similarity (video-text, x100) | fc (linear head)
    mlm: bool = False                 # the cross-modal decoder + MLM loss (off in the release)
    mlm_weight: float = 0.1
    mlm_rate: float = 0.2             # fraction of a prompt's words masked
    checkpoint: bool = False          # activation checkpointing in the frozen towers

    def validate(self, prefix: str = "model") -> None:
        super().validate(prefix)
        if self.num_local != 1:
            raise ConfigError(f"{prefix}.num_local must be 1 for model.variant=m2clip (one frame per segment), "
                              f"got {self.num_local}")
        for key in ("adapter_width", "text_adapter_width"):
            _at_least(prefix, key, getattr(self, key), 1)
        _at_least(prefix, "text_adapter_layers", self.text_adapter_layers, 0)
        if self.frame_adapter_width is not None:
            _at_least(prefix, "frame_adapter_width", self.frame_adapter_width, 1)
        if "{}" not in self.text_prompt:
            raise ConfigError(f"{prefix}.text_prompt must contain {{}} (where the class name goes), "
                              f"got {self.text_prompt!r}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"{prefix}.head_dropout must be in [0, 1), got {self.head_dropout}")
        _choice(prefix, "eval_logits", self.eval_logits, ("similarity", "fc"))
        _at_least(prefix, "mlm_weight", self.mlm_weight, 0.0)
        if not 0.0 < self.mlm_rate <= 1.0:
            raise ConfigError(f"{prefix}.mlm_rate must be in (0, 1], got {self.mlm_rate}")


# variant -> the dataclass that checks its model section: the built-in families' are here
# (one schema for the whole recipe); a family added outside the package registers its own
# (tdsk.models.registry.register_family).
_MODEL_SCHEMAS: Dict[str, type] = {"tds_clip": ModelConfig, "baseline": ModelConfig, "dist": DiSTConfig,
                                   "msta": MSTAConfig, "m2clip": M2CLIPConfig}


def register_model_schema(variant: str, cls: type) -> None:
    """Make ``model.variant: <variant>`` valid, its section checked by ``cls`` (a
    :class:`CommonModelConfig` subclass)."""
    if not (isinstance(cls, type) and issubclass(cls, CommonModelConfig)):
        raise TypeError(f"register_model_schema({variant!r}): {cls!r} is not a CommonModelConfig subclass")
    _MODEL_SCHEMAS[str(variant)] = cls


def model_variants() -> List[str]:
    """Every registered ``model.variant``."""
    return list(_MODEL_SCHEMAS)


def model_schema(variant: Any, section: str = "model") -> type:
    """The dataclass that checks a model section of ``variant``."""
    if variant not in _MODEL_SCHEMAS:
        raise ConfigError(f"{section}.variant={variant!r}: use one of {', '.join(map(str, _MODEL_SCHEMAS))}")
    return _MODEL_SCHEMAS[variant]


def check_model_section(values: Optional[Mapping[str, Any]], section: str = "model", source: str = "") -> Any:
    """:func:`check_section` of a model section with the schema of its ``variant``."""
    variant = (values or {}).get("variant", "tds_clip") if isinstance(values, Mapping) else "tds_clip"
    try:
        cls = model_schema(variant, section)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return check_section(cls, values, section, source)


@dataclass
class SolverConfig:
    """``solver:`` the optimiser and schedule (official recipe, paper Sec. 4.1)."""

    optimizer: str = "adamw"          # adamw (official) | sgd
    lr: float = 1.0e-3                # base lr for the effective batch of 8 GPUs x 16 videos
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    weight_decay: float = 0.15
    momentum: float = 0.9             # sgd only
    clip_ratio: float = 1.0           # lr factor of the "clip" group
    epochs: int = 40
    warmup_epochs: float = 0.0        # official recipes: 4
    schedule: str = "cosine"          # cosine (after warm-up) | cosine_full (over all epochs) | constant
    final_lr_factor: float = 0.0
    lr_step_every: int = 10           # LR updated at iteration 0 and every n-th iteration
    label_smoothing: float = 0.1
    grad_accumulation: int = 1
    grad_clip: Optional[float] = None

    def validate(self, prefix: str = "solver") -> None:
        _choice(prefix, "optimizer", self.optimizer, ("adamw", "sgd"))
        _choice(prefix, "schedule", self.schedule, ("cosine", "cosine_full", "constant"))
        _positive(prefix, "lr", self.lr)
        _positive(prefix, "eps", self.eps)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{prefix}.betas must be two numbers in [0, 1), got {self.betas}")
        for key in ("weight_decay", "momentum", "clip_ratio", "warmup_epochs", "final_lr_factor"):
            _at_least(prefix, key, getattr(self, key), 0.0)
        _at_least(prefix, "epochs", self.epochs, 1)
        _at_least(prefix, "lr_step_every", self.lr_step_every, 1)
        _at_least(prefix, "grad_accumulation", self.grad_accumulation, 1)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{prefix}.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None:
            _positive(prefix, "grad_clip", self.grad_clip)


PRECISIONS = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
              "half": "fp16", "amp": "fp16", "fp32": "fp32", "float32": "fp32"}


@dataclass
class TrainConfig:
    """``train:`` how the loop runs."""

    batch_size: int = 16              # videos per GPU (x data.num_sample clips)
    precision: str = "auto"           # auto | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    seed: int = 1024                  # torch/numpy seed = seed + rank (official)
    sync_bn: bool = False
    find_unused_parameters: bool = False
    deterministic: bool = False
    num_workers: Optional[int] = None  # null = data.num_workers
    log_every: int = 10
    tensorboard: bool = True
    limit_train_batches: Optional[int] = None
    init_from: Optional[str] = None    # fine-tune: tdsk / official checkpoint or model folder (weights only)
    freeze: List[str] = field(default_factory=list)  # module-name prefixes kept fixed, e.g. [side.sme]

    def validate(self, prefix: str = "train") -> None:
        _at_least(prefix, "batch_size", self.batch_size, 1)
        _at_least(prefix, "log_every", self.log_every, 1)
        _at_least(prefix, "seed", self.seed, 0)
        if self.precision.lower() not in PRECISIONS:
            raise ConfigError(f"{prefix}.precision={self.precision!r}: use auto, bf16, fp16 or fp32")
        dev = self.device.lower()
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"{prefix}.device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.num_workers is not None:
            _at_least(prefix, "num_workers", self.num_workers, 0)
        if self.limit_train_batches is not None:
            _at_least(prefix, "limit_train_batches", self.limit_train_batches, 1)


@dataclass
class EvalConfig:
    """``eval:`` in-training validation and the test protocol."""

    validate: bool = True
    skip_epochs: List[int] = field(default_factory=list)  # 0-based; the last epoch always validates
    batch_size: Optional[int] = None  # null = train.batch_size
    limit_val_batches: Optional[int] = None
    views: List[int] = field(default_factory=lambda: [3, 2])  # crops x clips
    test_batch_size: int = 4
    clip_seconds: float = 4.0  # timeline/stream: seconds one window covers (about a training clip)

    def validate_values(self, prefix: str = "eval") -> None:
        if self.batch_size is not None:
            _at_least(prefix, "batch_size", self.batch_size, 1)
        if self.limit_val_batches is not None:
            _at_least(prefix, "limit_val_batches", self.limit_val_batches, 1)
        _at_least(prefix, "test_batch_size", self.test_batch_size, 1)
        if len(self.views) != 2 or self.views[0] not in (1, 3) or self.views[1] < 1:
            raise ConfigError(f"{prefix}.views must be [crops, clips] with crops 1 or 3 and clips >= 1, "
                              f"got {self.views}")
        if not (0 < float(self.clip_seconds) <= 1e6):
            raise ConfigError(f"{prefix}.clip_seconds must be in (0, 1e6] seconds, got {self.clip_seconds}")
        if any(e < 0 for e in self.skip_epochs):
            raise ConfigError(f"{prefix}.skip_epochs are 0-based epoch numbers, got {self.skip_epochs}")


@dataclass
class OutputConfig:
    """``output:`` the run directory and what is kept in it."""

    dir: str = "runs/{name}"          # {name} = recipe name
    keep_last: int = 3                # epoch checkpoints kept (best.pt is extra); 0 = keep all
    save_best: bool = True
    plot: bool = True
    checkpoint_every: Optional[int] = None  # also checkpoint every N iterations inside an epoch

    def validate(self, prefix: str = "output") -> None:
        _at_least(prefix, "keep_last", self.keep_last, 0)
        if self.checkpoint_every is not None:
            _at_least(prefix, "checkpoint_every", self.checkpoint_every, 1)
        try:
            self.dir.format(name="x")
        except (IndexError, KeyError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{prefix}.dir={self.dir!r}: only {{name}} may be substituted ({exc})") from None


SECTIONS: Dict[str, Any] = {
    "model": ModelConfig,
    "data": None,  # DataConfig, below (filled in after its definition)
    "solver": SolverConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
}


def _section_class(section: str):
    return SECTIONS[section]


def section_keys(section: str) -> List[str]:
    """The keys a section accepts (``model``: the keys of every registered family; the
    recipe's ``model.variant`` decides which of them it may use)."""
    if section == "model":
        return list(dict.fromkeys(f.name for cls in _MODEL_SCHEMAS.values() for f in dataclasses.fields(cls)))
    return [f.name for f in dataclasses.fields(_section_class(section))]


# ----------------------------------------------------------------------------- data

# CLIP's normalisation statistics (docs/model.md §2).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SS_FLIP_LABEL_PAIRS = ((86, 87), (93, 94), (166, 167))


def label_swap(pairs: Sequence[Sequence[int]]) -> Dict[int, int]:
    """``{a: b, b: a}`` for each pair: the label a horizontally flipped clip of class ``a`` gets."""
    swap: Dict[int, int] = {}
    for a, b in pairs:
        swap[int(a)] = int(b)
        swap[int(b)] = int(a)
    return swap


@dataclass
class DataConfig:
    dataset: str = "sth"
    format: str = "auto"
    root: str = ""
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    labels: Optional[str] = None      # class names: labels.txt or index,name CSV (sets model.num_classes)
    layout: str = "lists"             # lists | folders (<list key> names a folder of <class>/<video>)
    template: str = "{:05d}.jpg"
    num_segments: int = 8
    num_local: int = 5
    input_size: int = 224
    resize: Union[int, List[int]] = field(default_factory=lambda: [256, 320])
    num_sample: int = 2
    rand_augment: Optional[str] = "rand-m7-n4-mstd0.5-inc1"
    flip: str = "sth"
    flip_label_pairs: List[List[int]] = field(default_factory=lambda: [list(p) for p in SS_FLIP_LABEL_PAIRS])
    grayscale_p: float = 0.0
    min_frames: int = 8
    kinetics_wrap: bool = False
    decoder: str = "auto"
    num_workers: int = 8
    decode_threads: int = 1
    test_crops: int = 3
    test_clips: int = 2
    max_bad_fraction: float = 0.05
    drop_last: bool = True
    mean: List[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: List[float] = field(default_factory=lambda: list(CLIP_STD))
    # batch mixup / cutmix of training clips (tdsk.data.mixup; off by default, DiST: 0.8 / 1.0)
    mixup_alpha: float = 0.0          # Beta(a, a) mixing weight; 0 = off
    cutmix_alpha: float = 0.0         # Beta(a, a) box area; 0 = off
    mixup_prob: float = 1.0           # chance that a batch is mixed at all
    mixup_switch_prob: float = 0.5    # with both on: chance of cutmix instead of mixup
    # evaluation protocols (tdsk.data.protocols, docs/protocols.md)
    few_shot: Optional[int] = None    # train on K clips per class of train_list (chosen from few_shot_seed)
    few_shot_seed: int = 0
    class_subset: str = "all"         # all | base | novel: the lists keep these classes of data.labels, re-indexed
    base_classes: Optional[str] = None  # file naming the base classes (else: class_split_seed + base_fraction)
    base_fraction: float = 0.5        # share of data.labels drawn as base classes
    class_split_seed: int = 0

    @classmethod
    def from_dict(cls, cfg: Union[None, Dict[str, Any], "DataConfig"]) -> "DataConfig":
        """Build from a ``data:`` mapping; unknown keys and wrong types are a
        :class:`~tdsk.schema.ConfigError` naming the key (they are usually typos)."""
        if isinstance(cfg, DataConfig):
            return cfg
        cfg = dict(cfg or {})
        if "data" in cfg and isinstance(cfg["data"], dict):  # a whole recipe was passed
            cfg = dict(cfg["data"])
        return check_section(cls, cfg, "data")

    def validate(self, prefix: str = "data") -> None:
        def check(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}.{key} {msg}")

        check(self.dataset in ("sth", "kinetics"), "dataset", f"must be sth or kinetics, got {self.dataset!r}")
        check(self.format in ("auto", "frames", "video"), "format", f"must be auto, frames or video, got {self.format!r}")
        check(self.flip in ("sth", "plain", "none"), "flip", f"must be sth, plain or none, got {self.flip!r}")
        check(self.decoder in ("auto", "dali", "pyav"), "decoder", f"must be auto, dali or pyav, got {self.decoder!r}")
        check(self.layout in ("lists", "folders"), "layout", f"must be lists or folders, got {self.layout!r}")
        for key in ("num_segments", "num_local", "num_sample", "input_size", "test_clips", "decode_threads"):
            check(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.min_frames >= 0, "min_frames", f"must be >= 0, got {self.min_frames}")
        check(self.test_crops in (1, 3), "test_crops", f"must be 1 or 3, got {self.test_crops}")
        check(0.0 <= self.max_bad_fraction <= 1.0, "max_bad_fraction", f"must be in [0, 1], got {self.max_bad_fraction}")
        check(0.0 <= self.grayscale_p <= 1.0, "grayscale_p", f"must be in [0, 1], got {self.grayscale_p}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            check(getattr(self, key) >= 0.0, key, f"must be >= 0 (0 = off), got {getattr(self, key)}")
        for key in ("mixup_prob", "mixup_switch_prob"):
            check(0.0 <= getattr(self, key) <= 1.0, key, f"must be in [0, 1], got {getattr(self, key)}")
        check(self.few_shot is None or self.few_shot >= 1, "few_shot",
              f"must be >= 1 clips per class (or null: every clip), got {self.few_shot}")
        check(self.class_subset in ("all", "base", "novel"), "class_subset",
              f"must be all, base or novel, got {self.class_subset!r}")
        check(0.0 < self.base_fraction < 1.0, "base_fraction", f"must be in (0, 1), got {self.base_fraction}")
        check(self.class_subset == "all" or self.labels is not None or self.layout == "folders", "class_subset",
              f"={self.class_subset} needs data.labels (the names of all classes, which the split divides)")
        check(len(self.mean) == 3, "mean", f"must be 3 numbers (R, G, B), got {self.mean}")
        check(len(self.std) == 3 and all(s > 0 for s in self.std), "std",
              f"must be 3 positive numbers (R, G, B; each pixel is divided by them), got {self.std}")
        seen: Dict[int, int] = {}
        for i, pair in enumerate(self.flip_label_pairs):
            check(len(pair) == 2 and min(pair) >= 0 and pair[0] != pair[1], f"flip_label_pairs[{i}]",
                  f"must be a pair of two different class indices >= 0, got {pair}")
            for c in pair:
                # a class in two pairs would get two flipped labels: the later pair silently wins
                check(c not in seen, f"flip_label_pairs[{i}]",
                      f"class {c} is already in flip_label_pairs[{seen.get(c)}]; pairs must not overlap")
                seen[c] = i
        if isinstance(self.resize, list):
            check(len(self.resize) == 2, "resize", f"must be [H, W] or an int, got {self.resize}")
            check(min(self.resize) >= self.input_size, "resize", f"{self.resize} is smaller than input_size {self.input_size}")
        else:
            check(self.resize >= self.input_size, "resize", f"{self.resize} is smaller than input_size {self.input_size}")
        try:
            self.template.format(1)
        except (IndexError, KeyError, ValueError) as exc:
            raise ConfigError(f"{prefix}.template: bad frame template {self.template!r}: {exc}") from None

    @property
    def resize_size(self) -> Union[int, Tuple[int, int]]:
        return tuple(self.resize) if isinstance(self.resize, (list, tuple)) else int(self.resize)

    @property
    def label_swap(self) -> Dict[int, int]:
        return label_swap(self.flip_label_pairs)

    def list_for(self, split: str) -> Optional[str]:
        return {"train": self.train_list, "val": self.val_list, "test": self.test_list}[split]


SECTIONS["data"] = DataConfig


# ----------------------------------------------------------------------------- checking

def closest_keys(key: str, valid: List[str], n: int = 3) -> List[str]:
    """Closest valid keys to a typo: the same leaf in another section first, then by spelling."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == leaf and k != key]
    close = same_leaf + [k for k in difflib.get_close_matches(key, valid, n=n + 1, cutoff=0.6) if k not in same_leaf]
    if not close:
        close = difflib.get_close_matches(key, valid, n=n, cutoff=0.3)
    return close[:n]


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in args)
        return names + (" or null" if type(None) in typing.get_args(tp) else "")
    if origin in (list, List):
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}s"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp, key: str, in_union: bool = False) -> Any:
    """``value`` as type ``tp`` or a :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Union:
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, option, key, in_union=True)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin in (list, List):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and not in_union:
            return str(value)  # a name or path that YAML read as a number (data.root=2024)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")


def check_section(cls, values: Optional[Mapping[str, Any]], section: str, source: str = "") -> Any:
    """Build ``cls`` from ``values``: unknown keys and wrong types are :class:`ConfigError`.

    ``section`` names the section in messages (``solver`` -> ``solver.lr``); ``source``
    (a file name) is prefixed when given. Range checks are the class's ``validate``.
    """
    where = f"{source}: " if source else ""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}section {section!r} must be a mapping of key: value, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        key = f"{section}.{unknown[0]}"
        close = closest_keys(key, [f"{section}.{n}" for n in names])
        hint = f" Closest valid keys: {', '.join(close)}." if close else ""
        raise ConfigError(f"{where}unknown config key {key!r}.{hint} Valid {section} keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - a missing required field
        raise ConfigError(f"{where}{section}: {exc}") from None
    check = getattr(obj, "validate_values", None) or getattr(obj, "validate", None)
    if check is not None:
        try:
            check(section)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    return obj


def _choice(prefix: str, key: str, value: Any, options) -> None:
    if value not in options:
        raise ConfigError(f"{prefix}.{key}={value!r}: use one of {', '.join(map(str, options))}")


def _at_least(prefix: str, key: str, value: Any, low) -> None:
    if value < low:
        raise ConfigError(f"{prefix}.{key} must be >= {low}, got {value}")


def _positive(prefix: str, key: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(f"{prefix}.{key} must be > 0, got {value}")


@dataclass
class Recipe:
    """A validated recipe: one typed object per section (``data`` is a DataConfig)."""

    model: Any  # the variant's model schema (a CommonModelConfig)
    data: Any
    solver: SolverConfig
    train: TrainConfig
    eval: EvalConfig
    output: OutputConfig


def validate_recipe(cfg: Mapping[str, Any], source: str = "") -> Recipe:
    """Check every section of a recipe (see the module docstring); returns the typed :class:`Recipe`.

    Keys starting with ``_`` at the top level (``_meta``, ``_base_``) are not sections.
    """
    where = f"{source}: " if source else ""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where}a recipe must be a mapping with the sections {', '.join(SECTIONS)}")
    extra = sorted(k for k in cfg if not str(k).startswith("_") and k not in SECTIONS)
    if extra:
        close = difflib.get_close_matches(str(extra[0]), list(SECTIONS), n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}unknown recipe section {extra[0]!r}.{hint} Sections: {', '.join(SECTIONS)}")
    parts = {name: (check_model_section(cfg.get(name), name, source) if name == "model"
                    else check_section(_section_class(name), cfg.get(name), name, source)) for name in SECTIONS}
    recipe = Recipe(**parts)
    bad = [f"data.{k}={getattr(recipe.data, k)!r} but model.{k}={getattr(recipe.model, k)!r}"
           for k in ("input_size", "num_segments", "num_local")
           if k in (cfg.get("data") or {}) and k in (cfg.get("model") or {})
           and getattr(recipe.data, k) != getattr(recipe.model, k)]
    if bad:
        raise ConfigError(f"{source or 'config'}: the data and model sections disagree: " + "; ".join(bad)
                          + " (override both, e.g. model.num_segments=16 data.num_segments=16)")
    k = getattr(recipe.model, "num_classes", None)
    # only pairs the recipe states (the Something-Something defaults never match a class of a
    # model-only recipe's smaller label set, so they cannot swap anything there)
    if k and recipe.data.flip_label_pairs and "flip_label_pairs" in (cfg.get("data") or {}) and recipe.data.flip == "sth" and \
            max(max(p) for p in recipe.data.flip_label_pairs) >= int(k):
        raise ConfigError(f"{where}data.flip_label_pairs={recipe.data.flip_label_pairs}: class index out of range "
                          f"for model.num_classes={k} (indices are 0..{int(k) - 1}); set data.flip_label_pairs=[] "
                          "for datasets without left/right class pairs")
    return recipe
