"""Dense layers on the CPU's units, as a roofline: each kernel's GFLOP/s beside the peak of the unit it uses, measured
in the same run.

Per shape (BERT-base's and ViT-base's dense layers, a decoder's few-token rows), one Gemm + bias + GELU model runs:
  TF fp32       TensorForge fp32 (AVX-512 FMA, the packed dense kernel)
  TF bf16       TensorForge precision="bf16": AMX tiles (ops/amx.py) where the CPU has AMX-BF16
  ORT fp32      onnxruntime on the same ONNX model
  torch bf16    PyTorch's bf16 linear + GELU (oneDNN, AMX where available): what a vendor library gets on the unit
Peaks, measured here on one core: fp32 FMA (a register-resident FMA loop compiled by TVM), and AMX bf16 (four
accumulator tiles fed from L1: `tdpbf16ps` back to back). Rounds are interleaved in one process; medians.

    TVM_NUM_THREADS=1 python benchmarks/amx_dense.py [--rounds 15] [--threads 1]

Writes benchmarks/results/amx_dense.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.dense_rows import gemm_model  # noqa: E402
from benchmarks.machine import describe_machine, write_lines  # noqa: E402

SHAPES = [(128, 768, 768), (128, 768, 3072), (128, 3072, 768), (197, 768, 3072), (197, 3072, 768),
          (384, 768, 3072), (16, 768, 768), (32, 768, 3072)]


def gelu_gemm_model(m, k, n):
    """Gemm + bias followed by an exact GELU (erf), the BERT MLP's first layer."""
    import onnx
    from onnx import helper

    model = gemm_model(m, k, n)
    g = model.graph
    g.node[0].output[0] = "h"
    g.node.extend([helper.make_node("Gelu", ["h"], ["y"], domain="")])
    model.opset_import[0].version = 20
    onnx.checker.check_model(model)
    return model


def fp32_peak_gflops(threads: int) -> float:
    """One core's fp32 FMA peak: 16 independent 16-lane FMA chains (TVM-compiled, registers only)."""
    import tvm
    from tvm.script import tirx as T

    from tensorforge.compiler.backend.build import resolve_target

    steps = 1 << 20

    @T.prim_func
    def fma(out: T.Buffer((16, 16), "float32")):
        acc = T.alloc_buffer((16, 16), "float32", scope="local")
        for c in T.unroll(16):
            for v in T.vectorized(16):
                acc[c, v] = T.float32(0)
        for _ in range(steps):
            for c in T.unroll(16):
                for v in T.vectorized(16):
                    acc[c, v] = acc[c, v] * T.float32(0.999999) + T.float32(1e-7)
        for c in T.unroll(16):
            for v in T.vectorized(16):
                out[c, v] = acc[c, v]

    lib = tvm.compile(tvm.IRModule({"main": fma}), target=resolve_target("cpu"))
    buf = tvm.runtime.tensor(np.zeros((16, 16), np.float32))
    best = min(_time(lambda: lib["main"](buf)) for _ in range(5))
    return 2 * 16 * 16 * steps / best / 1e9 * threads


def amx_peak_gflops(threads: int) -> float:
    """One core's AMX bf16 peak: tdpbf16ps on 4 accumulators, operand tiles loaded from L1 each step."""
    import tvm
    from tvm.script import tirx as T

    from tensorforge.compiler.backend.build import resolve_target
    from tensorforge.compiler.backend.cpu.amx import tile_config_bytes
    from tensorforge.runtime.cpu_features import request_amx

    request_amx()
    steps = 1 << 16
    i8 = T.int8

    @T.prim_func
    def amx(cfg: T.Buffer((64,), "uint8"), a: T.Buffer((32, 32), "uint16"), b: T.Buffer((32, 32), "uint16"),
            c: T.Buffer((32, 32), "float32")):
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", i8(0)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", i8(1)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", i8(2)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", i8(3)))
        for _ in range(steps):
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", i8(4), T.address_of(a[0, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", i8(5), T.address_of(a[16, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", i8(6), T.address_of(b[0, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", i8(7), T.address_of(b[16, 0]), T.int64(64)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", i8(0), i8(4), i8(6)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", i8(1), i8(4), i8(7)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", i8(2), i8(5), i8(6)))
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", i8(3), i8(5), i8(7)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", i8(0), T.address_of(c[0, 0]), T.int64(128)))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))

    lib = tvm.compile(tvm.IRModule({"main": amx}), target=resolve_target("cpu"))
    args = [tvm.runtime.tensor(np.array(tile_config_bytes(), np.uint8)),
            tvm.runtime.tensor(np.zeros((32, 32), np.uint16)), tvm.runtime.tensor(np.zeros((32, 32), np.uint16)),
            tvm.runtime.tensor(np.zeros((32, 32), np.float32))]
    best = min(_time(lambda: lib["main"](*args)) for _ in range(5))
    return 4 * 2 * 16 * 16 * 32 * steps / best / 1e9 * threads


