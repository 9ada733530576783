"""Inference API: ``tdsk.Recognizer`` -- a trained model plus its recipe's test protocol.

::

    import tdsk

    rec = tdsk.Recognizer.from_pretrained("runs/demo/best.pt")      # or a model folder, or
    # tdsk.Recognizer.from_pretrained("tdsclip_ssv1.pt", cfg="ssv1_b16")  (official checkpoint)
    pred = rec.predict("clip.mp4", top_k=5)     # a file, a JPEG frame folder, or uint8 frames [N, H, W, 3]
    pred[0].label, pred[0].prob                  # best class; pred.top is the list, pred.to_dict() JSON-ready
    feat = rec.features("clip.mp4")              # pooled side-network feature [D] (per_view=True: [V, D])

Inputs (:meth:`Recognizer.prepare`):

* a video file or a JPEG frame folder: read by :func:`tdsk.data.load_video_clip` (the
  code path of ``python -m tdsk.predict``);
* decoded frames: ``uint8`` numpy array or tensor ``[N, H, W, 3]`` (RGB), e.g. from a
  webcam, or a list of ``[H, W, 3]`` frames: the test sampling
  (:func:`tdsk.data.sample_indices` over the N frames, ``clips`` temporal clips) and the
  same test transforms (resize, ``crops`` crops, CLIP normalisation);
* an already prepared float tensor ``[V, T, M, 3, S, S]`` (what :meth:`prepare` returns).

Views (crops x clips) default to the recipe's ``eval.views`` (else ``data.test_crops`` x
``data.test_clips``); each view is scored, the softmax probabilities are averaged (the
official test protocol). A view with non-finite logits (or non-finite averaged
probabilities) raises :class:`NonFiniteOutputError`: it is never a prediction.

Precision (``precision=``, the rule of :mod:`tdsk.engine.precision`): ``"auto"`` (default)
runs under bf16 autocast where the hardware has fast bf16 (CPU: AMX or AVX512-BF16,
``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``; CUDA:
``torch.cuda.is_bf16_supported()``), fp16 autocast on a GPU without bf16, and on a CPU
without fast bf16 int8 linear layers (:func:`tdsk.models.quantize.quantize_int8`; the float
model stays in ``rec.model`` for Grad-CAM, the int8 copy is ``rec.runtime_model``);
``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` (CPU) force one. The choice and its reason are
logged once per recognizer (``[tdsk] INFO: inference: ...``) and kept in
``rec.precision`` / ``rec.precision_reason``. ``compile=True`` wraps the model with
``torch.compile``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from tdsk._logging import logger
from tdsk.data.labels import labels_for_model, read_labels  # noqa: F401  (read_labels re-exported)
from tdsk.engine.precision import autocast_for, cpu_bf16_support, resolve_precision  # noqa: F401  (re-exported)
from tdsk.models.open_vocab import is_open_vocabulary, use_classes
from tdsk.models.text_tower import placeholder_text_embeddings

__all__ = ["Recognizer", "Prediction", "Label", "NonFiniteOutputError", "load_model", "resolve_device",
           "resolve_precision", "cpu_bf16_support", "frames_to_clip", "read_labels", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN/inf for a video: there is no prediction for it."""

    def __init__(self, message: str, views: int = 0, bad_views: int = 0):
        super().__init__(message)
        self.views, self.bad_views = int(views), int(bad_views)


@dataclass(frozen=True)
class Label:
    """One of the top-k classes: ``index`` (class id), ``label`` (its name), ``prob``."""

    index: int
    label: str
    prob: float


@dataclass
class Prediction:
    """Top-k classes of one video, best first; iterate / index it like a list of :class:`Label`."""

    top: List[Label]
    views: int
    source: Optional[str] = None
    probs: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)  # [K], view-averaged

    def __iter__(self) -> Iterator[Label]:
        return iter(self.top)

    def __len__(self) -> int:
        return len(self.top)

    def __getitem__(self, i):
        return self.top[i]

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def index(self) -> int:
        return self.top[0].index

    @property
    def prob(self) -> float:
        return self.top[0].prob

    def to_dict(self) -> dict:
        """``{"path", "views", "top": [{"index", "label", "prob"}, ...]}`` (``tdsk.predict --json``)."""
        return {"path": self.source, "views": self.views, "top": [asdict(t) for t in self.top]}


