"""``python -m tdsk.doctor``: the installation check (CPU here; the same checks run on CUDA)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import run_tool
import tdsk.ops
from tdsk import doctor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _doctor(*args, env=None):
    return run_tool("tdsk.doctor", *args, env=env, timeout=180, cwd=ROOT)


def test_doctor_json_on_cpu_passes():
    res = _doctor("--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)  # nothing but the JSON on stdout
    assert report["ok"] is True and report["failed"] == []
    assert {"python", "torch", "triton", "open_clip", "dali", "xformers", "pyav"} <= set(report["versions"])
    assert report["versions"]["torch"]["version"] == torch.__version__
    assert report["devices"][0]["name"] == "cpu"
    assert set(report["implementations"]) == {"cpu", "cuda"}
    cpu = report["implementations"]["cpu"]
    assert set(cpu) == {"temporal_pool_diff", "frame_diff_concat", "attention", "video_decode"}
    assert cpu["temporal_pool_diff"]["impl"] == tdsk.ops.backend_report()["cpu"]
    assert cpu["attention"]["impl"] == "sdpa"
    names = {c["name"] for c in report["checks"]}
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        assert f"temporal_pool_diff/cpu/{dtype}" in names and f"frame_diff_concat/cpu/{dtype}" in names
    assert {"attention.sdpa/cpu/float32", "dali_decode/cpu", "tiny_model/cpu"} <= names
    assert all(c["status"] in ("pass", "skip") for c in report["checks"])
    # every op check really ran (only DALI / open_clip checks may skip, when not installed)
    assert all(c["status"] == "pass" for c in report["checks"] if c["group"] in ("temporal_pool_diff",
                                                                             "frame_diff_concat"))


def test_doctor_table(capsys):
    assert doctor.main(["--only", "ops,attention", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for text in ("component", "torch", "temporal_pool_diff", "frame_diff_concat", "attention (sdpa)",
                 "self-test", "passed, 0 failed"):
        assert text in out, out


def test_forced_mismatch_fails_and_names_the_check(monkeypatch, capsys):
    real = tdsk.ops.temporal_pool_diff

    def off_by_a_little(x, kernel_size=3, channel_mix=0.0):
        return real(x, kernel_size, channel_mix) + 0.01  # a wrong kernel, as the doctor sees it

    monkeypatch.setattr(tdsk.ops, "temporal_pool_diff", off_by_a_little)
    assert doctor.main(["--json", "--only", "ops", "--device", "cpu"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert "temporal_pool_diff/cpu/float32" in report["failed"]
    by_name = {c["name"]: c for c in report["checks"]}
    bad = by_name["temporal_pool_diff/cpu/float32"]
    assert bad["status"] == "fail" and "forward" in bad["detail"] and "differ" in bad["detail"]
    assert by_name["frame_diff_concat/cpu/float32"]["status"] == "pass"  # only the broken op fails
    # the table names it too
    assert doctor.main(["--only", "ops", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL temporal_pool_diff/cpu/float32: forward" in out and "installation check FAILED" in out


def test_disable_ext_is_the_reported_reason():
    res = _doctor("--json", "--only", "ops", "--device", "cpu", env={"TDSK_DISABLE_EXT": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(res.stdout)
    entry = report["implementations"]["cpu"]["temporal_pool_diff"]
    assert entry["impl"] == "reference"
    assert "TDSK_DISABLE_EXT=1" in entry["reason"]
    assert report["env"]["TDSK_DISABLE_EXT"] == "1"
    assert all(c["status"] == "pass" for c in report["checks"])  # the reference against itself


def test_compare_catches_nan_and_shape():
    a = torch.zeros(3)
    assert doctor.compare(a, a, 0.0, 0.0, "same") == 0.0
    with pytest.raises(doctor.Mismatch, match="1 of 3 elements differ"):
        doctor.compare(torch.tensor([0.0, float("nan"), 0.0]), a, 1.0, 1.0, "nan")
    assert doctor.compare(torch.tensor([float("nan")]), torch.tensor([float("nan")]), 0.0, 0.0, "both") == 0.0
    with pytest.raises(doctor.Mismatch, match="shape"):
        doctor.compare(torch.zeros(2), a, 1.0, 1.0, "shape")


def test_usage_errors():
    with pytest.raises(SystemExit) as exc:
        doctor.main(["--only", "opz"])
    assert exc.value.code == 2
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            doctor.main(["--device", "cuda"])
        assert exc.value.code == 2


def test_tolerance_table_matches_the_op_tests():
    # One table for the op tests and the doctor.
    import test_ops

    assert test_ops.TOL == doctor.OP_TOLERANCES


def test_device_run_bookkeeping_and_report(tmp_path):
    """bench/gpu/device_run.py's mark and report (the device run's plumbing; the run itself
    is rehearsed with `bash bench/gpu/run.sh --dry-run OUT`, docs/gpu-run.md)."""
    script = os.path.join(ROOT, "bench", "gpu", "device_run.py")
    out = tmp_path / "out"
    out.mkdir()
    rep = doctor.run_doctor(only=["ops"], device="cpu")
    (out / "doctor.json").write_text(json.dumps(rep))
    results = {
        "machine": "NVIDIA H200", "gpu": "NVIDIA H200", "driver": "580.0", "torch": torch.__version__,
        "cuda": "13.0", "triton": "3.6.0", "threads": 16, "dry_run": False,
        "ceilings": {"copy_bytes": 2 << 30, "copy_gb_per_s": 4300.0, "matmul_n": 8192, "matmul_bf16_tflops": 780.0},
        "cases": [{"op": "temporal_pool_diff", "case": "train_b16", "mode": "forward", "device": "cuda",
                   "providers": {"tdsk": {"median_s": 1e-5, "gb_per_s": 2000.0},
                                 "reference": {"median_s": 5e-5, "gb_per_s": 400.0}},
                   "speedup": {"reference": 5.0}, "pct_of_copy_bandwidth": 46.0}],
        "train": {"config": "ssv1_b16", "batch_clips": 32, "frames": "8x5", "size": 224,
                  "precision": "bf16 autocast", "optimizer": "AdamW",
                  "rows": {"tdsk": {"median_s": 0.2, "clips_per_s": 160.0, "peak_mem_gib": 9.0,
                                    "peak_above_weights_gib": 6.0},
                           "official": {"error": "OutOfMemoryError: ..."}}},
    }
    (out / "results.json").write_text(json.dumps(results))
    env = dict(os.environ)
    for args in (["mark", str(out), "doctor", "ok", "0", "9", "120", "--doctor", str(out / "doctor.json")],
                 ["mark", str(out), "pytest_gpu", "timeout", "124", "150", "150", "--junit", str(out / "none.xml")],
                 ["report", str(out)]):
        res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["steps"]["doctor"]["status"] == "ok" and data["doctor"]["ok"] is True
    assert data["steps"]["pytest_gpu"]["status"] == "timeout" and "error" in data["pytest_gpu"]
    md = (out / "results.md").read_text()
    for text in ("NVIDIA H200", "| doctor | ok |", "4300 GB/s", "| temporal_pool_diff | train_b16 | forward |",
                 "46%", "(5.00x)", "OutOfMemoryError", "**doctor**: ok"):
        assert text in md, text
