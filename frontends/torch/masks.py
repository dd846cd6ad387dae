"""Converters for ATen's scalar operands, comparisons, logic and masks: what nn.MultiheadAttention,
nn.TransformerEncoder and F.scaled_dot_product_attention decompose their masking into (eq, logical_not, any,
where, full_like, ...), with ATen's type promotion (`_promoted`). Registered in converters.CONVERTERS on import
(the importer imports this module)."""

from __future__ import annotations

import numpy as np
import torch

from tensorforge.compiler import ops

from .converters import CONVERTERS, _axis, _np_dtype, _promoted, _unary, aten, clamp, converter, full


def _compare(op, negate=False):
    def convert(b, self, other):
        y = b.emit(op, list(_promoted(b, self, other)))
        return b.emit(ops.logical_not, [y]) if negate else y

    return convert


for _name, (_op, _neg) in {"eq": (ops.equal, False), "ne": (ops.equal, True), "lt": (ops.less, False),
                           "le": (ops.less_equal, False), "gt": (ops.greater, False),
                           "ge": (ops.greater_equal, False)}.items():
    for _overload in ("Scalar", "Tensor"):
        CONVERTERS[getattr(getattr(aten, _name), _overload)] = _compare(_op, _neg)


def _as_bool(b, x):
    return x if b.type(x).dtype == "bool" else b.emit(ops.logical_not, [b.emit(ops.equal, [
        x, np.zeros((), b.type(x).dtype)])])


for _t, _op in {aten.logical_and.default: ops.logical_and, aten.logical_or.default: ops.logical_or,
                aten.logical_xor.default: ops.logical_xor}.items():
    CONVERTERS[_t] = (lambda op: lambda b, self, other: b.emit(op, [_as_bool(b, self), _as_bool(b, other)]))(_op)


@converter(aten.logical_not.default)
def logical_not(b, self):
    return b.emit(ops.logical_not, [_as_bool(b, self)])


@converter(aten.bitwise_not.default)
def bitwise_not(b, self):
    return b.emit(ops.logical_not if b.type(self).dtype == "bool" else ops.bitwise_not, [self])


@converter(aten.bitwise_and.Tensor, aten.bitwise_or.Tensor)
def bitwise_and_or(b, self, other):
    is_and = b.op_type.startswith("aten.bitwise_and")
    if b.type(self).dtype == "bool":
        return b.emit(ops.logical_and if is_and else ops.logical_or, [self, _as_bool(b, other)])
    return b.emit(ops.bitwise_and if is_and else ops.bitwise_or, list(_promoted(b, self, other)))


def _any(b, self, dims, keepdim):
    """any over `dims` (None: all): the largest of the inputs as 0/1."""
    rank = b.type(self).rank
    axes = tuple(range(rank)) if dims is None else tuple(sorted(_axis(b, d, rank) for d in dims))
    flags = b.emit(ops.cast, [_as_bool(b, self)], to="int32")
    if not axes:
        return _as_bool(b, flags)
    return _as_bool(b, b.emit(ops.reduce_max, [flags], axes=axes, keepdims=keepdim))


@converter(aten.any.dim, aten.any.dims, aten.any.default)
def any_(b, self, dim=None, keepdim=False):
    return _any(b, self, None if dim is None else ([dim] if isinstance(dim, int) else dim), keepdim)


@converter(aten.all.dim, aten.all.dims, aten.all.default)
def all_(b, self, dim=None, keepdim=False):
    none_false = _any(b, b.emit(ops.logical_not, [_as_bool(b, self)]),
                      None if dim is None else ([dim] if isinstance(dim, int) else dim), keepdim)
    return b.emit(ops.logical_not, [none_false])


@converter(aten.where.self)
def where(b, condition, self, other):
    x, y = _promoted(b, self, other)
    return b.emit(ops.where, [_as_bool(b, condition), x, y])


@converter(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(b, self, mask, value):
    return b.emit(ops.where, [_as_bool(b, mask), np.asarray(value, b.type(self).dtype), self])


@converter(aten.scalar_tensor.default)
def scalar_tensor(b, s, dtype=None, layout=None, device=None, pin_memory=None):
    return np.asarray(s, np.float32 if dtype is None else _np_dtype(dtype))


def _like(b, self, fill, dtype):
    return np.full(b.type(self).shape, fill, dtype=b.type(self).dtype if dtype is None else _np_dtype(dtype))


@converter(aten.full_like.default)
def full_like(b, self, fill_value, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _like(b, self, fill_value, dtype)


@converter(aten.zeros_like.default, aten.ones_like.default)
def zeros_ones_like(b, self, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _like(b, self, 1 if b.op_type.startswith("aten.ones_like") else 0, dtype)


@converter(aten.ones.default)
def ones(b, size, dtype=None, layout=None, device=None, pin_memory=None):
    return full(b, size, 1, dtype)


@converter(aten.clamp_min.default, aten.clamp_max.default)
def clamp_min_max(b, self, bound):
    if b.op_type.startswith("aten.clamp_min"):
        return clamp(b, self, min=bound)
    return clamp(b, self, max=bound)


@converter(aten.hardsigmoid.default)
def hardsigmoid(b, self):
    dt = b.type(self).dtype
    return b.emit(ops.clip, [b.emit(ops.add, [b.emit(ops.mul, [self, np.asarray(1 / 6, dt)]),
                                                 np.asarray(0.5, dt)])], min=0.0, max=1.0)


@converter(aten.hardswish.default)
def hardswish(b, self):
    return b.emit(ops.mul, [self, hardsigmoid(b, self)])


for _t, _op in {aten.floor.default: ops.floor, aten.ceil.default: ops.ceil, aten.sign.default: ops.sign,
                aten.round.default: ops.round, aten.isnan.default: ops.isnan}.items():
    CONVERTERS[_t] = _unary(_op)


@converter(aten._log_softmax.default)
def _log_softmax(b, self, dim, half_to_float=False):
    return b.emit(ops.log_softmax, [self], axis=_axis(b, dim, b.type(self).rank))


@converter(aten.amax.default, aten.amin.default)
def amax(b, self, dim=(), keepdim=False):
    rank = b.type(self).rank
    axes = tuple(sorted(_axis(b, d, rank) for d in (dim or range(rank))))
    op = ops.reduce_max if b.op_type.startswith("aten.amax") else ops.reduce_min
    return b.emit(op, [self], axes=axes, keepdims=keepdim)


@converter(aten.constant_pad_nd.default)
def constant_pad_nd(b, self, pad, value=0):
    rank = b.type(self).rank
    before, after = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # pairs from the last axis backwards
        before[rank - 1 - i], after[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    if min(before + after) < 0:
        raise b.error(f"negative padding {list(pad)} is not supported")
    return b.emit(ops.pad, [self], pads=tuple(before + after), value=float(value))
