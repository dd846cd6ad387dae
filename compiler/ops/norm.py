"""Normalizations and softmax: batch_norm, layer_norm, lrn, softmax, log_softmax, with their gradient rules."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi


from . import vecmath
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail, ops, per_sample_unless_axis


def _bn_infer(types, *, epsilon):
    x = types[0]
    if x.rank < 2:
        fail(f"expects at least (N, C), got {x}")
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            fail(f"scale/bias/mean/var must have shape ({x.shape[1]},), got {t}")
    return x


def _bn_ref(x, scale, bias, mean, var, *, epsilon):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (scale / np.sqrt(var + x.dtype.type(epsilon))).reshape(shape)
    return ((x - mean.reshape(shape)) * inv + bias.reshape(shape)).astype(x.dtype)


def _bn_lower(x, scale, bias, mean, var, *, epsilon):
    def f(*i):
        c = i[1]
        inv = scale[c] / te.sqrt(var[c] + te.const(epsilon, x.dtype))
        return (x(*i) - mean[c]) * inv + bias[c]

    return te.compute(x.shape, f, name="batch_norm")


def _bn_grad(e, n, dy):
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


batch_norm = defop("batch_norm", FusionKind.BROADCAST, infer=_bn_infer, attrs={"epsilon": Attr("float", 1e-5)},
                   arity=(5, 5), reference=_bn_ref, lower=_bn_lower, grad=_bn_grad,
                   channel_axis_agnostic=False,  # its parameters are indexed by the channel (axis 1)
                   doc="Inference batch normalization over axis 1: (x - mean) / sqrt(var + eps) * scale + bias.")


def _lrn_ref(x, *, size, alpha, beta, bias):
    sq = (x.astype(np.float64)) ** 2
    c = x.shape[1]
    padded = np.pad(sq, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    s = sum(padded[:, i:i + c] for i in range(size))
    return (x / (bias + alpha / size * s) ** beta).astype(x.dtype)


lrn = defop("lrn", FusionKind.REDUCTION, infer=lambda types, **_: types[0],
            attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
                   "bias": Attr("float", 1.0)},
            reference=_lrn_ref,
            lower=lambda x, *, size, alpha, beta, bias: topi.nn.lrn(x, size, 1, alpha, beta, bias), grad=NO_RULE_YET,
            doc="Local response normalization across channels (axis 1), ONNX semantics.")


def _softmax_infer(types, *, axis, fast_exp=False):
    (x,) = types
    if not 0 <= axis < x.rank:
        fail(f"axis {axis} out of range for {x}")
    return x


def _softmax_ref(x, *, axis, fast_exp=False):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _softmax_grad(e, n, dy):
    y = n.outputs[0]
    s = e.op(ops.reduce_sum, [e.mul(dy, y)], axes=(n.attrs["axis"],), keepdims=True)
    return [e.mul(y, e.op(ops.sub, [dy, s]))]


def _softmax_lower(x, *, axis, fast_exp=False):
    """float32: topi's softmax stages (row max, exp(x - max), row sum, normalize) with vecmath's exp, vectorized and
    within 1 ulp (`fast_exp`, set by the CPU's bf16 mode: vecmath.exp_fast, to bf16's precision); te.exp is a scalar
    libm call per element, topi.fast_exp an approximation. Other dtypes: topi's."""
    if not vecmath.enabled(x.dtype):
        return topi.nn.softmax(x, axis)
    axis = axis % len(x.shape)
    rest = lambda i: i[:axis] + i[axis + 1:]  # noqa: E731
    k1 = te.reduce_axis((0, x.shape[axis]), name="k")
    k2 = te.reduce_axis((0, x.shape[axis]), name="k")
    reduced = tuple(d for j, d in enumerate(x.shape) if j != axis)
    mx = te.compute(reduced, lambda *i: te.max(x(*i[:axis], k1, *i[axis:]), axis=k1), name="T_softmax_maxelem")
    delta = te.compute(x.shape, lambda *i: x(*i) - mx(*rest(i)), name="T_softmax_delta")
    ex = vecmath.stage(vecmath.exp_fast if fast_exp else vecmath.exp, delta, "T_softmax_exp", topi.exp)
    total = te.compute(reduced, lambda *i: te.sum(ex(*i[:axis], k2, *i[axis:]), axis=k2), name="T_softmax_expsum")
    # times the row's reciprocal, not divided by its sum: the reciprocal is one division per row (LLVM hoists it out
    # of the row's vector loop), a vdivps per 16 elements took ~30 % of the attention softmax (ViT-base's 12 x 197 x
    # 208, one core); the extra rounding is at most 1 ulp
    one = tirx.const(1.0, x.dtype)
    return te.compute(x.shape, lambda *i: ex(*i) * (one / total(*rest(i))), name="T_softmax_norm",
                      attrs={"axis": axis})


