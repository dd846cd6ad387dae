"""Scatters, cumulative products, Lp normalization and pooling, RMS normalization, quantization."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from compiler import ops  # noqa: F401
from frontends.onnx.dtypes import onnx_dtype

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401
from .nn import POOL_OPS, _pool_attrs  # noqa: F401


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
    s = b.emit(POOL_OPS["avg", len(attrs["kernel"])], [powered], count_include_pad=True, **attrs)
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