# ----------------------------------------------------------------------------- device, precision

def resolve_device(device: Union[None, str, torch.device] = "auto") -> torch.device:
    """``"auto"``: this rank's CUDA GPU (``LOCAL_RANK``) when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    from tdsk.engine.distributed import pick_device

    return pick_device(device or "auto", int(os.environ.get("LOCAL_RANK", "0") or 0))


# ----------------------------------------------------------------------------- loading

def _load_recipe(cfg: Union[str, Mapping], overrides: Sequence[str]) -> dict:
    from tdsk.config import apply_overrides, load_config

    if isinstance(cfg, Mapping):
        return apply_overrides(dict(cfg), overrides)
    return load_config(str(cfg), overrides)


def load_model(path: str, cfg: Union[None, str, Mapping] = None, overrides: Sequence[str] = (),
               device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, dict, Optional[List[str]]]:
    """``(model, recipe, classes)`` for a tdsk checkpoint, an official one (+ ``cfg``) or a model folder.

    ``cfg`` (a recipe name, YAML path or dict) replaces the recipe stored in a tdsk
    checkpoint or model folder; it is required for official TDS-CLIP checkpoints.
    ``overrides`` are ``section.key=value`` items. ``classes`` is ``None`` unless the
    file stores class names. The model is in eval mode on ``device``.
    """
    from tdsk.config import apply_overrides
    from tdsk.engine import checkpoint as C
    from tdsk.models import build_model, load_checkpoint
    from tdsk.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_folder, load_pretrained, read_folder_config

    path = os.path.expanduser(str(path))
    device = torch.device(device)
    if os.path.isdir(path):
        if not is_model_folder(path):
            raise IsADirectoryError(
                f"{path}: is a directory, expected a checkpoint file (e.g. <run dir>/best.pt) or a model folder "
                f"({CONFIG_NAME} + {WEIGHTS_NAME}, written by tdsk.models.save_pretrained)")
        recipe = (_load_recipe(cfg, overrides) if cfg is not None
                  else apply_overrides(read_folder_config(path)["recipe"], overrides))
        model, recipe, classes, _ = load_pretrained(path, recipe=recipe, device=device)
        _check_finite(model, path)
        return model, recipe, classes
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    ckpt = C.load(path)
    classes = None
    if C.is_training_checkpoint(ckpt):
        recipe = _load_recipe(cfg, overrides) if cfg is not None else apply_overrides(C.stored_recipe(ckpt), overrides)
        classes = ckpt.get("classes")
        with placeholder_text_embeddings():  # a text classifier's embeddings are in the checkpoint
            model = build_model(recipe, class_names=classes)
        C.load_model_state(model, ckpt)
    else:
        if cfg is None:
            raise ValueError(f"{path} is not a tdsk training checkpoint; pass --cfg (cfg=) with the recipe it "
                             "belongs to (e.g. --cfg ssv1_b16 for an official TDS-CLIP B/16 SSv1 checkpoint)")
        recipe = _load_recipe(cfg, overrides)
        # an official checkpoint holds every tensor of the model, the frozen CLIP included
        # (load_checkpoint refuses one that does not): build the CLIP as a skeleton rather than
        # fetch the recipe's clip_pretrained (a hub download for 'openai') only to replace it
        model = build_model({**recipe, "model": {**recipe["model"], "clip_pretrained": None}})
        if isinstance(getattr(model, "config", None), dict):
            model.config["clip_pretrained"] = recipe["model"].get("clip_pretrained")
        del ckpt
        load_checkpoint(model, path)
    model.to(device).eval()
    _check_finite(model, path)
    return model, recipe, (list(classes) if classes else None)


def _check_finite(model: nn.Module, path: str) -> None:
    """Refuse weights or buffers (BatchNorm running statistics, the text classifier...) that hold
    NaN/inf: every prediction from them would be garbage or NaN. Non-persistent buffers (an
    attention mask's -inf) are derived, not loaded: not checked."""
    from tdsk.engine.checkpoint import persistent_buffers

    bad = [name for name, t in list(model.named_parameters()) + persistent_buffers(model)
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{path}: non-finite values (NaN/inf) in {', '.join(bad[:5])}{more}; the file is damaged "
                         "or comes from a diverged run")


# ----------------------------------------------------------------------------- inputs

def _data_config(cfg: Mapping, model: Optional[nn.Module] = None):
    """The recipe's ``data:`` section as a :class:`tdsk.data.DataConfig`; the clip shape
    (T, M, input size) filled in from the model section where the data section is silent."""
    from tdsk.data import DataConfig

    data = dict(cfg.get("data") or {})
    msec = dict(cfg.get("model") or getattr(model, "config", None) or {})
    actual = dict(getattr(model, "config", None) or {}) if model is not None else {}
    bad = []
    for key in ("num_segments", "num_local", "input_size"):
        if key not in data and key in msec:
            data[key] = msec[key]
        for source in (msec, actual):  # the recipe's model section, and the model itself
            if key in data and key in source and source[key] is not None and int(data[key]) != int(source[key]):
                bad.append(f"data.{key}={data[key]} but the model has {key}={source[key]}")
                break
    if bad:  # as training checks: the model would run on the wrong clip shape, silently wrong
        from tdsk.schema import ConfigError

        raise ConfigError("the recipe's data section does not fit the model: " + "; ".join(bad)
                          + " (override data.<key> to match, or drop it)")
    return DataConfig.from_dict(data)


def frames_to_clip(frames, data_cfg, views: Tuple[int, int], device: Union[str, torch.device] = "cpu"
                   ) -> torch.Tensor:
    """Decoded RGB frames ``uint8 [N, H, W, 3]`` -> normalised test views ``float32 [V, T, M, 3, S, S]``.

    The frames are sampled as a video of N frames is at test time (:func:`tdsk.data.sample_indices`,
    ``clips`` clips) and go through the same test transform as a decoded file.
    """
    from tdsk.data import sample_indices
    from tdsk.data.transforms import EvalTransform, normalize

    if isinstance(frames, torch.Tensor):
        arr = frames.detach().cpu().numpy()
    elif isinstance(frames, (list, tuple)):
        arr = np.stack([np.asarray(f) for f in frames]) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    else:
        arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise TypeError(f"frames must be uint8 RGB [N, H, W, 3], got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB [N, H, W, 3], got shape {tuple(arr.shape)}")
    n = int(arr.shape[0])
    if n < 1:
        raise ValueError("frames: no frames (N = 0)")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"frames: empty images ({arr.shape[1]}x{arr.shape[2]} pixels)")
    crops, clips = (int(v) for v in views)
    t, m, s = data_cfg.num_segments, data_cfg.num_local, data_cfg.input_size
    wrap = bool(data_cfg.kinetics_wrap and data_cfg.dataset == "kinetics")
    idx = np.stack([sample_indices(n, t, m, "test", k, clips, data_cfg.dataset, None, wrap_negative=wrap)
                    for k in range(clips)])
    picked = arr[idx.reshape(-1)]
    transform = EvalTransform(s, data_cfg.resize_size, crops=crops)
    per_clip = [transform(c) for c in picked.reshape(clips, t * m, *picked.shape[1:])]  # [crops, T*M, 3, S, S]
    video = torch.stack(per_clip, dim=1).reshape(crops * clips, t, m, 3, s, s)
    return normalize(video.to(torch.device(device)), data_cfg.mean, data_cfg.std)


