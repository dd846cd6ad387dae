"""torch.compile with TensorForge's backend against PyTorch eager and inductor: inference latency of the network
zoo's modules at each batch size, a training step (forward, backward, Adam), each engine's first call (its compile)
and TensorForge's first call in a new process with its on-disk cache warm. Writes
benchmarks/results/torch_compile.md.

    TVM_NUM_THREADS=1 python benchmarks/torch_compile.py [--batch 1 8] [--engines eager tensorforge inductor]
        [--train bert_small:8 resnet50:2] [MODEL ...]

A training row also gives each engine's median forward (with the loss), backward (with zero_grad) and optimizer
step; `--batch` with no sizes times training alone; `--warm-only [--warm-samples 3]` the warm-cache first calls
alone.

One process per table, the engines interleaved per round (the order alternating), medians of `--rounds`; torch and
TVM use the same number of threads. The warm-cache column runs a child process twice with a fresh cache directory
(the first fills it) and reports the second one's first call (dynamo's capture, our cache lookup and load); the
next column the same with torch.compile(backend="eager"): dynamo's capture alone.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "1")
# inductor's own compile cache in a fresh directory, so that its first calls include its compile as ours do
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

from benchmarks.machine import describe_machine, write_lines  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "torch_compile.md")


def _compiled(module, engine: str):
    """`module` compiled by `engine`. The caller gives each engine its own copy of the module and resets dynamo once
    per table row only: a reset between engines drops the other engines' compiled frames, and every call of theirs
    would compile again."""
    import torch

    return module if engine == "eager" else torch.compile(module, backend=engine)


def _first_output(y):
    y = getattr(y, "logits", y)
    return y[0] if isinstance(y, (tuple, list)) else y


def inference(name: str, batch: int, engines: list[str], rounds: int) -> dict:
    """{"ms": {engine: median ms}, "first_s": {engine: s}, "err": {engine: max abs error vs eager}}."""
    import torch

    from benchmarks.models import MODELS

    import copy

    module, x = MODELS[name](batch)
    module.eval()
    runners, first, err = {}, {}, {}
    torch._dynamo.reset()
    with torch.no_grad():
        want = _first_output(module(x))
        for e in engines:
            f = _compiled(copy.deepcopy(module), e)
            t0 = time.perf_counter()
            got = _first_output(f(x))
            first[e] = time.perf_counter() - t0
            err[e] = float((got - want).abs().max())
            runners[e] = f
        times = {e: [] for e in engines}
        for r in range(rounds):
            for e in engines if r % 2 == 0 else engines[::-1]:
                t0 = time.perf_counter()
                runners[e](x)
                times[e].append(time.perf_counter() - t0)
    return {"ms": {e: float(np.median(t)) * 1e3 for e, t in times.items()}, "first_s": first, "err": err}


def training(name: str, batch: int, engines: list[str], rounds: int) -> dict:
    """A training step (forward, cross-entropy, backward, Adam) of each engine on its own copy of the module:
    {"ms": {engine: median ms}, "first_s": {engine: s}, "loss": {engine: first step's loss}}."""
    import copy

    import torch

    from benchmarks.models import MODELS

    base, x = MODELS[name](batch)
    base.train()
    with torch.no_grad():
        out = _first_output(base(x))
    classes = out.shape[-1]
    y = torch.randint(0, classes, out.shape[:-1], generator=torch.Generator().manual_seed(0))
    steps, first, loss0 = {}, {}, {}
    torch._dynamo.reset()
    for e in engines:
        module = copy.deepcopy(base)
        opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        f = _compiled(module, e)

        def step(f=f, opt=opt, phases=None):
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(_first_output(f(x)).reshape(-1, classes), y.reshape(-1))
            t1 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            value = loss.item()
            if phases is not None:
                phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            return value

        t0 = time.perf_counter()
        loss0[e] = step()
        first[e] = time.perf_counter() - t0
        steps[e] = step
    times = {e: [] for e in engines}
    phases = {e: [] for e in engines}  # (forward with the loss, zero_grad + backward, optimizer step) per round
    for r in range(rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            t0 = time.perf_counter()
            steps[e](phases=phases[e])
            times[e].append(time.perf_counter() - t0)
    return {"ms": {e: float(np.median(t)) * 1e3 for e, t in times.items()}, "first_s": first, "loss": loss0,
            "phases_ms": {e: [float(v) * 1e3 for v in np.median(np.array(p), 0)] for e, p in phases.items()}}


CHILD = """
import sys, time, json, torch
sys.path.insert(0, {root!r})
from benchmarks.models import MODELS
torch.set_num_threads({threads})
module, x = MODELS[{name!r}]({batch})
module.eval()
f = torch.compile(module, backend={backend!r})
with torch.no_grad():
    t0 = time.perf_counter()
    f(x)
    print(json.dumps(time.perf_counter() - t0))
"""


def warm_first_call(name: str, batch: int, threads: int, backend: str = "tensorforge", samples: int = 1) -> float:
    """TensorForge's first call in a new process whose cache directory a previous process filled (seconds, the
    median of `samples` such processes); with backend "eager", dynamo's capture alone (the floor under any
    backend's first call)."""
    code = CHILD.format(root=ROOT, threads=threads, name=name, batch=batch, backend=backend)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TENSORFORGE_CACHE_DIR": cache}
        times = []
        for _ in range(samples + 1):  # the first fills the cache
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            times.append(json.loads(out.stdout.strip().splitlines()[-1]))
        return float(np.median(times[1:]))


def warm_table(models: list[str], batches: list[int], threads: int, samples: int) -> list[str]:
    """The warm-cache first calls alone (`--warm-only`), TensorForge's and backend="eager"'s interleaved."""
    lines = [f"## First call in a new process, cache warm (median of {samples} processes)", "",
             "| model | batch | tensorforge s | backend=\"eager\" s (dynamo's capture + one eager run) |",
             "|---|---:|---:|---:|"]
    for batch in batches:
        for name in models:
            row = (f"| {name} | {batch} | {warm_first_call(name, batch, threads, samples=samples):.2f} | "
                   f"{warm_first_call(name, batch, threads, 'eager', samples):.2f} |")
            lines.append(row)
            print(row, flush=True)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["resnet50", "bert_base", "mobilenet_v2", "vit_base", "mlp"])
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 8], help="inference batch sizes (none: no inference)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--engines", nargs="+", default=["eager", "tensorforge", "inductor"],
                    choices=["eager", "tensorforge", "inductor"])
    ap.add_argument("--train", nargs="*", default=["bert_small:8", "resnet50:2", "mlp:64"],
                    help="MODEL:BATCH training steps to time")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-cache first calls")
    ap.add_argument("--warm-only", action="store_true", help="only the warm-cache first calls, at each --batch")
    ap.add_argument("--warm-samples", type=int, default=1, help="processes per warm-cache figure (the median)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    threads = int(os.environ["TVM_NUM_THREADS"])

    import torch

    torch.set_num_threads(threads)
    engines = args.engines
    others = [e for e in engines if e != "eager"]
    lines = ["# torch.compile(backend=\"tensorforge\") against PyTorch eager and inductor", "",
             f"Machine: {describe_machine()}. {threads} thread(s) for every engine.",
             f"Generated by `TVM_NUM_THREADS={threads} python benchmarks/torch_compile.py --batch "
             f"{' '.join(map(str, args.batch))} --engines {' '.join(engines)} --train {' '.join(args.train)} "
             f"{' '.join(args.models)}`: medians of {args.rounds} interleaved rounds; a first call includes the "
             "engine's compile (TensorForge's disk cache off: TENSORFORGE_CACHE_DIR as the caller set it).", ""]
    if args.warm_only:
        lines[3] = (f"Generated by `TVM_NUM_THREADS={threads} python benchmarks/torch_compile.py --warm-only "
                    f"--warm-samples {args.warm_samples} --batch {' '.join(map(str, args.batch))} "
                    f"{' '.join(args.models)}`: each figure a new process's first call after one process filled "
                    "a fresh cache directory.")
        write_lines(args.out, lines + warm_table(args.models, args.batch, threads, args.warm_samples))
        return 0
    ratios: dict[int, list[float]] = {}
    for batch in args.batch:
        lines += [f"## Inference, batch {batch}", "",
                  "| model | " + " | ".join(f"{e} ms" for e in engines) + " | tensorforge / eager | "
                  + ("tensorforge / inductor | " if "inductor" in engines else "")
                  + " | ".join(f"{e} first call s" for e in others)
                  + (" | tensorforge first call, warm cache, new process s"
                     " | backend=\"eager\" likewise s (dynamo's capture + one eager run)" if not args.no_warm else "")
                  + " | max abs error vs eager |",
                  "|---|" + "---:|" * (len(engines) + 1 + ("inductor" in engines) + len(others)
                                       + 2 * (not args.no_warm) + 1)]
        for name in args.models:
            r = inference(name, batch, engines, args.rounds)
            ms = r["ms"]
            warm = None if args.no_warm else (warm_first_call(name, batch, threads, samples=args.warm_samples),
                                              warm_first_call(name, batch, threads, "eager", args.warm_samples))
            row = f"| {name} | " + " | ".join(f"{ms[e]:.2f}" for e in engines)
            row += f" | {ms['tensorforge'] / ms['eager']:.3f}"
            if "inductor" in engines:
                ratio = ms["tensorforge"] / ms["inductor"]
                ratios.setdefault(batch, []).append(ratio)
                row += f" | {ratio:.3f}"
            row += " | " + " | ".join(f"{r['first_s'][e]:.1f}" for e in others)
            row += "" if warm is None else f" | {warm[0]:.2f} | {warm[1]:.2f}"
            row += " | " + ", ".join(f"{e} {r['err'][e]:.1e}" for e in others) + " |"
            lines.append(row)
            print(row, flush=True)
        if ratios.get(batch):
            g = float(np.exp(np.mean(np.log(ratios[batch]))))
            lines += ["", f"Geometric mean of tensorforge / inductor at batch {batch}: **{g:.3f}**"]
        lines.append("")
    if args.train:
        lines += ["## Training step (forward, cross-entropy, backward, Adam)", "",
                  "| model | batch | " + " | ".join(f"{e} ms" for e in engines) + " | tensorforge / eager | "
                  + " | ".join(f"{e} forward / backward / optimizer ms" for e in engines) + " | "
                  + " | ".join(f"{e} first step s" for e in others) + " | first loss |",
                  "|---|---:|" + "---:|" * (len(engines) + 1 + len(engines) + len(others)) + "---|"]
        for spec in args.train:
            name, batch = spec.split(":")
            r = training(name, int(batch), engines, args.rounds)
            ms = r["ms"]
            row = (f"| {name} | {batch} | " + " | ".join(f"{ms[e]:.1f}" for e in engines)
                   + f" | {ms['tensorforge'] / ms['eager']:.3f} | "
                   + " | ".join("{:.1f} / {:.1f} / {:.1f}".format(*r["phases_ms"][e]) for e in engines) + " | "
                   + " | ".join(f"{r['first_s'][e]:.1f}" for e in others) + " | "
                   + ", ".join(f"{e} {r['loss'][e]:.6f}" for e in engines) + " |")
            lines.append(row)
            print(row, flush=True)
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
