"""Compile time and latency of TensorForge vs onnxruntime on the PyTorch models of benchmarks/models.py.

Both engines run the same ONNX (TorchScript exporter, opset 17) with the same number of threads; medians.

    TVM_NUM_THREADS=2 python benchmarks/torch_models.py [--repeat 20] [model ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "2")

from benchmarks.light_models import ort_session, timed  # noqa: E402
from benchmarks.models import MODELS, example_feeds, export_onnx  # noqa: E402
from tensorforge import compile_model  # noqa: E402


def bench(name: str, repeat: int, threads: int) -> dict:
    model = export_onnx(name)
    feeds, expected = example_feeds(name)
    t0 = time.perf_counter()
    tf = compile_model(model)
    compile_s = time.perf_counter() - t0
    sess = ort_session(model, threads)
    ok = bool(np.allclose(tf.run(feeds)[0], expected, rtol=1e-3, atol=1e-4))
    tf_ms = float(np.median(tf.benchmark(feeds, repeat=repeat))) * 1e3
    timed(lambda: sess.run(None, feeds), 3)
    ort_ms = float(np.median(timed(lambda: sess.run(None, feeds), repeat))) * 1e3
    return {"model": name, "compile_s": compile_s, "tf_ms": tf_ms, "ort_ms": ort_ms, "kernels": tf.num_kernels,
            "match": ok}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=["mlp", "bert_layer", "bert_base", "resnet50"], choices=list(MODELS))
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--threads", type=int, default=int(os.environ["TVM_NUM_THREADS"]))
    args = p.parse_args(argv)
    print("| model | compile (s) | kernels | TensorForge (ms) | onnxruntime (ms) | matches PyTorch |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, args.repeat, args.threads)
        print(f"| {name} | {r['compile_s']:.1f} | {r['kernels']} | {r['tf_ms']:.2f} | {r['ort_ms']:.2f} | "
              f"{'yes' if r['match'] else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
