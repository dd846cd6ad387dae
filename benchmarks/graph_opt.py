"""What graph optimization buys: kernels, memory and latency at -O0 (no cleanups, no fusion, every tensor its own
buffer, as before the pass pipeline existed) and -O2 (the default), beside onnxruntime.

Memory: `arena` is TensorForge's planned intermediate memory, `L` the live lower bound, `U` the unplanned sum of all
intermediates; `peak RSS` is the growth of a fresh process's peak resident memory from loading to three runs, for
TensorForge (runtime.load + run) and onnxruntime (InferenceSession + run) alike; it includes the weights.

    TVM_NUM_THREADS=2 python benchmarks/graph_opt.py [--rounds 10] [model ...]
Models: the nine light models (random weights) and, from benchmarks/models.py, torch:resnet50 and torch:bert_base.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "2")

from benchmarks.light_models import ort_session, timed  # noqa: E402
from benchmarks.machine import describe_machine  # noqa: E402
from tensorforge import compile_model  # noqa: E402
from tensorforge.compiler.options import CompileOptions  # noqa: E402
from tensorforge.compiler.examples import LIGHT_MODELS, light_input, light_path, randomize_weights  # noqa: E402

PEAK_RSS = r"""
import json, sys, numpy as np
def status(key):  # kB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
kind, model_path, feeds_path = sys.argv[1:4]
feeds = dict(np.load(feeds_path))
if kind == "tf":
    import tvm_ffi
    from tensorforge import runtime
else:
    import onnxruntime as ort
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
if kind == "tf":
    m = runtime.load(model_path)
    run = lambda: m.run(feeds)
else:
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    s = ort.InferenceSession(model_path, o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, feeds)
for _ in range(3):
    run()
print(json.dumps({"peak_kb": status("VmHWM") - base}))
"""


def load(name: str) -> tuple[onnx.ModelProto, dict]:
    """'resnet50' is onnx's light model; 'torch:resnet50' the one defined in benchmarks/models.py."""
    if not name.startswith("torch:"):
        model = randomize_weights(onnx.load(light_path(name)), seed=0)
        return model, light_input(model)
    from benchmarks.models import example_feeds, export_onnx

    name = name.split(":", 1)[1]
    feeds, _ = example_feeds(name)
    return export_onnx(name), {k: np.asarray(v) for k, v in feeds.items()}


def peak_rss_mb(kind: str, path: str, feeds_path: str) -> float:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, kind, path, feeds_path], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    if out.returncode != 0:
        return float("nan")
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kb"] / 1024


def bench(name: str, rounds: int, tmp: str) -> dict:
    model, feeds = load(name)
    row = {"model": name}
    compiled = {}
    for level in (0, 2):
        t0 = time.perf_counter()
        compiled[level] = compile_model(model, options=CompileOptions(opt_level=level))
        row[f"compile_O{level}_s"] = time.perf_counter() - t0
        row[f"kernels_O{level}"] = compiled[level].num_kernels
    stats = compiled[2].plan["stats"]
    row.update(ops=stats["ops"], arena=stats["arena_bytes"], L=stats["live_lower_bound_bytes"],
               U=stats["unplanned_bytes"], params=stats["params_bytes"])
    sess = ort_session(model, int(os.environ["TVM_NUM_THREADS"]))
    ref = sess.run(None, feeds)[0]
    row["match"] = bool(np.allclose(compiled[2].run(feeds)[0], ref, rtol=1e-3, atol=1e-4))
    samples = {0: [], 2: [], "ort": []}
    for _ in range(rounds):  # interleaved: noise hits all three alike
        samples[0] += timed(lambda: compiled[0].run(feeds), 2)
        samples[2] += timed(lambda: compiled[2].run(feeds), 2)
        samples["ort"] += timed(lambda: sess.run(None, feeds), 2)
    row.update({f"ms_{k}": float(np.median(v)) * 1e3 for k, v in samples.items()})
    base = name.replace(":", "_")
    art, onnx_path, feeds_path = (os.path.join(tmp, f"{base}.{ext}") for ext in ("tfa", "onnx", "npz"))
    compiled[2].save(art)
    onnx.save(model, onnx_path)
    np.savez(feeds_path, **feeds)
    row["rss_tf_mb"] = peak_rss_mb("tf", art, feeds_path)
    row["rss_ort_mb"] = peak_rss_mb("ort", onnx_path, feeds_path)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=LIGHT_MODELS + ["torch:resnet50", "torch:bert_base"])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "graph_opt.md"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows.append(bench(name, args.rounds, tmp))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    mb = 1 / (1 << 20)
    lines = [
        "# Graph optimization: -O0 (no cleanups, no fusion, no memory planning) vs -O2, beside onnxruntime",
        "",
        f"Machine: {describe_machine()}. Batch 1, fp32, 2 threads for every engine; runs interleaved in one process, "
        f"{args.rounds} rounds x 2 runs; medians. Memory in MiB.",
        "",
        "| model | ops | kernels -O0 | kernels -O2 | ms -O0 | ms -O2 | ms ORT | -O2/ORT | U (unplanned) | arena | L | "
        "arena/L | params | peak RSS TF | peak RSS ORT | match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['ops']} | {r['kernels_O0']} | {r['kernels_O2']} | {r['ms_0']:.2f} | {r['ms_2']:.2f} | "
            f"{r['ms_ort']:.2f} | {r['ms_2'] / r['ms_ort']:.2f} | {r['U'] * mb:.1f} | {r['arena'] * mb:.1f} | "
            f"{r['L'] * mb:.1f} | {r['arena'] / max(r['L'], 1):.3f} | {r['params'] * mb:.1f} | {r['rss_tf_mb']:.0f} | "
            f"{r['rss_ort_mb']:.0f} | {'yes' if r['match'] else 'NO'} |")
    gm = lambda xs: float(np.exp(np.mean(np.log(xs))))  # noqa: E731
    lines += ["", f"Geometric means: -O2 / -O0 latency {gm([r['ms_2'] / r['ms_0'] for r in rows]):.2f}, "
                  f"-O2 / onnxruntime {gm([r['ms_2'] / r['ms_ort'] for r in rows]):.2f}.", ""]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0 if all(r["match"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
