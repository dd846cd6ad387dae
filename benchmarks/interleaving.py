"""What the suite's interleaving does to each engine: TensorForge bf16 and OpenVINO (default precision) back to back
and run by run in turn, in one process.

benchmarks/suite.py runs the engines in turn (a 0.1 s pause, one untimed run, one timed run each), so every timed run
follows a pause and another engine's work. Here, per model and engine: runs back to back (no pause), the suite's
step after the engine's own run ('alone'), and the two engines alternating as in the suite ('interleaved'); medians
over the rounds and the ratio TF / OV under each protocol. Whole-process timings on the cloud Xeon of
benchmarks/results/ moved by up to 15 % from one process to the next, so compare the columns of one run.

    TVM_NUM_THREADS=1 python benchmarks/interleaving.py [--rounds 15] [model ...]

Needs the bench extra (OpenVINO). Writes benchmarks/results/interleaving.md (or --out).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe_machine, write_lines  # noqa: E402
from benchmarks.models import MODELS, example_feeds, export_onnx  # noqa: E402
from benchmarks.suite import PAUSE_S  # noqa: E402

THREADS = int(os.environ.get("TVM_NUM_THREADS", "1"))


def engines(name: str) -> tuple[dict, dict]:
    """({"tf_bf16": run, "ov": run}, feeds) for one model, both built from the same ONNX export."""
    import openvino as ov

    from tensorforge import compile_model

    model = export_onnx(name)
    feeds, _ = example_feeds(name)
    tf = compile_model(model, precision="bf16")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU",
                                      {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return {"tf_bf16": lambda: tf.run(feeds), "ov": lambda: request.infer(feeds)}, feeds


def timed(run, pause: float = PAUSE_S) -> float:
    """The suite's step: a pause, one untimed run, one timed run (seconds); no pause: back to back."""
    if pause:
        time.sleep(pause)
    run()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def measure(name: str, rounds: int) -> dict:
    runs, _ = engines(name)
    for run in runs.values():
        for _ in range(3):
            run()
    b2b = {k: float(np.median([timed(run, 0) for _ in range(rounds)])) * 1e3 for k, run in runs.items()}
    alone = {k: float(np.median([timed(run) for _ in range(rounds)])) * 1e3 for k, run in runs.items()}
    turns: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            turns[k].append(timed(run))
    inter = {k: float(np.median(v)) * 1e3 for k, v in turns.items()}
    return {"model": name, "b2b": b2b, "alone": alone, "interleaved": inter}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "interleaving.md"))
    ap.add_argument("models", nargs="*", default=["resnet50", "mobilenet_v2", "bert_base", "vit_base"])
    args = ap.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; known: {sorted(MODELS)}")
    lines = ["# TensorForge bf16 and OpenVINO: back to back and interleaved", "",
             f"{describe_machine()}. {THREADS} thread(s) per engine; medians of {args.rounds} timed runs, each after a "
             f"{PAUSE_S} s pause and one untimed run: 'alone' after the engine's own run, 'interleaved' after the "
             "other engine's (benchmarks/suite.py's protocol); 'back to back': runs with no pause. Command: "
             "`TVM_NUM_THREADS="
             f"{THREADS} python benchmarks/interleaving.py {' '.join(args.models)}`.", "",
             "| model | TF bf16 back to back ms | OV back to back ms | TF / OV back to back | TF bf16 alone ms | "
             "OV alone ms | TF / OV alone | TF bf16 interleaved ms | OV interleaved ms | TF / OV interleaved |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models:
        r = measure(name, args.rounds)
        b, a, i = r["b2b"], r["alone"], r["interleaved"]
        lines.append(f"| {name} | {b['tf_bf16']:.2f} | {b['ov']:.2f} | {b['tf_bf16'] / b['ov']:.2f} | "
                     f"{a['tf_bf16']:.2f} | {a['ov']:.2f} | {a['tf_bf16'] / a['ov']:.2f} | "
                     f"{i['tf_bf16']:.2f} | {i['ov']:.2f} | {i['tf_bf16'] / i['ov']:.2f} |")
        print(lines[-1], flush=True)
    write_lines(args.out, lines)


if __name__ == "__main__":
    main()