def _views_of(cfg: Mapping, data_cfg) -> Tuple[int, int]:
    v = (cfg.get("eval") or {}).get("views")
    if v:
        return int(v[0]), int(v[1])
    return int(data_cfg.test_crops), int(data_cfg.test_clips)


# ----------------------------------------------------------------------------- the recognizer

class Recognizer:
    """A model ready for inference: weights, recipe (test sampling and transforms), class names.

    Build it with :meth:`from_pretrained`, or wrap a model you have:
    ``Recognizer(model, cfg, classes)`` (``cfg``: the recipe dict, at least its ``model``
    and ``data`` sections). Attributes: ``model``, ``cfg``, ``data_cfg``, ``classes``
    (``None`` when unknown: labels are then the class indices), ``num_classes``,
    ``device``, ``precision`` (resolved), ``precision_reason``, ``views`` (crops, clips).

    ``classes`` are the display names of the model's classes (their count must match).
    Open vocabulary (docs/protocols.md), ``switch_classes=True`` (what
    :meth:`from_pretrained` does when given ``classes``): with a model that has a text
    classifier (``model.open_vocabulary``), ``classes`` other than the model's own switch its
    classifier to them (``model.use_classes``, in place; no retraining); a model without one
    refuses other classes with :class:`tdsk.models.open_vocab.NoTextClassifierError`. The
    default (``False``) never changes the model, so prettier display names stay display names.
    """

    def __init__(self, model: nn.Module, cfg: Mapping, classes: Optional[Sequence[str]] = None, *,
                 device: Union[None, str, torch.device] = None, precision: str = "auto", compile: bool = False,
                 views: Optional[Tuple[int, int]] = None, source: Optional[str] = None,
                 switch_classes: bool = False):
        if device is None:
            try:
                device = next(model.parameters()).device
            except StopIteration:
                device = torch.device("cpu")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = dict(cfg)
        self.data_cfg = _data_config(self.cfg, model)
        self.classes = list(classes) if classes else None
        n = getattr(model, "num_classes", None) or (self.cfg.get("model") or {}).get("num_classes")
        if switch_classes and self.classes and list(getattr(model, "class_names", None) or []) != self.classes and (
                is_open_vocabulary(model) or (n and len(self.classes) != int(n))):
            # open vocabulary: the classifier scores these names (docs/protocols.md); a model
            # without a text classifier is refused with the contract's one-line error
            use_classes(model, self.classes)
            self.cfg["model"] = {**(self.cfg.get("model") or {}), "num_classes": len(self.classes)}
            n = len(self.classes)
        if self.classes and n and len(self.classes) != int(n):
            raise ValueError(f"{len(self.classes)} class names for a model of {int(n)} classes")
        self.views = tuple(int(v) for v in views) if views else _views_of(self.cfg, self.data_cfg)
        self.source = source
        self.precision, self.precision_reason = resolve_precision(precision, self.device, inference=True)
        self.compiled = bool(compile)
        if self.precision == "int8":
            from tdsk.models.quantize import quantize_int8

            self.runtime_model = quantize_int8(self.model)
        else:
            self.runtime_model = self.model
        self._forward = torch.compile(self.runtime_model) if compile else self.runtime_model
        self._features = None
        what = {"fp32": "fp32", "int8": "int8 linear layers"}.get(self.precision, f"{self.precision} autocast")
        logger.info(f"inference: {what} on {self.device} ({self.precision_reason}){', torch.compile' if compile else ''}")

    @classmethod
    def from_pretrained(cls, path: str, device: Union[str, torch.device] = "auto", precision: str = "auto",
                        cfg: Union[None, str, Mapping] = None, *, overrides: Sequence[str] = (),
                        labels: Union[None, str, Sequence[str]] = None, views: Optional[Tuple[int, int]] = None,
                        compile: bool = False, classes: Union[None, str, Sequence[str]] = None) -> "Recognizer":
        """Load ``path``: a tdsk checkpoint (``best.pt``, ``epoch_*.pt``), an official TDS-CLIP
        checkpoint (then ``cfg=`` names its recipe, e.g. ``"ssv1_b16"``) or a model folder.

        ``cfg`` replaces the stored recipe; ``overrides`` (``section.key=value``) amend it;
        ``labels`` (a list or a file, one name per line) replaces the stored class names (the
        names shown; the classifier is unchanged). ``classes`` (a list or a class-name file):
        switch a text classifier to these classes (open vocabulary, docs/protocols.md).
        """
        if labels is not None and classes is not None:
            raise ValueError("give labels= (names shown) or classes= (the classes scored), not both")
        dev = resolve_device(device)
        model, recipe, stored = load_model(path, cfg, overrides, device=dev)
        names = _labels(labels if labels is not None else classes) if (labels or classes) is not None else stored
        return cls(model, recipe, names, device=dev, precision=precision, compile=compile, views=views,
                   source=str(path), switch_classes=classes is not None)

    # -- properties ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        n = getattr(self.model, "num_classes", None) or (self.cfg.get("model") or {}).get("num_classes")
        return int(n) if n else 0

    def label_of(self, index: int) -> str:
        return self.classes[index] if self.classes and 0 <= index < len(self.classes) else str(index)

    def autocast(self):
        """The autocast context of ``self.precision`` on ``self.device``."""
        return autocast_for(self.precision, self.device)

    @property
    def forward_module(self) -> nn.Module:
        """The module to call for logits (the compiled one with ``compile=True``)."""
        return self._forward

    # -- inputs ------------------------------------------------------------------------------------
    def prepare(self, video: Any, views: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``video`` (path, frame folder, uint8 frames ``[N, H, W, 3]``, or prepared views) ->
        normalised views ``float32 [V, T, M, 3, S, S]`` on ``self.device``."""
        from tdsk.data import load_video_clip

        views = tuple(views) if views else self.views
        if isinstance(video, (str, os.PathLike)):
            return load_video_clip(os.fspath(video), self.data_cfg, views=views, device=self.device)
        if isinstance(video, torch.Tensor) and video.is_floating_point():
            if video.dim() == 5:
                video = video.unsqueeze(0)
            if video.dim() != 6:
                raise ValueError(f"a float video must be prepared views [V, T, M, 3, S, S], got {tuple(video.shape)} "
                                 "(pass decoded frames as uint8 [N, H, W, 3])")
            d = self.data_cfg
            want = (d.num_segments, d.num_local, 3, d.input_size, d.input_size)
            if tuple(video.shape[1:]) != want:
                # a model runs on any T (the side network's pooling is over T), silently wrong
                raise ValueError(f"prepared views must be [V, {', '.join(map(str, want))}] for this model "
                                 f"(T={d.num_segments} segments, M={d.num_local} local frames, "
                                 f"{d.input_size} px), got {tuple(video.shape)}")
            return video.to(self.device)
        if isinstance(video, (np.ndarray, torch.Tensor, list, tuple)):
            return frames_to_clip(video, self.data_cfg, views, self.device)
        raise TypeError(f"video must be a file path, a frame folder, uint8 frames [N, H, W, 3] or prepared views, "
                        f"got {type(video).__name__}")

    # -- outputs -----------------------------------------------------------------------------------
    def logits(self, video: Any, views: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Per-view logits ``float32 [V, K]`` (on the CPU)."""
        clip = self.prepare(video, views)
        with torch.no_grad(), self.autocast():
            out = self._forward(clip)
        return out.float().cpu()

    def probabilities(self, video: Any, views: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """View-averaged softmax probabilities ``[K]``; :class:`NonFiniteOutputError` on NaN/inf."""
        return self._probs(self.logits(video, views))

    @staticmethod
    def _probs(logits: torch.Tensor) -> torch.Tensor:
        v = int(logits.shape[0])
        bad = int((~torch.isfinite(logits).all(-1)).sum())
        probs = logits.softmax(-1).mean(0)
        if bad or not bool(torch.isfinite(probs).all()):
            raise NonFiniteOutputError(f"non-finite model output (NaN/inf logits in {bad} of {v} views)", v, bad)
        return probs

    def logits_many(self, clips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per-view logits of several prepared videos (each ``[V_i, T, M, 3, S, S]``, from
        :meth:`prepare`) in one forward pass over their concatenated views: ``[V_i, K]`` each
        (on the CPU). Each view is scored on its own (eval-mode norms, per-clip attention), so
        a video's logits do not depend on the others in the batch beyond float rounding; with
        ``precision="int8"`` they do (the activation scale is per call): batch one at a time."""
        if not clips:
            return []
        sizes = [int(c.shape[0]) for c in clips]
        batch = torch.cat([c.to(self.device) for c in clips]) if len(clips) > 1 else clips[0].to(self.device)
        with torch.no_grad(), self.autocast():
            out = self._forward(batch)
        return list(out.float().cpu().split(sizes))

    def prediction(self, logits: torch.Tensor, top_k: int = 5, source: Optional[str] = None) -> Prediction:
        """The :class:`Prediction` of per-view logits ``[V, K]`` (view-averaged softmax, the
        ``top_k`` best); :class:`NonFiniteOutputError` on NaN/inf. :meth:`predict` is
        ``prediction(logits(video))``."""
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        probs = self._probs(logits)
        values, indices = probs.topk(min(int(top_k), probs.shape[-1]))
        top = [Label(int(i), self.label_of(int(i)), float(p)) for p, i in zip(values, indices)]
        return Prediction(top, int(logits.shape[0]), source, probs)

    def predict(self, video: Any, top_k: int = 5, views: Optional[Tuple[int, int]] = None) -> Prediction:
        """The ``top_k`` classes of ``video`` with their view-averaged probabilities, best first."""
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        source = os.fspath(video) if isinstance(video, (str, os.PathLike)) else None
        return self.prediction(self.logits(video, views), top_k, source)

    __call__ = predict

    def features(self, video: Any, per_view: bool = False, views: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The pooled side-network feature (before the classifier): ``float32 [D]`` averaged
        over the views, or ``[V, D]`` with ``per_view=True`` (on the CPU)."""
        feats = getattr(self.runtime_model, "features", None)
        if feats is None:
            raise TypeError(f"{type(self.model).__name__} has no features() method")
        if self._features is None:
            self._features = torch.compile(feats) if self.compiled else feats
        clip = self.prepare(video, views)
        with torch.no_grad(), self.autocast():
            out = self._features(clip)
        out = out.float().cpu()
        if not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out).all(-1)).sum())
            raise NonFiniteOutputError(f"non-finite features (NaN/inf in {bad} of {out.shape[0]} views)",
                                       int(out.shape[0]), bad)
        return out if per_view else out.mean(0)

    def timeline(self, video: Any, stride: Optional[int] = None, out_dir: Optional[str] = None, top_k: int = 5,
                 **kw):
        """Slide the model's window over a whole video, reusing each frame's frozen-CLIP
        features across windows (:func:`tdsk.timeline.timeline`; docs/timeline.md). ``stride``
        in segments, or ``stride_seconds=`` (rounded to whole segments)."""
        from tdsk.timeline import timeline

        return timeline(self, video, stride, out_dir=out_dir, top_k=top_k, **kw)

    def stream(self, frames: Any, fps: float, stride: Optional[int] = None, top_k: int = 5, **kw):
        """Predictions every ``stride`` segments (or ``stride_seconds=``) from an iterator of
        ``uint8 [H, W, 3]`` frames (a webcam, an RTSP stream): :func:`tdsk.timeline.stream`."""
        from tdsk.timeline import stream

        return stream(self, frames, fps, stride, top_k=top_k, **kw)

    def explain(self, video: Any, out_dir: str, target_class: Optional[int] = None, **kw):
        """Per segment: centre frame, SME motion energy, class-activation map (PNG grid + GIF):
        :func:`tdsk.explain.explain`."""
        from tdsk.explain import explain

        return explain(self, video, out_dir, target_class, **kw)

    def __repr__(self) -> str:
        return (f"Recognizer({type(self.model).__name__}, {self.num_classes} classes, views={self.views[0]}x"
                f"{self.views[1]}, device={self.device}, precision={self.precision})")


def _labels(labels: Union[str, os.PathLike, Sequence[str]]) -> List[str]:
    return labels_for_model(labels, None, f"labels {labels}" if isinstance(labels, (str, os.PathLike)) else "labels")
