"""Write the repository's shipped tuning database (compiler/backend/tuned) for the benchmark suite's models.

    python benchmarks/tune_shipped.py [--batch 1 8] [--models resnet50 ...] [--db DIR] [--retune]

Each model of benchmarks/suite.py is exported to ONNX as the suite exports it and tuned with the knob search
(`tensorforge tune --search knobs`): kernels shared between models and batches are searched once. Run it alone
on the machine (it times kernels), with the thread count the suite uses (TVM_NUM_THREADS, default: all cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SUITE = ("resnet50", "mobilenet_v2", "bert_base", "gpt2_small", "lstm_classifier", "mlp")


def main() -> None:
    from benchmarks.models import export_onnx
    from tensorforge.compiler.tune import tune_model
    from tensorforge.compiler.backend.tuning import SHIPPED

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=list(SUITE))
    ap.add_argument("--db", default=SHIPPED)
    ap.add_argument("--retune", action="store_true")
    args = ap.parse_args()
    for name in args.models:
        for batch in args.batch:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, f"{name}_{batch}.onnx")
                with open(path, "wb") as f:
                    f.write(export_onnx(name, batch).SerializeToString())

                def progress(done, total, kernel, info):
                    speedup = info["default_us"] / info["best_us"] if info.get("best_us") else 1.0
                    print(f"  [{done}/{total}] {kernel[:60]:<60} default {info['default_us']:9.1f} us, best "
                          f"{info['best_us']:9.1f} us ({speedup:.2f}x) {info.get('knobs') or ''}", flush=True)

                print(f"{name} batch {batch}", flush=True)
                r = tune_model(path, args.db, retune=args.retune, progress=progress)
            print(f"{name} batch {batch}: {r.tuned} kernels searched, {r.skipped} already done, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
