"""Backward kernels: the gradient rules' pieces that a composition of ordinary ops would make slow or impossible.

Convolution and pooling backward (scatters written as gathers, so that every output element is one reduction), the
scatter-add of an embedding lookup, the adjoint of a strided slice, and the ReLU / GELU backward as one kernel each.
Every reference works in any float dtype (the finite-difference tests run them in float64). A backward kernel has
no gradient rule of its own (NO_RULE_YET): second-order differentiation is not supported.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx, topi

from tensorforge.compiler.ir.types import TensorType

from . import vecmath
from .nn import CONV_ATTRS, POOL_ATTRS, windows2d
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail


def _same(types, **_):
    return types[0]


def _relu_grad_lower(x, dy):
    return te.compute(x.shape, lambda *i: tirx.Select(x(*i) > tirx.const(0, x.dtype), dy(*i),
                                                      tirx.const(0, x.dtype)), name="relu_grad")


relu_grad = defop("relu_grad", FusionKind.ELEMWISE, infer=_same, arity=(2, 2),
                  reference=lambda x, dy: np.where(x > 0, dy, np.zeros((), dy.dtype)).astype(dy.dtype),
                  lower=_relu_grad_lower, grad=NO_RULE_YET,
                  doc="dy where x > 0, else 0 (the ReLU backward, one kernel).")


# -- gelu -------------------------------------------------------------------------------------------------------------
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715


def _gelu_grad_ref(x, dy, *, approximate):
    v = x.astype(np.float64)
    if approximate == "tanh":
        t = np.tanh(SQRT_2_OVER_PI * (v + GELU_TANH_CUBIC * v ** 3))
        d = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_TANH_CUBIC * v * v)
    else:
        cdf = 0.5 * (1 + np.vectorize(math.erf, otypes=[np.float64])(v / math.sqrt(2.0))) if v.size else v
        d = cdf + v * np.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    return (dy.astype(np.float64) * d).astype(dy.dtype)


def _gelu_grad_lower(x, dy, *, approximate):
    """float32: vecmath's erf, exp and tanh (vectorized, within 2 ulp); te.erf/te.exp/te.tanh are scalar libm calls
    (22 ms and 4 ms for 2M floats on one core), which remain where x reads a vecmath stage (vecmath.stage)."""
    def c(v):
        return tirx.const(v, x.dtype)

    fast = vecmath.applies(x)
    if approximate == "tanh":
        def f(*i):
            v = x(*i)
            arg = c(SQRT_2_OVER_PI) * (v + c(GELU_TANH_CUBIC) * v * v * v)
            t = vecmath.tanh(arg) if fast else te.tanh(arg)
            d = c(0.5) * (c(1) + t) + c(0.5) * v * (c(1) - t * t) * c(SQRT_2_OVER_PI) * (
                c(1) + c(3 * GELU_TANH_CUBIC) * v * v)
            return dy(*i) * d

        return te.compute(x.shape, f, name="gelu_grad", tag=vecmath.TAG if fast else "")
    scaled = te.compute(x.shape, lambda *i: x(*i) * c(1 / math.sqrt(2.0)), name="gelu_grad_scaled")
    square = te.compute(x.shape, lambda *i: c(-0.5) * x(*i) * x(*i), name="gelu_grad_square")
    erf = vecmath.compute(scaled, vecmath.erf, "gelu_grad_erf") if fast else topi.erf(scaled)
    pdf = vecmath.compute(square, vecmath.exp, "gelu_grad_exp") if fast else topi.exp(square)
    return te.compute(x.shape, lambda *i: dy(*i) * (c(0.5) * (c(1) + erf(*i)) + x(*i) * pdf(*i) * c(
        1 / math.sqrt(2 * math.pi))), name="gelu_grad")


gelu_grad = defop("gelu_grad", FusionKind.ELEMWISE, infer=_same, arity=(2, 2),
                  attrs={"approximate": Attr("str", "none")}, reference=_gelu_grad_ref, lower=_gelu_grad_lower,
                  grad=NO_RULE_YET,
                  doc="dy * gelu'(x), exact (erf) or approximate='tanh': the GELU backward, one kernel.")


# -- layer norm ---------------------------------------------------------------------------------------------------------
LN_GRAD_PART_ROWS = 16  # rows per partial column sum of dscale (at least; a divisor of the rows)


def ln_grad_part_rows(rows: int) -> int:
    """Rows per partial sum of layer_norm_grad's dscale: the smallest divisor of `rows` from LN_GRAD_PART_ROWS."""
    return next(r for r in range(min(LN_GRAD_PART_ROWS, rows), rows + 1) if rows % r == 0)


