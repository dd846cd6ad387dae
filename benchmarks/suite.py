"""The benchmark suite: TensorForge against onnxruntime, PyTorch eager, torch.compile, TVM Relax's default
pipeline and OpenVINO, on models defined in benchmarks/models.py (PyTorch, random weights) and exported to ONNX.
TensorForge runs in fp32 and in its bf16 mode (`tf_bf16`: AMX tiles where the CPU has them); OpenVINO at fp32
(`ov_f32`, INFERENCE_PRECISION_HINT=f32) and at its default precision (`ov`: bf16 on CPUs with AMX or
AVX512-BF16). Every engine's largest relative output error against PyTorch fp32 is reported beside its time.

For each model and batch size, every engine runs interleaved with the others in one process (rounds of one
untimed and one timed run each), and the table gives medians, the ratio to onnxruntime, compile (and tune) time, achieved GFLOP/s and its
fraction of the machine's peak, which is measured in the same run (an OpenBLAS sgemm on the same threads), and
each engine's peak memory (resident growth in a fresh process: load the model, run it three times).
Writes benchmarks/results/suite.md and suite.png.

    TVM_NUM_THREADS=2 python benchmarks/suite.py [--batch 1 8] [--engines tf ort torch compile relax] [model ...]
    TVM_NUM_THREADS=1 python benchmarks/suite.py --batch 1 --engines tf tf_bf16 ort ov ov_f32 --out \
        benchmarks/results/suite_bf16_1t bert_base gpt2_small vit_base resnet50
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "2")
# Engines share the cores in one process: OpenMP threads (PyTorch, torch.compile) that spin after each op would
# steal them from the engine timed next. Passive waiting keeps the interleaved measurements independent.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
THREADS = int(os.environ["TVM_NUM_THREADS"])

from benchmarks.machine import describe_machine  # noqa: E402

DEFAULT_MODELS = ["resnet50", "mobilenet_v2", "bert_base", "gpt2_small", "lstm_classifier", "mlp"]
ENGINES = {"tf": "TensorForge", "tf_untuned": "TensorForge (untuned)", "tf_bf16": "TensorForge bf16",
           "ort": "onnxruntime", "torch": "PyTorch eager", "compile": "torch.compile", "relax": "TVM Relax default",
           "ov_f32": "OpenVINO fp32", "ov": "OpenVINO default (bf16)", "iree": "IREE llvm-cpu"}


def machine_peak_gflops() -> float:
    """Single-precision GEMM throughput of OpenBLAS on THREADS threads, in a fresh process (its threads are fixed
    at import)."""
    code = ("import numpy as np, time\n"
            "a = np.random.rand(2048, 2048).astype(np.float32); b = a.copy(); a @ b\n"
            "t = []\n"
            "for _ in range(5):\n    s = time.perf_counter(); a @ b; t.append(time.perf_counter() - s)\n"
            "print(2 * 2048**3 / min(t) / 1e9)")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(THREADS), "OMP_NUM_THREADS": str(THREADS)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    return float(out.stdout.strip()) if out.returncode == 0 else float("nan")


PEAK_RSS = r"""
import json, sys
kind, name, batch, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, sys.argv[5])
import numpy as np
def status(key):  # kB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
feeds = dict(np.load(path + ".npz"))
if kind == "tf":
    from tensorforge import runtime
    from tensorforge.runtime.tvm_loader import init_runtime
    init_runtime()  # TVM's runtime library loaded before the baseline, as onnxruntime's is by its import
elif kind == "ort":
    import onnxruntime as ort
else:
    import torch
    from benchmarks.models import MODELS
    torch.set_num_threads(int(sys.argv[6]))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS")
if kind == "tf":
    m = runtime.load(path + ".tfa")
    run = lambda: m.run(feeds)
elif kind == "ort":
    o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[6])
    s = ort.InferenceSession(path + ".onnx", o, providers=["CPUExecutionProvider"])
    run = lambda: s.run(None, feeds)
else:
    module, x = MODELS[name](batch)
    def run():
        with torch.inference_mode():
            module(x)
for _ in range(3):
    run()
