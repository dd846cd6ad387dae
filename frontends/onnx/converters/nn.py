"""Convolution, dense/matmul, normalization, pooling, softmax family, reductions, scans, Resize."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from tensorforge.compiler import ops  # noqa: F401
from tensorforge.frontends.builder import is_string_array

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401
from .base import _require_spatial, _check_constant_size, _require_nonempty


# -- neural-network ops -----------------------------------------------------------------------------------------------
@converter()
@_as_2d
def Conv(b, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    _require_spatial(b, X)
    kernel = tuple(b.type(W).shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise b.error(f"kernel_shape {tuple(kernel_shape)} does not match the weight's {kernel}")
    nd = len(kernel)
    strides = tuple(strides or (1,) * nd)
    dilations = tuple(dilations or (1,) * nd)
    p = _spatial_pads(b, b.type(X).shape, kernel, strides, dilations, pads, auto_pad)
    inputs = [X, W] + ([B] if B is not None else [])
    return b.emit(ops.conv2d if nd == 2 else ops.conv3d, inputs, strides=strides, pads=p, dilations=dilations,
                  groups=group)


@converter()
def Gemm(b, A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=None):
    _require_nonempty(b, A, "A", 0)
    _require_nonempty(b, B, "B", 1)
    if transA:
        A = b.emit(ops.transpose, [A], perm=(1, 0))
    # dense wants the weight as (N, K); a known B is transposed and scaled at compile time
    W = B if transB else b.emit(ops.transpose, [B], perm=(1, 0))
    if alpha != 1.0:
        if isinstance(W, np.ndarray):
            W = (W * W.dtype.type(alpha)).astype(W.dtype)
        else:
            A = b.emit(ops.mul, [A, np.asarray(alpha, b.type(A).dtype)])
    n = b.type(W).shape[0]
    bias = None
    if C is not None and beta != 0.0:
        cty = b.type(C)
        if isinstance(C, np.ndarray) and C.shape == (n,) and beta == 1.0:
            bias = C  # the common case keeps the initializer (and its name)
        elif isinstance(C, np.ndarray) and cty.numel in (1, n) and (cty.rank <= 1 or cty.shape[-1] == n or cty.numel == 1):
            bias = np.asarray(np.broadcast_to(C.reshape(-1) * C.dtype.type(beta), (n,)), order="C").astype(C.dtype)
        else:
            if beta != 1.0:
                C = b.emit(ops.mul, [C, np.asarray(beta, cty.dtype)])
            return b.emit(ops.add, [b.emit(ops.dense, [A, W]), C])
    return b.emit(ops.dense, [A, W] + ([bias] if bias is not None else []))


@converter()
def MatMul(b, A, B):
    _require_nonempty(b, A, "A", 0)
    _require_nonempty(b, B, "B", 1)
    ta, tb = b.type(A), b.type(B)
    if isinstance(B, np.ndarray) and tb.rank == 2 and ta.rank >= 2 and not isinstance(A, np.ndarray):
        # x @ W with a constant W is a dense layer: flatten the leading dims, keep W as (N, K)
        a2 = _reshape(b, A, (prod(ta.shape[:-1]), ta.shape[-1])) if ta.rank > 2 else A
        # W = B.T as a view (Fortran order): packing reads B's columns in blocks (ops/packed.py), no transposed copy
        w = b.computed("transpose", [B], lambda: B.T)
        y = b.emit(ops.dense, [a2, b.derive(w, B)])
        return _reshape(b, y, ta.shape[:-1] + (tb.shape[1],)) if ta.rank > 2 else y
    return b.emit(ops.matmul, [A, B])


@converter()
def BatchNormalization(b, X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, spatial=1,
                       training_mode=0, is_test=None, consumed_inputs=None):
    if not spatial:
        raise b.error("spatial=0 is not supported")
    if not training_mode:
        return b.emit(ops.batch_norm, [X, scale, B, input_mean, input_var], epsilon=epsilon)
    # training: normalize with the batch's statistics (over every axis but the channels; biased variance) and
    # return the running statistics moved towards them: running = input * momentum + batch * (1 - momentum)
    xt = b.type(X)
    axes = (0,) + tuple(range(2, xt.rank))
    mean = b.emit(ops.reduce_mean, [X], axes=axes, keepdims=True)
    d = b.emit(ops.sub, [X, mean])
    var = b.emit(ops.reduce_mean, [b.emit(ops.mul, [d, d])], axes=axes, keepdims=True)
    c = xt.shape[1]
    mean_c, var_c = _reshape(b, mean, (c,)), _reshape(b, var, (c,))
    y = b.emit(ops.batch_norm, [X, scale, B, mean_c, var_c], epsilon=epsilon)

    def running(stat, batch):
        kept = b.emit(ops.mul, [stat, _c(b, X, momentum)])
        return b.emit(ops.add, [kept, b.emit(ops.mul, [batch, _c(b, X, 1.0 - momentum)])])

    return y, running(input_mean, mean_c), running(input_var, var_c)


def _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode):
    _require_spatial(b, X)
    kernel = tuple(kernel_shape)
    nd = b.type(X).rank - 2
    if len(kernel) != nd:
        raise b.error(f"kernel_shape {list(kernel)} does not match the {nd} spatial axes of {b.type(X)}")
    strides = tuple(strides or (1,) * nd)
    dilations = tuple(dilations or (1,) * nd)
    p = _spatial_pads(b, b.type(X).shape, kernel, strides, dilations, pads, auto_pad)
    return dict(kernel=kernel, strides=strides, pads=p, dilations=dilations, ceil_mode=bool(ceil_mode))


POOL_OPS = {("max", 2): ops.max_pool2d, ("max", 3): ops.max_pool3d, ("avg", 2): ops.avg_pool2d,
            ("avg", 3): ops.avg_pool3d}


@converter()
@_as_2d
def MaxPool(b, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None, storage_order=0,
            strides=None):
    attrs = _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode)
    y = b.emit(POOL_OPS["max", len(attrs["kernel"])], [X], **attrs)
    if len(b.node.output) < 2 or not b.node.output[1]:
        return y, None
    if storage_order not in (0, 1):
        raise b.error(f"storage_order must be 0 or 1, got {storage_order}")
    return y, b.emit(ops.max_pool_indices, [X], storage_order=storage_order, **attrs)


@converter()
@_as_2d
def AveragePool(b, X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape,
                pads=None, strides=None):
    attrs = _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode)
    return b.emit(POOL_OPS["avg", len(attrs["kernel"])], [X], count_include_pad=bool(count_include_pad), **attrs)


@converter()
def GlobalAveragePool(b, X):
    return b.emit(ops.global_avg_pool, [X])


@converter()
def LRN(b, X, *, alpha=0.0001, beta=0.75, bias=1.0, size):
    return b.emit(ops.lrn, [X], size=size, alpha=alpha, beta=beta, bias=bias)


@converter()
def Softmax_1(b, input, *, axis=1):
    # before opset 13 Softmax flattens to 2-D at `axis` and normalizes each row
    shape = b.type(input).shape
    ax = _axis(b, axis, len(shape))
    if ax == len(shape) - 1:
        return b.emit(ops.softmax, [input], axis=ax)
    flat = _reshape(b, input, (prod(shape[:ax]), prod(shape[ax:])))
    return _reshape(b, b.emit(ops.softmax, [flat], axis=1), shape)


@converter(since=13)
def Softmax(b, input, *, axis=-1):
    return b.emit(ops.softmax, [input], axis=_axis(b, axis, b.type(input).rank))


@converter(since=17)
def LayerNormalization(b, X, Scale, B=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    # stash_type=1 asks for float32 statistics: our kernel computes in x's dtype, float32 for float32 models
    xt = b.type(X)
    ax = _axis(b, axis, xt.rank)
    norm = xt.shape[ax:]

    def fitted(t, what):
        """Scale and bias as the op wants them, of the normalized shape; known ones are broadcast here."""
        if b.type(t).shape == norm:
            return t
        if isinstance(t, np.ndarray):
            try:
                return np.ascontiguousarray(np.broadcast_to(t, norm))
            except ValueError:
                pass
        raise b.error(f"{what} {b.type(t)} does not match the normalized shape {list(norm)}")

    inputs = [X, fitted(Scale, "scale")] + ([fitted(B, "bias")] if B is not None else [])
    y = b.emit(ops.layer_norm, inputs, axis=ax, epsilon=epsilon)
    if len([o for o in b.node.output if o]) == 1:
        return y, None, None
    # Mean and InvStdDev (shape: the normalized axes kept as 1) are computed apart; unused, they are removed
    axes = tuple(range(ax, xt.rank))
    mean = b.emit(ops.reduce_mean, [X], axes=axes, keepdims=True)
    d = b.emit(ops.sub, [X, mean])
    var = b.emit(ops.reduce_mean, [b.emit(ops.mul, [d, d])], axes=axes, keepdims=True)
    inv = b.emit(ops.reciprocal, [b.emit(ops.sqrt, [b.emit(ops.add, [var, np.asarray(epsilon, xt.dtype)])])])
    return y, mean, inv


@converter(since=20)
def Gelu(b, X, *, approximate="none"):
    dt = b.type(X).dtype
    half = np.asarray(0.5, dt)
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.emit(ops.mul, [b.emit(ops.mul, [X, X]), X])
        inner = b.emit(ops.add, [X, b.emit(ops.mul, [cube, np.asarray(0.044715, dt)])])
        t = b.emit(ops.tanh, [b.emit(ops.mul, [inner, np.asarray(np.sqrt(2 / np.pi), dt)])])
    elif approximate == "none":  # 0.5 x (1 + erf(x / sqrt(2)))
        t = b.emit(ops.erf, [b.emit(ops.mul, [X, np.asarray(1 / np.sqrt(2), dt)])])
    else:
        raise b.error(f"unknown approximate={approximate!r}")
    return b.emit(ops.mul, [b.emit(ops.mul, [X, half]), b.emit(ops.add, [t, np.asarray(1, dt)])])


@converter(since=11)
def Range(b, start, limit, delta):
    s, lim, d = (b.const(v, n).reshape(()) for v, n in ((start, "start"), (limit, "limit"), (delta, "delta")))
    count = np.ceil((float(lim) - float(s)) / float(d)) if d != 0 else np.nan
    if not np.isfinite(count):
        raise b.error(f"Range({s}, {lim}, {d}) has no finite number of elements")
    _check_constant_size(b, [max(int(count), 0)])
    return np.arange(s, lim, d, dtype=s.dtype)


@converter(since=11)
def Equal(b, A, B):
    if is_string_array(A) or is_string_array(B):  # strings are compile-time constants only: fold with numpy
        return np.asarray(np.equal(b.const(A, "A"), b.const(B, "B")), bool)
    return b.emit(ops.equal, [A, B])


@converter(since=9)
def Where(b, condition, X, Y):
    return b.emit(ops.where, [condition, X, Y])


@converter(since=8)
def Expand(b, input, shape):
    target = tuple(int(d) for d in b.const(shape, "shape"))
    src = b.type(input).shape
    try:
        out = tuple(np.broadcast_shapes(src, target))  # ONNX Expand broadcasts both ways (a 1 in `shape` keeps src)
    except ValueError:
        raise b.error(f"cannot expand {b.type(input)} to {list(target)}") from None
    return input if out == src else b.emit(ops.broadcast_to, [input], shape=out)


@converter()
def Slice_1(b, data, *, starts, ends, axes=None):
    return _slice(b, data, starts, ends, axes, None)


@converter(since=10)
def Slice(b, data, starts, ends, axes=None, steps=None):
    return _slice(b, data, b.const(starts, "starts"), b.const(ends, "ends"),
                  None if axes is None else b.const(axes, "axes"), None if steps is None else b.const(steps, "steps"))


def _split(b, input, axis, split, num_outputs):
    shape = b.type(input).shape
    ax = _axis(b, axis, len(shape))
    n = num_outputs or len(b.node.output)
    if split is None:  # equal parts, the last one smaller (opset 18 rule; earlier opsets need a divisible axis)
        part = -(-shape[ax] // n)
        split = [min(part, shape[ax] - i * part) for i in range(n)]
    split = [int(s) for s in split]
    if sum(split) != shape[ax] or any(s < 0 for s in split):
        raise b.error(f"split {split} does not add up to axis {ax} of {b.type(input)}")
    outs, start = [], 0
    for s in split:
        outs.append(_slice(b, input, [start], [start + s], [ax], None))
        start += s
    return outs


@converter(since=2)
def Split_2(b, input, *, axis=0, split=None):
    return _split(b, input, axis, split, None)


@converter(since=13)
def Split_13(b, input, split=None, *, axis=0):
    return _split(b, input, axis, None if split is None else b.const(split, "split"), None)


@converter(since=18)
def Split(b, input, split=None, *, axis=0, num_outputs=None):
    return _split(b, input, axis, None if split is None else b.const(split, "split"), num_outputs)


def _reduce_axes(b, data, axes, noop_with_empty_axes):
    """Sorted non-negative axes, or None for 'no reduction'."""
    rank = b.type(data).rank
    if axes is None or len(axes) == 0:
        return None if noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted({_axis(b, int(a), rank) for a in axes}))


def _reduced_shape(shape, axes, keepdims):
    return tuple(1 if i in axes else d for i, d in enumerate(shape)) if keepdims else \
        tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce(kind):
    """ReduceX from reduce_sum/mean/max/min/prod and elementwise ops; `kind` names the ONNX reduction."""

    def convert(b, data, axes, keepdims, noop_with_empty_axes):
        ax = _reduce_axes(b, data, axes, noop_with_empty_axes)
        t = b.type(data)
        if ax is None:
            return data
        keep = bool(keepdims)
        if t.numel == 0:  # reducing an empty set gives the reduction's identity
            dt = np.dtype(t.dtype)
            big = np.inf if dt.kind == "f" else (np.iinfo(dt).max if dt.kind in "iu" else True)
            small = -np.inf if dt.kind == "f" else (np.iinfo(dt).min if dt.kind in "iu" else False)
            fill = {"ReduceMax": small, "ReduceMin": big, "ReduceProd": 1, "ReduceLogSum": -np.inf,
                    "ReduceLogSumExp": -np.inf}.get(kind, 0)
            return np.full(_reduced_shape(t.shape, ax, keep), fill, dtype=dt)
        if kind in ("ReduceMax", "ReduceMin") and t.dtype == "bool":
            y = b.emit(ops.cast, [data], to="int8")
            y = b.emit(ops.reduce_max if kind == "ReduceMax" else ops.reduce_min, [y], axes=ax, keepdims=keep)
            return b.emit(ops.cast, [y], to="bool")
        simple = {"ReduceSum": ops.reduce_sum, "ReduceMean": ops.reduce_mean, "ReduceMax": ops.reduce_max,
                  "ReduceMin": ops.reduce_min, "ReduceProd": ops.reduce_prod}
        if kind in simple:
            return b.emit(simple[kind], [data], axes=ax, keepdims=keep)
        if kind == "ReduceL1":
            return b.emit(ops.reduce_sum, [b.emit(ops.abs, [data])], axes=ax, keepdims=keep)
        if kind in ("ReduceL2", "ReduceSumSquare"):
            s = b.emit(ops.reduce_sum, [b.emit(ops.mul, [data, data])], axes=ax, keepdims=keep)
            return b.emit(ops.sqrt, [s]) if kind == "ReduceL2" else s
        if kind == "ReduceLogSum":
            return b.emit(ops.log, [b.emit(ops.reduce_sum, [data], axes=ax, keepdims=keep)])
        if kind == "ReduceLogSumExp":  # max + log(sum(exp(x - max))): no overflow
            m = b.emit(ops.reduce_max, [data], axes=ax, keepdims=True)
            s = b.emit(ops.reduce_sum, [b.emit(ops.exp, [b.emit(ops.sub, [data, m])])], axes=ax, keepdims=keep)
            m = m if keep else _reshape(b, m, _reduced_shape(t.shape, ax, False))
            return b.emit(ops.add, [b.emit(ops.log, [s]), m])
        raise AssertionError(kind)

    return convert


def _reduce_converters(kind, axes_input_since):
    reduce = _reduce(kind)

    def legacy(b, data, *, axes=None, keepdims=1):
        return reduce(b, data, axes, keepdims, 0)

    def current(b, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
        return reduce(b, data, None if axes is None else b.const(axes, "axes"), keepdims, noop_with_empty_axes)

    CONVERTERS[kind] = {1: legacy, axes_input_since: current}


for _kind in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
              "ReduceLogSumExp", "ReduceSumSquare"):
    _reduce_converters(_kind, 18)
_reduce_converters("ReduceSum", 13)


# -- softmax family, arg reductions, scans ----------------------------------------------------------------------------
@converter()
def LogSoftmax_1(b, input, *, axis=1):
    shape = b.type(input).shape
    ax = _axis(b, axis, len(shape))
    flat = _reshape(b, input, (prod(shape[:ax]), prod(shape[ax:])))
    return _reshape(b, b.emit(ops.log_softmax, [flat], axis=1), shape)


@converter(since=13)
def LogSoftmax(b, input, *, axis=-1):
    return b.emit(ops.log_softmax, [input], axis=_axis(b, axis, b.type(input).rank))


def _arg(op):
    def convert(b, data, *, axis=0, keepdims=1, select_last_index=0):
        return b.emit(op, [data], axis=_axis(b, axis, b.type(data).rank), keepdims=bool(keepdims),
                      select_last_index=bool(select_last_index))

    return convert


CONVERTERS["ArgMax"] = {1: _arg(ops.argmax)}
CONVERTERS["ArgMin"] = {1: _arg(ops.argmin)}


@converter(since=11)
def CumSum(b, x, axis, *, exclusive=0, reverse=0):
    ax = _axis(b, int(np.asarray(b.const(axis, "axis")).reshape(-1)[0]), b.type(x).rank)
    return b.emit(ops.cumsum, [x], axis=ax, exclusive=bool(exclusive), reverse=bool(reverse))


@converter()
def TopK_1(b, X, *, axis=-1, k):
    return _topk(b, X, k, axis, 1)


@converter(since=10)
def TopK(b, X, K, *, axis=-1, largest=1, sorted=1):
    return _topk(b, X, int(np.asarray(b.const(K, "K")).reshape(-1)[0]), axis, largest)


def _topk(b, X, k, axis, largest):
    attrs = dict(k=k, axis=_axis(b, axis, b.type(X).rank), largest=bool(largest))
    if b.type(X).dtype != "uint64":
        return b.emit(ops.topk, [X], **attrs)
    # TVM's sort has no uint64 kernel: sort int64 keys of the same order, u - 2**63 (the wrapped cast with its sign
    # bit flipped), and map the values back the same way
    sign = np.asarray(np.iinfo(np.int64).min, np.int64)
    keys = b.emit(ops.bitwise_xor, [b.emit(ops.cast, [X], to="int64"), sign])
    values, indices = b.emit(ops.topk, [keys], **attrs)
    return b.emit(ops.cast, [b.emit(ops.bitwise_xor, [values, sign])], to="uint64"), indices


@converter()
def Einsum(b, *Inputs, equation):
    # spell out '...' as capital letters (our einsum op takes explicit indices only)
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    ell = max((b.type(x).rank - len(t.replace("...", "")) for t, x in zip(terms, Inputs) if "..." in t), default=0)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:ell]
    terms = [t.replace("...", letters[ell - (b.type(x).rank - len(t.replace("...", ""))):]) for t, x in
             zip(terms, Inputs)]
    if arrow:
        rhs = rhs.replace("...", letters)
    elif ell:
        rhs = letters + "".join(sorted(ch for ch in set("".join(terms)) if ch.islower() and
                                       "".join(terms).count(ch) == 1))
    eq = ",".join(terms) + ("->" + rhs if arrow or ell else "")
    return b.emit(ops.einsum, list(Inputs), equation=eq)


# -- Resize: separable, so each resized axis is one matrix product with an interpolation matrix built here ---------
def _resize_matrix(n_in, n_out, scale, get_coeffs, roi, exclude_outside, extrapolation_value, mode):
    """(n_out, n_in) matrix of the 1-D interpolation, and the rows that fall outside (tf_crop_and_resize), from
    onnx's reference implementation applied to the identity (interpolation is linear in the data)."""
    from onnx.reference.ops.op_resize import _interpolate_1d_along_axis

    kw = dict(roi=roi, exclude_outside=exclude_outside, coordinate_transformation_mode=mode)
    m = _interpolate_1d_along_axis(np.eye(n_in), 0, scale, n_out, get_coeffs, extrapolation_value=0.0, **kw)
    outside = _interpolate_1d_along_axis(np.zeros((n_in, 1)), 0, scale, n_out, get_coeffs,
                                         extrapolation_value=1.0, **kw)[:, 0] != 0
    return m, outside


