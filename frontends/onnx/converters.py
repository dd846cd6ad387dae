"""One converter per ONNX op, named like the op, its attributes keyword arguments with the spec's defaults.

A converter takes the builder `b`, the node's inputs (IR values, or numpy arrays known at compile time, or None for
an omitted optional input) and the attributes; it returns the node's output(s). Versions: `@converter(since=N)`
registers the function for opsets >= N (until a later registration of the same op); a versioned variant is named
`Op_N` and registers as `Op`.
"""

from __future__ import annotations

from math import prod
from typing import Callable

import numpy as np
from onnx import helper

from compiler import ops

# op type -> {since opset: converter}
CONVERTERS: dict[str, dict[int, Callable]] = {}


def converter(since: int = 1):
    def register(fn):
        name = fn.__name__.split("_")[0]
        CONVERTERS.setdefault(name, {})[since] = fn
        return fn

    return register


def lookup_converter(op_type: str, opset: int) -> Callable | None:
    versions = CONVERTERS.get(op_type, {})
    usable = [v for v in versions if v <= opset]
    return versions[max(usable)] if usable else None


# -- helpers ----------------------------------------------------------------------------------------------------------
def _axis(b, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise b.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _reshape(b, x, shape):
    return b.emit(ops.reshape, [x], shape=tuple(int(d) for d in shape))


def _spatial_pads(b, x_shape, kernel, strides, dilations, pads, auto_pad, ceil=False):
    """ONNX pads (begins..., ends...) for 2-D windows, resolving auto_pad."""
    if auto_pad in ("NOTSET", ""):
        return tuple(pads) if pads else (0, 0, 0, 0)
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else big)
            ends.append(big if auto_pad == "SAME_UPPER" else small)
        return tuple(begins + ends)
    raise b.error(f"unknown auto_pad {auto_pad!r}")


def _require_2d(b, x, what="input"):
    if b.type(x).rank != 4:
        raise b.error(f"only 1-D and 2-D (NCW, NCHW) {what} is supported, got {b.type(x)}")


