"""What the dataset tools share (``data.check``, ``data.prepare``): usage errors, crash-isolated
parallel workers with a progress bar, frame templates and class names."""
from __future__ import annotations
import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple


class UsageError(Exception):
    """A bad argument or an unreadable input: exit code 2."""


# -- small shared helpers (also used by tdsk.data.prepare) --------------------------------------

def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _ignore_sigint() -> None:  # worker initializer: Ctrl-C is the parent's business
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool(workers: int) -> ProcessPoolExecutor:
    methods = multiprocessing.get_all_start_methods()
    # fork: workers start at once and inherit the imported modules (the parent has not
    # started decoding, so no FFmpeg / swscale thread pool is inherited).
    ctx = multiprocessing.get_context("fork") if "fork" in methods else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_ignore_sigint)


def _isolated(fn: Callable, item: Any, on_crash: Callable[[Any, str], Any]) -> Any:
    """Run ``fn(item)`` alone in a fresh worker process; a crash gives ``on_crash(item, why)``."""
    pool = _pool(1)
    try:
        return pool.submit(fn, item).result()
    except BrokenProcessPool:
        return on_crash(item, "the worker process died while handling it (the decoder crashed)")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parallel_map(fn: Callable, items: Sequence[Any], workers: int, on_crash: Callable[[Any, str], Any],
                 progress: Optional[Any] = None) -> Iterator[Tuple[int, Any]]:
    """Yield ``(index, fn(item))`` as they complete, ``workers`` processes (<= 1: in-process).

    ``fn`` must be a module-level function that catches its own errors. A worker that dies
    (a segfault in a decoder) breaks the pool: the items that were in flight are then run
    again one by one, each in its own process, so only the culprit gets ``on_crash``.
    At most ``2 * workers`` items are in flight. ``progress``: a tqdm bar, updated per item.
    """
    if workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            result = fn(item)
            if progress is not None:
                progress.update()
            yield i, result
        return
    queue = iter(enumerate(items))
    pool = _pool(workers)
    inflight: Dict[Any, Tuple[int, Any]] = {}
    try:
        while True:
            while len(inflight) < 2 * workers:
                nxt = next(queue, None)
                if nxt is None:
                    break
                try:
                    inflight[pool.submit(fn, nxt[1])] = nxt
                except BrokenProcessPool:  # the pool broke between two waits
                    queue = iter([nxt] + list(queue))
                    break
            if not inflight:
                break
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken: List[Tuple[int, Any]] = []
            for future in done:
                i, item = inflight.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken.append((i, item))
                    continue
                if progress is not None:
                    progress.update()
                yield i, result
            if broken or getattr(pool, "_broken", False):
                broken += list(inflight.values())
                inflight.clear()
                pool.shutdown(wait=True, cancel_futures=True)
                for i, item in sorted(broken, key=lambda t: t[0]):
                    result = _isolated(fn, item, on_crash)
                    if progress is not None:
                        progress.update()
                    yield i, result
                pool = _pool(workers)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="video", dynamic_ncols=True, mininterval=0.5,
                disable=not enabled, file=sys.stderr)


def template_matcher(template: str) -> Callable[[str], Optional[int]]:
    """:func:`tdsk.data.decoders.template_matcher` (the one matcher); a bad template is a
    :class:`UsageError`."""
    from tdsk.data.decoders import template_matcher as matcher

    try:
        return matcher(template)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _guess_template(names: Iterable[str]) -> Optional[str]:
    """``img_{:05d}.jpg`` from a folder that holds ``img_00001.jpg``... (a hint only)."""
    for name in sorted(names):
        match = re.fullmatch(r"(.*?)([0-9]+)(\.(?:jpe?g|png))", name, flags=re.IGNORECASE)
        if match:
            digits = match.group(2)
            field = f"{{:0{len(digits)}d}}" if digits.startswith("0") or len(digits) > 1 else "{:d}"
            return match.group(1).replace("{", "{{").replace("}", "}}") + field + match.group(3)
    return None


# -- class names -------------------------------------------------------------------------------



def read_class_names(path: str) -> List[str]:
    """Class names in index order (:func:`tdsk.data.labels.read_labels`); raises :class:`UsageError`."""
    from tdsk.data.labels import read_labels
    from tdsk.data.lists import ListFormatError

    try:
        return read_labels(path)
    except (OSError, ListFormatError) as exc:
        raise UsageError(f"cannot use the labels file {path}: {exc}") from None
