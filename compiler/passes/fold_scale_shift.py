"""fold_scale_shift: fold inference batch norm, and per-channel scales and shifts, into conv2d / dense weights.

    batch_norm(x, s, b, m, v)           -> x * k + (b - m * k),  k = s / sqrt(v + eps)   (when s, b, m, v are params)
    conv2d(x, W, c) * k[channel]        -> conv2d(x, W * k, c * k)
    conv2d(x, W, c) + d[channel]        -> conv2d(x, W, c + d)
    dense(x, W, c) * k[column], + d[column]  likewise
Only where the conv/dense output has no other reader, and the scale/shift broadcasts along the channel axis alone.
"""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph

from .rewrite import Rewrite, apply_rules


def _bn_to_scale_shift(r: Rewrite, n):
    x, s, b, m, v = n.inputs
    if not all(p.is_param for p in (s, b, m, v)):
        return None
    k = s.data.astype(np.float64) / np.sqrt(v.data.astype(np.float64) + n.attrs["epsilon"])
    shift = b.data.astype(np.float64) - m.data.astype(np.float64) * k
    shape = (-1,) + (1,) * (x.type.rank - 2)
    dtype = x.type.dtype
    y = r.emit(ops.mul, [x, r.param(k.astype(dtype).reshape(shape), "bn_scale")])
    return r.emit(ops.add, [y, r.param(shift.astype(dtype).reshape(shape), "bn_shift")])


def _per_channel(data: np.ndarray, out_shape: tuple, axis: int) -> np.ndarray | None:
    """`data` as a vector over `axis` of a tensor shaped `out_shape`, if it broadcasts along that axis only."""
    if data.ndim > len(out_shape):
        return None
    full = (1,) * (len(out_shape) - data.ndim) + data.shape
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, out_shape[axis]):
        return None
    return np.broadcast_to(data.reshape(-1), (out_shape[axis],)).astype(np.float64)


def _fold(r: Rewrite, n, scale: bool):
    for side in (0, 1):
        y, c = n.inputs[side], n.inputs[1 - side]
        anchor = r.producer(y, ops.conv2d) or r.producer(y, ops.dense)
        if anchor is None or not c.is_param or not anchor.inputs[1].is_param or y.type != n.outputs[0].type:
            continue
        if len(r.g.users().get(y, ())) != 1 or y in r.g.outputs:
            continue
        vec = _per_channel(c.data, y.type.shape, 1)
        if vec is None:
            continue
        w_param = anchor.inputs[1]
        b_name = anchor.inputs[2].name if len(anchor.inputs) == 3 else w_param.name + ".bias"
        bias = anchor.inputs[2].data.astype(np.float64) if len(anchor.inputs) == 3 else np.zeros(w_param.type.shape[0])
        dtype = y.type.dtype
        if scale:
            w = w_param.data * vec.reshape((-1,) + (1,) * (w_param.type.rank - 1))
            w_param = r.g.add_param(w_param.name + ".scaled", w.astype(dtype))
            bias = bias * vec
        else:
            bias = bias + vec
        inputs = [anchor.inputs[0], w_param, r.g.add_param(b_name + (".scaled" if scale else ".shifted"),
                                                           bias.astype(dtype))]
        return r.emit(anchor.op, inputs, **anchor.attrs)
    return None


def fold_scale_shift(g: Graph) -> Graph:
    rules = [
        (ops.batch_norm, _bn_to_scale_shift),
        (ops.mul, lambda r, n: _fold(r, n, scale=True)),
        (ops.add, lambda r, n: _fold(r, n, scale=False)),
    ]
    return apply_rules(g, rules)