@converter(since=11)
def Resize(b, X, roi=None, scales=None, sizes=None, *, antialias=0, axes=None, coordinate_transformation_mode="half_pixel",
           cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
           mode="nearest", nearest_mode="round_prefer_floor"):
    from onnx.reference.ops import op_resize as ref

    shape = b.type(X).shape
    r = len(shape)
    axes = list(range(r)) if axes is None else [_axis(b, a, r) for a in axes]
    roi_v = None if roi is None or b.type(roi).numel == 0 else [float(v) for v in b.const(roi, "roi")]
    sc = None if scales is None or b.type(scales).numel == 0 else [float(v) for v in b.const(scales, "scales")]
    sz = None if sizes is None or b.type(sizes).numel == 0 else [int(v) for v in b.const(sizes, "sizes")]
    full_scale, out_size, full_roi = [1.0] * r, list(shape), [0.0] * r + [1.0] * r
    if roi_v is not None:
        for i, a in enumerate(axes):
            full_roi[a], full_roi[a + r] = roi_v[i], roi_v[len(axes) + i]
    if sz is not None:
        for i, a in enumerate(axes):
            full_scale[a], out_size[a] = sz[i] / shape[a], sz[i]
        if keep_aspect_ratio_policy != "stretch":
            pick = min if keep_aspect_ratio_policy == "not_larger" else max
            s = pick(full_scale[a] for a in axes)
            for a in axes:
                full_scale[a], out_size[a] = s, int(s * shape[a] + 0.5)
    elif sc is not None:
        for i, a in enumerate(axes):
            full_scale[a], out_size[a] = sc[i], int(sc[i] * shape[a])
    else:
        raise b.error("one of scales and sizes must be given")
    if mode == "nearest":
        def coeffs(x, s):
            return ref._nearest_coeffs(x, mode=nearest_mode)
    elif mode == "linear":
        coeffs = ref._linear_coeffs_antialias if antialias else ref._linear_coeffs
    elif mode == "cubic":
        def coeffs(x, s):
            return (ref._cubic_coeffs_antialias if antialias else ref._cubic_coeffs)(x, s, A=cubic_coeff_a)
    else:
        raise b.error(f"unknown mode {mode!r}")
    dt = b.type(X).dtype
    if not dt.startswith("float"):
        raise b.error(f"only floating-point inputs are supported, got {b.type(X)}")
    y, outside_any = X, np.zeros(out_size, bool)
    for a in axes:
        if out_size[a] == shape[a] and np.isclose(full_scale[a], 1.0) and \
                (full_roi[a], full_roi[a + r]) == (0.0, 1.0):
            continue
        m, outside = _resize_matrix(shape[a], out_size[a], full_scale[a], coeffs,
                                    [full_roi[a], full_roi[a + r]] if coordinate_transformation_mode ==
                                    "tf_crop_and_resize" else None, bool(exclude_outside), extrapolation_value,
                                    coordinate_transformation_mode)
        outside_any |= outside.reshape([-1 if i == a else 1 for i in range(r)])
        perm = [i for i in range(r) if i != a] + [a]
        inv = list(np.argsort(perm))
        yt = b.emit(ops.transpose, [y], perm=tuple(perm)) if a != r - 1 else y
        yt = MatMul(b, yt, np.ascontiguousarray(m.T.astype(dt)))
        y = b.emit(ops.transpose, [yt], perm=tuple(int(i) for i in inv)) if a != r - 1 else yt
    if outside_any.any():
        y = b.emit(ops.where, [outside_any, np.asarray(extrapolation_value, dt), y])
    return y
