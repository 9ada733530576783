"""Turn a benchmark summary into a Markdown table and a PNG bar chart of the ratios.

Input: the JSON written by ``pytest bench/ --benchmark-only --tdsk-summary PATH``.

    python bench/report.py bench/results/<machine>.json            # writes <machine>.md and <machine>.png
    python bench/report.py summary.json --out-md table.md --out-png ratios.png

The table lists, per (op, case, mode, device), each provider's median time and
effective GB/s, and the speed-up of tdsk over every other provider (all measured in
the same run). Nothing here measures anything: it only formats what the run recorded.
"""
import argparse
import json
import os
import sys


def markdown(summary: dict) -> str:
    lines = [
        f"Machine: **{summary.get('machine')}**, torch {summary.get('torch')}, triton {summary.get('triton')}, "
        f"CUDA {summary.get('cuda')}, {summary.get('threads')} CPU threads.",
        "",
        "| op | case | mode | device | provider | median | GB/s | tdsk speed-up |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for entry in summary["cases"]:
        for name, row in sorted(entry["providers"].items()):
            median = row["median_s"]
            med = f"{median * 1e3:.3f} ms" if median >= 1e-3 else f"{median * 1e6:.1f} us"
            gbps = f"{row['gb_per_s']:.1f}" if "gb_per_s" in row else ""
            ratio = entry["speedup"].get(name)
            ratio_s = f"{ratio:.2f}x" if ratio is not None else ""
            lines.append(
                f"| {entry['op']} | {entry['case']} | {entry['mode']} | {entry['device']} | {name} | {med} | {gbps} | {ratio_s} |"
            )
        if "pct_of_copy_bandwidth" in entry:
            lines.append(
                f"| {entry['op']} | {entry['case']} | {entry['mode']} | {entry['device']} | tdsk vs copy | | | "
                f"{entry['pct_of_copy_bandwidth']:.0f}% of copy bandwidth |"
            )
    return "\n".join(lines) + "\n"


def bar_chart(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for entry in summary["cases"]:
        for name, ratio in sorted(entry["speedup"].items()):
            labels.append(f"{entry['op']}\n{entry['case']} {entry['mode']}\nvs {name}")
            values.append(ratio)
    if not values:
        raise SystemExit("report: no tdsk ratios in this summary (did the run include the tdsk provider?)")
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(values)), 4.5))
    colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
    ax.bar(range(len(values)), values, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("tdsk speed-up (x)")
    ax.set_title(f"tdsk vs other providers, same run: {summary.get('machine')}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", help="JSON written by --tdsk-summary")
    parser.add_argument("--out-md", help="Markdown table path (default: next to the JSON)")
    parser.add_argument("--out-png", help="PNG bar chart path (default: next to the JSON)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.summary):
        print(f"report: {args.summary} does not exist; run `pytest bench/ --benchmark-only --tdsk-summary "
              f"{args.summary}` first", file=sys.stderr)
        return 2
    with open(args.summary) as fh:
        summary = json.load(fh)
    stem = os.path.splitext(args.summary)[0]
    md_path = args.out_md or stem + ".md"
    png_path = args.out_png or stem + ".png"
    with open(md_path, "w") as fh:
        fh.write(markdown(summary))
    bar_chart(summary, png_path)
    print(f"wrote {md_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