print(json.dumps({"peak_mb": (status("VmHWM") - base) / 1024}))
"""
MEMORY_ENGINES = ("tf", "ort", "torch")


def peak_memory(name: str, batch: int, model, feeds, tf_model) -> dict[str, float]:
    """Peak resident memory growth (MB) of loading the model and running it three times, each engine in a fresh
    process after its imports: weights, buffers and workspace together. TensorForge loads its artifact with the
    runtime only; PyTorch builds the module (its weights) inside the measurement."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m")
        np.savez(path + ".npz", **feeds)
        with open(path + ".onnx", "wb") as f:
            f.write(model.SerializeToString())
        if tf_model is not None:
            tf_model.save(path + ".tfa")
        for kind in MEMORY_ENGINES:
            if kind == "tf" and tf_model is None:
                continue
            r = subprocess.run([sys.executable, "-c", PEAK_RSS, kind, name, str(batch), path, ROOT, str(THREADS)],
                               capture_output=True, text=True, timeout=600)
            if r.returncode == 0:
                out[kind] = float(json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"])
    return out


def make_engines(name: str, batch: int, wanted: list[str]):
    """{engine: (run callable, setup seconds)}, the ONNX model, feeds and the reference output."""
    import onnx
    import torch

    from benchmarks.models import INPUT_NAME, MODELS, export_onnx
    from tensorforge import compile_model
    from tensorforge.compiler.options import CompileOptions

    torch.set_num_threads(THREADS)
    module, x = MODELS[name](batch)
    model = export_onnx(name, batch)
    feeds = {INPUT_NAME: x.numpy()}
    with torch.no_grad():
        ref = module(x).numpy()
    engines, info = {}, {}

    def timed_setup(key, fn):
        t0 = time.perf_counter()
        try:
            run = fn()
            run()  # first call: includes lazy compilation (torch.compile)
            engines[key] = run
            info[key] = time.perf_counter() - t0
        except Exception as e:  # an engine that cannot run this model is reported, not fatal
            info[key] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}"

    if "tf" in wanted or "tf_untuned" in wanted:
        for key, shipped in (("tf", True), ("tf_untuned", False)):
            if key in wanted:
                def build(shipped=shipped):
                    m = compile_model(model, options=CompileOptions(use_shipped_tuning=shipped))
                    info[f"{key}_model"] = m
                    return lambda: m.run(feeds)
                timed_setup(key, build)
    if "tf_bf16" in wanted:
        def build_bf16():
            m = compile_model(model, options=CompileOptions(precision="bf16"))
            info["tf_bf16_model"] = m
            return lambda: m.run(feeds)[0]
        timed_setup("tf_bf16", build_bf16)
    for key in ("ov", "ov_f32"):
        if key in wanted:
            def openvino(key=key):
                import tempfile

                import openvino as ov

                core = ov.Core()
                config = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
                if key == "ov_f32":
                    config["INFERENCE_PRECISION_HINT"] = "f32"
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "m.onnx")
                    with open(path, "wb") as f:
                        f.write(model.SerializeToString())
                    compiled = core.compile_model(core.read_model(path), "CPU", config)
                precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))  # "<Type: 'bfloat16'>"
                info[f"{key}_precision"] = precision.split("'")[1] if "'" in precision else precision
                request = compiled.create_infer_request()
                return lambda: request.infer(feeds)[compiled.output(0)]
            timed_setup(key, openvino)
    if "iree" in wanted:
        def iree():
            import tempfile

            import iree.compiler
            import iree.runtime as rt

            # IREE's task system: one worker group per thread, like the other engines' THREADS
            rt.flags.parse_flags(f"--task_topology_group_count={THREADS}")
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "m.onnx")
                with open(path, "wb") as f:
                    f.write(model.SerializeToString())
                subprocess.run([sys.executable, "-m", "iree.compiler.tools.import_onnx", path, "-o", path + ".mlir"],
                               check=True, capture_output=True, timeout=600)
                vmfb = iree.compiler.compile_file(path + ".mlir", target_backends=["llvm-cpu"],
                                                  extra_args=["--iree-llvmcpu-target-cpu=host"])
            ctx = rt.SystemContext(config=rt.Config("local-task"))
            ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
            fn = ctx.modules.module["main_graph"]
            return lambda: fn(feeds[INPUT_NAME]).to_host()
        timed_setup("iree", iree)
    if "ort" in wanted:
        from benchmarks.light_models import ort_session

        def ort():
            s = ort_session(model, THREADS)
            return lambda: s.run(None, feeds)[0]
        timed_setup("ort", ort)
    if "torch" in wanted:
        def eager():
            def run():
                with torch.inference_mode():
                    return module(x)
            return run
        timed_setup("torch", eager)
    if "compile" in wanted:
        def compiled():
            cm = torch.compile(module)

            def run():
                with torch.inference_mode():
                    return cm(x)
            return run
        timed_setup("compile", compiled)
    if "relax" in wanted:
        def relax():
            import tvm
            from tvm import relax as rx
            from tvm.relax.frontend.onnx import from_onnx

            mod = from_onnx(onnx.ModelProto.FromString(model.SerializeToString()), keep_params_in_input=False)
            mod = rx.transform.DecomposeOpsForInference()(mod)
            ex = tvm.compile(mod, target=tvm.target.Target.from_device(tvm.cpu()))
            vm = rx.VirtualMachine(ex, tvm.cpu())
            args = [tvm.runtime.tensor(feeds[INPUT_NAME])]
            return lambda: vm["main"](*args)
        timed_setup("relax", relax)
    info["onnx"] = model
    return engines, info, ref, feeds


