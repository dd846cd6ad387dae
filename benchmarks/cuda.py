"""CUDA benchmark: TensorForge on an NVIDIA GPU vs PyTorch on the same GPU (eager and torch.compile), fp32 and fp16,
batch 1 and 16; plus training steps on the GPU against losses computed on the CPU. Writes benchmarks/results/cuda.md.

Two halves, because the GPU machine has only python, torch, onnxruntime, numpy and TVM's runtime (no compiler):

    # here (full TVM + nvcc, no GPU needed): compile every artifact into a bundle
    python benchmarks/cuda.py prepare --out benchmarks/cuda_bundle [--arch sm_90] [--models ...] [--batches 1 16]
    # on the GPU machine, from the repository root (imports only runtime/ and benchmarks/models.py):
    python benchmarks/cuda.py run --bundle benchmarks/cuda_bundle [--repeat 50]

Bundle size: weights are not stored. The PyTorch models (benchmarks/models.py: resnet50, bert_base, gpt2_small)
are rebuilt on the GPU machine from their seed, and each artifact names the state-dict entry each of its
parameters equals ({"external": name}, runtime.load(..., external_params=)); parameters derived at compile time
(few and small) are stored. ResNet-50 is compiled without folding batch norm into the convolutions
(--disable-pass fold_scale_shift) so that its weights stay state-dict entries; the normalization then runs in the
convolution's epilogue. The nine light models (onnx's test data) keep their own constant weights (stored as one
number each); their reference is onnx's expected output and onnxruntime on the same ONNX bytes.
fp16 means: PyTorch `.half()` (fp16 weights and activations), TensorForge precision="fp16" (fp16 matmul/conv
operands, fp32 accumulation, fp32 elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TORCH_MODELS = ["resnet50", "bert_base", "gpt2_small"]
LIGHT = ["light_" + n for n in ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                                "squeezenet", "vgg19", "zfnet512")]  # compiler.examples.LIGHT_MODELS, prefixed
PRECISIONS = ["fp32", "fp16"]
BATCHES = [1, 16]
TRAIN_STEPS = 5


def torch_models():
    """benchmarks.models without the onnx package (it is only needed for export, which the GPU side never does)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        sys.modules["onnx"] = types.ModuleType("onnx")
    from benchmarks import models

    return models


def state_arrays(module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# -- prepare (compiler side) ------------------------------------------------------------------------------------------
def externalize(model, sources: dict[str, np.ndarray]) -> int:
    """Replace every stored parameter that equals a source weight (possibly transposed, possibly rounded to the
    parameter's dtype) by a reference to it. Returns the bytes still stored."""
    by_shape: dict[tuple, list] = {}
    for name, a in sources.items():
        by_shape.setdefault(a.shape, []).append((name, a, False))
        if a.ndim == 2:
            by_shape.setdefault(a.shape[::-1], []).append((name, a, True))
    stored = 0
    params = model._host_params
    for i, entry in enumerate(model.plan["params"]):
        if "file" not in entry:
            continue
        p = params[i]() if callable(params[i]) else params[i]
        for name, a, transpose in by_shape.get(p.shape, []):
            if np.array_equal((a.T if transpose else a).astype(p.dtype), p):
                model.plan["params"][i] = {"buffer": entry["buffer"], "external": name,
                                           **({"transpose": True} if transpose else {})}
                break
        else:
            stored += p.nbytes
    return stored


def prepare(args) -> int:
    import onnx

    from tensorforge import compile_model, compile_training
    from tensorforge.compiler.options import CompileOptions
    from tensorforge.compiler.examples import light_expected, light_input, light_path

    os.makedirs(args.out, exist_ok=True)
    index = {"arch": args.arch, "models": [], "training": []}
    models = torch_models()
    for name in args.models:
        for batch in args.batches:
            if name in LIGHT and batch != 1:
                continue  # the light models declare batch 1 (and onnx's expected output is for it)
            for precision in args.precisions:
                tag = f"{name}_b{batch}_{precision}"
                t0 = time.perf_counter()
                if name in TORCH_MODELS:
                    module, x = models.MODELS[name](batch)
                    disabled = frozenset({"fold_scale_shift"})
                    opts = CompileOptions(target="cuda", arch=args.arch, precision=precision,
                                          disabled_passes=disabled)
                    model = compile_model(module, example_inputs=(x,), options=opts)
                    stored = externalize(model, state_arrays(module))
                    entry = {"kind": "torch", "feeds": None}
                else:
                    light = name.removeprefix("light_")
                    onnx_model = onnx.load(light_path(light))
                    opts = CompileOptions(target="cuda", arch=args.arch, precision=precision)
                    feeds = {k: np.repeat(v, batch, axis=0) for k, v in light_input(onnx_model).items()}
                    model = compile_model(onnx_model, shapes={k: v.shape for k, v in feeds.items()}, options=opts)
                    stored = externalize(model, {})
                    np.savez(os.path.join(args.out, f"{tag}.inputs.npz"), **feeds)
                    np.save(os.path.join(args.out, f"{name}.expected.npy"), light_expected(light))
                    with open(os.path.join(args.out, f"{name}.onnx"), "wb") as f:
                        f.write(onnx_model.SerializeToString())
                    entry = {"kind": "light"}
                model.save(os.path.join(args.out, f"{tag}.tfa"))
                size = os.path.getsize(os.path.join(args.out, f"{tag}.tfa"))
                index["models"].append({**entry, "name": name, "batch": batch, "precision": precision, "tag": tag,
                                        "kernels": model.num_kernels, "stored_param_bytes": stored,
                                        "artifact_bytes": size, "compile_s": time.perf_counter() - t0})
                print(f"{tag}: {model.num_kernels} kernel calls, {size / 2 ** 20:.1f} MiB, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    if args.training:
        index["training"] = prepare_training(args, compile_training)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    return 0


def training_setups():
    """(name, builder net, input shape, classes): the training issue's CNN and a Transformer encoder classifier."""
    from tensorforge.frontends import nn
    from tests.autodiff.torch_models import TransformerClassifier

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    cnn = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 16, 10))
    return [("cnn", cnn, (32, 3, 32, 32), 10),
            ("transformer", TransformerClassifier(128, 4, 512, 2, 10), (16, 64, 128), 10)]


