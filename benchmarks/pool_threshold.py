"""Where a kernel becomes worth sharing: each kernel of a set of single-op models (dense, elementwise, softmax,
conv) of growing size, timed on the calling thread alone and on the pool (runtime/cpu_pool.py), interleaved in one
process. The smallest work at which the pool wins sets runtime/model.py SERIAL_WORK.

    python benchmarks/pool_threshold.py [--threads 2] [--repeat 400]

Writes benchmarks/results/pool_threshold.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe_machine, write_lines  # noqa: E402


def cases():
    """(label, onnx model, feeds): work from ~1e3 to ~1e7."""
    from tests.support import single_op_model

    rng = np.random.default_rng(0)
    out = []
    for m, k, n in [(1, 64, 64), (1, 256, 256), (8, 128, 128), (16, 256, 256), (32, 256, 512), (64, 512, 512),
                    (128, 768, 768)]:
        x = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        out.append((f"matmul {m}x{k}x{n}", single_op_model("MatMul", {"x": x}, const_inputs={"w": w}), {"x": x}))
    for size in [1024, 8192, 65536, 262144, 1048576]:
        a = rng.standard_normal((size,)).astype(np.float32)
        out.append((f"add {size}", single_op_model("Add", {"a": a, "b": a}), {"a": a, "b": a}))
    for rows, cols in [(8, 64), (64, 256), (256, 1024)]:
        a = rng.standard_normal((rows, cols)).astype(np.float32)
        out.append((f"softmax {rows}x{cols}", single_op_model("Softmax", {"x": a}, axis=-1), {"x": a}))
    for c, hw in [(8, 8), (16, 16), (32, 32)]:
        x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
        out.append((f"conv {c}x{hw}x{hw} 3x3", single_op_model("Conv", {"x": x}, const_inputs={"w": w},
                                                                pads=[1, 1, 1, 1]), {"x": x}))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=400)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pool_threshold.md"))
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from tensorforge import compile_model
    from tensorforge.runtime import cpu_pool

    import tempfile

    from tensorforge import runtime
    rows = []
    tmp = tempfile.mkdtemp(prefix="tf-threshold-")
    for label, model, feeds in cases():
        m = compile_model(model)
        m.save(os.path.join(tmp, "m.tfa"))
        tvm_pool = runtime.load(os.path.join(tmp, "m.tfa"), thread_pool="tvm")
        ex, ex_tvm = m._executor, tvm_pool._executor
        work = [s.work or 0 for s in m.program.steps]
        modes = {"caller alone": (ex, [True] * len(work)), "pool": (ex, [False] * len(work)),
                 "tvm pool": (ex_tvm, [False] * len(work))}
        samples = {k: [] for k in modes}
        with m._bound(feeds) as ctx, tvm_pool._bound(feeds) as ctx_tvm:
            for _ in range(args.repeat):
                for mode, (e, flags) in modes.items():
                    c = ctx_tvm if e is ex_tvm else ctx
                    e.serial = flags
                    e.execute(c)  # untimed: the same state for every mode
                    t0 = time.perf_counter()
                    e.execute(c)
                    samples[mode].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e6 for k, v in samples.items()}
        rows.append((label, max(work), med["caller alone"], med["pool"], med["tvm pool"]))
        print(label, rows[-1][1:], file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r[1])
    lines = ["# When to share a kernel with the pool", "",
             f"Machine: {describe_machine()}. {cpu_pool.threads()} threads. Median of {args.repeat} interleaved "
             "runs of each single-kernel model, microseconds (the Python call included). Reproduce: "
             "`python benchmarks/pool_threshold.py`.", "",
             "| kernel | work (plan) | caller alone us | pool us | TVM's pool us | pool / alone |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, work, alone, pool, tvm in rows:
        lines.append(f"| {label} | {work:,} | {alone:.1f} | {pool:.1f} | {tvm:.1f} | {pool / alone:.2f} |")
    # the smallest work from which on the pool is never more than 5 % slower than the caller alone
    safe = next((w for i, (_, w, *_) in enumerate(rows) if all(pl <= 1.05 * a for _, _, a, pl, _ in rows[i:])), None)
    lines += ["", f"From a work of {safe:,} on, the pool is never more than 5 % slower than the caller alone "
                  f"(runtime/model.py SERIAL_WORK: kernels below it run on the caller). The smallest kernels here "
                  "have no parallel loop at all: their 'caller alone' time includes the two calls that set and "
                  "clear the serial flag (~0.3 us each; a model run sets it only where it changes)."
              if safe is not None else "The pool is slower somewhere at every size."]
    write_lines(args.out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
