"""Gradient rules, one per op, attached to the ops with `defgrad` (lesson 2: the rule lives on the OpDef).

A rule is `rule(e, node, dy) -> [gradient of each input or None]`: `e` is the `Emitter` that adds backward nodes,
`node` the forward node (its inputs and output are there to reuse: sigmoid's backward reads y, not x), `dy` the
gradient of its output. Gradients of broadcast inputs are summed back to the input's shape (`e.sum_to`), once per
class of ops (lesson 3).
"""

from __future__ import annotations

import math

import numpy as np

from compiler import ops
from compiler.ops import NOT_DIFFERENTIABLE, OPS, OpDef

from .reverse import AutodiffError


def defgrad(*opdefs: OpDef):
    """Decorator: attach `rule` as the gradient of each op. `OpDef` is frozen, so that nothing else edits an op
    after its declaration; this is the one sanctioned place that sets its `grad` field (once, at import)."""

    def register(rule):
        for op in opdefs:
            object.__setattr__(op, "grad", rule)
        return rule

    return register


def nondifferentiable(*opdefs: OpDef) -> None:
    """Mark ops whose outputs carry no gradient by nature (comparisons, masks, indices)."""
    for op in opdefs:
        object.__setattr__(op, "grad", NOT_DIFFERENTIABLE)


def _present(*names: str) -> list[OpDef]:
    """Ops declared elsewhere that may not exist in every checkout (added by other families' files)."""
    return [OPS[n] for n in names if n in OPS]


def _x(n):
    return n.inputs[0]


def _y(n):
    return n.outputs[0]


# -- elementwise unary ----------------------------------------------------------------------------------------------
# d/dx written with the forward's own output where that is cheaper (lesson 3: one line per op)
UNARY_RULES = {
    ops.relu: lambda e, n, dy: e.op(ops.relu_grad, [_x(n), dy]),
    ops.sigmoid: lambda e, n, dy: e.mul(dy, e.mul(_y(n), e.op(ops.sub, [1.0, _y(n)]))),
    ops.tanh: lambda e, n, dy: e.mul(dy, e.op(ops.sub, [1.0, e.mul(_y(n), _y(n))])),
    ops.exp: lambda e, n, dy: e.mul(dy, _y(n)),
    ops.log: lambda e, n, dy: e.op(ops.div, [dy, _x(n)]),
    ops.sqrt: lambda e, n, dy: e.op(ops.div, [e.scale(dy, 0.5), _y(n)]),
    ops.abs: lambda e, n, dy: e.mul(dy, e.op(ops.sub, [e.op(ops.gt_mask, [_x(n), 0.0]),
                                                       e.op(ops.gt_mask, [e.const(0.0, _x(n).type.dtype), _x(n)])])),
    ops.neg: lambda e, n, dy: e.op(ops.neg, [dy]),
    ops.erf: lambda e, n, dy: e.mul(e.scale(dy, 2 / math.sqrt(math.pi)),
                                    e.op(ops.exp, [e.op(ops.neg, [e.mul(_x(n), _x(n))])])),
    ops.sin: lambda e, n, dy: e.mul(dy, e.op(ops.cos, [_x(n)])),
    ops.cos: lambda e, n, dy: e.op(ops.neg, [e.mul(dy, e.op(ops.sin, [_x(n)]))]),
    ops.reciprocal: lambda e, n, dy: e.op(ops.neg, [e.mul(dy, e.mul(_y(n), _y(n)))]),
    ops.leaky_relu: lambda e, n, dy: e.mul(dy, e.op(ops.add, [
        n.attrs["alpha"], e.scale(e.op(ops.gt_mask, [_x(n), 0.0]), 1 - n.attrs["alpha"])])),
    ops.clip: lambda e, n, dy: e.mul(dy, e.mul(e.op(ops.ge_mask, [_x(n), n.attrs["min"]]),
                                               e.op(ops.ge_mask, [e.const(n.attrs["max"], _x(n).type.dtype),
                                                                  _x(n)]))),
    ops.dropout: lambda e, n, dy: dy,
}
for _op, _rule in UNARY_RULES.items():
    defgrad(_op)(lambda e, n, dy, _r=_rule: [_r(e, n, dy)])


@defgrad(ops.floor, ops.ceil, *_present("sign", "round"))
def _piecewise_constant(e, n, dy):
    return [None]  # zero almost everywhere


@defgrad(ops.cast)
def _cast(e, n, dy):
    src = _x(n).type.dtype
    return [e.op(ops.cast, [dy], to=src) if src.startswith(("float", "bfloat")) else None]


