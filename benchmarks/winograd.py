"""Winograd F(4x4, 3x3) vs the direct conv, per conv shape and on ResNet-50 end to end. Writes
benchmarks/results/winograd.md.

    TVM_NUM_THREADS=1 python benchmarks/winograd.py [--repeat 15] [--rounds 8] [--no-model] [--shapes ...]

Each shape: one conv + bias + ReLU on NCHW[16]c in and out (as inside a chain of blocked convs), compiled with the
`winograd` pass and without it, run interleaved in one process; the least time of the runs (the one with the least
interference from the other jobs on this shared machine). GFLOP/s are direct-conv equivalents (2 * IC * OC * 9 * OH
* OW per conv), so that the two columns compare. ResNet-50 (benchmarks/models.py): whole-model medians and least
times, interleaved, with and without the pass.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "1")

from benchmarks.layout import conv_flops, conv_graphs  # noqa: E402
from benchmarks.light_models import timed  # noqa: E402
from benchmarks.machine import describe_machine, write_lines  # noqa: E402
from tensorforge import compile_model  # noqa: E402
from tensorforge.compiler.options import CompileOptions  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "winograd.md")
OFF = CompileOptions(disabled_passes=frozenset({"winograd"}))
# ResNet-50's stride-1 3x3 convs, VGG's (conv1_2 .. conv5_x), and smaller channel counts to find the threshold
SHAPES = ["64->64 3x3/1 56x56", "128->128 3x3/1 28x28", "256->256 3x3/1 14x14", "512->512 3x3/1 7x7",
          "64->64 3x3/1 224x224", "128->128 3x3/1 112x112", "256->256 3x3/1 56x56", "512->512 3x3/1 28x28",
          "512->512 3x3/1 14x14", "16->16 3x3/1 56x56", "32->32 3x3/1 56x56", "16->32 3x3/1 28x28",
          "32->64 3x3/1 28x28", "64->64 3x3/1 7x7", "32->32 3x3/1 14x14", "256->256 3x3/1 4x4",
          "512->512 3x3/1 4x4"]


def bench_shapes(shapes: list[str], repeat: int) -> list[tuple[str, float, float, bool]]:
    """(shape, direct ms, winograd ms, the pass's own choice) per shape."""
    rows = []
    for shape in shapes:
        _, (g, feeds) = conv_graphs(shape)
        wino = compile_model(g, options=CompileOptions(disabled_passes=frozenset()))
        forced = any(s["op"].startswith("winograd_conv2d") for s in wino.plan["steps"])
        if not forced:  # the rule says no: time the Winograd kernel anyway, with a policy that takes every conv
            wino = _compile_forced(g)
        direct = compile_model(g, options=OFF)
        a, b = direct.run(feeds)[0], wino.run(feeds)[0]
        err = float(np.abs(a - b).max() / max(1e-6, np.abs(a).max()))
        td, tw = [], []
        for _ in range(repeat):
            td += direct.benchmark(feeds, repeat=3, warmup=1)
            tw += wino.benchmark(feeds, repeat=3, warmup=1)
        rows.append((shape, min(td) * 1e3, min(tw) * 1e3, forced))
        print(f"{shape}: direct {rows[-1][1]:.3f} ms, winograd {rows[-1][2]:.3f} ms, "
              f"ratio {rows[-1][2] / rows[-1][1]:.2f}, rule {'winograd' if forced else 'direct'}, rel err {err:.1e}",
              flush=True)
    return rows


def _compile_forced(g):
    from tensorforge.compiler.driver import compile_graph, import_model, optimize
    from tensorforge.compiler.passes.cpu.winograd import WinogradPolicy, winograd_graph

    opts = CompileOptions(disabled_passes=frozenset({"winograd", "fuse"}))
    h = optimize(import_model(g), opts)
    winograd_graph(h, WinogradPolicy(min_in_channels=1, min_out_channels=1, min_tiles=1))
    from tensorforge.compiler.passes import fuse

    return compile_graph(fuse(h), CompileOptions())


def bench_model(name: str, rounds: int) -> dict:
    from benchmarks.models import example_feeds, export_onnx

    model = export_onnx(name)
    feeds, _ = example_feeds(name)
    with_w = compile_model(model)
    without = compile_model(model, options=OFF)
    a, b = without.run(feeds)[0], with_w.run(feeds)[0]
    err = float(np.abs(a - b).max() / max(1e-6, np.abs(a).max()))
    nw = sum(1 for s in with_w.plan["steps"] if s["op"].startswith("winograd_conv2d"))
    timed(lambda: with_w.run(feeds), 2)
    timed(lambda: without.run(feeds), 2)
    tw, to = [], []
    for _ in range(rounds):
        tw += timed(lambda: with_w.run(feeds), 3)
        to += timed(lambda: without.run(feeds), 3)
    return {"model": name, "with_ms": np.median(tw) * 1e3, "without_ms": np.median(to) * 1e3,
            "with_min": np.min(tw) * 1e3, "without_min": np.min(to) * 1e3, "rel_err": err, "winograd_kernels": nw}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="*", default=SHAPES)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--no-model", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    rows = bench_shapes(args.shapes, args.repeat)
    models = [] if args.no_model else [bench_model("resnet50", args.rounds)]
    for r in models:
        print(f"{r['model']}: with {r['with_ms']:.2f} ms, without {r['without_ms']:.2f} ms; least {r['with_min']:.2f}"
              f" / {r['without_min']:.2f}; {r['winograd_kernels']} Winograd kernels; rel err {r['rel_err']:.1e}")
    threads = os.environ["TVM_NUM_THREADS"]
    lines = ["# Winograd F(4x4, 3x3) vs direct 3x3 convolution (CPU)", "",
             f"Machine: {describe_machine()}. {threads} thread(s), batch 1, interleaved runs in one process.",
             f"Generated by `TVM_NUM_THREADS={threads} python benchmarks/winograd.py`.", "",
             "## One conv (+ bias + ReLU), NCHW[16]c in and out", "",
             "Least time of the interleaved runs; GFLOP/s are direct-conv equivalents (2 * IC * OC * 9 * OH * OW). "
             "'rule' is what the `winograd` pass chooses for the shape (compiler/passes/cpu/winograd.py).", "",
             "| shape | direct ms | Winograd ms | Winograd / direct | direct GFLOP/s | Winograd GFLOP/s-equiv | rule |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for shape, d, w, chosen in rows:
        f = conv_flops(shape)
        lines.append(f"| {shape} | {d:.3f} | {w:.3f} | {w / d:.2f} | {f / d / 1e6:.0f} | {f / w / 1e6:.0f} | "
                     f"{'Winograd' if chosen else 'direct'} |")
    if models:
        lines += ["", "## End to end (batch 1)", "",
                  "| model | with winograd ms (median) | without | ratio | least: with | without | ratio | "
                  "Winograd kernels | rel. diff of outputs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in models:
            lines.append(f"| {r['model']} | {r['with_ms']:.2f} | {r['without_ms']:.2f} | "
                         f"{r['with_ms'] / r['without_ms']:.3f} | {r['with_min']:.2f} | {r['without_min']:.2f} | "
                         f"{r['with_min'] / r['without_min']:.3f} | {r['winograd_kernels']} | {r['rel_err']:.1e} |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
