"""Constants, shapes, reshapes, slicing, gathers and other data movement."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from tensorforge.compiler import ops  # noqa: F401

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401
from .base import _require_spatial, _check_constant_size, _check_indices


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
    shape = _check_constant_size(b, b.const(input, "input").reshape(-1))
    fill = np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(shape, fill, dtype=np.asarray(fill).dtype)


@converter()
def Shape(b, data, *, start=0, end=None):
    shape = b.type(data).shape
    return np.array(shape[start:end], dtype=np.int64)


@converter()
def Gather(b, data, indices, *, axis=0):
    ax = _axis(b, axis, b.type(data).rank)
    _check_indices(b, indices, b.type(data).shape[ax], "indices", ax)
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
    rank = b.type(data).rank
    if len(pads) != 2 * rank:
        raise b.error(f"pads {list(pads)} must have 2*rank = {2 * rank} entries")
    for a, n in enumerate(b.type(data).shape):
        lo, hi = pads[a], pads[a + rank]
        if lo < 0 or hi < 0:
            raise b.error(f"negative pads are only supported in constant mode, got {list(pads)}")
        if mode == "reflect" and (lo >= n or hi >= n):  # as onnxruntime: one reflection at most
            raise b.error(f"reflect pads {lo}, {hi} must be smaller than the axis size {n}")
    # one op reading the input at a remapped index (compiler/ops/shape.py): chained pads fuse and stay small
    return b.emit(ops.pad, [data], pads=tuple(pads), value=0.0, mode=mode)


# -- gathers and data movement ----------------------------------------------------------------------------------------
@converter()
def GatherElements(b, data, indices, *, axis=0):
    ax = _axis(b, axis, b.type(data).rank)
    _check_indices(b, indices, b.type(data).shape[ax], "indices", ax)
    return b.emit(ops.gather_elements, [data, indices], axis=ax)


@converter()
def GatherND(b, data, indices, *, batch_dims=0):
    if isinstance(indices, np.ndarray) and indices.ndim and indices.shape[-1] <= b.type(data).rank - batch_dims:
        for j in range(indices.shape[-1]):
            _check_indices(b, indices[..., j], b.type(data).shape[batch_dims + j], "indices", batch_dims + j)
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
    dilation * (k - 1) - pad, with the weight's in/out channels swapped (per group) and its window flipped.
    2-D and 3-D (1-D arrives as 2-D)."""
    _require_spatial(b, X)
    n, c, *size = b.type(X).shape
    cin, cout_g, *kernel = b.type(W).shape
    nd = len(size)
    spatial = list(range(2, 2 + nd))
    strides = tuple(strides or (1,) * nd)
    dil = tuple(dilations or (1,) * nd)
    opad = list(output_padding or (0,) * nd)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    if output_shape is not None:  # total padding follows from the requested size
        total = [s * (i - 1) + op + sp - o for s, i, op, sp, o in zip(strides, size, opad, span, output_shape[-nd:])]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        p = small + big if auto_pad == "SAME_UPPER" else big + small
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max(0, s * (i - 1) + op + sp - i * s) for s, i, op, sp in zip(strides, size, opad, span)]
        small, big = [t // 2 for t in total], [t - t // 2 for t in total]
        p = small + big if auto_pad == "SAME_UPPER" else big + small
    else:
        p = list(pads or (0,) * (2 * nd))
    # dilate the input: (N, C, H, 1, W, 1) padded to (N, C, H, sh, W, sw), reshaped, the tail trimmed
    x = X
    if any(s != 1 for s in strides):
        x = _reshape(b, x, (n, c) + sum(((i, 1) for i in size), ()))
        x = b.emit(ops.pad, [x], pads=(0,) * (2 + 2 * nd) + (0, 0) + sum(((0, s - 1) for s in strides), ()),
                   value=0.0)
        x = _reshape(b, x, (n, c) + tuple(i * s for i, s in zip(size, strides)))
        x = _slice(b, x, [0] * nd, [(i - 1) * s + 1 for i, s in zip(size, strides)], spatial, None)
    before = [span[i] - 1 - p[i] for i in range(nd)]
    after = [span[i] - 1 - p[nd + i] + opad[i] for i in range(nd)]
    crop = [max(0, -v) for v in before + after]
    if any(crop):
        cur = b.type(x).shape[2:]
        x = _slice(b, x, crop[:nd], [cur[i] - crop[nd + i] for i in range(nd)], spatial, None)
    grow = [max(0, v) for v in before + after]
    if any(grow):
        x = b.emit(ops.pad, [x], pads=(0, 0, *grow[:nd], 0, 0, *grow[nd:]), value=0.0)
    # weight (Cin, Cout/g, *k) -> (Cout, Cin/g, *k), flipped
    g = group
    wt = _reshape(b, W, (g, cin // g, cout_g, *kernel))
    wt = b.emit(ops.transpose, [wt], perm=(0, 2, 1) + tuple(range(3, 3 + nd)))
    wt = _reshape(b, wt, (g * cout_g, cin // g, *kernel))
    wt = _slice(b, wt, [k - 1 for k in kernel], [-k - 1 for k in kernel], spatial, [-1] * nd)
    inputs = [x, wt] + ([B] if B is not None else [])
    return b.emit(ops.conv2d if nd == 2 else ops.conv3d, inputs, strides=(1,) * nd, pads=(0,) * (2 * nd),
                  dilations=dil, groups=g)
