"""The embedded demo (``python -m tdsk.train`` with no arguments; docs/timeline.md §5):

* :mod:`.dataset` -- the motion-direction video dataset made from real footage
  (``python -m tdsk.demo`` generates it and prints the folder);
* :mod:`.loader` -- the in-memory loader its short epochs use;
* :mod:`.analysis` -- after training: Grad-CAM hit rate, an explain picture, a timeline;
* :mod:`.runner` -- generate, train TDS-CLIP and the baseline, analyse, print the table.
"""
from tdsk.cli.demo.dataset import (CLASSES, REVERSED_PAIRS, DemoSpec, _decode_every, _encode,  # noqa: F401
                                    _load_sources, _render, default_cache_dir, generate, main, sample_clip_dir,
                                    sample_clips)
from tdsk.cli.demo.loader import MemoryClipLoader, _decode_split  # noqa: F401
from tdsk.cli.demo.analysis import (EXPLAIN_CLIP, TIMELINE_ORDER, analyse, cam_localisation,  # noqa: F401
                                    concat_parts, part_accuracy, read_boxes, read_spec, report_lines,
                                    segment_boxes)
from tdsk.cli.demo.runner import demo_config, run_demo  # noqa: F401

__all__ = ["CLASSES", "REVERSED_PAIRS", "DemoSpec", "generate", "sample_clips", "default_cache_dir",
           "MemoryClipLoader", "analyse", "report_lines", "cam_localisation", "concat_parts", "part_accuracy",
           "read_spec", "read_boxes", "segment_boxes", "demo_config", "run_demo", "main"]
