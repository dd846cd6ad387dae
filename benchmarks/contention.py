"""A shared machine: latency with one core kept busy by another process, and throughput with several callers.

Part 1, latency. For the demo CNN and the suite's models (batch 1), three engines with 2 threads each, in one
process: TensorForge with its own thread pool (runtime/cpu_pool.py), TensorForge's same kernels on TVM's thread pool
(the runtime before the pool existed; `runtime.load(..., thread_pool="tvm")`, TVM_THREAD_POOL_SPIN_COUNT=3000 as
that runtime set it) and onnxruntime. Each round runs every engine once untimed and once timed, first on the idle
machine, then while a process started here spins on one core (pinned to the last CPU); medians over the rounds.

Part 2, throughput. 1, 2 and 4 threads call one model (`run`) for a fixed time: runs per second and each call's
mean latency, with TensorForge's execution contexts and, for comparison, with every call behind one global lock.

    python benchmarks/contention.py [--rounds 15] [--models cnn mlp ...] [--seconds 3]

Writes benchmarks/results/contention.md (with the machine's description).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
THREADS = 2
os.environ["TVM_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "3000")  # what the runtime set before its own pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.machine import describe_machine, write_lines  # noqa: E402

SUITE = ["resnet50", "mobilenet_v2", "bert_base", "gpt2_small", "lstm_classifier", "mlp"]
ENGINES = {"tf": "TensorForge", "tf_tvm_pool": "TF kernels on TVM's pool (before)", "ort": "onnxruntime"}
PAUSE_S = 0.05


def _spin(flag, cpu):
    """The busy neighbour: spins while flag is set (pinned to one CPU), naps 1 ms otherwise."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    x = 0
    while True:
        if flag.value:
            for _ in range(100_000):
                x += 1
        else:
            time.sleep(0.001)


def load_model(name: str):
    """(onnx model, feeds) for the demo CNN or a suite model at batch 1."""
    if name == "cnn":
        from tensorforge.compiler.examples import small_cnn_onnx

        x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
        return small_cnn_onnx(), {"image": x}
    from benchmarks.models import INPUT_NAME, MODELS, export_onnx

    _, x = MODELS[name](1)
    return export_onnx(name, 1), {INPUT_NAME: x.numpy()}


def make_engines(name: str, tmp: str):
    from tensorforge import runtime
    from benchmarks.light_models import ort_session
    from tensorforge import compile_model

    model, feeds = load_model(name)
    t0 = time.perf_counter()
    compiled = compile_model(model)
    compile_s = time.perf_counter() - t0
    path = os.path.join(tmp, f"{name}.tfa")
    compiled.save(path)
    ours = runtime.load(path)
    before = runtime.load(path, thread_pool="tvm")
    session = ort_session(model, THREADS)
    ref = session.run(None, feeds)[0]
    for m in (ours, before):
        out = m.run(feeds)[0]
        if not np.allclose(out, ref, rtol=1e-3, atol=1e-3):
            raise SystemExit(f"{name}: TensorForge's output differs from onnxruntime's")
    runs = {"tf": lambda: ours.run(feeds), "tf_tvm_pool": lambda: before.run(feeds),
            "ort": lambda: session.run(None, feeds)}
    return runs, ours, feeds, compile_s


def latency(runs: dict, flag, rounds: int) -> dict[str, dict[str, float]]:
    """{condition: {engine: median ms}}; conditions alternate every round."""
    times = {c: {k: [] for k in runs} for c in ("idle", "busy")}
    for _ in range(rounds):
        for condition in ("idle", "busy"):
            flag.value = condition == "busy"
            time.sleep(0.02)
            for key, run in runs.items():
                time.sleep(PAUSE_S)
                run()
                t0 = time.perf_counter()
                run()
                times[condition][key].append(time.perf_counter() - t0)
    flag.value = False
    return {c: {k: float(np.median(v)) * 1e3 for k, v in t.items()} for c, t in times.items()}


