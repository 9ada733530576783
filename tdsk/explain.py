"""Pictures of what the model saw: centre frames, SME motion energy and a class-activation map
per segment (docs/timeline.md §4).

::

    from tdsk.explain import explain

    ex = explain(rec, "clip.mp4", "out/")            # rec: tdsk.Recognizer or a TDS-CLIP model
    ex.label, ex.prob, ex.grid_path, ex.gif_path
    ex.motion[t], ex.cam[t]                           # float32 [S, S] in [0, 1], the crop's size

For one view of the clip (the centre crop, the recipe's test sampling of clip 0; the
frames the model is fed):

* **centre frame** of each segment (the frozen CLIP's input), un-normalised;
* **motion energy**: ``sqrt(sum_j,c Delta_j,c^2)`` per pixel, the magnitude of the ``M - 1``
  frame differences the SME-Adapter's difference stem sees (docs/model.md §4: on the
  CLIP-normalised local frames), divided by its per-segment maximum;
* **class activation** (Grad-CAM, Selvaraju et al. 2017) for the predicted class, or
  ``target_class``: on the side stream after the last TDS block ``A[t, n, d]`` (before
  ``BN_post`` and the pooling), weights ``w[t, d]`` = the mean over the patches of
  ``d logit / d A``, map ``ReLU(sum_d w[t, d] A[t, n, d])`` on the ``g x g`` patch grid,
  upsampled bilinearly to the frame and divided by its per-segment maximum. (The head is
  BN + average + linear, so the weights are the same for every segment: this is CAM.)
  The SME stem's one-pixel grid shift (docs/model.md §4) is ignored: <= 1 input pixel.
  For the mean-pool baseline (no side network) the map is Grad-CAM on the frozen CLIP's
  patch tokens entering its last block, per frame (the demo compares the two).

Files: ``<stem>_explain.png`` (rows: frame, motion energy overlay, class activation overlay;
one column per segment), ``<stem>_explain.gif`` (one frame per segment: the three panels
side by side) and ``<stem>_explain.npz`` (``frames``, ``motion``, ``cam``, ``logits``).
Runs in fp32 whatever the recognizer's precision (the gradient needs it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["explain", "Explanation", "motion_energy", "grad_cam", "grad_cam_batch", "peak_in_box",
           "box_cell_fraction"]


@dataclass
class Explanation:
    """``frames uint8 [T, S, S, 3]`` (centre frames), ``motion`` and ``cam`` ``float32 [T, S, S]`` in
    [0, 1], the explained class (``index``, ``label``, ``prob``), ``predicted`` (top-1 index) and
    the paths written."""

    frames: np.ndarray
    motion: np.ndarray
    cam: np.ndarray
    index: int
    label: str
    prob: float
    predicted: int
    logits: np.ndarray = field(repr=False)
    grid_path: Optional[str] = None
    gif_path: Optional[str] = None
    npz_path: Optional[str] = None


def _unit(maps: torch.Tensor) -> torch.Tensor:
    """Each ``[..., H, W]`` map divided by its maximum (all-zero maps stay zero); clamped to [0, 1]."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return torch.where(peak > 0, maps / peak.clamp_min(1e-30), torch.zeros_like(maps)).clamp_(0.0, 1.0)


def motion_energy(video: torch.Tensor) -> torch.Tensor:
    """``video[T, M, 3, H, W]`` (normalised local frames) -> ``[T, H, W]`` in [0, 1]: the per-pixel
    magnitude of the ``M - 1`` consecutive differences (the SME-Adapter's Delta), per-segment max = 1."""
    if video.shape[1] < 2:
        return torch.zeros(video.shape[0], *video.shape[-2:])
    d = (video[:, 1:] - video[:, :-1]).float()
    return _unit(d.pow(2).sum(dim=(1, 2)).sqrt())


