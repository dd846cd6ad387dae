"""Collectives inside a plan: `all_reduce_mean(x)` is the mean of `x` over the processes of a data-parallel run.

Synchronized batch norm (compile_training(distributed=..., sync_batch_norm=True), autodiff/training.py) averages
each batch norm's statistics over the processes in the middle of the forward, and its gradients in the middle of
the backward, so the collective is an op of the graph rather than a step between two plans. Its kernel is one call
to the runtime function `tensorforge.all_reduce_mean` (registered by runtime/distributed.py: the process group's
all_reduce, or a copy in a process of its own), in plan order, so every process reaches its collectives in the
same order. The reference interpreter runs one process: there the mean over the processes is `x` itself.

Gradient: y_r = mean over s of x_s on every process r, so the gradient of the sum of the processes' losses with
respect to x_s is the mean over r of dy_r: the same collective on the gradient (what PyTorch's SyncBatchNorm
computes in its backward). The per-process gradients of the parameters then add up to the gradient of that sum,
and the data-parallel average makes it the mean loss's.
"""

from __future__ import annotations

from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType
from tensorforge.runtime.distributed import ALL_REDUCE_MEAN  # the runtime function the kernel calls

from .registry import FusionKind, defop, fail, never_per_sample


def _infer(types):
    (x,) = types
    if x.dtype not in ("float32", "float64"):
        fail(f"the collective averages float32 or float64 tensors, got {x}")
    return TensorType(x.shape, x.dtype)


def _lower(x):
    return te.extern([x.shape], [x], lambda ins, outs: tirx.call_packed(ALL_REDUCE_MEAN, ins[0], outs[0]),
                     name="all_reduce_mean", tag="all_reduce_mean", dtype=[x.dtype])


all_reduce_mean = defop(
    "all_reduce_mean", FusionKind.OPAQUE, infer=_infer, reference=lambda x: x.copy(), lower=_lower,
    grad=lambda e, n, dy: [e.op(all_reduce_mean, [dy])], per_sample=never_per_sample,
    flops=lambda n: 0,
    doc="the mean of x over the processes of a data-parallel run (x itself in one process); a call into the "
        "runtime's process group")