def dp_peak_gflops(threads: int) -> float:
    """One core's AVX512-BF16 peak: 16 independent `vdpbf16ps` chains (registers only), through the same LLVM
    function the kernels inline (backend/cpu/bf16dot.py)."""
    import tvm
    from tvm.script import tirx as T

    from tensorforge.compiler.backend.build import resolve_target
    from tensorforge.compiler.backend.cpu.bf16dot import DPBF16PS_LL

    steps = 1 << 18

    @T.prim_func
    def dp(out: T.Buffer((16, 16), "float32")):
        acc = T.alloc_buffer((16, 16), "float32", scope="local")
        for c in T.unroll(16):
            for v in T.vectorized(16):
                acc[c, v] = T.float32(0)
        for s in T.serial(steps, annotations={"pragma_import_llvm": DPBF16PS_LL}):
            for c in T.unroll(16):
                acc[c, T.Ramp(0, 1, 16)] = T.call_extern(
                    "float32x16", "tf_dpbf16ps", acc[c, T.Ramp(0, 1, 16)],
                    T.Broadcast(T.int32(0x3F803F80), 16), T.Broadcast(T.int32(0x00010001), 16))
        for c in T.unroll(16):
            for v in T.vectorized(16):
                out[c, v] = acc[c, v]

    lib = tvm.compile(tvm.IRModule({"main": dp}), target=resolve_target("cpu"))
    buf = tvm.runtime.tensor(np.zeros((16, 16), np.float32))
    best = min(_time(lambda: lib["main"](buf)) for _ in range(5))
    return 2 * 32 * 16 * steps / best / 1e9 * threads


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "1")))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "amx_dense.md"))
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import torch
    from onnx import numpy_helper

    from benchmarks.light_models import ort_session
    from tensorforge import compile_model
    from tensorforge.runtime.cpu_features import has_amx

    torch.set_num_threads(args.threads)
    peaks = {"fp32 FMA": fp32_peak_gflops(args.threads)}
    if has_amx():
        peaks["AMX bf16"] = amx_peak_gflops(args.threads)
    rows = []
    for m, k, n in SHAPES:
        model = gelu_gemm_model(m, k, n)
        x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
        feeds = {"x": x}
        fp32, bf16 = compile_model(model), compile_model(model, precision="bf16")
        sess = ort_session(model, args.threads)
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        w, b = (torch.from_numpy(init[name].copy()).bfloat16() for name in ("w", "b"))
        xt = torch.from_numpy(x)

        def torch_bf16():
            with torch.inference_mode():
                return torch.nn.functional.gelu(torch.nn.functional.linear(xt.bfloat16(), w, b)).float()

        ref = sess.run(None, feeds)[0]
        runs = {"TF fp32": lambda: fp32.run(feeds), "TF bf16": lambda: bf16.run(feeds),
                "ORT fp32": lambda: sess.run(None, feeds), "torch bf16": torch_bf16}
        err = {"TF bf16": float(np.abs(bf16.run(feeds)[0] - ref).max() / np.abs(ref).max()),
               "torch bf16": float(np.abs(torch_bf16().numpy() - ref).max() / np.abs(ref).max())}
        times = {key: [] for key in runs}
        for fn in runs.values():
            fn()
        for _ in range(args.rounds):
            for key, fn in runs.items():
                times[key].append(_time(fn))
        ms = {key: float(np.median(v)) * 1e3 for key, v in times.items()}
        gflops = {key: 2 * m * n * k / (v / 1e3) / 1e9 for key, v in ms.items()}
        uses_amx = any(s["op"].split("+")[0] == "dense_amx" for s in bf16.plan["steps"])
        rows.append((m, k, n, ms, gflops, err, uses_amx))
        print(m, k, n, {key: round(v, 3) for key, v in ms.items()}, file=sys.stderr, flush=True)
    amx_peak = peaks.get("AMX bf16", float("nan"))
    lines = ["# Dense layers on the CPU's units (a roofline)", "",
             f"Machine: {describe_machine()}. {args.threads} thread(s). Each shape is Gemm + bias + exact GELU "
             "(x: M x K, weight N x K). Medians of interleaved rounds in one process "
             f"(`TVM_NUM_THREADS={args.threads} python benchmarks/amx_dense.py`).", "",
             "Peaks measured in this run: " + ", ".join(f"{key} {v:.0f} GFLOP/s" for key, v in peaks.items()) +
             ".", "",
             "| M x K x N | TF fp32 ms | TF bf16 ms | ORT fp32 ms | torch bf16 ms | TF fp32 GFLOP/s (% FMA peak) "
             "| TF bf16 GFLOP/s (% AMX peak) | torch bf16 GFLOP/s | TF bf16 / ORT | TF bf16 / torch bf16 "
             "| error TF bf16 / torch bf16 | AMX |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for m, k, n, ms, gf, err, uses_amx in rows:
        lines.append(
            f"| {m} x {k} x {n} | {ms['TF fp32']:.3f} | {ms['TF bf16']:.3f} | {ms['ORT fp32']:.3f} | "
            f"{ms['torch bf16']:.3f} | {gf['TF fp32']:.0f} ({100 * gf['TF fp32'] / peaks['fp32 FMA']:.0f} %) | "
            f"{gf['TF bf16']:.0f} ({100 * gf['TF bf16'] / amx_peak:.0f} %) | {gf['torch bf16']:.0f} | "
            f"{ms['TF bf16'] / ms['ORT fp32']:.2f} | {ms['TF bf16'] / ms['torch bf16']:.2f} | "
            f"{100 * err['TF bf16']:.2f} % / {100 * err['torch bf16']:.2f} % | {'yes' if uses_amx else 'no'} |")
    lines += ["", "Errors: the largest |output - onnxruntime fp32| over the largest |onnxruntime fp32|."]
    write_lines(args.out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