def _layer_norm_grad_infer(types, *, epsilon):
    x, scale, dy = types
    if x.rank != 2 or dy != x or scale.shape != x.shape[1:] or scale.dtype != x.dtype:
        fail(f"expected x and dy (rows, n) of one type and scale (n,), got {x}, {dy}, {scale}")
    return [x, scale]


def _layer_norm_grad_ref(x, scale, dy, *, epsilon):
    x64, g64 = x.astype(np.float64), dy.astype(np.float64)
    xc = x64 - x64.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=1, keepdims=True) + epsilon)
    xhat = xc * rstd
    g = g64 * scale
    dx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return [dx.astype(x.dtype), (g64 * xhat).sum(axis=0).astype(x.dtype)]


LN_GRAD_STAGES = ("ln_grad_sum", "ln_grad_sqdev", "ln_grad_rstd", "ln_grad_sum_g", "ln_grad_sum_gx", "ln_grad_dx",
                  "ln_grad_part", "ln_grad_dscale")


def _layer_norm_grad_lower(x, scale, dy, *, epsilon):
    """Row statistics as layer_norm's forward computes them (ops/norm.py: sum, then squared deviations), the two
    row sums of the backward (g = dy * scale and g * xhat), dx from them; dscale, the column sums of dy * xhat, as
    partial sums over blocks of ln_grad_part_rows rows (a schedule computes each with its block's dx, while the rows
    are in cache) and their sum. Composed of ordinary ops the backward was eleven kernels writing full-size
    intermediates (0.51 ms for 2048 x 256 on two cores)."""
    rows, n = (int(d) for d in x.shape)
    inv_n = 1.0 / n
    part = ln_grad_part_rows(rows)
    sum_, sqdev, rstd_, sum_g_, sum_gx_, dx_, part_, dscale_ = LN_GRAD_STAGES

    def red():
        return te.reduce_axis((0, n), name="k")

    def xc(i, j):
        return x[i, j] - row_sum[i] * inv_n

    def xhat(i, j):
        return xc(i, j) * rstd[i]

    k = red()
    row_sum = te.compute((rows,), lambda i: te.sum(x[i, k], axis=k), name=sum_)
    k = red()
    row_sq = te.compute((rows,), lambda i: te.sum(xc(i, k) * xc(i, k), axis=k), name=sqdev)
    rstd = te.compute((rows,), lambda i: te.rsqrt(row_sq[i] * inv_n + epsilon), name=rstd_)

    def g(i, j):
        return dy[i, j] * scale[j]

    k = red()
    sum_g = te.compute((rows,), lambda i: te.sum(g(i, k), axis=k), name=sum_g_)
    k = red()
    sum_gx = te.compute((rows,), lambda i: te.sum(g(i, k) * xhat(i, k), axis=k), name=sum_gx_)
    dx = te.compute((rows, n), lambda i, j: rstd[i] * (g(i, j) - sum_g[i] * inv_n - xhat(i, j) * (sum_gx[i] * inv_n)),
                    name=dx_)
    r = te.reduce_axis((0, part), name="r")
    partial = te.compute((rows // part, n), lambda t, j: te.sum(dy[t * part + r, j] * xhat(t * part + r, j), axis=r),
                         name=part_)
    t = te.reduce_axis((0, rows // part), name="t")
    return [dx, te.compute((n,), lambda j: te.sum(partial[t, j], axis=t), name=dscale_)]


layer_norm_grad = defop(
    "layer_norm_grad", FusionKind.OPAQUE, infer=_layer_norm_grad_infer, arity=(3, 3),
    attrs={"epsilon": Attr("float", 1e-5)}, reference=_layer_norm_grad_ref, lower=_layer_norm_grad_lower,
    grad=NO_RULE_YET,
    doc="The layer_norm backward over the last axis of 2-D x as one kernel: (x, scale, dy) -> (dx, dscale). The "
        "gradient rule reshapes other ranks and normalized axes to it.")


# -- convolution backward -----------------------------------------------------------------------------------------------
def _conv_bwd_data_infer(types, *, strides, pads, dilations, groups, input_shape):
    return TensorType(input_shape, types[0].dtype)


def _scatter_windows(contrib, in_hw, kernel, strides, pads, dilations):
    """Adjoint of `windows2d`: add contrib (N, C, OH, OW, KH, KW) back into an (N, C, H, W) array."""
    n, c, oh, ow = contrib.shape[:4]
    h, w = in_hw
    ph = max(h + pads[0] + pads[2], (oh - 1) * strides[0] + dilations[0] * (kernel[0] - 1) + 1)
    pw = max(w + pads[1] + pads[3], (ow - 1) * strides[1] + dilations[1] * (kernel[1] - 1) + 1)
    out = np.zeros((n, c, ph, pw), contrib.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hs, ws = i * dilations[0], j * dilations[1]
            out[:, :, hs:hs + strides[0] * (oh - 1) + 1:strides[0], ws:ws + strides[1] * (ow - 1) + 1:strides[1]] \
                += contrib[:, :, :, :, i, j]
    return out[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + w]


def _conv_bwd_data_ref(dy, w, *, strides, pads, dilations, groups, input_shape):
    o, cg, kh, kw = w.shape
    og = o // groups
    n = dy.shape[0]
    contrib = np.empty((n, cg * groups) + dy.shape[2:] + (kh, kw), dy.dtype)
    for g in range(groups):
        contrib[:, g * cg:(g + 1) * cg] = np.einsum("nopq,ochw->ncpqhw", dy[:, g * og:(g + 1) * og],
                                                    w[g * og:(g + 1) * og], optimize=True)
    return np.ascontiguousarray(_scatter_windows(contrib, input_shape[2:], (kh, kw), strides, pads, dilations))


def _window_source(pos, pad, k, dil, stride, size):
    """For input position `pos` and kernel tap `k`: (output index, is it a real window position?)."""
    p = pos + pad - k * dil
    return tirx.floordiv(p, stride), tirx.all(p >= 0, tirx.floormod(p, stride) == 0, tirx.floordiv(p, stride) < size)


def _conv_bwd_data_lower(dy, w, *, strides, pads, dilations, groups, input_shape):
    o, cg, kh, kw = (int(d) for d in w.shape)
    oh, ow = int(dy.shape[2]), int(dy.shape[3])
    og = o // groups
    rj = te.reduce_axis((0, og), name="rj")
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def f(n, c, h, x):
        i, vi = _window_source(h, pads[0], rh, dilations[0], strides[0], oh)
        j, vj = _window_source(x, pads[1], rw, dilations[1], strides[1], ow)
        oc = tirx.floordiv(c, cg) * og + rj
        val = dy[n, oc, tirx.Select(vi, i, 0), tirx.Select(vj, j, 0)] * w[oc, tirx.floormod(c, cg), rh, rw]
        return te.sum(tirx.Select(tirx.all(vi, vj), val, tirx.const(0, dy.dtype)), axis=[rj, rh, rw])

    return te.compute(tuple(input_shape), f, name="conv2d_backward_data")


conv2d_backward_data = defop(
    "conv2d_backward_data", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv_bwd_data_infer, arity=(2, 2),
    attrs={**CONV_ATTRS, "input_shape": Attr("ints")}, reference=_conv_bwd_data_ref, lower=_conv_bwd_data_lower,
    grad=NO_RULE_YET,
    doc="dL/dx of conv2d(x, w) from dy and w (the transposed convolution), grouped and depthwise too.")


def _conv_bwd_weight_infer(types, *, strides, pads, dilations, groups, kernel_shape):
    return TensorType(kernel_shape, types[0].dtype)


def _conv_bwd_weight_ref(dy, x, *, strides, pads, dilations, groups, kernel_shape):
    o, cg, kh, kw = kernel_shape
    og = o // groups
    win = windows2d(x, (kh, kw), strides, pads, dilations)  # N, C, OH, OW, KH, KW
    out = np.empty(kernel_shape, dy.dtype)
    for g in range(groups):
        out[g * og:(g + 1) * og] = np.einsum("nopq,ncpqhw->ochw", dy[:, g * og:(g + 1) * og],
                                             win[:, g * cg:(g + 1) * cg], optimize=True)
    return out


def _conv_bwd_weight_lower(dy, x, *, strides, pads, dilations, groups, kernel_shape):
    o, cg, kh, kw = kernel_shape
    n, _, h, wd = (int(d) for d in x.shape)
    oh, ow = int(dy.shape[2]), int(dy.shape[3])
    og = o // groups
    rn = te.reduce_axis((0, n), name="rn")
    rp = te.reduce_axis((0, oh), name="rp")
    rq = te.reduce_axis((0, ow), name="rq")

    def f(oc, c, i, j):
        hh = rp * strides[0] + i * dilations[0] - pads[0]
        ww = rq * strides[1] + j * dilations[1] - pads[1]
        inside = tirx.all(hh >= 0, hh < h, ww >= 0, ww < wd)
        xv = x[rn, tirx.floordiv(oc, og) * cg + c, tirx.Select(inside, hh, 0), tirx.Select(inside, ww, 0)]
        return te.sum(tirx.Select(inside, dy[rn, oc, rp, rq] * xv, tirx.const(0, dy.dtype)), axis=[rn, rp, rq])

    return te.compute(tuple(kernel_shape), f, name="conv2d_backward_weight")


conv2d_backward_weight = defop(
    "conv2d_backward_weight", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv_bwd_weight_infer, arity=(2, 2),
    attrs={**CONV_ATTRS, "kernel_shape": Attr("ints")}, reference=_conv_bwd_weight_ref,
    lower=_conv_bwd_weight_lower, grad=NO_RULE_YET,
    doc="dL/dw of conv2d(x, w) from dy and x, grouped and depthwise too.")


# -- pooling backward -------------------------------------------------------------------------------------------------
def _pool_grad_infer(types, **_):
    return types[0]


def _max_pool_grad_ref(x, y, dy, *, kernel, strides, pads, dilations, ceil_mode):
    win = windows2d(x, kernel, strides, pads, dilations, fill=-np.inf, ceil=ceil_mode)
    contrib = np.where(win == y[..., None, None], dy[..., None, None], np.zeros((), dy.dtype))
    return np.ascontiguousarray(_scatter_windows(contrib, x.shape[2:], kernel, strides, pads, dilations))


def _pool_grad_gather(x_shape, dy, kernel, strides, pads, dilations, term, name):
    """dx[n, c, h, w] = sum over the windows holding (h, w) of term(n, c, oh, ow, h, w)."""
    oh, ow = int(dy.shape[2]), int(dy.shape[3])
    rh = te.reduce_axis((0, kernel[0]), name="rh")
    rw = te.reduce_axis((0, kernel[1]), name="rw")

    def f(n, c, h, w):
        i, vi = _window_source(h, pads[0], rh, dilations[0], strides[0], oh)
        j, vj = _window_source(w, pads[1], rw, dilations[1], strides[1], ow)
        i, j = tirx.Select(vi, i, 0), tirx.Select(vj, j, 0)
        return te.sum(tirx.Select(tirx.all(vi, vj), term(n, c, i, j, h, w), tirx.const(0, dy.dtype)), axis=[rh, rw])

    return te.compute(x_shape, f, name=name)


def _max_pool_grad_lower(x, y, dy, *, kernel, strides, pads, dilations, ceil_mode):
    if tuple(strides) == tuple(kernel) and not any(pads) and tuple(dilations) == (1, 1):
        return _max_pool_grad_tiled(x, y, dy, kernel)

    def term(n, c, i, j, h, w):
        return tirx.Select(x[n, c, h, w] == y[n, c, i, j], dy[n, c, i, j], tirx.const(0, dy.dtype))

    return _pool_grad_gather(x.shape, dy, kernel, strides, pads, dilations, term, "max_pool2d_grad")


def _max_pool_grad_tiled(x, y, dy, kernel):
    """Windows that tile the input (stride = kernel, no padding): each input element lies in at most one window,
    so dx is elementwise over x: no reduction, no window search (6x faster than the gather form on 2x2 pools)."""
    oh, ow = int(dy.shape[2]), int(dy.shape[3])
    kh, kw = kernel

    def f(n, c, h, w):
        i, j = h // kh, w // kw
        inside = tirx.all(i < oh, j < ow)
        i, j = tirx.Select(inside, i, 0), tirx.Select(inside, j, 0)
        return tirx.Select(tirx.all(inside, x[n, c, h, w] == y[n, c, i, j]), dy[n, c, i, j], tirx.const(0, dy.dtype))

    return te.compute(x.shape, f, name="max_pool2d_grad")


max_pool2d_grad = defop(
    "max_pool2d_grad", FusionKind.REDUCTION, infer=_pool_grad_infer, attrs=POOL_ATTRS, arity=(3, 3),
    reference=_max_pool_grad_ref, lower=_max_pool_grad_lower, grad=NO_RULE_YET,
    doc="dL/dx of y = max_pool2d(x) from x, y and dy: dy goes to every window element equal to the window's max.")


def _avg_divisor(in_hw, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    """The divisor of each output window (1, 1, OH, OW), as the forward reference computes it."""
    ones = np.ones((1, 1) + tuple(in_hw))
    if count_include_pad:
        ones = np.pad(ones, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=1.0)
        pads = (0, 0, 0, 0)
    return windows2d(ones, kernel, strides, pads, dilations, ceil=ceil_mode).sum(axis=(4, 5))


def _avg_pool_grad_ref(x, dy, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    div = _avg_divisor(x.shape[2:], kernel, strides, pads, dilations, ceil_mode, count_include_pad)
    contrib = np.broadcast_to((dy / div).astype(dy.dtype)[..., None, None], dy.shape + tuple(kernel))
    return np.ascontiguousarray(_scatter_windows(np.ascontiguousarray(contrib), x.shape[2:], kernel, strides, pads,
                                                 dilations)).astype(dy.dtype)


def _avg_pool_grad_lower(x, dy, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    div = _avg_divisor([int(d) for d in x.shape[2:]], kernel, strides, pads, dilations, ceil_mode,
                       count_include_pad)[0, 0]
    table = [[float(1.0 / v) for v in row] for row in div]

    def inv_div(i, j):  # a small constant table, unrolled into nested selects per row/column when tiny
        expr = tirx.const(table[0][0], dy.dtype)
        for a, row in enumerate(table):
            for b, v in enumerate(row):
                if v != table[0][0]:
                    expr = tirx.Select(tirx.all(i == a, j == b), tirx.const(v, dy.dtype), expr)
        return expr

    def term(n, c, i, j, h, w):
        return dy[n, c, i, j] * inv_div(i, j)

    return _pool_grad_gather(x.shape, dy, kernel, strides, pads, dilations, term, "avg_pool2d_grad")


avg_pool2d_grad = defop(
    "avg_pool2d_grad", FusionKind.REDUCTION, infer=_pool_grad_infer,
    attrs={**POOL_ATTRS, "count_include_pad": Attr("bool", False)}, arity=(2, 2),
    reference=_avg_pool_grad_ref, lower=_avg_pool_grad_lower, grad=NO_RULE_YET,
    doc="dL/dx of avg_pool2d(x) from x (for its shape) and dy.")


# -- data movement adjoints -----------------------------------------------------------------------------------------------
def _slice_grad_infer(types, *, input_shape, begins, strides):
    return TensorType(input_shape, types[0].dtype)


def _slice_grad_ref(dy, *, input_shape, begins, strides):
    out = np.zeros(input_shape, dy.dtype)
    out[tuple(slice(b, b + s * (n - 1) + 1 if s > 0 else (None if b + s * (n - 1) - 1 < 0 else b + s * (n - 1) - 1),
                    s) for b, s, n in zip(begins, strides, dy.shape))] = dy
    return out


def _slice_grad_lower(dy, *, input_shape, begins, strides):
    def f(*i):
        conds, src = [], []
        for x, b, s, n in zip(i, begins, strides, dy.shape):
            d = x - b
            conds += [tirx.floormod(d, s) == 0, tirx.floordiv(d, s) >= 0, tirx.floordiv(d, s) < n]
            src.append(tirx.floordiv(d, s))
        ok = tirx.all(*conds)
        return tirx.Select(ok, dy(*[tirx.Select(ok, v, 0) for v in src]), tirx.const(0, dy.dtype))

    return te.compute(tuple(input_shape), f, name="strided_slice_grad")


strided_slice_grad = defop(
    "strided_slice_grad", FusionKind.INJECTIVE, infer=_slice_grad_infer,
    attrs={"input_shape": Attr("ints"), "begins": Attr("ints"), "strides": Attr("ints")},
    reference=_slice_grad_ref, lower=_slice_grad_lower, grad=NO_RULE_YET,
    doc="The adjoint of strided_slice: dy placed at the sliced positions of a zero tensor of input_shape.")


def _scatter_slices_infer(types, *, input_shape, axis, begins):
    if len(begins) != len(types):
        fail(f"{len(types)} slices but {len(begins)} begins")
    if not 0 <= axis < len(input_shape):
        fail(f"axis {axis} out of range for {input_shape}")
    pos = 0
    for t, b in zip(types, begins):
        if t.rank != len(input_shape) or any(d != e for k, (d, e) in enumerate(zip(t.shape, input_shape)) if k != axis) \
                or b < pos or b + t.shape[axis] > input_shape[axis]:
            fail(f"slice {t} at {b} along axis {axis} does not fit {input_shape} after the previous slices")
        pos = b + t.shape[axis]
    return TensorType(tuple(input_shape), types[0].dtype)


def _scatter_slices_ref(*dys, input_shape, axis, begins):
    out = np.zeros(input_shape, dys[0].dtype)
    for dy, b in zip(dys, begins):
        idx = [slice(None)] * len(input_shape)
        idx[axis] = slice(b, b + dy.shape[axis])
        out[tuple(idx)] = dy
    return out


def _scatter_slices_lower(*dys, input_shape, axis, begins):
    """A binary search over the slices' begins along `axis` (if_then_else: one branch runs), so each element reads
    one slice, not every one: the sum of k strided_slice_grads costs k full passes, this one."""
    sizes = [int(d.shape[axis]) for d in dys]
    zero = tirx.const(0, dys[0].dtype)

    def pick(i, lo, hi):
        if hi - lo == 1:
            b = begins[lo]
            at = i[axis]
            src = list(i)
            src[axis] = at - b
            return tirx.Select(tirx.all(at >= b, at < b + sizes[lo]), dys[lo](*[
                tirx.Select(tirx.all(at >= b, at < b + sizes[lo]), v, 0) if k == axis else v
                for k, v in enumerate(src)]), zero)
        mid = (lo + hi) // 2
        return tirx.if_then_else(i[axis] < begins[mid], pick(i, lo, mid), pick(i, mid, hi))

    return te.compute(tuple(input_shape), lambda *i: pick(i, 0, len(dys)), name="scatter_slices")


scatter_slices = defop(
    "scatter_slices", FusionKind.INJECTIVE, infer=_scatter_slices_infer, arity=(1, -1),
    attrs={"input_shape": Attr("ints"), "axis": Attr("int"), "begins": Attr("ints")},
    reference=_scatter_slices_ref, lower=_scatter_slices_lower, grad=NO_RULE_YET,
    doc="Disjoint slices along `axis` placed into a zero tensor of input_shape, slice i from begins[i]: the sum of "
        "the strided_slice_grads of one tensor read step by step (a recurrent net's per-step gates).")


def _take_grad_infer(types, *, axis, input_shape):
    return TensorType(input_shape, types[1].dtype)


def _take_grad_ref(idx, dy, *, axis, input_shape):
    out = np.zeros(input_shape, dy.dtype)
    idx = np.where(idx < 0, idx + input_shape[axis], idx)
    moved = np.moveaxis(out, axis, 0)
    np.add.at(moved, idx, np.moveaxis(dy, list(range(axis, axis + idx.ndim)), list(range(idx.ndim))))
    return out


def _take_grad_lower(idx, dy, *, axis, input_shape):
    reduce = [te.reduce_axis((0, int(d)), name=f"r{i}") for i, d in enumerate(idx.shape)]
    dim = int(input_shape[axis])

    def f(*i):
        target = idx(*reduce)
        target = tirx.Select(target < 0, target + dim, target)
        src = list(i[:axis]) + reduce + list(i[axis + 1:])
        return te.sum(tirx.Select(target == i[axis].astype(idx.dtype), dy(*src), tirx.const(0, dy.dtype)),
                      axis=reduce)

    return te.compute(tuple(input_shape), f, name="take_grad")


take_grad = defop("take_grad", FusionKind.REDUCTION, infer=_take_grad_infer, arity=(2, 2),
                  attrs={"axis": Attr("int"), "input_shape": Attr("ints")},
                  reference=_take_grad_ref, lower=_take_grad_lower, grad=NO_RULE_YET,
                  doc="The adjoint of take (an embedding's backward): dy scatter-added at the indices.")