def _as_2d(fn):
    """Run a 2-D window converter on a 1-D (N, C, W) input as (N, C, 1, W); attributes gain a leading unit axis."""

    def convert(b, X, *args, **attrs):
        if b.type(X).rank != 3:
            return fn(b, X, *args, **attrs)
        lift = {"kernel_shape": 1, "strides": 1, "dilations": 1, "output_padding": 0}
        for k, fill in lift.items():
            if attrs.get(k) is not None:
                attrs[k] = [fill] + list(attrs[k])
        if attrs.get("pads") is not None:
            p = list(attrs["pads"])
            attrs["pads"] = [0, p[0], 0, p[1]]
        if attrs.get("output_shape") is not None:
            attrs["output_shape"] = [1] + list(attrs["output_shape"])
        n, c, w = b.type(X).shape
        args = [(_reshape(b, a, b.type(a).shape[:2] + (1,) + b.type(a).shape[2:]) if i == 0 and a is not None
                 and b.type(a).rank == 3 else a) for i, a in enumerate(args)]
        out = fn(b, _reshape(b, X, (n, c, 1, w)), *args, **attrs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        y = outs[0]
        ys = b.type(y).shape
        outs[0] = _reshape(b, y, ys[:2] + ys[3:])
        return tuple(outs) if isinstance(out, (list, tuple)) else outs[0]

    convert.__name__ = fn.__name__
    return convert


# -- elementwise ------------------------------------------------------------------------------------------------------
def _unary(op):
    def convert(b, X):
        return b.emit(op, [X])

    return convert


for _onnx, _op in {"Relu": ops.relu, "Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Exp": ops.exp, "Log": ops.log,
                   "Sqrt": ops.sqrt, "Abs": ops.abs, "Neg": ops.neg, "Erf": ops.erf, "Floor": ops.floor,
                   "Ceil": ops.ceil, "Sin": ops.sin, "Cos": ops.cos, "Reciprocal": ops.reciprocal, "Sign": ops.sign,
                   "Round": ops.round, "Tan": ops.tan, "Asin": ops.asin, "Acos": ops.acos, "Atan": ops.atan,
                   "Sinh": ops.sinh, "Cosh": ops.cosh, "Asinh": ops.asinh, "Acosh": ops.acosh, "Atanh": ops.atanh,
                   "Not": ops.logical_not, "BitwiseNot": ops.bitwise_not, "IsNaN": ops.isnan}.items():
    CONVERTERS[_onnx] = {1: _unary(_op)}


def _legacy_broadcast(b, A, B, broadcast, axis):
    """Opset < 7: B broadcasts onto A only with broadcast=1, aligned at `axis`."""
    if broadcast and axis is not None:
        ra, rb = b.type(A).rank, b.type(B).rank
        ax = _axis(b, axis, ra)
        B = _reshape(b, B, b.type(B).shape + (1,) * (ra - ax - rb))
    return A, B


def _binary(op):
    def convert(b, A, B, broadcast=0, axis=None):
        A, B = _legacy_broadcast(b, A, B, broadcast, axis)
        return b.emit(op, [A, B])

    return convert


for _onnx, _op in {"Add": ops.add, "Sub": ops.sub, "Mul": ops.mul, "Div": ops.div, "Less": ops.less,
                   "Greater": ops.greater, "LessOrEqual": ops.less_equal, "GreaterOrEqual": ops.greater_equal,
                   "And": ops.logical_and, "Or": ops.logical_or, "Xor": ops.logical_xor,
                   "BitwiseAnd": ops.bitwise_and, "BitwiseOr": ops.bitwise_or, "BitwiseXor": ops.bitwise_xor}.items():
    CONVERTERS[_onnx] = {1: _binary(_op)}


@converter()
def Pow(b, X, Y, *, broadcast=0, axis=None):
    X, Y = _legacy_broadcast(b, X, Y, broadcast, axis)
    dt = b.type(X).dtype
    if b.type(Y).dtype != dt:  # the result has the base's type; an exponent of another type is converted
        Y = b.emit(ops.cast, [Y], to=dt)
    return b.emit(ops.pow, [X, Y])


def _variadic(op):
    def convert(b, *xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = b.emit(op, [acc, x])
        return acc

    return convert


for _onnx, _op in {"Sum": ops.add, "Max": ops.maximum, "Min": ops.minimum}.items():
    CONVERTERS[_onnx] = {1: _variadic(_op)}


@converter()
def Identity(b, input):
    return input


@converter()
def Dropout(b, data, ratio=None, training_mode=None, *, is_test=0, seed=None, **_legacy):
    # inference (or a zero ratio): Dropout is the identity and keeps every element
    training = training_mode is not None and bool(b.const(training_mode, "training_mode"))
    if training and (ratio is None or float(np.asarray(b.const(ratio, "ratio")).reshape(-1)[0]) != 0.0):
        raise b.error("training_mode=True with a non-zero ratio drops random elements; only inference is supported")
    return data, np.ones(b.type(data).shape, bool)


@converter()
def Clip_1(b, input, *, min=-3.4028234663852886e38, max=3.4028234663852886e38):
    return b.emit(ops.clip, [input], min=min, max=max)


@converter(since=11)
def Clip(b, input, min=None, max=None):
    lo = float(b.const(min, "min")) if min is not None else -np.inf
    hi = float(b.const(max, "max")) if max is not None else np.inf
    return b.emit(ops.clip, [input], min=lo, max=hi)


@converter()
def LeakyRelu(b, X, *, alpha=0.01):
    return b.emit(ops.leaky_relu, [X], alpha=alpha)


@converter()
def Cast(b, input, *, to, saturate=1, round_mode="up"):
    from .importer import onnx_dtype

    return b.emit(ops.cast, [input], to=onnx_dtype(to))


# -- constants and shapes ---------------------------------------------------------------------------------------------
@converter()
def Constant(b, *, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, sparse_value=None):
    for v, dtype in ((value, None), (value_float, np.float32), (value_floats, np.float32), (value_int, np.int64),
                     (value_ints, np.int64)):
        if v is not None:
            return np.asarray(np.asarray(v, dtype=dtype), order="C")
    raise b.error("only dense numeric Constant values are supported")


@converter()
def ConstantOfShape(b, input, *, value=None):
    shape = tuple(int(d) for d in b.const(input, "input"))
    fill = np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


@converter()
def Shape(b, data, *, start=0, end=None):
    shape = b.type(data).shape
    return np.array(shape[start:end], dtype=np.int64)


@converter()
def Gather(b, data, indices, *, axis=0):
    ax = _axis(b, axis, b.type(data).rank)
    return b.emit(ops.take, [data, indices], axis=ax)


@converter()
def Reshape_1(b, data, *, shape, consumed_inputs=None):
    return Reshape(b, data, np.asarray(shape, np.int64))


@converter(since=5)
def Reshape(b, data, shape, *, allowzero=0):
    target = [int(d) for d in b.const(shape, "shape")]
    src = b.type(data).shape
    if not allowzero:
        target = [src[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise b.error(f"shape {target} has more than one -1")
    if -1 in target:
        known = prod(d for d in target if d != -1)
        if known == 0 or prod(src) % known:
            raise b.error(f"cannot reshape {b.type(data)} to {target}")
        target[target.index(-1)] = prod(src) // known
    if prod(target) != prod(src):
        raise b.error(f"cannot reshape {b.type(data)} ({prod(src)} elements) to {target}")
    return _reshape(b, data, target)


@converter()
def Flatten(b, input, *, axis=1):
    shape = b.type(input).shape
    ax = axis + len(shape) if axis < 0 else axis
    return _reshape(b, input, (prod(shape[:ax]), prod(shape[ax:])))


def _unsqueezed(b, shape, axes):
    rank = len(shape) + len(axes)
    axes = sorted(_axis(b, a, rank) for a in axes)
    out = list(shape)
    for a in axes:
        out.insert(a, 1)
    return out


@converter()
def Unsqueeze_1(b, data, *, axes):
    return _reshape(b, data, _unsqueezed(b, b.type(data).shape, axes))


@converter(since=13)
def Unsqueeze(b, data, axes):
    return _reshape(b, data, _unsqueezed(b, b.type(data).shape, [int(a) for a in b.const(axes, "axes")]))


def _squeezed(b, shape, axes):
    if axes is None:
        return [d for d in shape if d != 1]
    axes = {_axis(b, a, len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise b.error(f"cannot squeeze axis {a} of size {shape[a]}")
    return [d for i, d in enumerate(shape) if i not in axes]


@converter()
def Squeeze_1(b, data, *, axes=None):
    return _reshape(b, data, _squeezed(b, b.type(data).shape, axes))


@converter(since=13)
def Squeeze(b, data, axes=None):
    ax = None if axes is None else [int(a) for a in b.const(axes, "axes")]
    return _reshape(b, data, _squeezed(b, b.type(data).shape, ax))


@converter()
def Transpose(b, data, *, perm=None):
    rank = b.type(data).rank
    return b.emit(ops.transpose, [data], perm=tuple(perm) if perm is not None else tuple(range(rank))[::-1])


@converter()
def Concat(b, *inputs, axis=1):
    ax = _axis(b, axis, b.type(inputs[0]).rank)
    inputs = [x for x in inputs if b.type(x).shape[ax] != 0] or inputs[:1]
    return b.emit(ops.concat, inputs, axis=ax)


@converter()
def Pad_1(b, data, *, pads=None, paddings=None, mode="constant", value=0.0):
    return _pad(b, data, pads if pads is not None else paddings, mode, value)


@converter(since=11)
def Pad(b, data, pads, constant_value=None, axes=None, *, mode="constant"):
    p = [int(x) for x in b.const(pads, "pads")]
    value = 0.0 if constant_value is None else float(np.asarray(b.const(constant_value, "constant_value")).reshape(-1)[0])
    rank = b.type(data).rank
    if axes is not None:
        ax = [_axis(b, int(a), rank) for a in b.const(axes, "axes")]
        full = [0] * (2 * rank)
        for i, a in enumerate(ax):
            full[a], full[a + rank] = p[i], p[i + len(ax)]
        p = full
    return _pad(b, data, p, mode, value)


def _pad(b, data, pads, mode, value):
    if mode == "constant":
        return b.emit(ops.pad, [data], pads=tuple(pads), value=value)
    if mode not in ("edge", "reflect", "wrap"):
        raise b.error(f"unknown Pad mode {mode!r}")
    # edge / reflect / wrap: per axis, concatenate slices of the input (they fuse into one injective kernel)
    rank = b.type(data).rank
    x = data
    for a in range(rank):
        lo, hi = pads[a], pads[a + rank]
        if lo < 0 or hi < 0:
            raise b.error(f"negative pads are only supported in constant mode, got {list(pads)}")
        n = b.type(x).shape[a]
        if mode == "reflect" and (lo >= n or hi >= n):
            raise b.error(f"reflect pads {lo}, {hi} must be smaller than the axis size {n}")

        def part(start, stop, step):
            return _slice(b, x, [start], [stop], [a], [step])

        if mode == "edge":
            before = [part(0, 1, 1)] * lo
            after = [part(n - 1, n, 1)] * hi
        elif mode == "reflect":
            before = [part(lo, 0, -1)] if lo else []
            after = [part(n - 2, n - 2 - hi, -1)] if hi else []
        else:  # wrap
            before = [part(n - lo, n, 1)] if lo else []
            after = [part(0, hi, 1)] if hi else []
        if before or after:
            x = b.emit(ops.concat, before + [x] + after, axis=a)
    return x


# -- neural-network ops -----------------------------------------------------------------------------------------------
@converter()
@_as_2d
def Conv(b, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    _require_2d(b, X)
    kernel = tuple(b.type(W).shape[2:])
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise b.error(f"kernel_shape {tuple(kernel_shape)} does not match the weight's {kernel}")
    strides = tuple(strides or (1, 1))
    dilations = tuple(dilations or (1, 1))
    p = _spatial_pads(b, b.type(X).shape, kernel, strides, dilations, pads, auto_pad)
    inputs = [X, W] + ([B] if B is not None else [])
    return b.emit(ops.conv2d, inputs, strides=strides, pads=p, dilations=dilations, groups=group)


@converter()
def Gemm(b, A, B, C=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=None):
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
    ta, tb = b.type(A), b.type(B)
    if isinstance(B, np.ndarray) and tb.rank == 2 and ta.rank >= 2 and not isinstance(A, np.ndarray):
        # x @ W with a constant W is a dense layer: flatten the leading dims, keep W as (N, K)
        a2 = _reshape(b, A, (prod(ta.shape[:-1]), ta.shape[-1])) if ta.rank > 2 else A
        y = b.emit(ops.dense, [a2, b.derive(np.asarray(B.T, order="C"), B)])
        return _reshape(b, y, ta.shape[:-1] + (tb.shape[1],)) if ta.rank > 2 else y
    return b.emit(ops.matmul, [A, B])


@converter()
def BatchNormalization(b, X, scale, B, input_mean, input_var, *, epsilon=1e-5, momentum=0.9, spatial=1,
                       training_mode=0, is_test=None, consumed_inputs=None):
    if training_mode:
        raise b.error("training_mode=1 (batch statistics) is not supported for inference")
    if not spatial:
        raise b.error("spatial=0 is not supported")
    return b.emit(ops.batch_norm, [X, scale, B, input_mean, input_var], epsilon=epsilon)


def _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode):
    _require_2d(b, X)
    kernel = tuple(kernel_shape)
    strides = tuple(strides or (1, 1))
    dilations = tuple(dilations or (1, 1))
    p = _spatial_pads(b, b.type(X).shape, kernel, strides, dilations, pads, auto_pad)
    return dict(kernel=kernel, strides=strides, pads=p, dilations=dilations, ceil_mode=bool(ceil_mode))


@converter()
@_as_2d
def MaxPool(b, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None, storage_order=0,
            strides=None):
    y = b.emit(ops.max_pool2d, [X], **_pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode))
    return y, None  # the Indices output is not computed


@converter()
@_as_2d
def AveragePool(b, X, *, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape,
                pads=None, strides=None):
    attrs = _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode)
    return b.emit(ops.avg_pool2d, [X], count_include_pad=bool(count_include_pad), **attrs)


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
    return np.arange(s, lim, d, dtype=s.dtype)


@converter(since=11)
def Equal(b, A, B):
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


def _slice(b, data, starts, ends, axes, steps):
    shape = b.type(data).shape
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [_axis(b, int(a), rank) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    begins, stops, strides = [0] * rank, list(shape), [1] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise b.error("Slice steps must not be 0")
        begins[a], stops[a], strides[a] = slice(int(s), int(e), st).indices(shape[a])
    if begins == [0] * rank and stops == list(shape) and strides == [1] * rank:
        return data
    return b.emit(ops.strided_slice, [data], begins=begins, ends=stops, strides=strides)


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


# -- more elementwise: activations composed of existing ops (they fuse into one kernel) -----------------------------
def _c(b, x, value):
    """A scalar constant of x's dtype."""
    return np.asarray(value, b.type(x).dtype)


@converter()
def CastLike(b, input, target_type, *, saturate=1, round_mode="up"):
    return b.emit(ops.cast, [input], to=b.type(target_type).dtype)


@converter()
def Size(b, data):
    return np.array(b.type(data).numel, np.int64)


@converter()
def Mod(b, A, B, *, fmod=0):
    return b.emit(ops.mod, [A, B], fmod=bool(fmod))


@converter()
def BitShift(b, X, Y, *, direction):
    if direction not in ("LEFT", "RIGHT"):
        raise b.error(f"unknown direction {direction!r}")
    return b.emit(ops.left_shift if direction == "LEFT" else ops.right_shift, [X, Y])


@converter()
def IsInf(b, X, *, detect_negative=1, detect_positive=1):
    inf = b.emit(ops.isinf, [X])
    if detect_negative and detect_positive:
        return inf
    side = b.emit(ops.greater if detect_positive else ops.less, [X, _c(b, X, 0)])
    if not (detect_negative or detect_positive):
        return b.emit(ops.logical_and, [inf, b.emit(ops.logical_not, [inf])])
    return b.emit(ops.logical_and, [inf, side])


@converter()
def HardSigmoid(b, X, *, alpha=0.2, beta=0.5):
    y = b.emit(ops.add, [b.emit(ops.mul, [X, _c(b, X, alpha)]), _c(b, X, beta)])
    return b.emit(ops.clip, [y], min=0.0, max=1.0)


@converter()
def HardSwish(b, X):
    return b.emit(ops.mul, [X, HardSigmoid(b, X, alpha=1 / 6, beta=0.5)])


@converter()
def Elu(b, X, *, alpha=1.0):
    neg = b.emit(ops.mul, [b.emit(ops.sub, [b.emit(ops.exp, [X]), _c(b, X, 1)]), _c(b, X, alpha)])
    return b.emit(ops.where, [b.emit(ops.less, [X, _c(b, X, 0)]), neg, X])


@converter()
def Selu(b, X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    neg = b.emit(ops.sub, [b.emit(ops.mul, [b.emit(ops.exp, [X]), _c(b, X, alpha)]), _c(b, X, alpha)])
    y = b.emit(ops.where, [b.emit(ops.less_equal, [X, _c(b, X, 0)]), neg, X])
    return b.emit(ops.mul, [y, _c(b, X, gamma)])


@converter()
def Celu(b, X, *, alpha=1.0):
    e = b.emit(ops.sub, [b.emit(ops.exp, [b.emit(ops.div, [X, _c(b, X, alpha)])]), _c(b, X, 1)])
    neg = b.emit(ops.minimum, [b.emit(ops.mul, [e, _c(b, X, alpha)]), _c(b, X, 0)])
    return b.emit(ops.add, [b.emit(ops.relu, [X]), neg])


@converter()
def ThresholdedRelu(b, X, *, alpha=1.0):
    return b.emit(ops.where, [b.emit(ops.greater, [X, _c(b, X, alpha)]), X, _c(b, X, 0)])


@converter()
def Shrink(b, input, *, bias=0.0, lambd=0.5):
    x = input
    lo = b.emit(ops.add, [x, _c(b, x, bias)])
    hi = b.emit(ops.sub, [x, _c(b, x, bias)])
    y = b.emit(ops.where, [b.emit(ops.greater, [x, _c(b, x, lambd)]), hi, _c(b, x, 0)])
    return b.emit(ops.where, [b.emit(ops.less, [x, _c(b, x, -lambd)]), lo, y])


@converter()
def PRelu(b, X, slope):
    return b.emit(ops.where, [b.emit(ops.less, [X, _c(b, X, 0)]), b.emit(ops.mul, [X, slope]), X])


@converter()
def Softplus(b, X):
    return b.emit(ops.log, [b.emit(ops.add, [b.emit(ops.exp, [X]), _c(b, X, 1)])])


@converter()
def Softsign(b, input):
    return b.emit(ops.div, [input, b.emit(ops.add, [b.emit(ops.abs, [input]), _c(b, input, 1)])])


@converter()
def Mish(b, X):
    return b.emit(ops.mul, [X, b.emit(ops.tanh, [Softplus(b, X)])])


@converter()
def Mean(b, *xs):
    return b.emit(ops.div, [_variadic(ops.add)(b, *xs), _c(b, xs[0], len(xs))])


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
    if b.type(X).dtype == "uint64":
        raise b.error("uint64 inputs are not supported (TVM's sort has no uint64 kernel)")
    return b.emit(ops.topk, [X], k=k, axis=_axis(b, axis, b.type(X).rank), largest=bool(largest))


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


# -- gathers and data movement ----------------------------------------------------------------------------------------
@converter()
def GatherElements(b, data, indices, *, axis=0):
    return b.emit(ops.gather_elements, [data, indices], axis=_axis(b, axis, b.type(data).rank))


@converter()
def GatherND(b, data, indices, *, batch_dims=0):
    return b.emit(ops.gather_nd, [data, indices], batch_dims=batch_dims)


@converter()
def Tile(b, input, repeats):
    reps = [int(r) for r in b.const(repeats, "repeats")]
    shape = b.type(input).shape
    if len(reps) != len(shape):
        raise b.error(f"repeats {reps} must have one entry per axis of {b.type(input)}")
    # (d0, d1) -> (1, d0, 1, d1) -> broadcast (r0, d0, r1, d1) -> (r0*d0, r1*d1)
    x = _reshape(b, input, [v for d in shape for v in (1, d)])
    x = b.emit(ops.broadcast_to, [x], shape=tuple(v for r, d in zip(reps, shape) for v in (r, d)))
    return _reshape(b, x, [r * d for r, d in zip(reps, shape)])


@converter(since=14)
def Trilu(b, input, k=None, *, upper=1):
    shape = b.type(input).shape
    kk = 0 if k is None else int(np.asarray(b.const(k, "k")).reshape(-1)[0])
    rows, cols = np.arange(shape[-2])[:, None], np.arange(shape[-1])[None, :]
    mask = (cols - rows >= kk) if upper else (cols - rows <= kk)
    return b.emit(ops.where, [mask, input, _c(b, input, 0)])


@converter()
def EyeLike(b, input, *, dtype=None, k=0):
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(dtype)) if dtype is not None else np.dtype(b.type(input).dtype)
    n, m = b.type(input).shape
    return np.eye(n, m, k, dtype=dt)


@converter()
def DepthToSpace(b, input, *, blocksize, mode="DCR"):
    n, c, h, w = b.type(input).shape
    bs = blocksize
    if mode == "DCR":
        x = _reshape(b, input, (n, bs, bs, c // bs ** 2, h, w))
        x = b.emit(ops.transpose, [x], perm=(0, 3, 4, 1, 5, 2))
    else:
        x = _reshape(b, input, (n, c // bs ** 2, bs, bs, h, w))
        x = b.emit(ops.transpose, [x], perm=(0, 1, 4, 2, 5, 3))
    return _reshape(b, x, (n, c // bs ** 2, h * bs, w * bs))


@converter()
def SpaceToDepth(b, input, *, blocksize):
    n, c, h, w = b.type(input).shape
    bs = blocksize
    x = _reshape(b, input, (n, c, h // bs, bs, w // bs, bs))
    x = b.emit(ops.transpose, [x], perm=(0, 3, 5, 1, 2, 4))
    return _reshape(b, x, (n, c * bs * bs, h // bs, w // bs))


@converter(since=9)
def OneHot(b, indices, depth, values, *, axis=-1):
    d = int(np.asarray(b.const(depth, "depth")).reshape(-1)[0])
    vals = b.const(values, "values")
    rank = b.type(indices).rank + 1
    ax = _axis(b, axis, rank)
    idx = b.emit(ops.cast, [indices], to="int64")
    idx = b.emit(ops.where, [b.emit(ops.less, [idx, np.asarray(0, np.int64)]),
                             b.emit(ops.add, [idx, np.asarray(d, np.int64)]), idx])
    ishape = list(b.type(idx).shape)
    idx = _reshape(b, idx, ishape[:ax] + [1] + ishape[ax:])
    ar = np.arange(d, dtype=np.int64).reshape([d if i == ax else 1 for i in range(rank)])
    return b.emit(ops.where, [b.emit(ops.equal, [idx, ar]), vals[1:2].reshape(()), vals[0:1].reshape(())])


@converter()
def GlobalMaxPool(b, X):
    return b.emit(ops.reduce_max, [X], axes=tuple(range(2, b.type(X).rank)), keepdims=True)


@converter()
def InstanceNormalization(b, input, scale, B, *, epsilon=1e-5):
    x = input
    rank = b.type(x).rank
    axes = tuple(range(2, rank))
    mean = b.emit(ops.reduce_mean, [x], axes=axes, keepdims=True)
    d = b.emit(ops.sub, [x, mean])
    var = b.emit(ops.reduce_mean, [b.emit(ops.mul, [d, d])], axes=axes, keepdims=True)
    y = b.emit(ops.div, [d, b.emit(ops.sqrt, [b.emit(ops.add, [var, _c(b, x, epsilon)])])])
    c = b.type(x).shape[1]
    s = _reshape(b, scale, (c,) + (1,) * (rank - 2))
    bias = _reshape(b, B, (c,) + (1,) * (rank - 2))
    return b.emit(ops.add, [b.emit(ops.mul, [y, s]), bias])


@converter()
def MeanVarianceNormalization(b, X, *, axes=(0, 2, 3)):
    ax = tuple(sorted(_axis(b, a, b.type(X).rank) for a in axes))
    mean = b.emit(ops.reduce_mean, [X], axes=ax, keepdims=True)
    d = b.emit(ops.sub, [X, mean])
    var = b.emit(ops.reduce_mean, [b.emit(ops.mul, [d, d])], axes=ax, keepdims=True)
    return b.emit(ops.div, [d, b.emit(ops.add, [b.emit(ops.sqrt, [var]), _c(b, X, 1e-9)])])


@converter()
@_as_2d
def ConvTranspose(b, X, W, B=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                  output_padding=None, output_shape=None, pads=None, strides=None):
    """As a stride-1 convolution of the input dilated by `strides` (zeros between pixels) and padded by
    dilation * (k - 1) - pad, with the weight's in/out channels swapped (per group) and its window flipped."""
    _require_2d(b, X)
    n, c, h, w = b.type(X).shape
    cin, cout_g, kh, kw = b.type(W).shape
    kernel = (kh, kw)
    strides = tuple(strides or (1, 1))
    dil = tuple(dilations or (1, 1))
    opad = list(output_padding or (0, 0))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if output_shape is not None:  # total padding follows from the requested size
        total = [s * (i - 1) + op + sp - o for s, i, op, sp, o in zip(strides, (h, w), opad, span, output_shape[-2:])]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        p = small + big if auto_pad == "SAME_UPPER" else big + small
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, s * (i - 1) + op + sp - i * s) for s, i, op, sp in zip(strides, (h, w), opad, span)]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        p = small + big if auto_pad == "SAME_UPPER" else big + small
    else:
        p = list(pads or (0, 0, 0, 0))
    # dilate the input: (N, C, H, 1, W, 1) padded to (N, C, H, sh, W, sw), reshaped, the tail trimmed
    sh, sw = strides
    x = X
    if (sh, sw) != (1, 1):
        x = _reshape(b, x, (n, c, h, 1, w, 1))
        x = b.emit(ops.pad, [x], pads=(0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1), value=0.0)
        x = _reshape(b, x, (n, c, h * sh, w * sw))
        x = _slice(b, x, [0, 0], [(h - 1) * sh + 1, (w - 1) * sw + 1], [2, 3], None)
    before = [sp - 1 - p[0] for sp in span[:1]] + [span[1] - 1 - p[1]]
    after = [span[0] - 1 - p[2] + opad[0], span[1] - 1 - p[3] + opad[1]]
    crop = [max(0, -v) for v in before + after]
    if any(crop):
        hh, ww = b.type(x).shape[2:]
        x = _slice(b, x, [crop[0], crop[1]], [hh - crop[2], ww - crop[3]], [2, 3], None)
    grow = [max(0, v) for v in before + after]
    if any(grow):
        x = b.emit(ops.pad, [x], pads=(0, 0, grow[0], grow[1], 0, 0, grow[2], grow[3]), value=0.0)
    # weight (Cin, Cout/g, kh, kw) -> (Cout, Cin/g, kh, kw), flipped
    g = group
    wt = _reshape(b, W, (g, cin // g, cout_g, kh, kw))
    wt = b.emit(ops.transpose, [wt], perm=(0, 2, 1, 3, 4))
    wt = _reshape(b, wt, (g * cout_g, cin // g, kh, kw))
    wt = _slice(b, wt, [kh - 1, kw - 1], [-kh - 1, -kw - 1], [2, 3], [-1, -1])
    inputs = [x, wt] + ([B] if B is not None else [])
    return b.emit(ops.conv2d, inputs, strides=(1, 1), pads=(0, 0, 0, 0), dilations=dil, groups=g)


# -- recurrent layers: unrolled over the (static) sequence into matmul / add / activations / slices ----------------
def _rnn_activation(b, name, alpha, beta):
    def act(x):
        dt = b.type(x).dtype
        if name == "Sigmoid":
            return b.emit(ops.sigmoid, [x])
        if name == "Tanh":
            return b.emit(ops.tanh, [x])
        if name == "Relu":
            return b.emit(ops.relu, [x])
        if name == "HardSigmoid":
            return HardSigmoid(b, x, alpha=0.2 if alpha is None else alpha, beta=0.5 if beta is None else beta)
        if name == "LeakyRelu":
            return b.emit(ops.leaky_relu, [x], alpha=0.01 if alpha is None else alpha)
        if name == "Affine":
            return b.emit(ops.add, [b.emit(ops.mul, [x, np.asarray(alpha, dt)]), np.asarray(beta or 0.0, dt)])
        if name == "ScaledTanh":
            t = b.emit(ops.tanh, [b.emit(ops.mul, [x, np.asarray(beta, dt)])])
            return b.emit(ops.mul, [t, np.asarray(alpha, dt)])
        raise b.error(f"activation {name!r} is not supported")

    return act


def _rnn(b, kind, X, W, R, B, sequence_lens, initial_h, initial_c, P, *, activations, activation_alpha,
         activation_beta, clip, direction, hidden_size, layout, linear_before_reset=0, input_forget=0):
    gates, defaults = {"RNN": (1, ["Tanh"]), "GRU": (3, ["Sigmoid", "Tanh"]),
                       "LSTM": (4, ["Sigmoid", "Tanh", "Tanh"])}[kind]
    if input_forget:
        raise b.error("input_forget=1 is not supported")
    ndir = 2 if direction == "bidirectional" else 1
    acts = list(activations) if activations else defaults * ndir
    if len(acts) == len(defaults):
        acts = acts * ndir
    alphas, betas = list(activation_alpha or []), list(activation_beta or [])
    fns = [_rnn_activation(b, a, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None)
           for i, a in enumerate(acts)]
    if layout:
        X = b.emit(ops.transpose, [X], perm=(1, 0, 2))
        initial_h = None if initial_h is None else b.emit(ops.transpose, [initial_h], perm=(1, 0, 2))
        initial_c = None if initial_c is None else b.emit(ops.transpose, [initial_c], perm=(1, 0, 2))
    seq, batch, _ = b.type(X).shape
    H = hidden_size if hidden_size is not None else b.type(R).shape[-1]
    dt = b.type(X).dtype
    lens = None if sequence_lens is None else [int(v) for v in b.const(sequence_lens, "sequence_lens")]
    if lens is not None and all(v == seq for v in lens):
        lens = None

    def pick(t, d, rows=None):  # direction d of a (dirs, ...) tensor, optionally rows [a, b) of axis 1
        t = _slice(b, t, [d], [d + 1], [0], None)
        shape = b.type(t).shape[1:]
        t = _reshape(b, t, shape)
        return t if rows is None else _slice(b, t, [rows[0]], [rows[1]], [0], None)

    def clipped(x):
        return x if clip is None else b.emit(ops.clip, [x], min=-clip, max=clip)

    ys, hs, cs = [], [], []
    for d in range(ndir):
        reverse = direction == "reverse" or d == 1
        f = fns[d * len(defaults):(d + 1) * len(defaults)]
        Wt = b.emit(ops.transpose, [pick(W, d)], perm=(1, 0))  # (in, gates*H)
        Rg = [b.emit(ops.transpose, [pick(R, d, (g * H, (g + 1) * H))], perm=(1, 0)) for g in range(gates)]
        xw = b.emit(ops.matmul, [X, Wt])  # every step's input projection at once: (seq, batch, gates*H)
        if B is not None:
            bd = pick(B, d)
            wb = _slice(b, bd, [0], [gates * H], [0], None)
            rb = [_slice(b, bd, [(gates + g) * H], [(gates + g + 1) * H], [0], None) for g in range(gates)]
            if kind == "GRU" and linear_before_reset:
                xw = b.emit(ops.add, [xw, wb])
            else:
                xw = b.emit(ops.add, [xw, b.emit(ops.add, [wb, b.emit(ops.concat, rb, axis=0)])])
        else:
            rb = None
        h = pick(initial_h, d) if initial_h is not None else np.zeros((batch, H), dt)
        c = pick(initial_c, d) if initial_c is not None else np.zeros((batch, H), dt)
        peep = [pick(P, d, (g * H, (g + 1) * H)) for g in range(3)] if P is not None else None
        outs = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            xt = _reshape(b, _slice(b, xw, [t], [t + 1], [0], None), (batch, gates * H))
            xg = [_slice(b, xt, [g * H], [(g + 1) * H], [1], None) for g in range(gates)]
            hr = [b.emit(ops.matmul, [h, Rg[g]]) for g in range(gates)]
            if kind == "RNN":
                h_new = f[0](clipped(b.emit(ops.add, [xg[0], hr[0]])))
                c_new = c
            elif kind == "GRU":  # gates z, r, h
                z = f[0](clipped(b.emit(ops.add, [xg[0], hr[0]])))
                r = f[0](clipped(b.emit(ops.add, [xg[1], hr[1]])))
                if linear_before_reset:
                    rec = hr[2] if rb is None else b.emit(ops.add, [hr[2], rb[2]])
                    if rb is not None:  # only Wb went into xw: add Rbz, Rbr here
                        z = f[0](clipped(b.emit(ops.add, [b.emit(ops.add, [xg[0], hr[0]]), rb[0]])))
                        r = f[0](clipped(b.emit(ops.add, [b.emit(ops.add, [xg[1], hr[1]]), rb[1]])))
                    hh = f[1](clipped(b.emit(ops.add, [xg[2], b.emit(ops.mul, [r, rec])])))
                else:
                    hh = f[1](clipped(b.emit(ops.add, [xg[2], b.emit(ops.matmul, [b.emit(ops.mul, [r, h]), Rg[2]])])))
                # h' = (1 - z) * hh + z * h = hh + z * (h - hh)
                h_new = b.emit(ops.add, [hh, b.emit(ops.mul, [z, b.emit(ops.sub, [h, hh])])])
                c_new = c
            else:  # LSTM gates i, o, f, c
                pre = [b.emit(ops.add, [xg[g], hr[g]]) for g in range(4)]
                if peep is not None:
                    pre[0] = b.emit(ops.add, [pre[0], b.emit(ops.mul, [c, peep[0]])])
                    pre[2] = b.emit(ops.add, [pre[2], b.emit(ops.mul, [c, peep[2]])])
                i_g, f_g = f[0](clipped(pre[0])), f[0](clipped(pre[2]))
                c_new = b.emit(ops.add, [b.emit(ops.mul, [f_g, c]), b.emit(ops.mul, [i_g, f[1](clipped(pre[3]))])])
                if peep is not None:
                    pre[1] = b.emit(ops.add, [pre[1], b.emit(ops.mul, [c_new, peep[1]])])
                o_g = f[0](clipped(pre[1]))
                h_new = b.emit(ops.mul, [o_g, f[2](c_new)])
            if lens is not None:  # steps past a sequence's length keep its state and output zeros
                live = np.array([[t < n] for n in lens])
                h_new = b.emit(ops.where, [live, h_new, h])
                c_new = b.emit(ops.where, [live, c_new, c])
                outs[t] = b.emit(ops.where, [live, h_new, np.zeros((), dt)])
            else:
                outs[t] = h_new
            h, c = h_new, c_new
        ys.append(b.emit(ops.concat, [_reshape(b, o, (1, 1, batch, H)) for o in outs], axis=0))
        hs.append(_reshape(b, h, (1, batch, H)))
        cs.append(_reshape(b, c, (1, batch, H)))
    Y = b.emit(ops.concat, ys, axis=1) if ndir > 1 else ys[0]  # (seq, dirs, batch, H)
    Yh = b.emit(ops.concat, hs, axis=0) if ndir > 1 else hs[0]
    Yc = b.emit(ops.concat, cs, axis=0) if ndir > 1 else cs[0]
    if layout:
        Y = b.emit(ops.transpose, [Y], perm=(2, 0, 1, 3))
        Yh = b.emit(ops.transpose, [Yh], perm=(1, 0, 2))
        Yc = b.emit(ops.transpose, [Yc], perm=(1, 0, 2))
    return (Y, Yh, Yc) if kind == "LSTM" else (Y, Yh)


@converter()
def RNN(b, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0):
    return _rnn(b, "RNN", X, W, R, B, sequence_lens, initial_h, None, None, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout)


@converter()
def GRU(b, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0):
    return _rnn(b, "GRU", X, W, R, B, sequence_lens, initial_h, None, None, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout, linear_before_reset=linear_before_reset)


@converter()
def LSTM(b, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
         layout=0):
    return _rnn(b, "LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout, input_forget=input_forget)


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


# -- attention: composed of matmul, softmax and masks built at compile time where they can be ---------------------
def _neg_inf_where(b, allowed, dt):
    """An additive bias: 0 where `allowed`, -inf elsewhere."""
    return b.emit(ops.where, [allowed, np.asarray(0, dt), np.asarray(-np.inf, dt)])


def _add_bias(b, bias, x):
    return x if bias is None else b.emit(ops.add, [bias, x])


@converter(since=23)
def Attention(b, Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
              kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1):
    """onnx's reference (`op_attention.py`) step by step: Q, K scaled by sqrt(scale) each, softcap, an additive
    bias (mask, causal and window frontiers, key padding), softmax, rows with no attendable key zeroed."""
    from .importer import onnx_dtype

    rank = b.type(Q).rank
    dt = b.type(Q).dtype
    if rank == 3:
        if q_num_heads is None or kv_num_heads is None:
            raise b.error("3-D inputs need the q_num_heads and kv_num_heads attributes")

        def heads(x, n):
            bs, s, hidden = b.type(x).shape
            return b.emit(ops.transpose, [_reshape(b, x, (bs, s, n, hidden // n))], perm=(0, 2, 1, 3))

        Q, K, V = heads(Q, q_num_heads), heads(K, kv_num_heads), heads(V, kv_num_heads)
    elif rank != 4:
        raise b.error(f"Q must be 3-D or 4-D, got {b.type(Q)}")
    batch, hq, sq, dh = b.type(Q).shape
    s = np.asarray(np.sqrt(1 / np.sqrt(dh) if scale is None else scale), dt)
    if past_key is not None:
        K = b.emit(ops.concat, [past_key, K], axis=2)
    if past_value is not None:
        V = b.emit(ops.concat, [past_value, V], axis=2)
    present_key, present_value = K, V
    skv = b.type(K).shape[2]

    # the additive bias, broadcastable to (batch, heads, q, kv)
    bias = None
    if attn_mask is not None:
        mask = attn_mask
        if b.type(mask).dtype == "bool":
            mask = _neg_inf_where(b, mask, dt)
        short = skv - b.type(mask).shape[-1]
        if short > 0:
            mr = b.type(mask).rank
            mask = b.emit(ops.pad, [mask], pads=(0,) * (2 * mr - 1) + (short,), value=-np.inf)
        bias = mask
    past = b.type(past_key).shape[2] if past_key is not None else 0
    rows, cols = np.arange(sq).reshape(sq, 1), np.arange(skv).reshape(1, skv)
    if nonpad_kv_seqlen is not None and past_key is None:  # per-batch frontier: offset[b] = nonpad[b] - q_len
        lens = _reshape(b, b.emit(ops.cast, [nonpad_kv_seqlen], to="int64"), (batch, 1, 1, 1))
        offset = b.emit(ops.sub, [lens, np.asarray(sq, np.int64)])
        diff = b.emit(ops.sub, [b.emit(ops.add, [rows, offset]), cols])  # (batch, 1, q, kv)
    else:
        diff = rows + past - cols
    if is_causal:
        bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.greater_equal, [diff, np.asarray(0, np.int64)]), dt))
    for size, sign in ((left_window_size, 1), (right_window_size, -1)):
        if size is not None and size >= 0:
            d = diff if sign == 1 else b.emit(ops.neg, [diff])
            bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.less_equal, [d, np.asarray(size, np.int64)]), dt))
    if nonpad_kv_seqlen is not None:
        lens = _reshape(b, b.emit(ops.cast, [nonpad_kv_seqlen], to="int64"), (batch, 1, 1, 1))
        bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.less, [cols, lens]), dt))

    # grouped-query attention: each K/V head serves hq / hkv query heads, interleaved [h0, h0, h1, h1, ...]
    hkv = b.type(K).shape[1]
    if hq != hkv:
        if hq % hkv:
            raise b.error(f"{hq} query heads do not divide into {hkv} key/value heads")

        def repeat(x):
            _, _, n, d = b.type(x).shape
            x = b.emit(ops.broadcast_to, [_reshape(b, x, (batch, hkv, 1, n, d))], shape=(batch, hkv, hq // hkv, n, d))
            return _reshape(b, x, (batch, hq, n, d))

        K, V = repeat(K), repeat(V)
    kt = b.emit(ops.transpose, [b.emit(ops.mul, [K, s])], perm=(0, 1, 3, 2))
    qk = b.emit(ops.matmul, [b.emit(ops.mul, [Q, s]), kt])
    if softcap is not None and softcap > 0:
        c = np.asarray(softcap, dt)
        qk = b.emit(ops.mul, [b.emit(ops.tanh, [b.emit(ops.div, [qk, c])]), c])
    scores = _add_bias(b, bias, qk)
    qk_out = scores if qk_matmul_output_mode == 2 else qk
    if softmax_precision is not None and onnx_dtype(softmax_precision) != dt:
        scores = b.emit(ops.cast, [scores], to=onnx_dtype(softmax_precision))
    probs = b.emit(ops.softmax, [scores], axis=b.type(scores).rank - 1)
    if bias is not None:  # rows whose bias is -inf everywhere have no attendable key: zero probabilities
        # (counted as "no key above -inf": a max over -inf compiles to the dtype's lowest finite value)
        live = b.emit(ops.cast, [b.emit(ops.greater, [bias, np.asarray(-np.inf, dt)])], to="int8")
        dead = b.emit(ops.equal, [b.emit(ops.reduce_max, [live], axes=(b.type(bias).rank - 1,), keepdims=True),
                                  np.asarray(0, np.int8)])
        if not (isinstance(dead, np.ndarray) and not dead.any()):
            probs = b.emit(ops.where, [dead, np.asarray(0, b.type(probs).dtype), probs])
    if b.type(probs).dtype != dt:
        probs = b.emit(ops.cast, [probs], to=dt)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    y = b.emit(ops.matmul, [probs, V])
    if rank == 3:
        y = b.emit(ops.transpose, [y], perm=(0, 2, 1, 3))
        y = _reshape(b, y, (batch, sq, hq * b.type(y).shape[-1]))
    return y, present_key, present_value, qk_out


# -- losses: log-probabilities picked at the targets with gather_elements, weighted, reduced -------------------------
def _nll(b, log_prob, target, weight, ignore_index, reduction):
    if reduction not in ("none", "sum", "mean"):
        raise b.error(f"unknown reduction {reduction!r}")
    xt, tt = b.type(log_prob), b.type(target)
    dt = xt.dtype
    t = target
    ignored = None
    if ignore_index is not None:  # ignored targets may be out of range: pick class 0 there, weighted 0
        ignored = b.emit(ops.equal, [t, np.asarray(ignore_index, tt.dtype)])
        t = b.emit(ops.where, [ignored, np.asarray(0, tt.dtype), t])
    picked = b.emit(ops.gather_elements, [log_prob, _reshape(b, t, tt.shape[:1] + (1,) + tt.shape[1:])], axis=1)
    loss = b.emit(ops.neg, [_reshape(b, picked, tt.shape)])
    w = b.emit(ops.take, [weight, t], axis=0) if weight is not None else None
    if ignored is not None:
        w = b.emit(ops.where, [ignored, np.asarray(0, dt), np.asarray(1, dt) if w is None else w])
    if w is not None:
        loss = b.emit(ops.mul, [loss, w])
    if reduction == "none":
        return loss
    every = tuple(range(len(tt.shape)))
    total = b.emit(ops.reduce_sum, [loss], axes=every, keepdims=False)
    if reduction == "sum":
        return total
    if w is None:
        return b.emit(ops.div, [total, np.asarray(prod(tt.shape), dt)])
    return b.emit(ops.div, [total, b.emit(ops.reduce_sum, [w], axes=every, keepdims=False)])


@converter(since=12)
def NegativeLogLikelihoodLoss(b, input, target, weight=None, *, ignore_index=None, reduction="mean"):
    return _nll(b, input, target, weight, ignore_index, reduction)


@converter(since=12)
def SoftmaxCrossEntropyLoss(b, scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    log_prob = b.emit(ops.log_softmax, [scores], axis=1)
    return _nll(b, log_prob, labels, weights, ignore_index, reduction), log_prob


@converter(since=23)
def RMSNormalization(b, X, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    xt = b.type(X)
    ax = _axis(b, axis, xt.rank)
    ms = b.emit(ops.reduce_mean, [b.emit(ops.mul, [X, X])], axes=tuple(range(ax, xt.rank)), keepdims=True)
    inv = b.emit(ops.reciprocal, [b.emit(ops.sqrt, [b.emit(ops.add, [ms, _c(b, X, epsilon)])])])
    return b.emit(ops.mul, [b.emit(ops.mul, [X, inv]), scale])


@converter()
def Swish(b, X, *, alpha=1.0):
    return b.emit(ops.mul, [X, b.emit(ops.sigmoid, [b.emit(ops.mul, [X, _c(b, X, alpha)])])])


@converter()
def SwiGLU(b, A, B, *, alpha=1.0):
    return b.emit(ops.mul, [Swish(b, A, alpha=alpha), B])


# -- scatters, cumulative products, normalizations, pooling by p-norm, quantization -------------------------------
_SCATTER_REDUCTION = {"none": "none", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def _scatter_reduction(b, reduction):
    if reduction not in _SCATTER_REDUCTION:
        raise b.error(f"unknown reduction {reduction!r}")
    return _SCATTER_REDUCTION[reduction]


@converter(since=11)
def ScatterElements(b, data, indices, updates, *, axis=0, reduction="none"):
    return b.emit(ops.scatter_elements, [data, indices, updates], axis=_axis(b, axis, b.type(data).rank),
                  reduction=_scatter_reduction(b, reduction))


@converter(since=11)
def ScatterND(b, data, indices, updates, *, reduction="none"):
    return b.emit(ops.scatter_nd, [data, indices, updates], reduction=_scatter_reduction(b, reduction))


@converter()
def Scatter(b, data, indices, updates, *, axis=0):  # deprecated ScatterElements
    return ScatterElements(b, data, indices, updates, axis=axis)


@converter(since=26)
def CumProd(b, x, axis, *, exclusive=0, reverse=0):
    ax = _axis(b, int(np.asarray(b.const(axis, "axis")).reshape(-1)[0]), b.type(x).rank)
    return b.emit(ops.cumprod, [x], axis=ax, exclusive=bool(exclusive), reverse=bool(reverse))


def _hardmax(b, x, ax):
    top = b.emit(ops.argmax, [x], axis=ax, keepdims=True)
    n = b.type(x).shape[ax]
    ar = np.arange(n, dtype=np.int64).reshape([n if i == ax else 1 for i in range(b.type(x).rank)])
    return b.emit(ops.cast, [b.emit(ops.equal, [top, ar])], to=b.type(x).dtype)


@converter()
def Hardmax_1(b, input, *, axis=1):
    shape = b.type(input).shape
    ax = _axis(b, axis, len(shape))
    return _reshape(b, _hardmax(b, _reshape(b, input, (prod(shape[:ax]), prod(shape[ax:]))), 1), shape)


@converter(since=13)
def Hardmax(b, input, *, axis=-1):
    return _hardmax(b, input, _axis(b, axis, b.type(input).rank))


@converter()
def LpNormalization(b, input, *, axis=-1, p=2):
    ax = (_axis(b, axis, b.type(input).rank),)
    if p == 1:
        norm = b.emit(ops.reduce_sum, [b.emit(ops.abs, [input])], axes=ax, keepdims=True)
    elif p == 2:
        norm = b.emit(ops.sqrt, [b.emit(ops.reduce_sum, [b.emit(ops.mul, [input, input])], axes=ax, keepdims=True)])
    else:
        raise b.error(f"p must be 1 or 2, got {p}")
    zero = b.emit(ops.equal, [norm, _c(b, input, 0)])  # an all-zero slice stays zero (not 0/0)
    return b.emit(ops.where, [zero, _c(b, input, 0), b.emit(ops.div, [input, norm])])


@converter()
@_as_2d
def LpPool(b, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, p=2, pads=None, strides=None):
    # (sum over the window of |x|^p)^(1/p): an average pool counting the padding, times the window size
    attrs = _pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode)
    powered = b.emit(ops.pow, [b.emit(ops.abs, [X]), _c(b, X, p)])
    s = b.emit(ops.avg_pool2d, [powered], count_include_pad=True, **attrs)
    s = b.emit(ops.mul, [s, _c(b, X, prod(attrs["kernel"]))])
    return b.emit(ops.pow, [s, _c(b, X, 1.0 / p)])


def _quant_param(b, param, x, axis, block_size):
    """A scale or zero point shaped to broadcast against x: a scalar, one per `axis` entry, or one per block."""
    pt, xt = b.type(param), b.type(x)
    if pt.numel == 1:
        return _reshape(b, param, ())
    ax = _axis(b, axis, xt.rank)
    if pt.rank == 1:
        return _reshape(b, param, [pt.shape[0] if i == ax else 1 for i in range(xt.rank)])
    if not block_size:
        raise b.error(f"a {pt.rank}-D scale or zero point needs block_size")
    nb = pt.shape[ax]  # repeat each block's value block_size times along the axis, then trim to x's size
    grown = _reshape(b, param, pt.shape[:ax + 1] + (1,) + pt.shape[ax + 1:])
    grown = b.emit(ops.broadcast_to, [grown], shape=pt.shape[:ax + 1] + (block_size,) + pt.shape[ax + 1:])
    grown = _reshape(b, grown, pt.shape[:ax] + (nb * block_size,) + pt.shape[ax + 1:])
    return _slice(b, grown, [0], [xt.shape[ax]], [ax], None)


@converter(since=10)
def DequantizeLinear(b, x, x_scale, x_zero_point=None, *, axis=1, block_size=0, output_dtype=0):
    dt = b.type(x_scale).dtype
    y = b.emit(ops.cast, [x], to="float32")
    if x_zero_point is not None:
        zp = b.emit(ops.cast, [_quant_param(b, x_zero_point, x, axis, block_size)], to="float32")
        y = b.emit(ops.sub, [y, zp])
    scale = _quant_param(b, x_scale, x, axis, block_size)
    if dt != "float32":
        scale = b.emit(ops.cast, [scale], to="float32")
    y = b.emit(ops.mul, [y, scale])
    return y if dt == "float32" else b.emit(ops.cast, [y], to=dt)


@converter(since=10)
def QuantizeLinear(b, x, y_scale, y_zero_point=None, *, axis=1, block_size=0, output_dtype=0, precision=0,
                   saturate=1):
    from .importer import onnx_dtype

    out = b.type(y_zero_point).dtype if y_zero_point is not None else (
        onnx_dtype(output_dtype) if output_dtype else "uint8")
    if out not in ("int8", "uint8", "int16", "uint16", "int32", "uint32"):
        raise b.error(f"quantizing to {out} is not supported")
    xf = b.emit(ops.cast, [x], to="float32") if b.type(x).dtype != "float32" else x
    scale = _quant_param(b, y_scale, x, axis, block_size)
    if b.type(scale).dtype != "float32":
        scale = b.emit(ops.cast, [scale], to="float32")
    y = b.emit(ops.round, [b.emit(ops.div, [xf, scale])])  # half to even
    if y_zero_point is not None:
        y = b.emit(ops.add, [y, b.emit(ops.cast, [_quant_param(b, y_zero_point, x, axis, block_size)], to="float32")])
    info = np.iinfo(out)
    return b.emit(ops.cast, [b.emit(ops.clip, [y], min=float(info.min), max=float(info.max))], to=out)
