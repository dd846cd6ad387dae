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
        raise b.error(f"only 2-D (NCHW) {what} is supported, got {b.type(x)}")


# -- elementwise ------------------------------------------------------------------------------------------------------
def _unary(op):
    def convert(b, X):
        return b.emit(op, [X])

    return convert


for _onnx, _op in {"Relu": ops.relu, "Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Exp": ops.exp, "Log": ops.log,
                   "Sqrt": ops.sqrt, "Abs": ops.abs, "Neg": ops.neg, "Erf": ops.erf, "Floor": ops.floor,
                   "Ceil": ops.ceil, "Sin": ops.sin, "Cos": ops.cos, "Reciprocal": ops.reciprocal}.items():
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


for _onnx, _op in {"Add": ops.add, "Sub": ops.sub, "Mul": ops.mul, "Div": ops.div, "Pow": ops.pow}.items():
    CONVERTERS[_onnx] = {1: _binary(_op)}


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
    # inference: Dropout is the identity; the mask output is not computed
    if training_mode is not None and isinstance(training_mode, np.ndarray) and bool(training_mode):
        raise b.error("training_mode=True is not supported for inference")
    return data, None


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
    return b.emit(ops.cast, [input], to=str(np.dtype(helper.tensor_dtype_to_np_dtype(to))))


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
    if mode != "constant":
        raise b.error(f"Pad mode {mode!r} is not supported yet (only 'constant')")
    return b.emit(ops.pad, [data], pads=tuple(pads), value=value)


# -- neural-network ops -----------------------------------------------------------------------------------------------
@converter()
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
        y = b.emit(ops.dense, [a2, np.asarray(B.T, order="C")])
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
def MaxPool(b, X, *, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape, pads=None, storage_order=0,
            strides=None):
    y = b.emit(ops.max_pool2d, [X], **_pool_attrs(b, X, kernel_shape, strides, pads, auto_pad, dilations, ceil_mode))
    return y, None  # the Indices output is not computed


@converter()
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
    return b.emit(ops.layer_norm, inputs, axis=ax, epsilon=epsilon), None, None  # Mean, InvStdDev not computed


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


def _reduce(op):
    def convert(b, data, axes, keepdims, noop_with_empty_axes):
        rank = b.type(data).rank
        if axes is None or len(axes) == 0:
            if noop_with_empty_axes:
                return data
            axes = range(rank)
        ax = tuple(sorted({_axis(b, int(a), rank) for a in axes}))
        return b.emit(op, [data], axes=ax, keepdims=bool(keepdims))

    return convert


_reduce_mean = _reduce(ops.reduce_mean)
_reduce_sum = _reduce(ops.reduce_sum)


@converter()
def ReduceMean_1(b, data, *, axes=None, keepdims=1):
    return _reduce_mean(b, data, axes, keepdims, 0)


@converter(since=18)
def ReduceMean(b, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _reduce_mean(b, data, None if axes is None else b.const(axes, "axes"), keepdims, noop_with_empty_axes)


@converter()
def ReduceSum_1(b, data, *, axes=None, keepdims=1):
    return _reduce_sum(b, data, axes, keepdims, 0)


@converter(since=13)
def ReduceSum(b, data, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _reduce_sum(b, data, None if axes is None else b.const(axes, "axes"), keepdims, noop_with_empty_axes)
