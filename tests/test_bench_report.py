"""bench/report.py formats a benchmark summary (table + PNG) without inventing numbers."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_report():
    spec = importlib.util.spec_from_file_location("bench_report", os.path.join(ROOT, "bench", "report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_writes_table_and_chart(tmp_path):
    summary = {
        "machine": "test-machine", "torch": "x", "triton": None, "cuda": None, "threads": 2,
        "cases": [{
            "op": "temporal_pool_diff", "case": "train_b16", "mode": "forward", "device": "cpu",
            "providers": {
                "tdsk": {"median_s": 2e-5, "gb_per_s": 50.0},
                "reference": {"median_s": 1e-4, "gb_per_s": 10.0},
                "copy": {"median_s": 1e-5},
            },
            "speedup": {"reference": 5.0},
            "pct_of_copy_bandwidth": 50.0,
        }],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    assert _load_report().main([str(path)]) == 0
    table = (tmp_path / "s.md").read_text()
    assert "| temporal_pool_diff | train_b16 | forward | cpu | reference | 100.0 us | 10.0 | 5.00x |" in table
    assert "50% of copy bandwidth" in table
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_missing_file_is_a_clear_error(tmp_path, capsys):
    assert _load_report().main([str(tmp_path / "nope.json")]) == 2
    assert "run `pytest bench/" in capsys.readouterr().err
