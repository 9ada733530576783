"""Device-run bookkeeping: ``mark`` (a step's status, the doctor's and pytest's summaries) and
``report`` (``results.md`` and ``results.png``)."""
from __future__ import annotations

import json
import sys
import os
from typing import Dict, Optional

from runlib import BENCH, error_text, load, save


# ---------------------------------------------------------------------------
# bookkeeping: step status, doctor / pytest summaries, report
# ---------------------------------------------------------------------------

def _junit_summary(path: str) -> Dict:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    s = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped_reasons = [], {}
    for suite in suites:
        for k in s:
            s[k] += int(suite.get(k, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    failed.append({"test": name, "message": (el.get("message") or "")[:300]})
            sk = case.find("skipped")
            if sk is not None:
                reason = (sk.get("message") or "")[:120]
                skipped_reasons[reason] = skipped_reasons.get(reason, 0) + 1
    s["passed"] = s["tests"] - s["failures"] - s["errors"] - s["skipped"]
    s["failed_tests"] = failed
    s["skip_reasons"] = skipped_reasons
    return s


def cmd_mark(args) -> int:
    data = load(args.out)
    data.setdefault("steps", {})[args.step] = {"status": args.status, "rc": int(args.rc),
                                               "seconds": int(args.seconds), "box": int(args.box)}
    if args.doctor and os.path.exists(args.doctor) and os.path.getsize(args.doctor):
        try:
            with open(args.doctor) as fh:
                rep = json.load(fh)
            data["doctor"] = {k: rep.get(k) for k in ("ok", "summary", "failed", "seconds", "implementations")}
            data["doctor"]["problems"] = [{"name": c["name"], "status": c["status"], "detail": c["detail"]}
                                          for c in rep.get("checks", []) if c["status"] in ("fail", "error")]
            from tdsk.cli.doctor import format_report

            print(format_report(rep), flush=True)
        except Exception as exc:
            data["doctor"] = {"error": f"doctor.json unreadable: {error_text(exc)}"}
    elif args.doctor:
        data["doctor"] = {"error": "the doctor wrote no report (cut off?)"}
    if args.junit:
        try:
            data["pytest_gpu"] = _junit_summary(args.junit)
        except Exception as exc:
            data["pytest_gpu"] = {"error": f"no junit report ({error_text(exc)})"}
    save(args.out, data)
    print(f"[{args.step}] {args.status} (rc {args.rc}) in {args.seconds} s (box {args.box} s)", flush=True)
    return 0


def _ms(s: Optional[float]) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def markdown(data: Dict) -> str:
    L = []
    dry = " — DRY RUN (CPU rehearsal: sizes shrunk, timings meaningless)" if data.get("dry_run") else ""
    L.append(f"# tdsk device run: {data.get('machine')}{dry}")
    L.append("")
    L.append(f"GPU **{data.get('gpu') or '-'}**, driver {data.get('driver') or '-'}, torch {data.get('torch')}, "
             f"triton {data.get('triton')}, CUDA {data.get('cuda') or '-'}, cuDNN {data.get('cudnn') or '-'}, "
             f"Python {data.get('python')}; started {data.get('started')}.")
    if data.get("first_line"):
        L += ["", "```", data["first_line"], "```"]
    steps = data.get("steps", {})
    if steps:
        L += ["", "| step | status | seconds (box) |", "|---|---|---:|"]
        for name, s in steps.items():
            L.append(f"| {name} | {s['status']} | {s['seconds']} ({s['box']}) |")
    doc = data.get("doctor")
    if doc:
        if "error" in doc:
            L += ["", f"**doctor**: {doc['error']}"]
        else:
            s = doc.get("summary") or {}
            L += ["", f"**doctor**: {'ok' if doc.get('ok') else 'FAILED'} — {s.get('passed')} passed, "
                      f"{(s.get('failed') or 0) + (s.get('errors') or 0)} failed, {s.get('skipped')} skipped "
                      f"({doc.get('seconds')} s)."]
            for p in doc.get("problems", []):
                L.append(f"- {p['status'].upper()} `{p['name']}`: {p['detail']}")
            impl = doc.get("implementations") or {}
            if impl:
                L += ["", "| op | " + " | ".join(impl) + " |", "|---|" + "---|" * len(impl)]
                for op in next(iter(impl.values())):
                    L.append(f"| {op} | " + " | ".join(f"{impl[d][op]['impl']} ({impl[d][op]['reason']})"
                                                       for d in impl) + " |")
    pt = data.get("pytest_gpu")
    if pt:
        if "error" in pt:
            L += ["", f"**pytest -m gpu**: {pt['error']}"]
        else:
            L += ["", f"**pytest -m gpu**: {pt['passed']} passed, {pt['failures'] + pt['errors']} failed, "
                      f"{pt['skipped']} skipped."]
            for f in pt.get("failed_tests", []):
                L.append(f"- FAILED `{f['test']}`: {f['message']}")
            for reason, n in list(pt.get("skip_reasons", {}).items())[:6]:
                L.append(f"- skipped ({n}): {reason}")
    c = data.get("ceilings")
    if c:
        L += ["", "**Ceilings**: device copy "
                  + (f"{c['copy_gb_per_s']:.0f} GB/s (read + write, {c['copy_bytes'] / 2**30:.3g} GiB)"
                     if "copy_gb_per_s" in c else "-")
                  + ", bf16 matmul "
                  + (f"{c['matmul_bf16_tflops']:.0f} TFLOP/s ({c['matmul_n']}^3)" if "matmul_bf16_tflops" in c
                     else "-") + "."]
    ops_rows = [r for r in data.get("cases", []) if r["op"] in ("temporal_pool_diff", "frame_diff_concat")]
    if ops_rows:
        L += ["", "| op | case | mode | tdsk | GB/s | % of copy | reference | compiled |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in ops_rows:
            p = r["providers"]
            td = p.get("tdsk", {})

            def other(name):
                if name not in p:
                    return "-"
                sp = r["speedup"].get(name)
                return f"{_ms(p[name]['median_s'])}" + (f" ({sp:.2f}x)" if sp else "")

            pct = f"{r['pct_of_copy_bandwidth']:.0f}%" if "pct_of_copy_bandwidth" in r else "-"
            gbs = f"{td['gb_per_s']:.0f}" if "gb_per_s" in td else "-"
            L.append(f"| {r['op']} | {r['case']} | {r['mode']} | {_ms(td.get('median_s'))} | {gbs} | {pct} | "
                     f"{other('reference')} | {other('compiled')} |")
        L.append("")
        L.append("(x) = that provider's time / tdsk's: how many times faster tdsk is.")
    tr = data.get("train")
    if tr:
        L += ["", f"**Training step** ({tr['config']}, {tr['batch_clips']} clips of {tr['frames']} frames at "
                  f"{tr['size']}, {tr['precision']}, {tr['optimizer']}):", "",
              "| provider | ms/step | clips/s | peak memory | above weights |", "|---|---:|---:|---:|---:|"]
        for name, r in tr.get("rows", {}).items():
            if "error" in r:
                L.append(f"| {name} | error: {r['error']} | | | |")
            else:
                mem = f"{r['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in r else "-"
                above = f"{r['peak_above_weights_gib']:.2f} GiB" if "peak_above_weights_gib" in r else "-"
                L.append(f"| {name} | {r['median_s'] * 1e3:.1f} | {r['clips_per_s']:.1f} | {mem} | {above} |")
        if "speedup_vs_official" in tr:
            L.append("")
            L.append(f"tdsk is **{tr['speedup_vs_official']:.2f}x** the official step speed"
                     + (f", with {tr['memory_ratio_vs_official']:.2f}x its activation memory"
                        if "memory_ratio_vs_official" in tr else "") + ".")
        par = tr.get("parity")
        if par:
            if "max_abs_diff" in par:
                text = (f"all keys matched, max |logit difference| {par['max_abs_diff']:.2g} "
                        f"(max |logit| {par['max_abs_logit']:.2g})")
            else:
                text = ", ".join(f"{k} {v}" for k, v in par.items())
            L.append(f"Parity (tdsk's weights loaded into the official model, fp32 eval, 2 clips): {text}.")
    mods = data.get("modules")
    if mods:
        L += ["", "| module | case | provider | fwd+bwd | tdsk speed-up |", "|---|---|---|---:|---:|"]
        for key in ("td_adapter", "sme"):
            r = mods.get(key, {}).get("row")
            if not r:
                continue
            for name, p in r["providers"].items():
                sp = r["speedup"].get(name)
                L.append(f"| {r['op']} | {r['case']} | {name} | {_ms(p['median_s'])} | {f'{sp:.2f}x' if sp else ''} |")
            for name, e in r.get("errors", {}).items():
                L.append(f"| {r['op']} | {r['case']} | {name} | error: {e} | |")
            if "parity_max_abs_diff" in mods[key]:
                L.append(f"| {r['op']} | parity vs official (fp32) | max abs diff | "
                         f"{mods[key]['parity_max_abs_diff']:.3g} | |")
    inf = data.get("inference")
    if inf:
        L += ["", f"**Inference** ({inf['config']}, {inf['views']} views, {inf['videos_per_batch']} videos = "
                  f"{inf['clips_per_batch']} clips per batch, {inf['precision']}):"]
        for name, r in inf.get("rows", {}).items():
            L.append(f"- {name}: " + (f"{r['videos_per_s']:.1f} videos/s, {r['clips_per_s']:.1f} clips/s "
                                      f"({_ms(r['median_s'])} per batch)" if "median_s" in r else r["error"]))
    at = data.get("attention")
    if at:
        L += ["", f"**Side attention** ({at['shape']}):"]
        for mode, r in at.get("rows", {}).items():
            L.append(f"- {mode}: " + ", ".join(f"{n} {_ms(p['median_s'])}" for n, p in r["providers"].items()))
    lo = data.get("loader")
    if lo:
        L += ["", f"**Loader** (val, 8x5 frames, {lo['workers']} workers):"]
        step_rate = ((data.get("train") or {}).get("rows", {}).get("tdsk") or {}).get("clips_per_s")
        for key, r in lo.get("rows", {}).items():
            vs = (f" ({r['clips_per_s'] / step_rate:.2f}x the {step_rate:.1f} clips/s the tdsk training step "
                  f"consumes)" if step_rate and "clips_per_s" in r else "")
            L.append(f"- {key}: " + (f"{r['clips_per_s']:.1f} clips/s{vs}" if "clips_per_s" in r else r["error"]))
    for key in ("big_temporal_pool_diff", "big_frame_diff_concat"):
        r = data.get(key)
        if not r:
            continue
        if "error" in r:
            L += ["", f"**One launch above 2^31 elements, {key[4:]}**: error: {r['error']}"]
            continue
        n = r.get("numel", r.get("out_numel"))
        bwd = (f", backward {_ms(r['backward_s'])} (max rel diff {r['max_rel_diff_last_sample_bwd']:.2g})"
               if "backward_s" in r else "")
        L += ["", f"**One launch above 2^31 elements, {r['op']}** {tuple(r['shape'])} {r['dtype']} "
                  f"({n:.3g} elements): forward {_ms(r['forward_s'])}, {r['forward_gb_per_s']:.0f} GB/s, "
                  f"max rel diff on the last sample vs reference {r['max_rel_diff_last_sample_fwd']:.2g}{bwd}."]
    sw = data.get("kernels_sweep")
    if sw:
        L += ["", f"**block_hw sweep**, temporal_pool_diff {tuple(sw['shape'])}, k=3, a=0.5:", "",
              "| dtype | block_hw | forward | backward |", "|---|---|---:|---:|"]
        for r in sw["rows"]:
            L.append(f"| {r['dtype']} | {r['block_hw']} | {_ms(r.get('forward_s')) if 'forward_s' in r else r.get('forward_error', '-')} | "
                     f"{_ms(r.get('backward_s')) if 'backward_s' in r else r.get('backward_error', '-')} |")
    up = data.get("userpath_compile_fullgraph")
    if up:
        if up.get("status") == "ok":
            glob = (f"gradient difference relative to the whole gradient {up['grad_global_rel_diff']:.2g}, "
                    if "grad_global_rel_diff" in up else "")
            text = (f"eager {_ms(up['eager_step_s'])}, compiled {_ms(up['compiled_step_s'])} "
                    f"({up['speedup_compiled_vs_eager']:.2f}x; first compiled step {up['first_compiled_step_s']:.1f} s), "
                    f"loss {up['loss_eager']:.5f} vs {up['loss_compiled']:.5f}, {glob}"
                    f"per-tensor relative grad difference (norm) max {up['grad_max_rel_diff']:.2g}, "
                    f"median {up['grad_median_rel_diff']:.2g} over {up['grads_compared']} tensors.")
        else:
            text = f"error: {up.get('error')}"
        L += ["", "**torch.compile(fullgraph=True)**, tiny model fwd+bwd, bf16 autocast: " + text]
    uf = data.get("userpath_fit_fp16_compile")
    if uf:
        L += ["", "**fit() one demo epoch, train.precision=fp16 train.compile=true**: "
              + (f"{uf['seconds']:.1f} s, {uf['steps_done']} steps, best val top-1 {uf['best_val_top1']}, "
                 f"last metrics {uf['last_metrics']}."
                 if uf.get("status") == "ok" else f"error: {uf.get('error')}")]
    if data.get("notes"):
        L += ["", "Notes:"] + [f"- {n}" for n in data["notes"]]
    return "\n".join(L) + "\n"


def cmd_report(args) -> int:
    data = load(args.out)
    md = os.path.join(args.out, "results.md")
    with open(md, "w") as fh:
        fh.write(markdown(data))
    print(f"[report] wrote {md}", flush=True)
    sys.path.insert(0, BENCH)
    try:
        import report as bench_report  # bench/report.py: the PNG of the tdsk ratios

        summary = {k: data.get(k) for k in ("machine", "torch", "triton", "cuda", "threads")}
        summary["cases"] = [c for c in data.get("cases", []) if c.get("speedup")]
        png = os.path.join(args.out, "results.png")
        bench_report.bar_chart(summary, png)
        print(f"[report] wrote {png}", flush=True)
    except BaseException as exc:  # report.py raises SystemExit when there is no ratio to draw
        print(f"[report] no PNG: {error_text(exc)}", flush=True)
    return 0
