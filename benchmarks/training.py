"""Training step time: TensorForge (compile_training) vs PyTorch eager on this CPU, with SGD (momentum) and Adam.

Models (builder API, mirrored in PyTorch with the same weights): MLP 784-512-512-10 (batch 64), CNN (batch 32,
3x32x32), LSTM classifier (batch 32, 64 steps), 4-layer Transformer encoder (batch 16, 128 tokens, d=256).
Both engines use the same thread count; steps are interleaved (rounds of TF then torch, each engine's timed step
right after an untimed one, after WARMUP steps each) and medians reported. Writes benchmarks/results/training.md
(or --out).

    TVM_NUM_THREADS=2 python benchmarks/training.py [--rounds 10] [model ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TVM_NUM_THREADS", "2")
# Each engine's threads keep spinning for a while after its step (PyTorch's OpenMP pool, TVM's pool) and steal the
# cores from the other engine's next step: MLP SGD (a 2.5 ms step) measured 10 ms timed right after a torch step.
# So each timed step follows an untimed one of the same engine. (OMP_WAIT_POLICY=PASSIVE, as benchmarks/suite.py
# sets, would also avoid it, but makes every PyTorch op pay a thread wake-up: not PyTorch as users run it.)
PAUSE_S = 0.1  # between the engines: longer than either's threads spin after a step (benchmarks/suite.py)
WARMUP = 5

import torch  # noqa: E402

from benchmarks.machine import describe_machine  # noqa: E402
from tensorforge import compile_training  # noqa: E402
from tensorforge.frontends import nn  # noqa: E402
from tests.autodiff.torch_models import (RecurrentClassifier, TorchRecurrentClassifier,  # noqa: E402
                                         TorchTransformerClassifier, TransformerClassifier, load_into_torch, mlp)


def cnn():
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    def tblock(i, o):
        return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]

    net = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 16, 10))
    tnet = torch.nn.Sequential(*tblock(3, 32), *tblock(32, 64), *tblock(64, 128), torch.nn.Flatten(),
                               torch.nn.Linear(128 * 16, 10))
    return net, tnet


MODELS = {
    "mlp": (lambda: mlp((784, 512, 512, 10)), (64, 784), 10),
    "cnn": (cnn, (32, 3, 32, 32), 10),
    "lstm": (lambda: (RecurrentClassifier("lstm", 32, 128, 10), TorchRecurrentClassifier("lstm", 32, 128, 10)),
             (32, 64, 32), 10),
    "transformer": (lambda: (TransformerClassifier(256, 4, 1024, 4, 10), TorchTransformerClassifier(256, 4, 1024, 4, 10)),
                    (16, 128, 256), 10),
}
OPTIMIZERS = {"sgd": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "adam": {"name": "adam", "lr": 1e-3}}


def bench(name: str, opt_name: str, rounds: int) -> dict:
    build, shape, classes = MODELS[name]
    net, tnet = build()
    params = net.init(0)
    load_into_torch(tnet, params)
    tnet.train()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, classes, shape[0]).astype(np.int64)
    opt = OPTIMIZERS[opt_name]
    t0 = time.perf_counter()
    session = compile_training(net, shapes={"x": shape}, params=params, optimizer=opt)
    compile_s = time.perf_counter() - t0
    o = dict(opt)
    o.pop("name")
    topt = (torch.optim.SGD if opt_name == "sgd" else torch.optim.Adam)(tnet.parameters(), **o)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_step():
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(tx), ty)
        loss.backward()
        topt.step()
        return loss.item()

    ours, theirs = [], []
    for _ in range(WARMUP):
        session.step({"x": x}, y)
        torch_step()
    for _ in range(rounds):
        time.sleep(PAUSE_S)  # the other engine's threads stop spinning (benchmarks/suite.py)
        session.step({"x": x}, y)  # untimed: the switch from the other engine (its threads, caches) costs this one
        t = time.perf_counter()
        session.step({"x": x}, y)
        ours.append(time.perf_counter() - t)
        time.sleep(PAUSE_S)
        torch_step()
        t = time.perf_counter()
        torch_step()
        theirs.append(time.perf_counter() - t)
    stats = session.train_model.plan["stats"]
    return {"model": name, "optimizer": opt_name, "compile_s": compile_s, "tf_ms": np.median(ours) * 1e3,
            "torch_ms": np.median(theirs) * 1e3, "tf_min_ms": np.min(ours) * 1e3, "torch_min_ms": np.min(theirs) * 1e3,
            "kernels": stats["kernels"], "ops": stats["ops"],
            "arena_mb": stats["arena_bytes"] / 2 ** 20,
            "saved_mb": stats.get("saved_activation_bytes", 0) / 2 ** 20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "training.md"))
    args = ap.parse_args()
    threads = int(os.environ["TVM_NUM_THREADS"])
    torch.set_num_threads(threads)
    rows = []
    for name in args.models:
        for opt_name in OPTIMIZERS:
            r = bench(name, opt_name, args.rounds)
            print(f"{r['model']:<12} {r['optimizer']:<5} TF {r['tf_ms']:9.2f} ms  torch {r['torch_ms']:9.2f} ms  "
                  f"ratio {r['tf_ms'] / r['torch_ms']:5.2f} (of minimums {r['tf_min_ms'] / r['torch_min_ms']:5.2f})  "
                  f"compile {r['compile_s']:6.1f} s  "
                  f"kernels {r['kernels']}", flush=True)
            rows.append(r)
    lines = ["# Training step time: TensorForge vs PyTorch eager", "",
             f"{describe_machine()}; {threads} threads each; median and minimum of {args.rounds} interleaved steps "
             f"(each after an untimed one) after {WARMUP} warm-up steps. One step = forward, cross-entropy loss, "
             f"backward, optimizer update. "
             f"The machine is shared: read the medians and the minimums together.", "",
             "| model | optimizer | TensorForge ms (median / min) | PyTorch ms (median / min) | TF / torch (medians) | "
             "TF / torch (minimums) | compile s | kernels | ops | arena MiB | saved activations MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['optimizer']} | {r['tf_ms']:.2f} / {r['tf_min_ms']:.2f} | "
                     f"{r['torch_ms']:.2f} / {r['torch_min_ms']:.2f} | {r['tf_ms'] / r['torch_ms']:.2f} | "
                     f"{r['tf_min_ms'] / r['torch_min_ms']:.2f} | {r['compile_s']:.1f} | {r['kernels']} | {r['ops']} | "
                     f"{r['arena_mb']:.1f} | {r['saved_mb']:.1f} |")
    out = args.out
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
