"""Bar chart of the suite's latency ratios to onnxruntime from its markdown tables (benchmarks/results/suite.md).

    python benchmarks/plot_suite.py benchmarks/results/suite.md -o suite.png
"""

from __future__ import annotations

import argparse
import re

import numpy as np


def read_table(path: str) -> tuple[list[str], list[dict]]:
    rows, header = [], None
    for line in open(path):
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        rows.append(dict(zip(header, cells)))
    engines = [h[:-3] for h in header if h.endswith(" ms")]
    return engines, rows


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tables", nargs="+")
    p.add_argument("-o", "--out", default="benchmarks/results/suite.png")
    args = p.parse_args(argv)
    labels, series = [], {}
    for path in args.tables:
        engines, rows = read_table(path)
        for r in rows:
            labels.append(f"{r['model']}\nbatch {r['batch']}")
            ort = float(r["onnxruntime ms"])
            for e in engines:
                v = r[f"{e} ms"]
                series.setdefault(e, []).append(float(v) / ort if re.fullmatch(r"[\d.]+", v) else np.nan)
            for e in series:
                if len(series[e]) < len(labels):
                    series[e].append(np.nan)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(labels)), 4.8))
    width = 0.8 / len(series)
    for i, (engine, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=engine)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(labels)) + width * (len(series) - 1) / 2, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("latency / onnxruntime (lower is better)")
    ax.set_title("Latency relative to onnxruntime, 2 threads, fp32 (untuned TensorForge)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
