"""Ops that training adds to a graph besides backward kernels: masks, dropout and losses, with their gradient rules.

Gradient rules are compositions of ordinary ops where that is cheap; the ops here (and the backward kernels of
backward.py) are the pieces a composition would make slow or impossible: comparison masks in the float dtype (so a
ReLU backward is one multiply), dropout in training mode, and the fused softmax cross-entropy. Every reference works
in any float dtype (the finite-difference tests run them in float64).
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType

from .registry import NOT_DIFFERENTIABLE, NO_RULE_YET, Attr, FusionKind, defop, fail, never_per_sample, ops


def _same(types, **_):
    return types[0]


def _broadcast(types, **_):
    try:
        shape = np.broadcast_shapes(*(t.shape for t in types))
    except ValueError:
        fail(f"shapes {', '.join(str(t.shape) for t in types)} do not broadcast")
    return TensorType(shape, types[0].dtype)


def _bcast_index(t, out_idx):
    """Index a broadcast operand `t` with the output's index (numpy rules: align right, size-1 dims read 0)."""
    r = len(t.shape)
    idx = out_idx[len(out_idx) - r:]
    return t(*[0 if int(d) == 1 else i for d, i in zip(t.shape, idx)])


# -- masks: comparisons as 0/1 in the operands' float dtype -----------------------------------------------------------
def _mask_lower(cmp):
    def lower(a, b):
        shape = [int(d) for d in np.broadcast_shapes(tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape))]
        return te.compute(shape, lambda *i: tirx.Select(cmp(_bcast_index(a, i), _bcast_index(b, i)),
                                                        tirx.const(1, a.dtype), tirx.const(0, a.dtype)), name="mask")

    return lower


ge_mask = defop("ge_mask", FusionKind.BROADCAST, infer=_broadcast, arity=(2, 2),
                reference=lambda a, b: np.asarray(a >= b).astype(a.dtype),
                lower=_mask_lower(lambda x, y: x >= y), grad=NOT_DIFFERENTIABLE,
                doc="1 where a >= b, else 0, in a's dtype.")
gt_mask = defop("gt_mask", FusionKind.BROADCAST, infer=_broadcast, arity=(2, 2),
                reference=lambda a, b: np.asarray(a > b).astype(a.dtype),
                lower=_mask_lower(lambda x, y: x > y), grad=NOT_DIFFERENTIABLE,
                doc="1 where a > b, else 0, in a's dtype.")


# -- dropout ------------------------------------------------------------------------------------------------------------
dropout = defop("dropout", FusionKind.ELEMWISE, infer=_same, attrs={"p": Attr("float", 0.5)},
                reference=lambda x, *, p: x, lower=lambda x, *, p: x, is_view=True, grad=lambda e, n, dy: [dy],
                doc="Inference dropout: the identity (a view). The training rewrite turns it into dropout_train.")


def _dropout_train_ref(x, u, *, p):
    return np.where(u >= p, x * x.dtype.type(1.0 / (1.0 - p)), np.zeros((), x.dtype)).astype(x.dtype)


def _dropout_train_lower(x, u, *, p):
    scale = tirx.const(1.0 / (1.0 - p), x.dtype)
    return te.compute(x.shape, lambda *i: tirx.Select(u(*i) >= tirx.const(p, u.dtype), x(*i) * scale,
                                                      tirx.const(0, x.dtype)), name="dropout")


def _dropout_train_grad(e, n, dy):
    return [e.op(ops.dropout_train, [dy, n.inputs[1]], p=n.attrs["p"]), None]  # linear in x: its own adjoint


dropout_train = defop("dropout_train", FusionKind.ELEMWISE, infer=_same, attrs={"p": Attr("float", 0.5)},
                      arity=(2, 2), reference=_dropout_train_ref, lower=_dropout_train_lower,
                      grad=_dropout_train_grad,
                      channel_axis_agnostic=False,  # its uniform samples are drawn for the plain layout
                      doc="Training dropout: x / (1 - p) where the uniform sample u >= p, else 0. Linear in x, so "
                          "its backward is itself applied to dy.", per_sample=never_per_sample)


# -- losses -------------------------------------------------------------------------------------------------------------
CE_ATTRS = {"label_smoothing": Attr("float", 0.0), "ignore_index": Attr("int", -100)}


