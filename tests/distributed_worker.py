"""One process of tests/test_distributed.py's data-parallel runs (launched with torchrun's environment variables):
trains the test's MLP (`mlp`), or its small CNN with batch norm local and synchronized (`bn`), on its half of each
batch, writes its losses and final state."""

import sys

import numpy as np

from tensorforge import compile_training


def mlp_onnx(batch: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((12, 32)).astype(np.float32) * 0.3, np.zeros(32, np.float32)
    w2, b2 = rng.standard_normal((32, 5)).astype(np.float32) * 0.3, np.zeros(5, np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                           helper.make_node("Gemm", ["t", "w2", "b2"], ["y"])], "mlp",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
                          initializer=[numpy_helper.from_array(a, n) for a, n in
                                       ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


OPTIMIZERS = {"sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "adam": {"name": "adam", "lr": 0.01}}
BATCH, STEPS = 16, 20


def data(step: int):
    x = np.random.default_rng(100 + step).standard_normal((BATCH, 12)).astype(np.float32)
    return x, x[:, :5].argmax(1).astype(np.int64)  # a task it can learn


def train(optimizer: str, rank: int = 0, world: int = 1, distributed=False, checkpoint=None):
    part = BATCH // world
    s = compile_training(mlp_onnx(part), "cross_entropy", OPTIMIZERS[optimizer], distributed=distributed)
    losses = []
    for step in range(STEPS):
        x, y = data(step)
        losses.append(s.step({"x": x[rank * part:(rank + 1) * part]}, y[rank * part:(rank + 1) * part]))
    if checkpoint:
        s.save_checkpoint(checkpoint)
    return np.asarray(losses), s.parameters()


# -- batch norm: the small CNN of `tensorforge train` ----------------------------------------------------------------
BN_BATCH, BN_STEPS = 8, 8


def bn_data(step: int):
    """The quadrant-blob task, offset by 20: the first batch norm sees a mean far from zero next to its spread
    (where combining the processes' statistics could cancel)."""
    from tensorforge.compiler.train_example import quadrant_blobs

    x, y = quadrant_blobs(BN_BATCH, seed=200 + step)
    return x + np.float32(20.0), y


def train_bn(rank: int = 0, world: int = 1, distributed=False, sync=False, part=None):
    """The losses, then the parameters and running statistics after BN_STEPS steps."""
    from tensorforge.compiler.train_example import small_cnn

    part = part or BN_BATCH // world
    s = compile_training(small_cnn(), "cross_entropy", {"name": "sgd", "lr": 0.005, "momentum": 0.9},
                         shapes={"x": (part, 1, 16, 16)}, distributed=distributed, sync_batch_norm=sync)
    losses = []
    for step in range(BN_STEPS):
        x, y = bn_data(step)
        losses.append(s.step({"x": x[rank * part:(rank + 1) * part]}, y[rank * part:(rank + 1) * part]))
    return np.asarray(losses), s.parameters()


if __name__ == "__main__":
    import os

    out, what = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = {}
    if what == "uneven":  # synchronized batch norm over batches of different sizes: refused on every process
        from tensorforge.runtime.errors import CompileError

        try:
            train_bn(rank, world, distributed=True, sync=True, part=2 + 2 * rank)
        except CompileError as e:
            results["error"] = np.array(str(e))
        np.savez(f"{out}.rank{rank}.npz", **results)
        sys.exit(0)
    if what == "bn":
        for sync in (False, True):
            losses, state = train_bn(rank, world, distributed=True, sync=sync)
            results[f"{sync}:losses"] = losses
            results.update({f"{sync}:{k}": v for k, v in state.items()})
        np.savez(f"{out}.rank{rank}.npz", **results)
        sys.exit(0)
    for opt in OPTIMIZERS:
        losses, params = train(opt, rank, world, distributed=True, checkpoint=f"{out}.{opt}.ckpt")
        results[f"{opt}:losses"] = losses
        results.update({f"{opt}:{k}": v for k, v in params.items()})
    np.savez(f"{out}.rank{rank}.npz", **results)