@defgrad(ops.dropout_train)
def _dropout_train(e, n, dy):
    return [e.op(ops.dropout_train, [dy, n.inputs[1]], p=n.attrs["p"]), None]  # linear in x: its own adjoint


nondifferentiable(ops.equal, ops.ge_mask, ops.gt_mask,
                  *_present("less", "greater", "less_equal", "greater_equal", "argmax", "argmin", "isnan", "isinf",
                            "logical_not", "logical_and", "logical_or", "logical_xor"))


# -- elementwise binary (broadcasting) -----------------------------------------------------------------------------------
# (da, db) before summing back to the operands' shapes
BINARY_RULES = {
    ops.add: lambda e, n, dy: (dy, dy),
    ops.sub: lambda e, n, dy: (dy, e.op(ops.neg, [dy])),
    ops.mul: lambda e, n, dy: (e.mul(dy, n.inputs[1]), e.mul(dy, n.inputs[0])),
    ops.div: lambda e, n, dy: (e.op(ops.div, [dy, n.inputs[1]]),
                               e.op(ops.neg, [e.op(ops.div, [e.mul(dy, _y(n)), n.inputs[1]])])),
    ops.maximum: lambda e, n, dy: _select_grad(e, dy, e.op(ops.ge_mask, n.inputs)),
    ops.minimum: lambda e, n, dy: _select_grad(e, dy, e.op(ops.ge_mask, n.inputs[::-1])),
    ops.pow: lambda e, n, dy: (
        e.mul(dy, e.mul(n.inputs[1], e.op(ops.pow, [n.inputs[0], e.op(ops.sub, [n.inputs[1], 1.0])]))),
        e.mul(dy, e.mul(e.op(ops.log, [n.inputs[0]]), _y(n)))),
}


def _select_grad(e, dy, mask):
    """maximum/minimum: the gradient goes to the selected operand (the first one on ties)."""
    da = e.mul(dy, mask)
    return da, e.op(ops.sub, [dy, da])


for _op, _rule in BINARY_RULES.items():
    defgrad(_op)(lambda e, n, dy, _r=_rule: [e.sum_to(g, v.type.shape) for g, v in zip(_r(e, n, dy), n.inputs)])


@defgrad(ops.where)
def _where(e, n, dy):
    c, a, b = n.inputs
    zero = e.const(0.0, dy.type.dtype)
    return [None, e.sum_to(e.op(ops.where, [c, dy, zero]), a.type.shape),
            e.sum_to(e.op(ops.where, [c, zero, dy]), b.type.shape)]


# -- reductions -----------------------------------------------------------------------------------------------------------
def _unreduce(e, n, dy):
    x = _x(n)
    kept = tuple(1 if i in n.attrs["axes"] else d for i, d in enumerate(x.type.shape))
    if dy.type.shape != kept:
        dy = e.op(ops.reshape, [dy], shape=kept)
    return e.broadcast(dy, x.type.shape)


defgrad(ops.reduce_sum)(lambda e, n, dy: [_unreduce(e, n, dy)])
defgrad(ops.reduce_mean)(lambda e, n, dy: [e.scale(_unreduce(e, n, dy), 1.0 / int(np.prod(
    [_x(n).type.shape[a] for a in n.attrs["axes"]])))])


@defgrad(ops.global_avg_pool)
def _gap(e, n, dy):
    x = _x(n)
    return [e.scale(e.broadcast(dy, x.type.shape), 1.0 / int(np.prod(x.type.shape[2:])))]


@defgrad(ops.softmax)
def _softmax(e, n, dy):
    y = _y(n)
    s = e.op(ops.reduce_sum, [e.mul(dy, y)], axes=(n.attrs["axis"],), keepdims=True)
    return [e.mul(y, e.op(ops.sub, [dy, s]))]


for _op in _present("log_softmax"):
    @defgrad(_op)
    def _log_softmax(e, n, dy):
        s = e.op(ops.reduce_sum, [dy], axes=(n.attrs["axis"],), keepdims=True)
        return [e.op(ops.sub, [dy, e.mul(e.op(ops.exp, [_y(n)]), s)])]


# -- dense, matmul, convolution ---------------------------------------------------------------------------------------
@defgrad(ops.dense)
def _dense(e, n, dy):
    x, w = n.inputs[:2]
    dx = e.op(ops.matmul, [dy, w])  # (M, N) @ (N, K)
    dw = e.op(ops.weight_grad_gemm, [dy, x], shape=w.type.shape, transpose_rows=True)  # dy.T (N, M) @ x (M, K)
    db = [e.op(ops.reduce_sum, [dy], axes=(0,), keepdims=False)] if len(n.inputs) == 3 else []
    return [dx, dw] + db


