"""The converter table and the helpers every family module uses.

One converter per ONNX op, named like the op, its attributes keyword arguments with the spec's defaults.

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

from tensorforge.compiler import ops
from tensorforge.frontends.builder import MAX_CONSTANT_ELEMENTS

# op type -> {since opset: converter}
CONVERTERS: dict[str, dict[int, Callable]] = {}


def converter(since: int = 1, sequences: bool = False):
    """`sequences`: the converter accepts sequences of tensors (`frontends.builder.TensorSequence`) among its inputs."""

    def register(fn):
        name = fn.__name__.split("_")[0]
        CONVERTERS.setdefault(name, {})[since] = fn
        fn.takes_sequences = sequences
        return fn

    return register


def lookup_converter(op_type: str, opset: int) -> Callable | None:
    versions = CONVERTERS.get(op_type, {})
    usable = [v for v in versions if v <= opset]
    return versions[max(usable)] if usable else None


# -- helpers ----------------------------------------------------------------------------------------------------------
def _check_constant_size(b, shape, what="the result"):
    """Refuse to build a compile-time constant of `shape` when it is negative or too large."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise b.error(f"{what} would have the negative shape {list(shape)}")
    if prod(shape) > MAX_CONSTANT_ELEMENTS:
        raise b.error(f"{what} would be a compile-time constant of {prod(shape)} elements (shape {list(shape)}), "
                      f"more than the limit of {MAX_CONSTANT_ELEMENTS}; is the shape computed right?")
    return shape


def _check_indices(b, indices, size: int, what: str = "indices", axis: int | None = None):
    """Constant gather indices must lie in [-size, size - 1] (a kernel would wrap or read out of bounds)."""
    if not isinstance(indices, np.ndarray) or indices.size == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < -size or hi >= size:
        bad = lo if lo < -size else hi
        on = f" of axis {axis}" if axis is not None else ""
        raise b.error(f"input {what!r} holds the index {bad}, out of range [{-size}, {size - 1}] for the size "
                      f"{size}{on} of the data")


def _require_nonempty(b, x, what: str, index: int):
    """Zero-size operands are refused for the kernels that cannot take them (matmul, dense); `index`: the input's
    position in the node, to name its ONNX value too."""
    if 0 in b.type(x).shape:
        value = b.node.input[index] if b.node is not None and index < len(b.node.input) else "?"
        raise b.error(f"input {what!r} (value {value!r}) has the zero-size shape {list(b.type(x).shape)}; zero-size tensors are not "
                      f"supported by this op")


def _axis(b, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise b.error(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _reshape(b, x, shape):
    return b.emit(ops.reshape, [x], shape=tuple(int(d) for d in shape))


def _spatial_pads(b, x_shape, kernel, strides, dilations, pads, auto_pad, ceil=False):
    """ONNX pads (begins..., ends...) for windows of any rank, resolving auto_pad."""
    if auto_pad in ("NOTSET", ""):
        return tuple(pads) if pads else (0,) * (2 * len(kernel))
    if auto_pad == "VALID":
        return (0,) * (2 * len(kernel))
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


def _require_spatial(b, x, what="input"):
    """1-D inputs arrive here as 2-D (see `_as_2d`); 2-D and 3-D windows are computed."""
    if b.type(x).rank not in (4, 5):
        raise b.error(f"only 1-D, 2-D and 3-D (NCW, NCHW, NCDHW) {what} is supported, got {b.type(x)}")


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
        for i, y in enumerate(outs):  # every output (MaxPool's Indices too) drops the unit axis again
            if y is not None:
                ys = b.type(y).shape
                outs[i] = _reshape(b, y, ys[:2] + ys[3:])
        return tuple(outs) if isinstance(out, (list, tuple)) else outs[0]

    convert.__name__ = fn.__name__
    return convert


def _c(b, x, value):
    """A scalar constant of x's dtype."""
    return np.asarray(value, b.type(x).dtype)


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