def throughput(model, feeds, callers: int, seconds: float, global_lock: bool) -> tuple[float, float]:
    """(runs per second, mean ms per call) with `callers` threads calling `model.run` for `seconds`. The mean, not
    the median: Python's lock is not fair, so behind a global lock one caller may take it many times in a row
    while the others wait; the median call then looks fast and the waiting shows only in the mean."""
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    samples: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers)

    def caller(k):
        start.wait()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            if global_lock:
                with lock:
                    model.run(feeds)
            else:
                model.run(feeds)
            samples[k].append(time.perf_counter() - t0)

    ts = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [x for s in samples for x in s]
    return len(flat) / seconds, float(np.mean(flat)) * 1e3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", *SUITE])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--throughput-models", nargs="+", default=["cnn", "mobilenet_v2", "bert_base"])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "contention.md"))
    args = p.parse_args(argv)

    from tensorforge.runtime import cpu_pool

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    flag = mp.Value("b", False)
    spinner = mp.get_context("fork").Process(target=_spin, args=(flag, cpus[-1]), daemon=True)
    spinner.start()
    rows, tput = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models:
                runs, ours, feeds, compile_s = make_engines(name, tmp)
                r = latency(runs, flag, args.rounds)
                rows.append((name, r))
                print(name, {c: {k: round(v, 3) for k, v in d.items()} for c, d in r.items()}, file=sys.stderr,
                      flush=True)
                if name in args.throughput_models:
                    # at least ~60 runs of one caller per measurement (BERT-base: 3 s gave 14 runs, +-7 %)
                    seconds = max(args.seconds, 60 * r["idle"]["tf"] / 1e3)
                    for callers in (1, 2, 4):
                        for locked in (False, True):
                            rps, ms = throughput(ours, feeds, callers, seconds, locked)
                            tput.append((name, callers, locked, rps, ms))
                            print(name, callers, "lock" if locked else "contexts", round(rps, 1), round(ms, 3),
                                  file=sys.stderr, flush=True)
    finally:
        spinner.kill()

    gm = lambda xs: float(np.exp(np.mean(np.log(xs))))  # noqa: E731
    lines = ["# Contention: a busy core, several callers", "",
             f"Machine: {describe_machine()}. {THREADS} threads per engine (TensorForge pool: {cpu_pool.threads()}); "
             f"the busy neighbour spins pinned to CPU {cpus[-1]}. Medians of {args.rounds} interleaved rounds, ms. "
             "Reproduce: `python benchmarks/contention.py`.", "",
             "| model | idle: TF | idle: TF on TVM pool | idle: ORT | idle TF/ORT | busy: TF | busy: TF on TVM pool "
             "| busy: ORT | busy TF/ORT | busy TVM-pool/ORT |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        i, b = r["idle"], r["busy"]
        lines.append(f"| {name} | {i['tf']:.3f} | {i['tf_tvm_pool']:.3f} | {i['ort']:.3f} | {i['tf'] / i['ort']:.2f} "
                     f"| {b['tf']:.3f} | {b['tf_tvm_pool']:.3f} | {b['ort']:.3f} | {b['tf'] / b['ort']:.2f} "
                     f"| {b['tf_tvm_pool'] / b['ort']:.2f} |")
    suite = [r for n, r in rows if n != "cnn"]
    if suite:
        lines += ["", "Geometric means over the suite's models (demo CNN excluded), TensorForge / onnxruntime:",
                  f"- idle: {gm([r['idle']['tf'] / r['idle']['ort'] for r in suite]):.2f} "
                  f"(TVM's pool, before: {gm([r['idle']['tf_tvm_pool'] / r['idle']['ort'] for r in suite]):.2f})",
                  f"- one core busy: {gm([r['busy']['tf'] / r['busy']['ort'] for r in suite]):.2f} "
                  f"(TVM's pool, before: {gm([r['busy']['tf_tvm_pool'] / r['busy']['ort'] for r in suite]):.2f})"]
    if tput:
        lines += ["", f"## Throughput: callers on one model (idle machine; each measurement {args.seconds:.0f} s, or "
                      "60 single-caller runs if longer)", "",
                  "| model | callers | runs/s (contexts) | mean ms per call (contexts) | runs/s (global lock) "
                  "| mean ms per call (global lock) | runs/s vs 1 caller (contexts) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        base = {(n, locked): rps for n, c, locked, rps, _ in tput if c == 1}
        by = {(n, c, locked): (rps, ms) for n, c, locked, rps, ms in tput}
        for n, c in dict.fromkeys((n, c) for n, c, *_ in tput):
            (r1, m1), (r2, m2) = by[(n, c, False)], by[(n, c, True)]
            lines.append(f"| {n} | {c} | {r1:.1f} | {m1:.3f} | {r2:.1f} | {m2:.3f} | {r1 / base[(n, False)]:.2f} |")
    write_lines(args.out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