def _swap_last(e, v):
    r = v.type.rank
    return e.op(ops.transpose, [v], perm=tuple(range(r - 2)) + (r - 1, r - 2))


@defgrad(ops.matmul)
def _matmul(e, n, dy):
    a, b = n.inputs
    if a.type.rank < 2 or b.type.rank < 2:
        raise AutodiffError(f"gradient of matmul (node {n.name or '?'}) with a 1-D operand is not supported")
    da = e.op(ops.matmul, [dy, _swap_last(e, b)])
    db = e.op(ops.matmul, [_swap_last(e, a), dy])
    return [e.sum_to(da, a.type.shape), e.sum_to(db, b.type.shape)]


@defgrad(ops.conv2d)
def _conv2d(e, n, dy):
    """Ungrouped convs differentiate into the forward's own kernels: dx of a stride-1 conv is a conv of dy with the
    flipped, channel-swapped weight; dw is a matrix product with the input's windows (im2col). Other convs use the
    gather-form backward ops."""
    x, w = n.inputs[:2]
    conv = {k: n.attrs[k] for k in ("strides", "pads", "dilations", "groups")}
    ungrouped = conv["groups"] == 1
    dx = _conv2d_input_grad(e, x, w, dy, conv) if ungrouped else None
    if dx is None:
        dx = e.op(ops.conv2d_backward_data, [dy, w], input_shape=x.type.shape, **conv)
    if ungrouped:
        o = w.type.shape[0]
        dy_rows = e.op(ops.reshape, [e.op(ops.transpose, [dy], perm=(1, 0, 2, 3))], shape=(o, dy.type.numel // o))
        cols = e.op(ops.im2col, [x], kernel=w.type.shape[2:], strides=conv["strides"], pads=conv["pads"],
                    dilations=conv["dilations"])
        dw = e.op(ops.weight_grad_gemm, [dy_rows, cols], shape=w.type.shape)
    else:
        dw = e.op(ops.conv2d_backward_weight, [dy, x], kernel_shape=w.type.shape, **conv)
    db = [e.op(ops.reduce_sum, [dy], axes=(0, 2, 3), keepdims=False)] if len(n.inputs) == 3 else []
    return [dx, dw] + db


def _conv2d_input_grad(e, x, w, dy, conv):
    """dx = conv2d(dy, flip(w)) padded by dilation * (k - 1) - pad on each side, for stride 1; None otherwise (or
    when a pad exceeds the window, which the gather form handles)."""
    if conv["strides"] != (1, 1):
        return None
    kh, kw = w.type.shape[2:]
    (dh, dw_), (pt, pl, pb, pr) = conv["dilations"], conv["pads"]
    pads = (dh * (kh - 1) - pt, dw_ * (kw - 1) - pl, dh * (kh - 1) - pb, dw_ * (kw - 1) - pr)
    if min(pads) < 0:
        return None
    dx = e.op(ops.conv2d, [dy, e.op(ops.conv2d_weight_flip, [w])], strides=(1, 1), pads=pads,
              dilations=conv["dilations"], groups=1)
    return dx if dx.type == x.type else None


# -- normalization --------------------------------------------------------------------------------------------------------
@defgrad(ops.batch_norm)
def _batch_norm(e, n, dy):
    """Inference-form batch norm (fixed statistics: a per-channel affine map). Training mode is rewritten into
    ordinary ops before differentiation (compiler/autodiff/training.py)."""
    x, scale, bias, mean, var = n.inputs
    c = x.type.shape[1]
    bshape = (1, c) + (1,) * (x.type.rank - 2)
    axes = (0,) + tuple(range(2, x.type.rank))
    rstd = e.op(ops.reciprocal, [e.op(ops.sqrt, [e.op(ops.add, [var, n.attrs["epsilon"]])])])
    inv = e.op(ops.reshape, [e.mul(scale, rstd)], shape=bshape)
    xhat = e.mul(e.op(ops.sub, [x, e.op(ops.reshape, [mean], shape=bshape)]),
                 e.op(ops.reshape, [rstd], shape=bshape))
    dscale = e.op(ops.reduce_sum, [e.mul(dy, xhat)], axes=axes, keepdims=False)
    dbias = e.op(ops.reduce_sum, [dy], axes=axes, keepdims=False)
    dmean = e.op(ops.neg, [e.mul(dbias, e.mul(scale, rstd))])
    dvar = e.mul(e.mul(dscale, scale), e.scale(e.mul(rstd, rstd), -0.5))  # d rstd/d var = -rstd^3 / 2
    return [e.mul(dy, inv), dscale, dbias, dmean, dvar]


@defgrad(ops.layer_norm)
def _layer_norm(e, n, dy):
    x, scale = n.inputs[:2]
    axes = tuple(range(n.attrs["axis"], x.type.rank))
    mean = e.op(ops.reduce_mean, [x], axes=axes, keepdims=True)
    xc = e.op(ops.sub, [x, mean])
    var = e.op(ops.reduce_mean, [e.mul(xc, xc)], axes=axes, keepdims=True)
    rstd = e.op(ops.reciprocal, [e.op(ops.sqrt, [e.op(ops.add, [var, n.attrs["epsilon"]])])])
    xhat = e.mul(xc, rstd)
    g = e.mul(dy, scale)
    mg = e.op(ops.reduce_mean, [g], axes=axes, keepdims=True)
    mgx = e.op(ops.reduce_mean, [e.mul(g, xhat)], axes=axes, keepdims=True)
    dx = e.mul(rstd, e.op(ops.sub, [e.op(ops.sub, [g, mg]), e.mul(xhat, mgx)]))
    out = [dx, e.sum_to(e.mul(dy, xhat), scale.type.shape)]
    if len(n.inputs) == 3:
        out.append(e.sum_to(dy, n.inputs[2].type.shape))
    return out


# -- pooling ----------------------------------------------------------------------------------------------------------------
@defgrad(ops.max_pool2d)
def _max_pool(e, n, dy):
    return [e.op(ops.max_pool2d_grad, [_x(n), _y(n), dy], **n.attrs)]


@defgrad(ops.avg_pool2d)
def _avg_pool(e, n, dy):
    return [e.op(ops.avg_pool2d_grad, [_x(n), dy], **n.attrs)]


# -- data movement ------------------------------------------------------------------------------------------------------
defgrad(ops.reshape)(lambda e, n, dy: [e.op(ops.reshape, [dy], shape=_x(n).type.shape)])
defgrad(ops.transpose)(lambda e, n, dy: [e.op(ops.transpose, [dy], perm=tuple(np.argsort(n.attrs["perm"])))])
defgrad(ops.broadcast_to)(lambda e, n, dy: [e.sum_to(dy, _x(n).type.shape)])


@defgrad(ops.strided_slice)
def _strided_slice(e, n, dy):
    return [e.op(ops.strided_slice_grad, [dy], input_shape=_x(n).type.shape, begins=n.attrs["begins"],
                 strides=n.attrs["strides"])]


@defgrad(ops.concat)
def _concat(e, n, dy):
    axis, start, out = n.attrs["axis"], 0, []
    for v in n.inputs:
        size = v.type.shape[axis]
        begins, ends = [0] * v.type.rank, list(dy.type.shape)
        begins[axis], ends[axis] = start, start + size
        out.append(e.op(ops.strided_slice, [dy], begins=tuple(begins), ends=tuple(ends), strides=(1,) * v.type.rank))
        start += size
    return out


@defgrad(ops.pad)
def _pad(e, n, dy):
    pads, r = n.attrs["pads"], _x(n).type.rank
    if n.attrs.get("mode", "constant") != "constant":  # edge/reflect/wrap read input elements several times
        raise AutodiffError(f"gradient of pad (node {n.name or '?'}) in mode {n.attrs['mode']!r} is not supported")
    if any(p < 0 for p in pads):
        raise AutodiffError(f"gradient of pad (node {n.name or '?'}) with negative pads is not supported")
    begins = tuple(pads[:r])
    ends = tuple(b + d for b, d in zip(begins, _x(n).type.shape))
    return [e.op(ops.strided_slice, [dy], begins=begins, ends=ends, strides=(1,) * r)]


@defgrad(ops.take)
def _take(e, n, dy):
    data, idx = n.inputs
    return [e.op(ops.take_grad, [idx, dy], axis=n.attrs["axis"], input_shape=data.type.shape), None]


@defgrad(ops.softmax_cross_entropy)
def _softmax_ce(e, n, dy):
    logits, labels = n.inputs
    return [e.op(ops.softmax_cross_entropy_grad, [logits, labels, dy], **n.attrs), None]


for _op in _present("gelu"):
    @defgrad(_op)
    def _gelu(e, n, dy):
        """d/dx x * Phi(x) = Phi(x) + x * phi(x) (the erf form), or the tanh form's derivative: one op."""
        if n.attrs.get("approximate", "none") not in ("none", "tanh"):
            raise AutodiffError(f"gradient of gelu (node {n.name or '?'}) with approximate="
                                f"{n.attrs['approximate']!r} is not supported")
        return [e.op(ops.gelu_grad, [_x(n), dy], approximate=n.attrs.get("approximate", "none"))]
