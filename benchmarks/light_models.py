"""Latency of TensorForge vs onnxruntime on the nine light models that ship with onnx (random weights, batch 1).

Both engines use 2 threads; their runs are interleaved in one process (rounds of TF then ORT) so that noise from a
shared machine hits both alike. Prints a markdown table and writes it to benchmarks/results/light_models.md.

    TVM_NUM_THREADS=2 python benchmarks/light_models.py [--rounds 15] [model ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "2")

from benchmarks.machine import describe_machine  # noqa: E402
from tensorforge import compile_model  # noqa: E402
from tensorforge.runtime.bundle import time_runs  # noqa: E402
from tensorforge.compiler.examples import LIGHT_MODELS, light_input, light_path, randomize_weights  # noqa: E402


def ort_session(model: onnx.ModelProto, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def timed(fn, n: int) -> list[float]:
    return time_runs(fn, n, warmup=0)


def bench_model(name: str, rounds: int, per_round: int, threads: int) -> dict:
    model = randomize_weights(onnx.load(light_path(name)), seed=0)
    feeds = light_input(model)
    t0 = time.perf_counter()
    tf = compile_model(model)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = ort_session(model, threads)
    ort_init_s = time.perf_counter() - t0
    ours = tf.run(feeds)[0]
    ref = sess.run(None, feeds)[0]
    ok = bool(np.allclose(ours, ref, rtol=1e-3, atol=1e-5))
    tf_times, ort_times = [], []
    timed(lambda: tf.run(feeds), 2)
    timed(lambda: sess.run(None, feeds), 2)
    for _ in range(rounds):
        tf_times += timed(lambda: tf.run(feeds), per_round)
        ort_times += timed(lambda: sess.run(None, feeds), per_round)
    return {"model": name, "tf_ms": np.median(tf_times) * 1e3, "ort_ms": np.median(ort_times) * 1e3,
            "compile_s": compile_s, "ort_init_s": ort_init_s, "kernels": tf.num_kernels, "match": ok}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=LIGHT_MODELS)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--per-round", type=int, default=3)
    p.add_argument("--threads", type=int, default=int(os.environ["TVM_NUM_THREADS"]))
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "light_models.md"))
    args = p.parse_args(argv)
    rows = []
    for name in args.models:
        r = bench_model(name, args.rounds, args.per_round, args.threads)
        rows.append(r)
        print(f"{name}: tensorforge {r['tf_ms']:.2f} ms, onnxruntime {r['ort_ms']:.2f} ms, "
              f"compile {r['compile_s']:.1f} s", file=sys.stderr, flush=True)
    lines = [
        "# Light models: TensorForge vs onnxruntime (batch 1, fp32, random weights)",
        "",
        f"Machine: {describe_machine()}. Threads: {args.threads} for both engines; runs interleaved in one process, "
        f"{args.rounds} rounds x {args.per_round} runs each; medians.",
        "",
        "| model | TensorForge ms | onnxruntime ms | ratio TF/ORT | TF compile s | ORT session s | kernel calls | match |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tf_ms']:.2f} | {r['ort_ms']:.2f} | {r['tf_ms'] / r['ort_ms']:.2f} | "
                     f"{r['compile_s']:.1f} | {r['ort_init_s']:.2f} | {r['kernels']} | {'yes' if r['match'] else 'NO'} |")
    ratios = [r["tf_ms"] / r["ort_ms"] for r in rows]
    lines += ["", f"Geometric mean ratio TF/ORT: {float(np.exp(np.mean(np.log(ratios)))):.2f}", ""]
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