def _ce_infer(types, *, label_smoothing, ignore_index):
    logits, labels = types[0], types[1]
    if logits.rank != 2 or labels.shape != logits.shape[:1] or labels.dtype not in ("int64", "int32"):
        fail(f"expects logits (N, C) and integer labels (N,), got {logits} and {labels}")
    return TensorType(logits.shape[:1], logits.dtype)


def _ce_ref(logits, labels, *, label_smoothing, ignore_index):
    x = logits.astype(np.float64)
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    valid = labels != ignore_index
    picked = x[np.arange(len(x)), np.where(valid, labels, 0)]
    loss = lse - (1 - label_smoothing) * picked - label_smoothing * x.mean(1)
    return np.where(valid, loss, 0.0).astype(logits.dtype)


def _row_stats(x):
    n, c = x.shape
    r1 = te.reduce_axis((0, c), name="r1")
    mx = te.compute((n,), lambda i: te.max(x[i, r1], axis=r1), name="ce_max")
    r2 = te.reduce_axis((0, c), name="r2")
    se = te.compute((n,), lambda i: te.sum(te.exp(x[i, r2] - mx[i]), axis=r2), name="ce_sumexp")
    r3 = te.reduce_axis((0, c), name="r3")
    sx = te.compute((n,), lambda i: te.sum(x[i, r3], axis=r3), name="ce_sum")
    return mx, se, sx


def _ce_lower(logits, labels, *, label_smoothing, ignore_index):
    n, c = (int(d) for d in logits.shape)
    mx, se, sx = _row_stats(logits)
    eps = label_smoothing

    def f(i):
        y = labels[i]
        valid = y != tirx.const(ignore_index, labels.dtype)
        picked = logits[i, tirx.Select(valid, y, tirx.const(0, labels.dtype))]
        loss = te.log(se[i]) + mx[i] - tirx.const(1 - eps, logits.dtype) * picked \
            - tirx.const(eps / c, logits.dtype) * sx[i]
        return tirx.Select(valid, loss, tirx.const(0, logits.dtype))

    return te.compute((n,), f, name="softmax_cross_entropy")


def _ce_grad(e, n, dy):
    logits, labels = n.inputs
    return [e.op(ops.softmax_cross_entropy_grad, [logits, labels, dy], **n.attrs), None]


softmax_cross_entropy = defop(
    "softmax_cross_entropy", FusionKind.REDUCTION, infer=_ce_infer, attrs=CE_ATTRS, arity=(2, 2),
    reference=_ce_ref, lower=_ce_lower, grad=_ce_grad,
    doc="Per-sample -log softmax(logits)[label] with label smoothing (PyTorch's); 0 where label == ignore_index.")


def _ce_grad_infer(types, **_):
    return types[0]


def _ce_grad_ref(logits, labels, dloss, *, label_smoothing, ignore_index):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    valid = labels != ignore_index
    onehot = np.zeros_like(p)
    onehot[np.arange(len(x)), np.where(valid, labels, 0)] = 1.0
    g = p - (1 - label_smoothing) * onehot - label_smoothing / x.shape[1]
    return (g * np.where(valid, dloss, 0.0)[:, None]).astype(logits.dtype)


def _ce_grad_lower(logits, labels, dloss, *, label_smoothing, ignore_index):
    n, c = (int(d) for d in logits.shape)
    mx, se, _ = _row_stats(logits)
    eps = label_smoothing

    def f(i, j):
        y = labels[i]
        valid = y != tirx.const(ignore_index, labels.dtype)
        p = te.exp(logits[i, j] - mx[i]) / se[i]
        hit = tirx.Select(j.astype(labels.dtype) == y, tirx.const(1 - eps, logits.dtype), tirx.const(0, logits.dtype))
        g = (p - hit - tirx.const(eps / c, logits.dtype)) * dloss[i]
        return tirx.Select(valid, g, tirx.const(0, logits.dtype))

    return te.compute((n, c), f, name="softmax_cross_entropy_grad")


softmax_cross_entropy_grad = defop(
    "softmax_cross_entropy_grad", FusionKind.REDUCTION, infer=_ce_grad_infer, attrs=CE_ATTRS, arity=(3, 3),
    reference=_ce_grad_ref, lower=_ce_grad_lower, grad=NO_RULE_YET,
    doc="dL/dlogits of softmax_cross_entropy from logits, labels and the per-sample dL/dloss.")
