"""Device-run steps ``train`` (B/16 training step), ``modules`` (TD-Adapter, SME stem) and
``inference`` (3x2 views), each against the official modules when a local copy is given."""
from __future__ import annotations

import statistics
from typing import Callable, Dict

from official import OfficialStem, official_classifier, official_or_note, parity
from runlib import (add_case, autocast, bench, build_tdsk, device_of, error_text, lazy_torch, model_setting,
                    raise_recompile_limits, sync, time_steps, update, video_for)


# ---------------------------------------------------------------------------
# training step
# ---------------------------------------------------------------------------

def _train_row(name, net, inputs, labels, params, dev, setting) -> Dict:
    """One provider's training step: fwd + cross-entropy + bwd + AdamW, bf16 autocast."""
    torch = lazy_torch()
    import torch.nn.functional as F

    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.15, betas=(0.9, 0.999))

    def step():
        with autocast(dev):
            loss = F.cross_entropy(net(inputs), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    row = {"provider": name, "trainable_params": sum(p.numel() for p in params)}
    step()  # first step: Triton JIT, cuDNN autotuning, optimizer state
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    times = time_steps(step, dev, setting["warmup"] - 1, setting["steps"])
    row.update(median_s=statistics.median(times), min_s=min(times), steps=len(times),
               clips_per_s=labels.shape[0] / statistics.median(times))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        row.update(peak_mem_gib=peak / 2**30, peak_above_weights_gib=(peak - base) / 2**30)
    del opt
    return row


def cmd_train(args) -> int:
    torch = lazy_torch()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    model = build_tdsk(setting, dev)
    b = setting["batch"]
    video = video_for(model, b, dev)
    labels = torch.randint(0, model.num_classes, (b,), device=dev)
    t, m = model.num_segments, model.num_local
    header = {"config": setting["config"], "batch_clips": b, "frames": f"{t}x{m}", "size": model.encoder.image_size,
              "precision": "bf16 autocast", "optimizer": "AdamW", "device": dev.type}
    result = dict(header, rows={})
    print(f"[train] {setting['config']}: {b} clips of {t}x{m} frames at {model.encoder.image_size}, "
          f"fwd+bwd+AdamW, bf16 autocast", flush=True)
    rows = {"tdsk": lambda: _train_row("tdsk", model, video, labels, list(model.trainable_parameters()), dev,
                                       setting)}
    mod = official_or_note(args, "train")
    official = None
    if mod is not None:
        official = official_classifier(mod, model).to(dev)
        result["parity"] = parity(official, model, video[:2], dev)
        print(f"[train] parity tdsk -> official weights: {result['parity']}", flush=True)
        off_in = video.reshape(b * t, m * 3, *video.shape[-2:])
        rows["official"] = lambda: _train_row("official", official, off_in, labels,
                                              [p for p in official.parameters() if p.requires_grad], dev, setting)
    update(args.out, "train", result)
    for name, fn in rows.items():
        try:
            row = fn()
        except Exception as exc:
            row = {"provider": name, "error": error_text(exc)}
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        result["rows"][name] = row
        msg = (f"{row['median_s'] * 1e3:.1f} ms/step, {row['clips_per_s']:.1f} clips/s"
               + (f", peak {row['peak_mem_gib']:.2f} GiB" if "peak_mem_gib" in row else "")
               if "median_s" in row else row["error"])
        print(f"[train] {name}: {msg}", flush=True)
        if "tdsk" in result["rows"] and "official" in result["rows"] and "median_s" in result["rows"]["official"] \
                and "median_s" in result["rows"]["tdsk"]:
            result["speedup_vs_official"] = result["rows"]["official"]["median_s"] / result["rows"]["tdsk"]["median_s"]
            if "peak_mem_gib" in result["rows"]["tdsk"]:
                result["memory_ratio_vs_official"] = (result["rows"]["tdsk"]["peak_above_weights_gib"]
                                                      / result["rows"]["official"]["peak_above_weights_gib"])
        update(args.out, "train", result)
        case = {"op": "train_step", "case": f"{setting['config']}_{b}clips", "mode": "fwd+bwd+AdamW",
                "device": dev.type, "providers": {k: {"median_s": v["median_s"]} for k, v in result["rows"].items()
                                                  if "median_s" in v}, "speedup": {}}
        if "tdsk" in case["providers"] and "official" in case["providers"]:
            case["speedup"]["official"] = result["speedup_vs_official"]
        add_case(args.out, case)
    return 0



# ---------------------------------------------------------------------------
# modules: TD-Adapter, SME stem
# ---------------------------------------------------------------------------

def _module_rows(out, dev, dry, label, case, providers: Dict[str, Callable]) -> Dict:
    row = {"op": label, "case": case, "mode": "forward+backward", "device": dev.type, "providers": {},
           "speedup": {}}
    for name, fn in providers.items():
        try:
            row["providers"][name] = {"median_s": bench(fn, dev, dry)}
        except Exception as exc:
            row.setdefault("errors", {})[name] = error_text(exc)
        if "tdsk" in row["providers"]:
            for other, r in row["providers"].items():
                if other != "tdsk":
                    row["speedup"][other] = r["median_s"] / row["providers"]["tdsk"]["median_s"]
        add_case(out, row)
    parts = [f"{n} {r['median_s'] * 1e3:.3f} ms" for n, r in row["providers"].items()]
    parts += [f"{n} ERROR {e}" for n, e in row.get("errors", {}).items()]
    print(f"[modules] {label} {case}: " + "; ".join(parts), flush=True)
    return row


def cmd_modules(args) -> int:
    torch = lazy_torch()
    from tdsk.models.sme_adapter import SMEAdapter
    from tdsk.models.td_adapter import TDAdapter

    raise_recompile_limits()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    from tdsk.models import model_config

    cfg = model_config(setting["config"], clip_pretrained=None)
    d, t, m, b = int(cfg["side_dim"]), int(cfg["num_segments"]), int(cfg["num_local"]), setting["batch"]
    size = int(cfg["input_size"])
    patch = 16
    g = size // patch
    mod = official_or_note(args, "modules")
    result = {"td_adapter": {}, "sme": {}}
    gen = torch.Generator(device=dev).manual_seed(2)

    # TD-Adapter on the side network's conv-stack output: tokens [B, T, N, D] (tdsk) and
    # the volume [B, D, T, g, g] (official SAModule), bf16 under autocast as in training.
    torch.manual_seed(0)
    td = TDAdapter(d, reduction=int(cfg["td_reduction"]), kernel_size=int(cfg["pool_kernel"]),
                   channel_mix=float(cfg["td_channel_mix"])).to(dev)
    y = torch.randn(b, t, g * g, d, device=dev, generator=gen, dtype=torch.bfloat16)
    grad_y = torch.randn_like(y)
    y_vol = y.permute(0, 3, 1, 2).reshape(b, d, t, g, g).contiguous()
    grad_vol = grad_y.permute(0, 3, 1, 2).reshape(b, d, t, g, g).contiguous()

    def fwd_bwd(module, inp, grad):
        leaf = inp.detach().clone().requires_grad_(True)

        def run():
            leaf.grad = None
            with autocast(dev):
                out = module(leaf)
            out.backward(grad)
        return run

    providers = {"tdsk": fwd_bwd(td, y, grad_y)}
    if mod is not None:
        official_td = mod.SAModule(d, reduction=int(cfg["td_reduction"]), n_segment=t).to(dev)
        missing = official_td.load_state_dict(td.state_dict(), strict=False)
        with torch.no_grad():
            yt = y.float()
            a = td(yt)
            o = official_td(yt.permute(0, 3, 1, 2).reshape(b, d, t, g, g))
        result["td_adapter"]["parity_max_abs_diff"] = float(
            (a.permute(0, 3, 1, 2).reshape(b, d, t, g, g) - o).abs().max())
        result["td_adapter"]["parity_keys"] = {"missing": len(missing.missing_keys),
                                               "unexpected": len(missing.unexpected_keys)}
        providers["official"] = fwd_bwd(official_td, y_vol, grad_vol)
        providers["official_compiled"] = fwd_bwd(torch.compile(official_td, dynamic=False), y_vol, grad_vol)
    result["td_adapter"]["row"] = _module_rows(args.out, dev, args.dry_run, "td_adapter",
                                               f"D{d}_{b}x{t}x{g}x{g}_bf16", providers)
    update(args.out, "modules", result)

    # SME stem (SME-Adapter): frames [B, T, M, 3, H, W] fp32 (normalised, no grad) -> S0, under
    # bf16 autocast; the backward reaches the stem's weights.
    torch.manual_seed(0)
    sme = SMEAdapter(d, patch, num_local=m, fusion_alpha=float(cfg["fusion_alpha"]), mode="kernel").to(dev)
    sme_folded = SMEAdapter(d, patch, num_local=m, fusion_alpha=float(cfg["fusion_alpha"]), mode="folded").to(dev)
    sme_folded.load_state_dict(sme.state_dict())
    video = torch.randn(b, t, m, 3, size, size, device=dev, generator=gen)
    official_in = video.reshape(b * t, m * 3, size, size)
    with torch.no_grad(), autocast(dev):
        out_shape = sme(video).shape
    grad_s = torch.randn(out_shape, device=dev, generator=gen, dtype=torch.bfloat16)

    def fwd_bwd_stem(module, inp):
        def run():
            module.zero_grad(set_to_none=True)
            with autocast(dev):
                out = module(inp)
            out.backward(grad_s)
        return run

    providers = {"tdsk": fwd_bwd_stem(sme, video), "tdsk_folded": fwd_bwd_stem(sme_folded, video)}
    if mod is not None:
        stem = OfficialStem.build(mod, d, patch, m, t).to(dev)
        names = {"rgb_conv": "side_conv1", "rgb_bn": "side_pre_bn3d", "diff_conv": "side_conv1_c5",
                 "diff_bn": "side_pre_bn3d_c5"}
        state = {}
        for k, v in sme.state_dict().items():
            head, rest = k.split(".", 1)
            state[f"{names[head]}.{rest}"] = v
        stem.load_state_dict(state)
        with torch.no_grad():
            diff = (sme(video) - stem(official_in)).abs().max()
        result["sme"]["parity_max_abs_diff"] = float(diff)
        providers["official"] = fwd_bwd_stem(stem, official_in)
        providers["official_compiled"] = fwd_bwd_stem(torch.compile(stem, dynamic=False), official_in)
    result["sme"]["row"] = _module_rows(args.out, dev, args.dry_run, "sme_stem", f"D{d}_{b}x{t}x{m}_{size}px",
                                        providers)
    update(args.out, "modules", result)
    return 0



# ---------------------------------------------------------------------------
# inference at 3x2 views
# ---------------------------------------------------------------------------

def cmd_inference(args) -> int:
    torch = lazy_torch()
    dev = device_of(args.dry_run)
    setting = model_setting(args.dry_run)
    model = build_tdsk(setting, dev).eval()
    views = 6  # 3 spatial crops x 2 temporal clips, each view a clip of T x M frames
    n = setting["videos"]
    video = video_for(model, n * views, dev)
    t, m = model.num_segments, model.num_local
    result = {"config": setting["config"], "videos_per_batch": n, "views": "3x2", "clips_per_batch": n * views,
              "precision": "bf16 autocast", "rows": {}}
    nets = {"tdsk": (model, video)}
    mod = official_or_note(args, "inference")
    if mod is not None:
        nets["official"] = (official_classifier(mod, model).to(dev).eval(),
                            video.reshape(n * views * t, m * 3, *video.shape[-2:]))
    for name, (net, inp) in nets.items():
        def fwd(net=net, inp=inp):
            with torch.no_grad(), autocast(dev):
                return net(inp)
        try:
            times = time_steps(fwd, dev, setting["warmup"], setting["steps"])
            med = statistics.median(times)
            result["rows"][name] = {"median_s": med, "videos_per_s": n / med, "clips_per_s": n * views / med}
            print(f"[inference] {name}: {n} videos x 6 views in {med * 1e3:.1f} ms: {n / med:.1f} videos/s, "
                  f"{n * views / med:.1f} clips/s", flush=True)
        except Exception as exc:
            result["rows"][name] = {"error": error_text(exc)}
            print(f"[inference] {name}: {error_text(exc)}", flush=True)
        update(args.out, "inference", result)
    case = {"op": "inference_3x2", "case": f"{setting['config']}_{n}videos", "mode": "forward", "device": dev.type,
            "providers": {k: {"median_s": v["median_s"]} for k, v in result["rows"].items() if "median_s" in v},
            "speedup": {}}
    if "tdsk" in case["providers"] and "official" in case["providers"]:
        case["speedup"]["official"] = case["providers"]["official"]["median_s"] / case["providers"]["tdsk"]["median_s"]
    add_case(args.out, case)
    return 0
