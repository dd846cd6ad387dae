"""The bf16 mode on each of the CPU's bf16 units against fp32: whole models and dense layers, with each unit's peak
measured in the same run (a roofline). Writes benchmarks/results/bf16_units.md.

    TVM_NUM_THREADS=1 python benchmarks/bf16_units.py [--models resnet50 bert_base] [--rounds 7]

Builds of the same PyTorch module (benchmarks/models.py, batch 1), run interleaved in one process:
  fp32              precision="fp32" (AVX-512 FMA kernels)
  bf16 AMX          precision="bf16" with TENSORFORGE_BF16_UNIT=amx: products on AMX tiles (where the CPU has AMX)
  bf16 AVX512-BF16  precision="bf16" with TENSORFORGE_BF16_UNIT=avx512bf16: products by `vdpbf16ps` in zmm
                    register tiles (backend/cpu/bf16dot.py), what a CPU with AVX512-BF16 but no AMX (Zen 4) runs
Peaks, one core, registers only: fp32 FMA (16 FMA chains), `vdpbf16ps` (16 chains), AMX (`tdpbf16ps` on four
accumulator tiles). The dense table times Gemm + bias + GELU models (BERT-base's and ViT-base's MLP layers) and
reports each build's GFLOP/s as a share of its unit's peak.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "1")

from benchmarks.amx_dense import amx_peak_gflops, dp_peak_gflops, fp32_peak_gflops, gelu_gemm_model  # noqa: E402
from benchmarks.light_models import timed  # noqa: E402
from benchmarks.machine import describe_machine, write_lines  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "bf16_units.md")
MODELS = ["resnet50", "bert_base"]
SHAPES = [(128, 768, 3072), (128, 3072, 768), (197, 768, 3072)]
PEAK_OF = {"fp32": "fp32 FMA", "bf16 AMX": "AMX bf16", "bf16 AVX512-BF16": "vdpbf16ps"}


def unit_label(unit: str) -> str:
    from tensorforge.compiler.ops.amx import UNIT_LABELS

    return f"bf16 {UNIT_LABELS[unit]}"



@contextlib.contextmanager
def unit_env(unit: str | None):
    from tensorforge.compiler.passes.cpu.amx import BF16_UNIT_ENV

    old = os.environ.get(BF16_UNIT_ENV)
    if unit is not None:
        os.environ[BF16_UNIT_ENV] = unit
    try:
        yield
    finally:
        os.environ.pop(BF16_UNIT_ENV, None)
        if old is not None:
            os.environ[BF16_UNIT_ENV] = old


def builds_of(compile_one) -> tuple[dict, dict]:
    """{label: model} and {label: compile seconds} for fp32 and each bf16 unit of this CPU."""
    from tensorforge.compiler.passes.cpu.amx import bf16_units_here

    builds, compile_s = {}, {}
    for label, unit, precision in [("fp32", None, "fp32")] + [(unit_label(u), u, "bf16") for u in bf16_units_here()]:
        with unit_env(unit):
            t0 = time.perf_counter()
            builds[label] = compile_one(precision)
            compile_s[label] = time.perf_counter() - t0
    return builds, compile_s


def interleaved(builds: dict, feeds: dict, rounds: int, per_round: int) -> dict:
    times = {k: [] for k in builds}
    for m in builds.values():
        timed(lambda: m.run(feeds), 2)
    for _ in range(rounds):
        for k, m in builds.items():
            times[k] += timed(lambda: m.run(feeds), per_round)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def bench_model(name: str, rounds: int) -> dict:
    from benchmarks.models import MODELS as BUILDERS
    from tensorforge import compile_model

    module, x = BUILDERS[name](1)
    builds, compile_s = builds_of(lambda p: compile_model(module, example_inputs=(x,), precision=p))
    feeds = {builds["fp32"].input_names[0]: x.numpy()}
    out = {k: m.run(feeds)[0] for k, m in builds.items()}
    scale = float(np.abs(out["fp32"]).max())
    err = {k: float(np.abs(o - out["fp32"]).max()) / scale for k, o in out.items() if k != "fp32"}
    row = {"model": name, "ms": interleaved(builds, feeds, rounds, 3), "error": err, "compile_s": compile_s}
    print(row, flush=True)
    return row


def bench_dense(m: int, k: int, n: int, rounds: int) -> dict:
    from tensorforge import compile_model

    model = gelu_gemm_model(m, k, n)
    builds, _ = builds_of(lambda p: compile_model(model, precision=p))
    x = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    feeds = {builds["fp32"].input_names[0]: x}
    row = {"shape": (m, k, n), "ms": interleaved(builds, feeds, rounds, 10)}
    print(row, flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    from tensorforge.compiler.passes.cpu.amx import bf16_units_here

    threads = int(os.environ["TVM_NUM_THREADS"])
    units = bf16_units_here()
    peaks = {"fp32 FMA": fp32_peak_gflops(threads)}
    if "avx512bf16" in units:
        peaks["vdpbf16ps"] = dp_peak_gflops(threads)
    if "amx" in units:
        peaks["AMX bf16"] = amx_peak_gflops(threads)
    print(peaks, flush=True)
    dense = [bench_dense(*s, args.rounds) for s in SHAPES]
    rows = [bench_model(name, args.rounds) for name in args.models]
    labels = ["fp32"] + [unit_label(u) for u in units]
    bf16 = labels[1:]
    lines = ["# The bf16 mode on each bf16 unit of the CPU, against fp32", "",
             f"Machine: {describe_machine()}. {threads} thread(s), batch 1; the builds of a model run interleaved "
             "in one process (medians).", f"Generated by `TVM_NUM_THREADS={threads} python benchmarks/bf16_units.py`.",
             "", "Peaks measured in this run (one core x threads, registers only): "
             + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + ".", "",
             "## Models", "",
             "| model | " + " | ".join(f"{lb} ms" for lb in labels) + " | "
             + " | ".join(f"fp32 / {lb}" for lb in bf16) + " | "
             + " | ".join(f"{lb} max rel error vs fp32" for lb in bf16) + " | compile s |",
             "|---|" + "---:|" * (len(labels) + 2 * len(bf16)) + "---|"]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['model']} | " + " | ".join(f"{ms[lb]:.2f}" for lb in labels) + " | "
                     + " | ".join(f"{ms['fp32'] / ms[lb]:.2f}x" for lb in bf16) + " | "
                     + " | ".join(f"{100 * r['error'][lb]:.2f} %" for lb in bf16) + " | "
                     + " / ".join(f"{r['compile_s'][lb]:.1f}" for lb in labels) + " |")
    lines += ["", "## Dense layers (Gemm + bias + GELU): GFLOP/s and share of the unit's peak", "",
              "| M x K x N | " + " | ".join(f"{lb} ms" for lb in labels) + " | "
              + " | ".join(f"{lb} GFLOP/s (% of {PEAK_OF[lb]} peak)" for lb in labels) + " |",
              "|---|" + "---:|" * (2 * len(labels))]
    for r in dense:
        m, k, n = r["shape"]
        gf = {lb: 2 * m * k * n / (r["ms"][lb] * 1e-3) / 1e9 for lb in labels}
        lines.append(f"| {m} x {k} x {n} | " + " | ".join(f"{r['ms'][lb]:.3f}" for lb in labels) + " | "
                     + " | ".join(f"{gf[lb]:.0f} ({100 * gf[lb] / peaks[PEAK_OF[lb]]:.0f} %)" for lb in labels)
                     + " |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
