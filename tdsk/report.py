"""Writers of the timeline's results (docs/timeline.md): merged segments, the per-window CSV and
the timeline picture."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def smooth_segments(rows: Sequence[dict], duration: Optional[float] = None) -> List[dict]:
    """Merge consecutive windows with the same top-1 class into ``{"label", "index", "start",
    "end", "windows", "mean_prob"}``.

    Each window owns the span between the midpoints to its neighbours' centres (the first
    from 0, the last to ``duration``), so the merged segments tile the video without overlap.
    """
    if not rows:
        return []
    bounds = _own_bounds(rows, duration)
    out: List[dict] = []
    for k, r in enumerate(rows):
        top = r["top"][0]
        if out and out[-1]["index"] == top["index"]:
            seg = out[-1]
            seg["end"] = bounds[k + 1]
            seg["windows"] += 1
            seg["_sum"] += top["prob"]
        else:
            out.append({"label": top["label"], "index": top["index"], "start": bounds[k], "end": bounds[k + 1],
                        "windows": 1, "_sum": top["prob"]})
    for seg in out:
        seg["mean_prob"] = seg.pop("_sum") / seg["windows"]
    return out


def _own_bounds(rows: Sequence[dict], duration: Optional[float] = None) -> List[float]:
    """``len(rows) + 1`` times: window k owns ``[b[k], b[k+1])`` (midpoints between centres)."""
    centres = [r["time"] for r in rows]
    end_all = float(duration) if duration is not None else rows[-1]["end"]
    return [0.0] + [0.5 * (a + b) for a, b in zip(centres, centres[1:])] + [end_all]


def write_rows_csv(rows: Sequence[dict], path: str) -> None:
    """One line per window: ``window,start,end,label_1,prob_1,...,label_k,prob_k``."""
    from tdsk import _io

    k = max((len(r["top"]) for r in rows), default=0)
    _io.write_csv(path, ([r["window"], f"{r['start']:.3f}", f"{r['end']:.3f}"]
                         + [v for t in r["top"] for v in (t["label"], f"{t['prob']:.6f}")] for r in rows),
                  header=["window", "start", "end"] + [c for i in range(1, k + 1) for c in (f"label_{i}", f"prob_{i}")])


def class_colours(indices: Sequence[int]) -> Dict[int, Any]:
    """A colour per class index that depends on the index, not on the class's rank in one video
    (the same class keeps its colour across plots): ``tab20`` slot ``index % 20``; when two of
    ``indices`` share a slot, the larger index takes the next free slot (still deterministic)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    used: Dict[int, int] = {}
    out: Dict[int, Any] = {}
    for i in sorted(set(int(i) for i in indices)):
        slot = i % 20
        for _ in range(20):
            if slot not in used:
                break
            slot = (slot + 1) % 20
        used[slot] = i
        out[i] = cmap(slot)
    return out


def plot_timeline(result: Any, path: str, classes: int = 5, truth: Optional[Sequence[dict]] = None) -> str:
    """PNG of ``result`` (a :class:`tdsk.timeline.TimelineResult`): time in seconds on x, stacked
    probability ribbons of the ``classes`` most probable classes
    (highest peak top-k probability; the rest of the top-k mass as "other"), a strip of frame
    thumbnails on top, the smoothed segments as a bar under the ribbons ("predicted") and, given
    ``truth`` (``[{"start", "end", "label"}]`` in seconds), the ground truth as a bar under
    that. A class has the same colour in every plot (:func:`class_colours`)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = result.rows
    duration = float(result.meta.get("duration") or (rows[-1]["end"] if rows else 1.0)) or 1.0
    peak: Dict[int, float] = {}
    names: Dict[int, str] = {}
    for r in rows:
        for t in r["top"]:
            peak[t["index"]] = max(peak.get(t["index"], 0.0), t["prob"])
            names[t["index"]] = t["label"]
    chosen = sorted(peak, key=lambda i: -peak[i])[:classes]
    series = np.array([[next((t["prob"] for t in r["top"] if t["index"] == c), 0.0) for r in rows] for c in chosen])
    if rows:  # piecewise constant: each window over the span it owns (as in the smoothed segments)
        b = _own_bounds(rows, duration)
        times = np.array([v for k in range(len(rows)) for v in (b[k], b[k + 1])], dtype=np.float64)
        series = np.repeat(series, 2, axis=1).reshape(len(chosen), -1)
    fig = plt.figure(figsize=(12, 4.8), dpi=100)
    ax_img = fig.add_axes([0.06, 0.74, 0.74, 0.22])
    if truth:
        ax = fig.add_axes([0.06, 0.24, 0.74, 0.47], sharex=ax_img)
        ax_seg = fig.add_axes([0.06, 0.16, 0.74, 0.05], sharex=ax_img)
        ax_truth = fig.add_axes([0.06, 0.08, 0.74, 0.05], sharex=ax_img)
    else:
        ax = fig.add_axes([0.06, 0.16, 0.74, 0.55], sharex=ax_img)
        ax_seg = fig.add_axes([0.06, 0.06, 0.74, 0.06], sharex=ax_img)
        ax_truth = None
    thumbs = result.thumbs
    if thumbs:
        slot = duration / len(thumbs)
        for k, (_, img) in enumerate(thumbs):
            ax_img.imshow(img, extent=(k * slot, (k + 1) * slot, 0, 1), aspect="auto")
    ax_img.set_ylim(0, 1)
    ax_img.set_yticks([])
    ax_img.tick_params(labelbottom=False)
    ax_img.set_title(os.path.basename(str(result.meta.get("source", ""))) +
                     f"  ({result.meta.get('window_seconds', 0):.2f} s windows, stride "
                     f"{result.meta.get('stride_seconds', 0):.2f} s)", fontsize=9)
    by_name = {n: i for i, n in names.items()}
    truth_index = [by_name.get(t["label"]) for t in (truth or [])]
    colour = class_colours(list(chosen) + [s["index"] for s in result.segments]
                           + [i for i in truth_index if i is not None])
    if len(rows):
        other = np.clip(1.0 - series.sum(0), 0.0, 1.0)
        ax.stackplot(times, *series, other, labels=[names[c] for c in chosen] + ["other"],
                     colors=[colour[c] for c in chosen] + [(0.85, 0.85, 0.85)], alpha=0.9)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, duration)
    ax.set_ylabel("probability")
    ax.tick_params(labelbottom=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    for seg in result.segments:
        ax_seg.barh(0, seg["end"] - seg["start"], left=seg["start"], height=1.0,
                    color=colour.get(seg["index"], (0.6, 0.6, 0.6)), edgecolor="white", linewidth=0.5)
    ax_seg.set_yticks([0])
    ax_seg.set_yticklabels(["predicted"], fontsize=8)
    last = ax_seg
    if ax_truth is not None:
        ax_seg.tick_params(labelbottom=False)
        for t, i in zip(truth, truth_index):
            ax_truth.barh(0, float(t["end"]) - float(t["start"]), left=float(t["start"]), height=1.0,
                          color=colour.get(i, (0.6, 0.6, 0.6)), edgecolor="white", linewidth=0.5)
            ax_truth.text(0.5 * (float(t["start"]) + float(t["end"])), 0, str(t["label"]), ha="center",
                          va="center", fontsize=7, clip_on=True)
        ax_truth.set_yticks([0])
        ax_truth.set_yticklabels(["truth"], fontsize=8)
        last = ax_truth
    last.set_xlabel("time (s)")
    from tdsk import _io

    try:
        with _io.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path
