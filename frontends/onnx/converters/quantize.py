"""Linear quantization: QuantizeLinear, DequantizeLinear (a scale and zero point per tensor, axis entry or block)."""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops
from tensorforge.frontends.onnx.dtypes import onnx_dtype

from .base import _axis, _reshape, _slice, converter


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
