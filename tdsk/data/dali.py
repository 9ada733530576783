"""DALI decoding: videos at exactly the :func:`sample_indices` frames, JPEG folders with nvJPEG.

Only imported when ``data.decoder`` resolves to ``dali`` (``nvidia.dali`` installed and a
CUDA device), or explicitly by tests; ``import tdsk.data`` never needs DALI.

How a batch is made (per rank; the rank's share comes from the same
:class:`~tdsk.data.dataset.EpochSampler` as the CPU loader):

1. Host threads read each sample's encoded bytes and pick its frame indices: the frame
   count comes from a demux-only PyAV index (no decoding); everything else is the CPU
   path's own plan of the item (:meth:`tdsk.data.items.ItemPlanner.plan`: the same
   generators, :func:`sample_indices` indices and augmentation draws). Missing, empty,
   unopenable and truncated files are caught here and, as on the CPU path, replaced
   at train and left out of the batch at val/test (never replaced there).
2. DALI decodes on the GPU (``device="mixed"``): ``fn.decoders.video(encoded,
   frames=indices)`` (NVDEC) or ``fn.decoders.image`` (nvJPEG) for frame folders.
   The ``cpu`` backend (VP8/VP9/MJPEG only) is used when no GPU is given, for tests.
3. Resize, crops, flip, grayscale and normalisation run on the GPU in PyTorch (the
   same :mod:`tdsk.data.transforms` code as the CPU path). RandAugment is PIL-based and
   runs on a host copy of the frames. Steps 1-3 run on a background thread up to
   ``prefetch`` (default 2) batches ahead of the training loop, so decoding overlaps the
   step instead of adding to it.
4. If DALI raises on a batch (a stream that demuxes but does not decode), the pipeline
   is rebuilt and that batch is decoded by the CPU path, which finds and replaces the
   bad file: a corrupt file never aborts the epoch. JPEG batches are header-probed
   before DALI's image decoder sees them (:meth:`DaliFrameDecoder._probe`: that decoder
   corrupts memory when it raises on an unparseable header).

Colour conversion differs slightly from PyAV's swscale (DALI's YUV->RGB: mean absolute
difference ~1.4/255 on the test clips, same frames), so the two paths are pixel-close,
not pixel-identical.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from tdsk._logging import log_once
from tdsk.data.base import VideoLoader, available_cores
from tdsk.data.config import DataConfig
from tdsk.data.dataset import EpochSampler, VideoClipDataset, collate_clips, skipped_item
from tdsk.data.decoders import DecodeError, PyAVVideo, check_jpeg_frames
from tdsk.data.items import ItemPlan
from tdsk.data.lists import VideoRecord
from tdsk.data.transforms import normalize

__all__ = ["DaliFrameDecoder", "DaliVideoLoader", "build_dali_loader"]


class DaliFrameDecoder:
    """A DALI pipeline that decodes one batch: ``kind="video"`` (encoded file + frame
    indices per sample -> ``uint8[F, H, W, 3]``) or ``kind="image"`` (one JPEG per sample
    -> ``uint8[H, W, 3]``). ``device``: ``"gpu"`` (mixed backend, NVDEC/nvJPEG) or ``"cpu"``.

    ``kind="image"`` batches go through a header probe first (:meth:`_probe`): DALI's image
    decoder must never see a file whose header it cannot parse (see there why). A batch
    that fails the probe or the decode raises; the caller then calls :meth:`reset`.
    """

    def __init__(self, kind: str, max_batch_size: int, device: str = "gpu", device_id: int = 0,
                 num_threads: int = 2, seed: int = 0):
        if kind not in ("video", "image"):
            raise ValueError(f"kind must be video or image, got {kind!r}")
        self.kind, self.device = kind, device
        self.max_batch_size = int(max_batch_size)
        self.device_id = device_id if device == "gpu" else None
        self.num_threads, self.seed = max(1, int(num_threads)), int(seed)
        self.pipe = None
        self.probe = None  # kind="image": the header-probe pipeline (see _probe)

    def _pipeline(self, device_id):
        from nvidia.dali import Pipeline

        return Pipeline(batch_size=self.max_batch_size, num_threads=self.num_threads, device_id=device_id,
                        seed=self.seed, exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)

    def _build(self):
        from nvidia.dali import fn, types

        if self.kind == "image":
            probe = self._pipeline(None)  # CPU only: header parsing
            with probe:
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                probe.set_outputs(fn.peek_image_shape(encoded))
            probe.build()
            self.probe = probe
        pipe = self._pipeline(self.device_id)
        backend = "mixed" if self.device == "gpu" else "cpu"
        with pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            if self.kind == "video":
                frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
                out = fn.decoders.video(encoded, frames=frames, device=backend)
            else:
                out = fn.decoders.image(encoded, device=backend, output_type=types.RGB)
            pipe.set_outputs(out)
        pipe.build()
        self.pipe = pipe

    def reset(self) -> None:
        """Drop the pipelines (after an error: DALI marks a pipeline that raised as no longer
        valid); the next call builds fresh ones."""
        self.pipe = self.probe = None

    def _probe(self, encoded: List[np.ndarray]) -> None:
        """Parse every image header with ``fn.peek_image_shape``; raises if one cannot be parsed.

        Why: DALI 2.4's ``fn.decoders.image`` parses the headers of a batch of >= 32 images
        on its thread pool *and* in the calling thread (``ImageDecoder::RunImplImpl``:
        ``setup_task(-1); tp_->WaitForWork();``). When the calling thread's share holds an
        unparseable header, the exception skips ``WaitForWork``: ``pipe.run()`` raises while
        pool threads still parse the rest of the batch through references into the
        unwound C++ frame. They then write over whatever reuses that stack and heap
        (Python, Pillow in the CPU fallback, logging), a segfault seconds later in either
        thread, whether or not the failed pipeline is kept alive. Nothing done after the
        raise can fix that, so such a batch must never reach the decoder.
        ``peek_image_shape`` runs the same nvImageCodec header parser (``CodeStreamGetImageInfo``)
        with one pool task per sample and waits for all of them before raising, so the
        probe fails safely exactly where the decoder's setup would. Failures after the
        headers (truncated or corrupt scan data) are raised by the decoder only after its
        pool is idle, and are safe. Cost: a header parse per image.
        """
        self.probe.feed_input("encoded", encoded)
        self.probe.run()

    def __call__(self, encoded: Sequence[np.ndarray], frames: Optional[Sequence[np.ndarray]] = None,
                 out_device: Optional[torch.device] = None) -> List[torch.Tensor]:
        if not encoded:
            return []
        if len(encoded) > self.max_batch_size:
            raise ValueError(f"batch of {len(encoded)} > max_batch_size {self.max_batch_size}")
        if self.pipe is None or (self.kind == "image" and self.probe is None):
            self._build()
        if self.kind == "image":
            self._probe(list(encoded))
        self.pipe.feed_input("encoded", list(encoded))
        if self.kind == "video":
            self.pipe.feed_input("frames", [np.asarray(f, dtype=np.int32) for f in frames])
        (out,) = self.pipe.run()
        return _to_torch(out, out_device)


def _to_torch(out, device: Optional[torch.device]) -> List[torch.Tensor]:
    """DALI TensorList -> list of torch tensors (copied: DALI reuses its buffers)."""
    tensors = []
    if hasattr(out, "as_cpu") and type(out).__name__ == "TensorListGPU":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        stream = torch.cuda.current_stream(device)
        for i in range(len(out)):
            sample = out[i]
            t = torch.empty(tuple(sample.shape()), dtype=torch.uint8, device=device)
            feed_ndarray(sample, t, cuda_stream=stream)
            tensors.append(t)
        return tensors
    for i in range(len(out)):
        t = torch.from_numpy(np.array(out[i]))
        tensors.append(t.to(device) if device is not None else t)
    return tensors


class DaliVideoLoader(VideoLoader):
    """Same interface and output as the CPU :class:`~tdsk.data.base.VideoLoader`, decoding with DALI."""

    def __init__(self, cfg: DataConfig, split: str, records: Sequence[VideoRecord], *, batch_size: int,
                 device: torch.device, rank: int = 0, world_size: int = 1, seed: int = 0,
                 views: Optional[Tuple[int, int]] = None, num_workers: Optional[int] = None,
                 dali_device: Optional[str] = None, prefetch: int = 2):
        dataset = VideoClipDataset(records, cfg, split, seed=seed, rank=rank, views=views)
        sampler = EpochSampler(len(dataset), shuffle=split == "train", rank=rank, world_size=world_size, seed=seed)
        super().__init__(dataset, sampler, None, device, cfg, split)
        self.decoder = "dali"
        self.batch_size = int(batch_size)
        self.drop_last = split == "train" and cfg.drop_last and len(sampler) >= batch_size
        self.dali_device = dali_device or ("gpu" if device.type == "cuda" else "cpu")
        threads = cfg.num_workers if num_workers is None else num_workers
        self.num_threads = max(1, min(int(threads), available_cores()))
        frames_per_video = dataset.items.num_clips * cfg.num_segments * cfg.num_local
        device_id = device.index if device.index is not None else (
            torch.cuda.current_device() if device.type == "cuda" else 0)
        self._video = DaliFrameDecoder("video", self.batch_size, self.dali_device, device_id, self.num_threads, seed)
        self._image = DaliFrameDecoder("image", self.batch_size * frames_per_video, self.dali_device, device_id,
                                       self.num_threads, seed)
        self._pool = ThreadPoolExecutor(max_workers=self.num_threads)
        # decoded batches kept ready ahead of the consumer (0: decode when asked, in its thread)
        self.prefetch = max(0, int(prefetch))

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # -- host side: pick indices, read bytes, replace what cannot be opened ----------------
    def _read(self, record: VideoRecord, pick):
        """The encoded bytes of ``record`` at ``pick(num_frames)``: the video file (frame count from a
        demux-only index), or one JPEG per picked frame."""
        if record.is_frames:
            indices = pick(check_jpeg_frames(record.path, self.cfg.template, record.num_frames))
            return [_read_bytes(os.path.join(record.path, self.cfg.template.format(int(i) + 1)))
                    for i in indices.reshape(-1)]
        with PyAVVideo(record.path) as video:
            num_frames = video.num_frames
        pick(num_frames)
        return _read_bytes(record.path)

    def _prepare(self, index: int, epoch: int) -> ItemPlan:
        """Item ``index`` of ``epoch`` as the CPU path plans it (same indices, generators and
        replacements: :meth:`tdsk.data.items.ItemPlanner.plan`), with its bytes read."""
        return self.dataset.items.plan(index, epoch, self._read)

    # -- device side -------------------------------------------------------------------------
    def _decode(self, prepared: List[ItemPlan]) -> List[torch.Tensor]:
        """Decoded frames per item as ``uint8[F, 3, H, W]`` on ``self.device``."""
        out: List[Optional[torch.Tensor]] = [None] * len(prepared)
        videos = [i for i, p in enumerate(prepared) if not p.record.is_frames]
        folders = [i for i, p in enumerate(prepared) if p.record.is_frames]
        target = self.device if self.dali_device == "gpu" else None
        if videos:
            wanted = [prepared[i].indices.reshape(-1) for i in videos]
            decoded = self._video([prepared[i].payload for i in videos], wanted, out_device=target)
            for i, want, frames in zip(videos, wanted, decoded):
                if frames.shape[0] != len(want):
                    raise DecodeError(prepared[i].record.path, f"DALI returned {frames.shape[0]} frames, "
                                                               f"asked for {len(want)}")
                out[i] = frames
        if folders:
            images = [img for i in folders for img in prepared[i].payload]
            decoded = self._image(images, out_device=target)
            start = 0
            for i in folders:
                n = len(prepared[i].payload)
                try:
                    out[i] = torch.stack(decoded[start:start + n])
                except RuntimeError:
                    raise DecodeError(prepared[i].record.path, "frames of different sizes") from None
                start += n
        return [t.to(self.device).permute(0, 3, 1, 2) for t in out]

    def _batch_items(self, prepared: List[ItemPlan]) -> List[dict]:
        if any(p.skipped for p in prepared):  # val/test: bad videos are left out, in place
            rest = [p for p in prepared if not p.skipped]
            decoded = iter(self._batch_items(rest) if rest else [])
            return [skipped_item(p.index, *p.bad[-1]) if p.skipped else next(decoded) for p in prepared]
        try:
            frames = self._decode(prepared)
        except Exception as exc:  # noqa: BLE001 - any DALI failure: fall back to the CPU path for this batch
            self._video.reset()
            self._image.reset()
            log_once("dali-fallback", f"DALI could not decode a batch ({type(exc).__name__}: {exc}); "
                                      "decoding such batches with the CPU path, which finds the bad file (replaced at "
                                      "train, left out and reported at val/test)",
                     logging.WARNING)
            items = []
            for p in prepared:
                item = self.dataset[(p.requested, p.epoch)]
                item["bad"] = p.bad + item["bad"]
                items.append(item)
            return items
        items = []
        for p, clip in zip(prepared, frames):
            video, label = self.dataset.augment(clip, p.record.label, p.py_rng)
            items.append({"video": video, "label": label, "bad": p.bad, "index": p.index})
        return items

    def __iter__(self):
        self._start_pass()
        order = [i for i, _ in self.sampler]
        epoch = self.epoch
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()

        for batch in self._decoded_batches(batches, epoch):
            if not self._accept(batch):  # val/test batch of bad videos only: nothing to yield
                continue
            video = normalize(batch["video"].to(self.device), self.cfg.mean, self.cfg.std)
            yield video, batch["label"].to(self.device)
        self._finish_pass()

    def _decoded_batches(self, batches: List[List[int]], epoch: int):
        """Collated batches of ``batches``, in order.

        Reading a batch's bytes (the thread pool) overlaps the decoding of the one before.
        With ``prefetch > 0`` the decoding itself runs on one background thread, up to
        ``prefetch`` batches ahead of the consumer, so that DALI decodes the next batch while
        the model trains on this one (a synchronous decode adds its whole time to every
        step). All DALI calls stay on that one thread; an error there is raised here, at
        the batch it belongs to; a consumer that stops early stops the thread.
        """

        def submit(batch):
            return [self._pool.submit(self._prepare, i, epoch) for i in batch]

        def produce():
            pending = submit(batches[0]) if batches else None
            for b in range(len(batches)):
                prepared = [f.result() for f in pending]
                pending = submit(batches[b + 1]) if b + 1 < len(batches) else None  # overlaps the decode below
                yield collate_clips(self._batch_items(prepared))

        if self.prefetch <= 0 or len(batches) <= 1:
            yield from produce()
            return
        done, stop = object(), threading.Event()
        ready: "queue.Queue" = queue.Queue(maxsize=self.prefetch)

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def run():
            try:
                for batch in produce():
                    if not put(batch):
                        return
                put(done)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(exc)

        worker = threading.Thread(target=run, name="tdsk-dali-decode", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()


def _read_bytes(path: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DecodeError(path, "file not found") from None
    except OSError as exc:
        raise DecodeError(path, f"cannot read ({exc})") from None
    if data.size == 0:
        raise DecodeError(path, "zero-length file")
    return data


def build_dali_loader(cfg: DataConfig, split: str, records: Sequence[VideoRecord], *, batch_size: int,
                      device: torch.device, rank: int = 0, world_size: int = 1, seed: int = 0,
                      views: Optional[Tuple[int, int]] = None, num_workers: Optional[int] = None,
                      dali_device: Optional[str] = None, prefetch: int = 2) -> DaliVideoLoader:
    """The DALI twin of :func:`tdsk.data.build_loader` (which calls it for ``decoder: dali``).

    ``prefetch``: batches decoded ahead on a background thread (0: decode in the consumer's
    thread when a batch is asked for, the behaviour before prefetching existed)."""
    return DaliVideoLoader(cfg, split, records, batch_size=batch_size, device=device, rank=rank,
                           world_size=world_size, seed=seed, views=views, num_workers=num_workers,
                           dali_device=dali_device, prefetch=prefetch)
