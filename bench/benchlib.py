"""What the pytest benchmarks (``bench/bench_*.py``) and the GPU device run
(``bench/gpu/``) share: the op shapes, the CLIP statistics and the CUDA timer.

One place, so a row of the device run and the row of the same name in
``pytest bench/`` measure the same thing.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch

from tdsk.schema import CLIP_MEAN, CLIP_STD  # noqa: F401  (re-exported: the SME rows normalise with them)

# temporal_pool_diff inputs [N, C, T, H, W]: the TD-Adapter training shape for ViT-B/16
# (4 clips x 8 frames, R = 20 channels on the 14 x 14 grid) and a large one.
POOL_CASES: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {
    "train_b16": ((32, 20, 8, 14, 14), torch.float32),
    "large": ((8, 320, 16, 28, 28), torch.float32),
    "large_bf16": ((8, 320, 16, 28, 28), torch.bfloat16),
}
# frame_diff_concat inputs [N, T, M, 3, H, W]: the SME input of 4 clips of 8 x 5 frames at 224.
FRAME_CASES: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {
    "sme_4clips_f32": ((4, 8, 5, 3, 224, 224), torch.float32),
    "sme_4clips_u8": ((4, 8, 5, 3, 224, 224), torch.uint8),
}
# local_temporal_diff inputs [B, T, N, C]: M2-CLIP's patch tokens for ViT-B/16, 4 clips x 8
# frames, 196 patches of width 768, as the view tokens[:, 1:, :].view(B, T, N, C) of [B*T, 197, C].
LTD_CASES: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {
    "m2clip_b16": ((4, 8, 196, 768), torch.float32),
}
# the same cases shrunk for a CPU rehearsal (``device_run.py --dry-run``)
POOL_CASES_DRY = {
    "train_b16": ((2, 20, 8, 7, 7), torch.float32),
    "large": ((1, 32, 8, 14, 14), torch.float32),
    "large_bf16": ((1, 32, 8, 14, 14), torch.bfloat16),
}
FRAME_CASES_DRY = {
    "sme_4clips_f32": ((1, 4, 5, 3, 32, 32), torch.float32),
    "sme_4clips_u8": ((1, 4, 5, 3, 32, 32), torch.uint8),
}


def sync(device) -> None:
    """Wait for ``device`` (a no-op on a CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_median(fn: Callable, warmup: int = 25, rep: int = 100) -> float:
    """Median seconds of ``fn()`` on CUDA: ``triton.testing.do_bench`` (CUDA events, L2
    flushed between runs). A Python loop around a few-microsecond kernel plus a
    synchronize would time Python, not the kernel."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median") / 1e3


def cuda_peak_bytes(fn: Callable) -> int:
    """Peak CUDA memory of one call of ``fn`` above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def write_side_report(request, text: str, suffix: str) -> "str | None":
    """With ``--tdsk-summary PATH``: write ``text`` to ``<stem>-<suffix>.md`` beside it (its own
    file: bench_inference.py writes ``<stem>.md`` when several benchmarks share one summary
    path); returns the path written, or ``None`` without the option."""
    import os

    path = request.config.getoption("--tdsk-summary")
    if not path:
        return None
    stem = os.path.splitext(path)[0]
    md = stem + (".md" if stem.endswith(f"-{suffix}") else f"-{suffix}.md")
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    with open(md, "w") as fh:
        fh.write(text)
    print(f"{suffix} report written to {md}")
    return md