PAUSE_S = 0.1  # longer than any engine's threads spin after a run (above)


def bench(name: str, batch: int, wanted: list[str], rounds: int, slow_cutoff_s: float) -> dict:
    engines, info, ref, feeds = make_engines(name, batch, wanted)
    errors = {}
    for key, run in engines.items():  # the largest |output - PyTorch fp32| over the largest |PyTorch fp32|
        out = run()
        out = out[0] if isinstance(out, (list, tuple)) else out
        out = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
        if out.shape == ref.shape:
            errors[key] = float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(rounds):
        for key, run in list(engines.items()):
            # a pause, then one untimed run: the engine run before leaves threads spinning that would steal a core
            # from the next engine's timed run. Measured (process CPU time while the caller sleeps): onnxruntime's
            # pool spins ~40 ms after a run (our MLP batch 1 took 8 ms instead of 0.03 ms within it); TVM's spun
            # ~150 ms with its default spin count (onnxruntime's MobileNetV2: 15 instead of 4 ms); TensorForge's
            # own pool (runtime/cpu_pool.py) spins 1 ms
            time.sleep(PAUSE_S)
            run()
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
            if times[key][-1] > slow_cutoff_s and len(times[key]) >= 2:
                del engines[key]  # a very slow engine (untuned Relax) gets fewer samples
    row = {"model": name, "batch": batch,
           "setup": {k: v for k, v in info.items() if not k.endswith(("_model", "_precision")) and k != "onnx"},
           "error": errors, "ov_precision": info.get("ov_precision")}
    row["ms"] = {k: float(np.median(v)) * 1e3 for k, v in times.items() if v}
    bf16 = info.get("tf_bf16_model")
    if bf16 is not None:  # the units the bf16 build computes on: its kernels on the bf16 unit, of all its kernel calls
        from tensorforge.compiler.ops.amx import UNIT_LABELS
        from tensorforge.compiler.passes.cpu.amx import bf16_unit

        from tensorforge.compiler.ops import BF16_UNIT_OPS

        names = {o.name for o in BF16_UNIT_OPS}
        groups = [set(s["op"].split("+")) for s in bf16.plan["steps"]]
        unit = UNIT_LABELS.get(bf16_unit() or "", "bf16 unit")
        row["bf16_units"] = f"{unit} {sum(bool(g & names) for g in groups)} of {len(groups)} kernels"
    tf = info.get("tf_model") or info.get("tf_untuned_model")
    if tf is not None:
        out = tf.run(feeds)[0]
        row["match"] = bool(np.allclose(out, ref, rtol=1e-3, atol=1e-3))
        row["flops"] = tf.plan["stats"]["flops"]
        row["tuned_kernels"] = tf.plan["stats"].get("tuned_kernels", 0)
        row["kernels"] = tf.num_kernels
    row["peak_mb"] = peak_memory(name, batch, info["onnx"], feeds, tf)
    return row


def bf16_table(rows, engines, gm) -> list[str]:
    """TensorForge's bf16 mode beside OpenVINO's default (bf16) and both at fp32: times, speed-ups, output errors."""
    if "tf_bf16" not in engines:
        return []
    cols = [c for c in ("tf", "tf_bf16", "ort", "ov_f32", "ov") if c in engines]
    lines = ["", "## bf16 (the CPU's matrix units) against fp32 and OpenVINO", "",
             "Times in ms (medians, the same interleaved runs as above); error: the largest |output - PyTorch fp32| "
             "over the largest |PyTorch fp32|.", "",
             "| model | batch | " + " | ".join(f"{ENGINES[c]} ms" for c in cols) +
             " | TF bf16 / TF fp32 | TF bf16 / OV default | error TF bf16 | error OV default | OV default runs "
             "| TF bf16 units |",
             "|---|---:|" + "---:|" * len(cols) + "---:|---:|---:|---:|---|---|"]
    for r in rows:
        ms, err = r["ms"], r.get("error", {})
        ratio = lambda a, b: f"{ms[a] / ms[b]:.2f}" if a in ms and b in ms else "-"  # noqa: E731
        cells = [f"{ms[c]:.2f}" if c in ms else str(r["setup"].get(c, "-"))[:40] for c in cols]
        e = lambda k: f"{100 * err[k]:.2f} %" if k in err else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) +
                     f" | {ratio('tf_bf16', 'tf')} | {ratio('tf_bf16', 'ov')} | {e('tf_bf16')} | {e('ov')} | "
                     f"{r.get('ov_precision') or '-'} | {r.get('bf16_units', '-')} |")
    for a, b, what in (("tf_bf16", "ov", "TensorForge bf16 / OpenVINO default"),
                       ("tf_bf16", "tf", "TensorForge bf16 / TensorForge fp32"),
                       ("tf", "ov_f32", "TensorForge fp32 / OpenVINO fp32"),
                       ("tf_bf16", "ort", "TensorForge bf16 / onnxruntime fp32")):
        for batch in sorted({r["batch"] for r in rows}):
            ratios = [r["ms"][a] / r["ms"][b] for r in rows if r["batch"] == batch and a in r["ms"] and b in r["ms"]]
            if ratios:
                lines.append(f"\nGeometric mean {what} at batch {batch}: {gm(ratios):.2f} ({len(ratios)} models)")
    return lines