def training_batches(shape, classes, steps=TRAIN_STEPS):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(shape).astype(np.float32), rng.integers(0, classes, shape[0]).astype(np.int64))
            for _ in range(steps)]


def prepare_training(args, compile_training) -> list[dict]:
    out = []
    for name, net, shape, classes in training_setups():
        params = net.init(0)
        optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
        cpu = compile_training(net, shapes={"x": shape}, params=params, optimizer=optimizer)
        cpu_losses = [cpu.step({"x": x}, y) for x, y in training_batches(shape, classes)]
        gpu = compile_training(net, shapes={"x": shape}, params=params, optimizer=optimizer, target="cuda",
                               arch=args.arch)
        gpu.train_model.save(os.path.join(args.out, f"train_{name}.tfa"))
        gpu.eval_model.save(os.path.join(args.out, f"train_{name}.eval.tfa"))
        spec = {k: v for k, v in gpu.spec.items() if k != "onnx"}
        out.append({"name": name, "shape": list(shape), "classes": classes, "spec": spec, "cpu_losses": cpu_losses})
        print(f"train_{name}: CPU losses {', '.join(f'{v:.4f}' for v in cpu_losses)}", flush=True)
    return out


# -- run (GPU side) -----------------------------------------------------------------------------------------------------
def timed(fn, sync, repeat: int) -> float:
    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples)) * 1e3


