"""Lp norms: along an axis (LpNormalization) and over pooling windows (LpPool)."""

from __future__ import annotations

from math import prod

from tensorforge.compiler import ops

from .base import _as_2d, _axis, _c, converter
from .nn import POOL_OPS, _pool_attrs


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
