"""Data-parallel training (compile_training(distributed=True), gloo on 127.0.0.1): step time and scaling with 1
and 2 processes. Writes benchmarks/results/distributed.md.

    python benchmarks/distributed.py [--steps 30]

Per model, the same global batch (strong scaling): one process stepping on the whole batch (one kernel thread;
and, for reference, two), against two processes of one thread each stepping on half of it, their gradients
averaged in one all_reduce per step. Each row is the median step of `--steps` after 5 warm-up steps, as rank 0
measures it (the all_reduce included). Processes are started here the way torchrun starts them (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE). The small CNN (two batch norms) also runs with synchronized batch norm
(`sync_batch_norm=True`: 4 more collectives a step, one per batch norm forward (its processes' means and
variances) and one backward); PyTorch's SyncBatchNorm has no CPU kernel (it refuses tensors not on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "benchmarks", "results", "distributed.md")
MODELS = {"mlp": 256, "small_cnn": 64}  # model -> global batch
ENGINES = {"mlp": ("tensorforge", "torch"), "small_cnn": ("tensorforge", "tensorforge, sync BN")}
SYNC = "tensorforge, sync BN"


def _model(name: str, batch: int):
    """(model, shapes, feeds maker) for the model at `batch` rows."""
    from tensorforge.compiler.train_example import quadrant_blobs, small_cnn
    from tensorforge.frontends import nn

    if name == "small_cnn":
        x, y = quadrant_blobs(4096, seed=0)
        return small_cnn(), {"x": (batch, 1, 16, 16)}, x, y
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 784)).astype(np.float32)
    y = x[:, :10].argmax(1).astype(np.int64)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    return model, {"x": (batch, 784)}, x, y


def _torch_step(name: str, world: int):
    """PyTorch's own step for the mlp (DistributedDataParallel over gloo with more than one process)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
    return step


def worker(name: str, engine: str, global_batch: int, steps: int, out: str) -> None:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    part = global_batch // world
    model, shapes, x, y = _model(name, part)
    if engine == "torch":
        import torch

        torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
        torch_step = _torch_step(name, world)
        step_fn = lambda xs, ys: torch_step(xs, ys)  # noqa: E731
    else:
        from tensorforge import compile_training

        s = compile_training(model, "cross_entropy", {"name": "sgd", "lr": 0.01, "momentum": 0.9}, shapes=shapes,
                             distributed=world > 1, sync_batch_norm=engine == SYNC and world > 1)
        step_fn = lambda xs, ys: s.step({"x": xs}, ys)  # noqa: E731
    times = []
    for step in range(steps + 5):
        lo = (step * global_batch) % (len(x) - global_batch + 1) + rank * part
        t0 = time.perf_counter()
        step_fn(x[lo:lo + part], y[lo:lo + part])
        times.append(time.perf_counter() - t0)
    if engine == "torch" and world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"median_ms": float(np.median(times[5:]) * 1e3)}, f)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(name: str, global_batch: int, procs: int, threads: int, steps: int, tmp: str, engine: str = "tensorforge"
        ) -> float:
    out = os.path.join(tmp, f"{name}-{engine.replace(' ', '_').replace(',', '')}-{procs}-{threads}.json")
    env = {**os.environ, "TVM_NUM_THREADS": str(threads), "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()), "WORLD_SIZE": str(procs)}
    ps = [subprocess.Popen([sys.executable, __file__, "--worker", name, engine, str(global_batch), str(steps), out],
                           env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(procs)]
    for p in ps:
        if p.wait(900) != 0:
            raise RuntimeError(f"{name}: a worker failed (exit {p.returncode})")
    with open(out) as f:
        return json.load(f)["median_ms"]


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, engine, batch, steps, out = sys.argv[2:7]
        worker(name, engine, int(batch), int(steps), out)
        return 0
    import tempfile

    from benchmarks.machine import describe_machine, write_lines

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in MODELS.items():
            for engine in ENGINES[name]:
                one = run(name, batch, 1, 1, args.steps, tmp, engine)
                one2 = run(name, batch, 1, 2, args.steps, tmp, engine)
                two = run(name, batch, 2, 1, args.steps, tmp, engine)
                rows.append((name, engine, batch, one, one2, two))
                print(rows[-1], flush=True)
    lines = ["# Data-parallel training: step time with 1 and 2 processes", "",
             f"Machine: {describe_machine()}.", "",
             f"Generated by `python benchmarks/distributed.py --steps {args.steps}`. Strong scaling: the same global "
             "batch; SGD with momentum; gloo over 127.0.0.1; median step after 5 warm-up steps, as rank 0 sees it.",
             "PyTorch rows: the same MLP in eager PyTorch, DistributedDataParallel over gloo for 2 processes.",
             "Sync BN: `sync_batch_norm=True` with 2 processes (1 process: the same step as without), 4 more "
             "collectives a step (2 batch norms, one forward and one backward each) of a few floats each, "
             "each a point where the processes wait for each other; PyTorch's SyncBatchNorm refuses CPU tensors.",
             "", "| model | engine | global batch | 1 process, 1 thread ms | 1 process, 2 threads ms | 2 processes x 1 "
             "thread ms | speedup of 2 processes over 1 (1 thread) |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, engine, batch, one, one2, two in rows:
        lines.append(f"| {name} | {engine} | {batch} | {one:.2f} | {one2:.2f} | {two:.2f} | {one / two:.2f}x |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
