"""results.json -> PNG: throughput and p50/p95 latency per concurrency, and where the time goes.

Run by the Python 3.11 venv (matplotlib lives there): python bench/plot.py results.json out.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGES = (("tokenize", "tokenize"), ("model", "model"), ("decode", "decode"), ("queue_transport", "queue + transport"))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot.py RESULTS_JSON OUT_PNG", file=sys.stderr)
        return 2
    results = json.loads(Path(argv[0]).read_text())
    stacks = results["stacks"]
    # the two line charts side by side, the stage bars below across the width: their long stack labels would
    # otherwise set the space between every pair of charts
    fig = plt.figure(figsize=(14, 5.2 + 0.35 * len(stacks)))
    grid = fig.add_gridspec(2, 2, height_ratios=(4.2, 1.2 + 0.35 * len(stacks)))
    qps_ax, lat_ax, stage_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, :])
    for name, s in stacks.items():
        levels = sorted(s["summary"], key=int)
        x = [int(c) for c in levels]
        qps_ax.plot(x, [s["summary"][c]["qps"] for c in levels], marker="o", label=s["label"])
        line, = lat_ax.plot(x, [s["summary"][c]["p50"] * 1000 for c in levels], marker="o", label=s["label"])
        lat_ax.plot(x, [s["summary"][c]["p95"] * 1000 for c in levels], linestyle="--", color=line.get_color())
    for ax, title, unit in ((qps_ax, "throughput", "questions / s"), (lat_ax, "latency (solid p50, dashed p95)", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(c) for c in x])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    # below the plots, at most two labels a row: the labels are long, and one row of them ran off both edges
    fig.legend(*qps_ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(2, len(stacks)), fontsize=9)

    names = list(stacks)
    bottom = [0.0] * len(names)
    for key, label in STAGES:
        values = [max(0.0, stacks[n]["breakdown"][key]) * 1000 for n in names]
        stage_ax.barh(range(len(names)), values, left=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    stage_ax.set_yticks(range(len(names)), [stacks[n]["label"] for n in names], fontsize=8)
    stage_ax.set_xlabel("ms per question, p50 at concurrency 1")
    stage_ax.set_title("where the time goes")
    stage_ax.set_xlim(0, max(bottom) * 1.8)  # room on the right for the legend
    stage_ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"bert_squad benchmark: {results['meta']['model']} weights, {results['meta']['threads']} threads, "
                 f"{len(results['windows'])} SQuAD questions")
    fig.tight_layout()
    fig.savefig(argv[1], dpi=110, bbox_inches="tight")  # the figure grows to hold the legend and the long y labels
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