def max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def run(args) -> int:
    import torch

    from tensorforge import runtime
    from tensorforge.runtime.cuda import DeviceError, gpu_info

    try:
        info = gpu_info(0)
    except DeviceError as e:
        print(f"cuda.py: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(args.bundle, "index.json")) as f:
        index = json.load(f)
    models = torch_models() if any(m["kind"] == "torch" for m in index["models"]) else None
    dev = torch.device("cuda")
    rows, failures = [], []
    for m in index["models"]:
        path = os.path.join(args.bundle, m["tag"] + ".tfa")
        row = {"model": m["name"], "batch": m["batch"],
               "precision": m["precision"]}
        if args.models and row["model"] not in args.models:
            continue
        try:
            if m["kind"] == "torch":
                module, x = models.MODELS[m["name"]](m["batch"])
                ours = runtime.load(path, external_params=state_arrays(module))
                tmod = module.to(dev)
                tx = x.to(dev)
                if m["precision"] == "fp16":
                    tmod = tmod.half()
                    if tx.is_floating_point():
                        tx = tx.half()
                with torch.no_grad():
                    ref = tmod(tx).float().cpu().numpy()
                    feeds = {ours.input_names[0]: x.to(dev)}  # zero-copy from the torch tensor on the GPU
                    got = ours.run(feeds)[0]
                    row["tf_ms"] = timed(lambda: ours.run(feeds, device_outputs=True), torch.cuda.synchronize,
                                         args.repeat)
                    row["eager_ms"] = timed(lambda: tmod(tx), torch.cuda.synchronize, args.repeat)
                    try:
                        compiled = torch.compile(tmod)
                        row["compile_ms"] = timed(lambda: compiled(tx), torch.cuda.synchronize, args.repeat)
                    except Exception as e:  # no triton, say
                        row["compile_ms"] = None
                        row["note"] = f"torch.compile: {type(e).__name__}"
                row["max_rel_err"] = max_rel(got, ref)
            else:
                ours = runtime.load(path)
                feeds = dict(np.load(os.path.join(args.bundle, m["tag"] + ".inputs.npz")))
                got = ours.run(feeds)[0]
                expected = np.load(os.path.join(args.bundle, f"{m['name']}.expected.npy"))
                row["max_rel_err"] = max_rel(got[:1], expected)
                dfeeds = {k: torch.from_numpy(v).to(dev) for k, v in feeds.items()}
                row["tf_ms"] = timed(lambda: ours.run(dfeeds, device_outputs=True), torch.cuda.synchronize,
                                     args.repeat)
                row["ort_ms"] = ort_time(os.path.join(args.bundle, f"{m['name']}.onnx"), feeds, args.repeat)
            tol = 1e-3 if m["precision"] == "fp32" else 2e-2
            row["ok"] = row["max_rel_err"] <= tol
        except Exception as e:
            row["ok"] = False
            row["note"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
        if not row["ok"]:
            failures.append(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
    training = [run_training(args, t) for t in index.get("training", [])]
    write_report(args.report, info, rows, training)
    return 1 if failures or any(not t["ok"] for t in training) else 0


def ort_time(path: str, feeds: dict, repeat: int) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    sess = ort.InferenceSession(path, providers=providers)
    return timed(lambda: sess.run(None, feeds), lambda: None, repeat)


def run_training(args, t: dict) -> dict:
    from tensorforge import runtime
    from tensorforge.runtime.training import TrainingSession

    train = runtime.load(os.path.join(args.bundle, f"train_{t['name']}.tfa"))
    evaluator = runtime.load(os.path.join(args.bundle, f"train_{t['name']}.eval.tfa"))
    session = TrainingSession(train, evaluator, t["spec"])
    batches = training_batches(tuple(t["shape"]), t["classes"])
    losses = [session.step({"x": x}, y) for x, y in batches]
    x, y = batches[0]
    step_ms = timed(lambda: session.step({"x": x}, y), lambda: None, 10)
    err = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses, t["cpu_losses"]))
    result = {"name": t["name"], "gpu_losses": losses, "cpu_losses": t["cpu_losses"], "max_rel_err": err,
              "step_ms": step_ms, "ok": err < 1e-3}
    print(json.dumps(result), flush=True)
    return result


def write_report(path: str, info, rows: list[dict], training: list[dict]) -> None:
    def ms(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = ["# TensorForge on CUDA", "", f"GPU: {info.name} ({info.arch}), driver {info.driver_version}. "
             f"Median latency in ms (inputs already on the GPU, outputs left there); max relative error against "
             f"PyTorch on the same GPU (light models: against onnx's expected output).", "",
             "| model | batch | precision | TensorForge | PyTorch eager | torch.compile | onnxruntime | max rel err | ok |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | {ms(r.get('tf_ms'))} | "
                     f"{ms(r.get('eager_ms'))} | {ms(r.get('compile_ms'))} | {ms(r.get('ort_ms'))} | "
                     f"{r.get('max_rel_err', float('nan')):.2e} | {'yes' if r['ok'] else 'NO'}"
                     + (f" ({r['note']})" if r.get("note") else "") + " |")
    if training:
        lines += ["", "## Training on the GPU vs the CPU", "", "| model | step ms | max rel loss diff | GPU losses |",
                  "|---|---|---|---|"]
        for t in training:
            lines.append(f"| {t['name']} | {t['step_ms']:.2f} | {t['max_rel_err']:.1e} | "
                         f"{', '.join(f'{v:.4f}' for v in t['gpu_losses'])} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="compile the artifacts (needs the compiler and nvcc, no GPU)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "cuda_bundle"))
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--models", nargs="*", default=TORCH_MODELS + LIGHT)
    p.add_argument("--batches", nargs="*", type=int, default=BATCHES)
    p.add_argument("--precisions", nargs="*", default=PRECISIONS)
    p.add_argument("--no-training", dest="training", action="store_false")
    r = sub.add_parser("run", help="run the bundle on the GPU (needs torch and TVM's runtime only)")
    r.add_argument("--bundle", default=os.path.join(ROOT, "benchmarks", "cuda_bundle"))
    r.add_argument("--repeat", type=int, default=50)
    r.add_argument("--models", nargs="*")
    r.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "results", "cuda.md"))
    args = ap.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
