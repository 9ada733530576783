"""The device run's report renders what real runs wrote: the committed H200 results
(bench/results/nvidia-h200_*), every section including the kernels and user-path steps,
for a step that succeeded and one that failed."""
import copy
import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))
import device_run  # noqa: E402

RUNS = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "nvidia-h200_*-run[0-9].json")))


def test_the_committed_gpu_runs_are_there():
    assert len(RUNS) >= 2, RUNS


@pytest.mark.parametrize("path", RUNS, ids=os.path.basename)
def test_report_renders_a_real_run(path):
    with open(path) as fh:
        data = json.load(fh)
    md = device_run.markdown(data)
    assert md.startswith("# tdsk device run: NVIDIA H200")
    if "train" in data:
        assert "**Training step**" in md
    if "userpath_compile_fullgraph" in data:
        assert "**torch.compile(fullgraph=True)**" in md


def test_report_userpath_and_kernels_sections():
    with open(RUNS[-1]) as fh:
        data = json.load(fh)
    ok = copy.deepcopy(data)
    up = ok["userpath_compile_fullgraph"]
    assert up["status"] == "ok"
    up["grad_global_rel_diff"] = 0.024
    md = device_run.markdown(ok)
    assert "relative to the whole gradient 0.024" in md and "2.12x" in md
    failed = copy.deepcopy(data)
    failed["userpath_compile_fullgraph"] = {"status": "error", "error": "NotImplementedError: no kernel"}
    failed["big_temporal_pool_diff"] = {"error": "OutOfMemoryError: ..."}
    failed["kernels_sweep"] = {"shape": [32, 20, 8, 14, 14],
                               "rows": [{"dtype": "float32", "block_hw": "default", "forward_s": 6e-5,
                                         "backward_error": "boom"}]}
    md = device_run.markdown(failed)
    assert "error: NotImplementedError: no kernel" in md
    assert "above 2^31 elements, temporal_pool_diff**: error: OutOfMemoryError" in md
    assert "| float32 | default | 0.060 ms | boom |" in md
