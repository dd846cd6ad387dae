"""Scatters, and the other ops that index along one axis: CumProd (a scan), Hardmax (argmax as a one-hot)."""

from __future__ import annotations

from math import prod

import numpy as np

from tensorforge.compiler import ops

from .base import _axis, _reshape, converter


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