def write_report(rows, peak, path_md, path_png, engines):
    gm = lambda xs: float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")  # noqa: E731
    lines = ["# Benchmark suite", "",
             f"Machine: {describe_machine()}. {THREADS} threads for every engine. Peak: OpenBLAS sgemm 2048^3 "
             f"= {peak:.0f} GFLOP/s, measured in this run. fp32; medians of interleaved runs. Peak MB: resident "
             "memory growth of a fresh process that loads the model (weights included) and runs it three times.", ""]
    cols = [e for e in ENGINES if e in engines]

    def mem(r):
        return " / ".join(f"{r.get('peak_mb', {})[k]:.0f}" if k in r.get("peak_mb", {}) else "-"
                          for k in MEMORY_ENGINES)
    lines.append("| model | batch | " + " | ".join(f"{ENGINES[c]} ms" for c in cols) +
                 " | TF / ORT | TF GFLOP/s | % of peak | TF compile s | kernels (tuned) | match "
                 "| peak MB: TF / ORT / eager |")
    lines.append("|---|---:|" + "---:|" * len(cols) + "---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ms = r["ms"]
        cells = [f"{ms[c]:.2f}" if c in ms else str(r["setup"].get(c, "-"))[:40] for c in cols]
        tf_key = "tf" if "tf" in ms else "tf_untuned"
        ratio = ms[tf_key] / ms["ort"] if tf_key in ms and "ort" in ms else float("nan")
        gflops = r.get("flops", 0) / (ms[tf_key] / 1e3) / 1e9 if tf_key in ms else float("nan")
        setup = r["setup"].get(tf_key)
        lines.append(f"| {r['model']} | {r['batch']} | " + " | ".join(cells) +
                     f" | {ratio:.2f} | {gflops:.0f} | {100 * gflops / peak:.0f}% | "
                     f"{setup:.1f} | {r.get('kernels', '-')} ({r.get('tuned_kernels', 0)}) | "
                     f"{'yes' if r.get('match') else 'NO'} | {mem(r)} |" if isinstance(setup, float)
                     else " | - | - | - | - |")
    for key in ("tf", "tf_untuned"):
        for batch in sorted({r["batch"] for r in rows}):
            ratios = [r["ms"][key] / r["ms"]["ort"] for r in rows if r["batch"] == batch and key in r["ms"]
                      and "ort" in r["ms"]]
            if ratios:
                lines.append(f"\nGeometric mean {ENGINES[key]} / onnxruntime at batch {batch}: {gm(ratios):.2f}")
    lines += bf16_table(rows, engines, gm)
    text = "\n".join(lines) + "\n"
    with open(path_md, "w") as f:
        f.write(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = [f"{r['model']}\nb{r['batch']}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.5))
        width = 0.8 / len(cols)
        for i, c in enumerate(cols):
            vals = [r["ms"].get(c, np.nan) / r["ms"]["ort"] if "ort" in r["ms"] else np.nan for r in rows]
            ax.bar(np.arange(len(rows)) + i * width, vals, width, label=ENGINES[c])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(rows)) + width * (len(cols) - 1) / 2, labels, fontsize=8)
        ax.set_ylabel("latency / onnxruntime (lower is better)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title(f"Latency relative to onnxruntime ({THREADS} threads)")
        fig.tight_layout()
        fig.savefig(path_png, dpi=120)
    except ImportError:
        pass
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--engines", nargs="+", default=["tf", "ort", "torch", "compile", "relax"], choices=list(ENGINES))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--slow-cutoff", type=float, default=2.0, help="seconds per run above which an engine runs twice")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "suite"))
    args = p.parse_args(argv)
    peak = machine_peak_gflops()
    rows = []
    for name in args.models:
        for batch in args.batch:
            rows.append(bench(name, batch, args.engines, args.rounds, args.slow_cutoff))
            print(rows[-1]["model"], batch, {k: round(v, 2) for k, v in rows[-1]["ms"].items()}, file=sys.stderr,
                  flush=True)
    print(write_report(rows, peak, args.out + ".md", args.out + ".png", args.engines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