def _cam_activations(model: nn.Module, video: torch.Tensor):
    """``(A [B, T, N, C], logits [B, K])`` with ``logits`` a differentiable function of ``A``: the
    activations Grad-CAM weighs, on its ``g x g`` patch grid (row-major), for ``video[B, T, M, 3, S, S]``.

    * TDS-CLIP: the side stream after the last TDS block (before ``BN_post`` and the pooling).
    * a model with ``cam_activations(video)`` (DiST: its temporal stream after the last
      temporal block, one map per frame) supplies its own.
    * mean-pool baseline (:class:`~tdsk.models.baseline.MeanPoolCLIP`): the frozen CLIP's patch
      tokens entering its last block, per centre frame (the last block's output patch tokens
      do not reach the class token, the usual choice for a ViT).
    """
    from tdsk.models.baseline import MeanPoolCLIP
    from tdsk.models.clip_encoder import frozen_block_forward

    b, t, m = video.shape[:3]
    if hasattr(model, "cam_activations"):  # a family that names its own (DiST: the temporal stream)
        return model.cam_activations(video)
    centre = video[:, :, m // 2].reshape(b * t, *video.shape[3:])
    if hasattr(model, "side") and hasattr(model.side, "tokens"):
        with torch.no_grad():
            taps = model.frame_taps(centre)
        with torch.enable_grad():
            x = model.side.tokens(video, taps)                  # [B, T, N, D]
            return x, model.head(model.side.pool(x))
    if isinstance(model, MeanPoolCLIP):
        enc = model.encoder
        blocks = list(enc.transformer.resblocks)
        with torch.no_grad():
            z = enc.embed(centre)
            for block in blocks[:-1]:
                z = frozen_block_forward(block, z)
        patches = z[:, 1:].detach().reshape(b, t, z.shape[1] - 1, z.shape[2]).requires_grad_(True)  # [B, T, N, C]
        with torch.enable_grad():
            y = frozen_block_forward(blocks[-1], torch.cat([z[:, :1], patches.flatten(0, 1)], dim=1))
            f = enc.ln_post(y[:, 0])
            f = f @ enc.proj.to(f.dtype) if enc.proj is not None else f
            logits = model.head(f.float().view(b, t, -1).mean(dim=1))
        return patches, logits
    raise TypeError("explain needs a TDS-CLIP model (with a side network), the mean-pool baseline or a model "
                    "with cam_activations(video) (e.g. DiST), "
                    f"got {type(model).__name__}")


def grad_cam_batch(model: nn.Module, video: torch.Tensor, targets: Optional[Sequence[int]] = None, *,
                   upsample: bool = True):
    """``(cam [B, T, S, S] in [0, 1], logits [B, K], targets int64 [B])`` for ``video[B, T, M, 3, S, S]``
    on a TDS-CLIP model or the mean-pool baseline (eval mode, fp32). ``targets``: the class each
    clip's map explains (default its predicted class). ``upsample=False``: the maps on the
    ``g x g`` patch grid, ``[B, T, g, g]`` (what the model resolves; the upsampled map is what is
    drawn). In eval mode the clips of a batch are independent, so this equals :func:`grad_cam`
    clip by clip."""
    b, t, s = video.shape[0], video.shape[1], video.shape[-1]
    x, logits = _cam_activations(model, video)
    k = logits.shape[-1]
    if targets is None:
        target = logits.detach().argmax(-1)
    else:
        target = torch.as_tensor(list(targets), dtype=torch.int64, device=logits.device).reshape(-1)
        if target.numel() != b:
            raise ValueError(f"targets: {target.numel()} classes for {b} clips")
        bad = target[(target < 0) | (target >= k)]
        if bad.numel():
            raise ValueError(f"target_class {int(bad[0])} outside 0..{k - 1}")
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    weights = grad.mean(dim=2, keepdim=True)                    # [B, T, 1, C]
    cam = F.relu((weights * x.detach()).sum(-1))                # [B, T, N]
    g = int(round(cam.shape[-1] ** 0.5))
    cam = cam.reshape(b, t, g, g)
    if upsample:
        cam = F.interpolate(cam.reshape(b * t, 1, g, g), size=(s, s), mode="bilinear",
                            align_corners=False).view(b, t, s, s)
    return _unit(cam), logits.detach(), target.cpu()


def grad_cam(model: nn.Module, video: torch.Tensor, target_class: Optional[int] = None):
    """``(cam [T, S, S] in [0, 1], logits [K], target)`` for ``video[1, T, M, 3, S, S]`` (see
    :func:`grad_cam_batch`)."""
    cam, logits, target = grad_cam_batch(model, video[:1], None if target_class is None else [int(target_class)])
    return cam[0], logits[0], int(target[0])


def _cell_centres(n: int, size: int, device=None) -> torch.Tensor:
    """Centres, in pixels of a ``size``-pixel axis, of the ``n`` cells a map of ``n`` values spans."""
    return (torch.arange(n, dtype=torch.float64, device=device) + 0.5) * (size / n)


def peak_in_box(maps: torch.Tensor, boxes: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
    """Whether each map's peak lies in its box: ``maps [..., h, w]``, ``boxes int [..., 4]``
    ``(x0, y0, x1, y1)`` in the pixels of a ``size x size`` frame (default: the map's own
    ``h x w`` pixels), end exclusive -> ``bool [...]``. The peak is the centre of the maximal map cell (a
    coarse ``g x g`` map is scored at its own resolution, not through an upsampling, whose edge
    cells would peak on the frame border). An all-zero map has no peak (False). Ties go to the
    first maximum in row-major order."""
    h, w = maps.shape[-2:]
    flat = maps.flatten(-2)
    arg = flat.argmax(-1)
    cx = _cell_centres(w, int(size or w), maps.device)[arg % w]
    cy = _cell_centres(h, int(size or h), maps.device)[arg // w]
    boxes = boxes.to(maps.device)
    inside = (cx >= boxes[..., 0]) & (cx < boxes[..., 2]) & (cy >= boxes[..., 1]) & (cy < boxes[..., 3])
    return inside & (flat.amax(-1) > 0)


def box_cell_fraction(boxes: torch.Tensor, cells: int, size: int) -> torch.Tensor:
    """``float [...]``: the share of a ``cells x cells`` grid over a ``size``-pixel frame whose cell
    centres lie in each box (``int [..., 4]``, as in :func:`peak_in_box`): the hit rate of a peak in
    a uniformly random cell."""
    c = _cell_centres(cells, size, boxes.device)
    inx = (c >= boxes[..., 0:1]) & (c < boxes[..., 2:3])         # [..., cells]
    iny = (c >= boxes[..., 1:2]) & (c < boxes[..., 3:4])
    return inx.double().mean(-1) * iny.double().mean(-1)


def _colour(maps: np.ndarray, name: str) -> np.ndarray:
    """``[..., H, W]`` in [0, 1] -> uint8 RGB with a matplotlib colormap."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return (cmap(np.clip(maps, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)


def _overlay(frame: np.ndarray, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    return (frame.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def _load(r: dict, clip: Any) -> torch.Tensor:
    if isinstance(clip, torch.Tensor) and clip.is_floating_point():
        video = clip if clip.dim() == 6 else clip.unsqueeze(0)
        return video[:1].float()
    rec = r.get("recognizer")
    if rec is not None:
        return rec.prepare(clip, views=(1, 1))[:1].float()
    from tdsk.data import load_video_clip

    model = r["model"]
    data = {"num_segments": int(model.num_segments), "num_local": int(model.num_local),
            "input_size": r["size"], "resize": r["size"], "test_crops": 1, "test_clips": 1}
    return load_video_clip(os.fspath(clip), data, views=(1, 1), device=r["device"])[:1].float()


def explain(model_or_recognizer, clip_path, out_dir: Optional[str], target_class: Optional[int] = None, *,
            classes: Optional[Sequence[str]] = None, scale: Optional[int] = None, stem: Optional[str] = None,
            gif_ms: int = 500) -> Explanation:
    """Write the per-segment centre frame, SME motion-energy map and class-activation map of
    ``clip_path`` (a video file, a frame folder, uint8 frames with a Recognizer, or a prepared
    float view ``[1, T, M, 3, S, S]``) as one grid PNG and an animated GIF under ``out_dir``
    (nothing is written when it is None). ``target_class``: the class to explain (default the
    predicted one). ``scale``: display magnification (default: panels at least 128 px).
    """
    from tdsk.timeline import eval_mode, resolve_source

    r = resolve_source(model_or_recognizer)
    if hasattr(model_or_recognizer, "data_cfg"):
        r["recognizer"] = model_or_recognizer
    model = r["model"]
    names = list(classes) if classes is not None else (list(r["classes"]) if r["classes"] else None)
    video = _load(r, clip_path).to(r["device"])
    with eval_mode(model):
        cam, logits, target = grad_cam(model, video, target_class)
    local = video[0]                                            # [T, M, 3, S, S]
    motion = motion_energy(local)
    mean = torch.tensor(r["mean"], device=local.device).view(3, 1, 1)
    std = torch.tensor(r["std"], device=local.device).view(3, 1, 1)
    centre = local[:, local.shape[1] // 2] * std + mean
    frames = (centre.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    probs = logits.float().softmax(-1).cpu()
    label = names[target] if names and target < len(names) else str(target)
    ex = Explanation(frames=frames, motion=motion.cpu().numpy().astype(np.float32),
                     cam=cam.cpu().numpy().astype(np.float32), index=target, label=label,
                     prob=float(probs[target]), predicted=int(probs.argmax()), logits=logits.float().cpu().numpy())
    if out_dir is not None:
        if stem is None:
            stem = (os.path.splitext(os.path.basename(os.fspath(clip_path)))[0]
                    if isinstance(clip_path, (str, os.PathLike)) else "clip")
        _write(ex, out_dir, stem, scale, gif_ms)
    return ex


def _write(ex: Explanation, out_dir: str, stem: str, scale: Optional[int], gif_ms: int) -> None:
    from PIL import Image, ImageDraw

    os.makedirs(out_dir, exist_ok=True)
    t, s = ex.frames.shape[0], ex.frames.shape[1]
    k = int(scale) if scale else max(1, -(-128 // s))
    size = s * k
    heat_m, heat_c = _colour(ex.motion, "inferno"), _colour(ex.cam, "jet")
    panels: List[List[Image.Image]] = []
    for i in range(t):
        row = [ex.frames[i], _overlay(ex.frames[i], heat_m[i]), _overlay(ex.frames[i], heat_c[i])]
        panels.append([Image.fromarray(p).resize((size, size), Image.BICUBIC if k > 1 else Image.NEAREST)
                       for p in row])
    pad, head, left = 4, 18, 110
    grid = Image.new("RGB", (left + t * (size + pad), head + 3 * (size + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(("centre frame", "motion energy", f"CAM: {ex.label}"[:18])):
        draw.text((4, head + j * (size + pad) + size // 2 - 6), name, fill=(0, 0, 0))
    for i in range(t):
        draw.text((left + i * (size + pad) + 2, 3), f"segment {i}", fill=(0, 0, 0))
        for j in range(3):
            grid.paste(panels[i][j], (left + i * (size + pad), head + j * (size + pad)))
    ex.grid_path = os.path.join(out_dir, f"{stem}_explain.png")
    grid.save(ex.grid_path)
    gif = []
    for i in range(t):
        fr = Image.new("RGB", (3 * size + 2 * pad, size + head), (255, 255, 255))
        ImageDraw.Draw(fr).text((2, 3), f"segment {i}/{t}  {ex.label} {ex.prob:.2f}", fill=(0, 0, 0))
        for j in range(3):
            fr.paste(panels[i][j], (j * (size + pad), head))
        gif.append(fr)
    ex.gif_path = os.path.join(out_dir, f"{stem}_explain.gif")
    gif[0].save(ex.gif_path, save_all=True, append_images=gif[1:], duration=int(gif_ms), loop=0)
    ex.npz_path = os.path.join(out_dir, f"{stem}_explain.npz")
    np.savez_compressed(ex.npz_path, frames=ex.frames, motion=ex.motion, cam=ex.cam, logits=ex.logits)