softmax = defop("softmax", FusionKind.REDUCTION, infer=_softmax_infer,
                attrs={"axis": Attr("int"), "fast_exp": Attr("bool", False)},
                reference=_softmax_ref, lower=_softmax_lower, grad=_softmax_grad,
                per_sample=per_sample_unless_axis("axis"))


def _layer_norm_infer(types, *, axis, epsilon):
    x = types[0]
    if not 0 <= axis < x.rank:
        fail(f"axis {axis} out of range for {x}")
    for t in types[1:]:
        if t.shape != x.shape[axis:] or t.dtype != x.dtype:
            fail(f"scale and bias must be {x.dtype}{list(x.shape[axis:])} (the normalized axes), got {t}")
    return x


def _layer_norm_ref(x, scale, bias=None, *, axis, epsilon):
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + epsilon) * scale
    return (y if bias is None else y + bias).astype(x.dtype)


def _layer_norm_lower(x, scale, bias=None, *, axis, epsilon):
    """Two passes over each row (sum, then sum of squared deviations): fp32 stays accurate where E[x^2] - E[x]^2
    would cancel. The normalizing epilogue reads the two row sums; constants are Python floats (te.const(0.5)
    without a dtype is float64 and promotes)."""
    outer = x.shape[:axis]
    inv_n = 1.0 / float(np.prod([int(d) for d in x.shape[axis:]]))

    def reduce_axes():
        return [te.reduce_axis((0, d), name=f"r{i}") for i, d in enumerate(x.shape[axis:])]

    r1 = reduce_axes()
    row_sum = te.compute(outer, lambda *i: te.sum(x(*i, *r1), axis=r1), name="layer_norm_sum")
    r2 = reduce_axes()

    def sq_dev(*i):
        d = x(*i, *r2) - row_sum(*i) * inv_n
        return te.sum(d * d, axis=r2)

    row_sq = te.compute(outer, sq_dev, name="layer_norm_sqdev")

    def normalize(*i):
        o, inner = i[:axis], i[axis:]
        y = (x(*i) - row_sum(*o) * inv_n) * te.rsqrt(row_sq(*o) * inv_n + epsilon) * scale(*inner)
        return y if bias is None else y + bias(*inner)

    return te.compute(x.shape, normalize, name="layer_norm")


def _layer_norm_grad(e, n, dy):
    """One layer_norm_grad kernel on the (rows, normalized elements) view; reshapes are free."""
    x, scale = n.inputs[:2]
    cols = scale.type.numel
    flat = (x.type.numel // cols if cols else 0, cols)
    operands = [e.op(ops.reshape, [x], shape=flat), e.op(ops.reshape, [scale], shape=(cols,)),
                e.op(ops.reshape, [dy], shape=flat)]
    dx, dscale = e.op(ops.layer_norm_grad, operands, epsilon=n.attrs["epsilon"])
    out = [e.op(ops.reshape, [dx], shape=x.type.shape), e.op(ops.reshape, [dscale], shape=scale.type.shape)]
    if len(n.inputs) == 3:
        out.append(e.sum_to(dy, n.inputs[2].type.shape))
    return out


layer_norm = defop("layer_norm", FusionKind.REDUCTION, infer=_layer_norm_infer,
                   attrs={"axis": Attr("int"), "epsilon": Attr("float", 1e-5)}, arity=(2, 3),
                   reference=_layer_norm_ref, lower=_layer_norm_lower, grad=_layer_norm_grad,
                   per_sample=per_sample_unless_axis("axis"), doc="(x - mean) / sqrt(var + epsilon) * scale + bias over axes axis..rank-1 (biased variance).")


def _log_softmax_ref(x, *, axis):
    x64 = x.astype(np.float64)
    m = x64.max(axis=axis, keepdims=True)
    return (x64 - m - np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True))).astype(x.dtype)


def _log_softmax_grad(e, n, dy):
    s = e.op(ops.reduce_sum, [dy], axes=(n.attrs["axis"],), keepdims=True)
    return [e.op(ops.sub, [dy, e.mul(e.op(ops.exp, [n.outputs[0]]), s)])]


log_softmax = defop("log_softmax", FusionKind.REDUCTION, infer=_softmax_infer, attrs={"axis": Attr("int")},
                    reference=_log_softmax_ref, lower=lambda x, *, axis: topi.nn.log_softmax(x, axis),
                    grad=_log_softmax_grad, per_sample=per_sample_unless_axis("axis"))
