"""Cast and CastLike, including ONNX's storage-only element types (float8, float4, 4- and 2-bit integers).

Kernels compute in the usual types; a float8/float4/int4/int2 tensor is carried as its bytes (one element per byte,
as ml_dtypes holds it: `compiler/ir/types.py` STORAGE_DTYPES) and converted by ordinary element-wise ops, built
from tables that ml_dtypes' own conversions fill at compile time (so the two cannot disagree):

  decode  bytes -> values: a gather from the 256-entry table of what each byte means, exact by construction.
  encode  float -> a float format: |x| is compared with the thresholds at which the rounded result moves to the
          next magnitude, found once per format by bisecting ml_dtypes' conversion over the float32 (float64) bit
          patterns: round-to-nearest-even, subnormals and overflow all come out of that. The number of thresholds
          passed indexes the codes of +|x| and -|x| (the sign read from the sign bit, so that -0.0 keeps it); NaN
          gets the format's NaN. saturate=1 (ONNX's default, float8 only) leaves out the overflow threshold, so values out
          of range and infinities become +-max; saturate=0 keeps ml_dtypes' overflow (inf for e5m2, else NaN).
          float8e8m0 (a power-of-two scale) follows onnx's own reference instead, with its round_mode.
  encode  -> an integer format: truncate toward zero and keep the low 4 (2) bits, i.e. wrap, as ml_dtypes does
          and onnx's expected outputs follow (floats beyond int64 or NaN have no defined result).

A float8 value is then only moved (reshape, transpose, slice) until another Cast: an op that would compute on one
is refused by `Builder.emit`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir.types import STORAGE_DTYPES, numpy_dtype
from tensorforge.frontends.onnx.dtypes import onnx_dtype

from .base import converter

INT_BITS = {"int4": 4, "uint4": 4, "int2": 2, "uint2": 2}
FLOAT8 = ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz")  # saturate clips these to +-max


@converter()
def Cast(b, input, *, to, saturate=1, round_mode="up"):
    return convert(b, input, onnx_dtype(to, f"ONNX node {b.node_name!r} (Cast): to"), bool(saturate), round_mode)


@converter()
def CastLike(b, input, target_type, *, saturate=1, round_mode="up"):
    return convert(b, input, b.type(target_type).dtype, bool(saturate), round_mode)


def convert(b, x, to: str, saturate: bool = True, round_mode: str = "up"):
    """x as dtype `to` (ONNX Cast semantics), through the storage-type tables where either side is one.
    `round_mode` ("up", "down", "nearest") applies to float8e8m0 only, as in onnx."""
    if round_mode not in ("up", "down", "nearest"):
        raise b.error(f"unknown round_mode {round_mode!r}")
    src = b.type(x).dtype
    if src == to:
        return x
    if src in STORAGE_DTYPES:
        via = "float32" if to in STORAGE_DTYPES else to  # every storage type's values are exact in float32
        x = b.emit(ops.take, [_decode_table(src, via), _byte_index(b, x)], axis=0)
        if via == to:
            return x
    if to in INT_BITS:
        return _encode_int(b, x, to)
    if to in STORAGE_DTYPES:
        return _encode_float(b, x, to, saturate, round_mode)
    return b.emit(ops.cast, [x], to=to)


def _byte_index(b, x):
    return b.emit(ops.cast, [b.emit(ops.bitcast, [x], to="uint8")], to="int32")


@lru_cache(maxsize=None)
def _decode_table(fmt: str, to: str) -> np.ndarray:
    """What each of the 256 bytes means as `fmt`, converted to `to` by ml_dtypes."""
    with np.errstate(all="ignore"):
        return np.arange(256, dtype=np.uint8).view(numpy_dtype(fmt)).astype(numpy_dtype(to))


def _encode_int(b, x, fmt):
    dt = b.type(x).dtype
    if dt not in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        x = b.emit(ops.cast, [x], to="int64")  # floats truncate toward zero; bool is 0/1
        dt = "int64"
    low = b.emit(ops.bitwise_and, [x, np.asarray((1 << INT_BITS[fmt]) - 1, dt)])
    return b.emit(ops.bitcast, [b.emit(ops.cast, [low], to="uint8")], to=fmt)


def _encode_float(b, x, fmt, saturate, round_mode):
    dt = b.type(x).dtype
    # the compare runs in a type that holds x exactly: float32 for the narrow types, float64 for the wide ones
    # (float8e8m0's reference, onnx's to_float8e8m0, reads float32)
    work = "float64" if dt in ("float64", "int32", "uint32", "int64", "uint64") and fmt != "float8_e8m0fnu" \
        else "float32"
    if dt != work:
        x = b.emit(ops.cast, [x], to=work)
    thresholds, pos_codes, neg_codes, nan_codes = _float_tables(fmt, work, saturate, round_mode)
    shape = b.type(x).shape
    passed = b.emit(ops.greater_equal, [b.emit(ops.reshape, [b.emit(ops.abs, [x])], shape=shape + (1,)),
                                        thresholds])
    index = b.emit(ops.reduce_sum, [b.emit(ops.cast, [passed], to="int32")], axes=(len(shape),), keepdims=False)
    signed = "int32" if work == "float32" else "int64"  # the sign bit, also of -0.0 and of NaN
    negative = b.emit(ops.less, [b.emit(ops.bitcast, [x], to=signed), np.asarray(0, signed)])
    code = b.emit(ops.where, [negative, b.emit(ops.take, [neg_codes, index], axis=0),
                              b.emit(ops.take, [pos_codes, index], axis=0)])
    nan = b.emit(ops.where, [negative, nan_codes[1], nan_codes[0]])
    code = b.emit(ops.where, [b.emit(ops.isnan, [x]), nan, code])
    return b.emit(ops.bitcast, [code], to=fmt)


def _converter(fmt: str, saturate: bool, round_mode: str):
    """The reference conversion of float arrays to `fmt`'s bytes: ml_dtypes' (onnx's, for float8e8m0), after
    clipping to +-max where a float8 saturates (onnx's saturate_cast)."""
    T = numpy_dtype(fmt)
    if fmt == "float8_e8m0fnu":
        from onnx.numpy_helper import to_float8e8m0

        return lambda v: to_float8e8m0(v, saturate, round_mode).view(np.uint8)
    import ml_dtypes

    top = float(ml_dtypes.finfo(T).max)

    def convert(v):
        with np.errstate(all="ignore"):
            return (np.clip(v, -top, top) if saturate and fmt in FLOAT8 else v).astype(T).view(np.uint8)

    return convert


@lru_cache(maxsize=None)
def _float_tables(fmt: str, work: str, saturate: bool, round_mode: str):
    """(thresholds, codes of +|x|, codes of -|x|, codes of +-NaN) for converting `work` floats to `fmt`. The
    conversion is a step function of |x| >= 0: starting at +0, each threshold is the smallest `work` value whose
    code differs from the previous step's, found by a 256-ary search over the bit patterns (ordered like the
    values for x >= 0), so that the number of thresholds passed indexes the codes."""
    ft = np.dtype(work)
    bits_t = np.uint32 if ft.itemsize == 4 else np.uint64
    conv = _converter(fmt, saturate, round_mode)
    top = np.asarray(np.inf, ft).view(bits_t)
    start, code = bits_t(0), conv(np.zeros(1, ft))[0]
    thresholds, pos, neg = [], [code], [conv(np.asarray([-0.0], ft))[0]]
    while conv(top.reshape(1).view(ft))[0] != code:
        lo, hi = int(start), int(top)  # conv(lo) == code != conv(hi): narrow to the first bit pattern that moves
        while hi - lo > 1:
            grid = np.unique(np.asarray([lo + (hi - lo) * k // 256 for k in range(257)], bits_t))
            moved = conv(grid.view(ft)) != code
            first = int(np.argmax(moved))
            lo, hi = int(grid[first - 1]), int(grid[first])
        start = bits_t(hi)
        value = np.asarray([start], bits_t).view(ft)
        code = conv(value)[0]
        thresholds.append(value[0])
        pos.append(code)
        neg.append(conv(-value)[0])
    nan = conv(np.asarray([np.nan, -np.nan], ft))
    return np.asarray(thresholds, ft), np.asarray(pos, np.uint8), np.asarray(neg, np.uint8), (nan[:1].reshape(()),
                                                                                             nan[1:].reshape(()))
