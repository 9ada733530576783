"""The doctor's report as text (tables of versions, devices, implementations, checks)."""
from __future__ import annotations

from typing import Dict, List, Tuple



# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

def _table(rows: List[List[str]], header: List[str]) -> List[str]:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header)] + [fmt(r) for r in rows]


def _impl_cell(entry: Dict[str, str]) -> str:
    if entry["impl"] in ("reference", "sdpa", "pyav") and entry["reason"]:
        return f"{entry['impl']}: {entry['reason']}"
    return entry["impl"]


def format_report(report: Dict) -> str:
    v = report["versions"]
    lines = [f"tdsk {v['tdsk']['version']} doctor", ""]

    def ver(key):
        info = v[key]
        return info["version"] if info["version"] else f"- ({info['error']})"

    t = v["torch"]
    torch_s = f"{t['version']} (CUDA {t['cuda'] or '-'}, cuDNN {t['cudnn'] or '-'})"
    rows = [["python", ver("python")], ["torch", torch_s], ["triton", ver("triton")],
            ["open_clip", ver("open_clip")], ["DALI", ver("dali")], ["xformers", ver("xformers")],
            ["PyAV", ver("pyav")]]
    lines += _table(rows, ["component", "version"]) + [""]

    rows = []
    for d in report["devices"]:
        if d["type"] == "cpu":
            rows.append([d["name"], f"{d['description']} ({d['machine']}), {d['threads']} threads"])
        else:
            rows.append([d["name"], f"{d['description']}, sm_{d['capability'].replace('.', '')}, "
                                    f"{d['memory_gib']} GiB, driver {d['driver'] or '?'}"])
    if not any(d["type"] == "cuda" for d in report["devices"]):
        rows.append(["cuda", "no CUDA device found"])
    lines += _table(rows, ["device", "found"]) + [""]

    impl = report["implementations"]
    cols = list(impl)
    rows = [[op] + [_impl_cell(impl[c][op]) for c in cols] for op in impl[cols[0]]]
    lines += _table(rows, ["op"] + [c + (" (no device)" if c == "cuda" and not any(
        d["type"] == "cuda" for d in report["devices"]) else "") for c in cols])
    cpu_ref = impl.get("cpu", {}).get("temporal_pool_diff", {})
    if cpu_ref.get("impl") == "reference" and "TDSK_DISABLE_EXT" not in cpu_ref.get("reason", ""):
        lines.append("(the C++ CPU kernels: `pip install --no-build-isolation -e .` builds tdsk._C against this torch)")
    lines.append("")

    grouped: Dict[Tuple[str, str], List[Dict]] = {}
    for c in report["checks"]:
        grouped.setdefault((c["group"], c["device"]), []).append(c)
    rows = []
    for (group, device), items in grouped.items():
        statuses = {c["status"] for c in items}
        status = ("FAIL" if statuses & {"fail", "error"} else "ok" if "pass" in statuses else "skip")
        if status == "skip":
            detail = items[0]["detail"]
        else:
            detail = " ".join(c["label"] + ("" if c["status"] == "pass" else f"({c['status'].upper()})")
                              for c in items)
            if len(items) == 1 and items[0]["status"] == "pass" and items[0]["note"]:
                detail += f"  {items[0]['note']}"
        rows.append([group, device, status, detail])
    if rows:
        lines += _table(rows, ["self-test", "device", "result", "detail"])
    bad = [c for c in report["checks"] if c["status"] in ("fail", "error")]
    if bad:
        lines.append("")
        for c in bad:
            lines.append(f"{c['status'].upper()} {c['name']}: {c['detail']}")
    s = report["summary"]
    lines += ["", f"{s['passed']} passed, {s['failed'] + s['errors']} failed, {s['skipped']} skipped "
                  f"in {report['seconds']:.1f} s" + ("" if report["ok"] else "  -> installation check FAILED")]
    return "\n".join(lines)
