"""Video data pipeline: official sampling, decoders, augmentation, loaders.

Public API:

* :func:`sample_indices` -- official frame-index sampling (pure; docs/sampling.md §1-2).
* :func:`build_loader` -- train/val/test loaders yielding ``(Tensor[B, T, M, 3, H, W], labels)``
  normalised on the training device (test: ``Tensor[B, V, T, M, 3, H, W]``).
* :func:`load_video_clip` -- one video file (or frame folder) -> test views, for predict.
* :func:`parse_list` / :class:`VideoRecord` -- annotation lists.
* :class:`DataConfig` -- the validated ``data:`` section of a recipe.

Decoders: PyAV (videos) and Pillow (JPEG folders) in CPU workers; DALI on the GPU
(:mod:`tdsk.data.dali`) when ``nvidia.dali`` is installed and the device is CUDA.
Importing this package never needs DALI (nor PyAV, until a video is decoded).
"""
from tdsk.data.config import DataConfig, SS_FLIP_LABEL_PAIRS
from tdsk.data.decoders import DecodeError, PyAVVideo, read_jpeg_frames, read_video_frames
from tdsk.data.lists import ListFormatError, VideoRecord, parse_list
from tdsk.data.loader import (BadSampleError, BadSampleReport, VideoLoader, build_loader, dali_available,
                              load_video_clip, resolve_decoder)
from tdsk.data.sampling import sample_indices
from tdsk.data.transforms import CLIP_MEAN, CLIP_STD, normalize

__all__ = [
    "sample_indices", "build_loader", "load_video_clip", "parse_list", "VideoRecord", "ListFormatError",
    "DataConfig", "SS_FLIP_LABEL_PAIRS", "DecodeError", "PyAVVideo", "read_video_frames", "read_jpeg_frames",
    "BadSampleError", "BadSampleReport", "VideoLoader", "dali_available", "resolve_decoder",
    "CLIP_MEAN", "CLIP_STD", "normalize",
]
