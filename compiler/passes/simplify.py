"""simplify: algebraic simplification as a table of short rewrite rules (see rewrite.py for the engine).

Dropout and Identity need no rule: the ONNX frontend maps them to their input for inference.
"""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ops import OPS, FusionKind
from tensorforge.compiler.ir import Graph

from .rewrite import Rewrite, apply_rules


def _is_splat(data, value) -> bool:
    return data is not None and data.size > 0 and bool(np.all(data == value))


def _neutral(r: Rewrite, n, value, side):
    """For a binary op: the other operand, if operand `side` is a splat of `value` that changes no shape/dtype."""
    x, c = (n.inputs[1 - side], n.inputs[side])
    if _is_splat(r.const(c), value) and x.type == n.outputs[0].type:
        return x
    return None


def _merge_reshapes(r, n):
    inner = r.producer(n.inputs[0], ops.reshape)
    return r.emit(ops.reshape, [inner.inputs[0]], shape=n.attrs["shape"]) if inner else None


def _merge_transposes(r, n):
    inner = r.producer(n.inputs[0], ops.transpose)
    if not inner:
        return None
    perm = tuple(inner.attrs["perm"][p] for p in n.attrs["perm"])
    return r.emit(ops.transpose, [inner.inputs[0]], perm=perm)


def _cast_round_trip(r, n):
    inner = r.producer(n.inputs[0], ops.cast)
    if not inner:
        return None
    x = inner.inputs[0]
    mid, out = np.dtype(inner.attrs["to"]), np.dtype(n.attrs["to"])
    if out == x.type.dtype and np.can_cast(x.type.dtype, mid, "safe"):
        return x  # widening then narrowing back is exact
    return None


def _fed_by_anchor(v, depth: int = 8) -> bool:
    """Is v computed by a conv/dense (an anchor), or by elementwise ops after one?"""
    p = v.producer
    if p is None or depth == 0:
        return False
    if p.op.kind == FusionKind.OUT_ELEMWISE_FUSABLE:
        return True
    return p.op.kind <= FusionKind.BROADCAST and any(_fed_by_anchor(i, depth - 1) for i in p.inputs)


def _sink_reshape(r: Rewrite, n):
    """op(reshape(y), c) -> reshape(op(y, c')) for elementwise/broadcast ops, when y comes from a conv/dense/
    elementwise op: the reshape moves out of the way so the op can fuse into y's kernel. Each other operand c must
    be of the reshape's output shape (it gets a free reshape back) or broadcast over trailing dims the reshape keeps.
    """
    for side, v in enumerate(n.inputs):
        inner = r.producer(v, ops.reshape)
        if inner is None:
            continue
        y = inner.inputs[0]
        if y.producer is None or y.producer.op.kind not in (FusionKind.OUT_ELEMWISE_FUSABLE, FusionKind.ELEMWISE,
                                                               FusionKind.BROADCAST):
            continue
        s_in, s_out = y.type.shape, v.type.shape
        if any(i != side and o.type.shape == s_out and _fed_by_anchor(o) for i, o in enumerate(n.inputs)):
            continue  # that operand would take the reshape instead, out of its own anchor's kernel (and the next
            # round would move it back: the residual adds of a pre-norm transformer flipped between 2-D and 3-D)
        operands = []
        for i, o in enumerate(n.inputs):
            if i == side:
                operands.append(y)
            elif o.type.shape == s_out:
                operands.append(r.emit(ops.reshape, [o], shape=s_in))
            else:
                t = len(o.type.shape)
                while t and o.type.shape[len(o.type.shape) - t] == 1:
                    t -= 1  # leading ones broadcast anyway
                if t > min(len(s_in), len(s_out)) or s_in[len(s_in) - t:] != s_out[len(s_out) - t:]:
                    break
                operands.append(o if t == len(o.type.shape) else
                                r.emit(ops.reshape, [o], shape=o.type.shape[len(o.type.shape) - t:]))
        else:
            out = r.emit(n.op, operands, **n.attrs)
            if out.type.shape != s_in:
                return None
            return r.emit(ops.reshape, [out], shape=s_out)
    return None


def _empty(r: Rewrite, n):
    """A result with no elements is a constant: no kernel ever runs on zero-size tensors."""
    out = n.outputs[0]
    return r.param(np.zeros(out.type.shape, out.type.dtype), "empty") if out.type.numel == 0 else None


def _drop_empty_concat_inputs(r: Rewrite, n):
    keep = [v for v in n.inputs if v.type.numel > 0]
    if len(keep) == len(n.inputs) or not keep:
        return None
    return keep[0] if len(keep) == 1 else r.emit(ops.concat, keep, **n.attrs)


RULES = [
    (ops.reshape, lambda r, n: n.inputs[0] if n.inputs[0].type == n.outputs[0].type else None),  # reshape(x, shape(x)) -> x
    (ops.reshape, _merge_reshapes),  # reshape(reshape(x)) -> reshape(x)
    (ops.transpose, lambda r, n: n.inputs[0] if n.attrs["perm"] == tuple(range(len(n.attrs["perm"]))) else None),
    (ops.transpose, _merge_transposes),  # transpose(transpose(x, p), q) -> transpose(x, p[q])
    (ops.mul, lambda r, n: _neutral(r, n, 1, 1) or _neutral(r, n, 1, 0)),  # x * 1 -> x, 1 * x -> x
    (ops.add, lambda r, n: _neutral(r, n, 0, 1) or _neutral(r, n, 0, 0)),  # x + 0 -> x, 0 + x -> x
    (ops.sub, lambda r, n: _neutral(r, n, 0, 1)),  # x - 0 -> x
    (ops.div, lambda r, n: _neutral(r, n, 1, 1)),  # x / 1 -> x
    (ops.pow, lambda r, n: _neutral(r, n, 1, 1)),  # x ** 1 -> x
    (ops.neg, lambda r, n: (p := r.producer(n.inputs[0], ops.neg)) and p.inputs[0]),  # -(-x) -> x
    (ops.relu, lambda r, n: r.producer(n.inputs[0], ops.relu) and n.inputs[0]),  # relu(relu(x)) -> relu(x)
    (ops.cast, lambda r, n: n.inputs[0] if n.inputs[0].type.dtype == n.attrs["to"] else None),  # cast(x, dtype(x)) -> x
    (ops.cast, _cast_round_trip),  # cast(cast(x, wider), dtype(x)) -> x
    (ops.concat, lambda r, n: n.inputs[0] if len(n.inputs) == 1 else None),  # concat(x) -> x
    (ops.pad, lambda r, n: n.inputs[0] if not any(n.attrs["pads"]) else None),  # pad(x, 0) -> x
    (ops.clip, lambda r, n: n.inputs[0] if n.attrs["min"] == -np.inf and n.attrs["max"] == np.inf else None),
    (ops.concat, _drop_empty_concat_inputs),  # concat(x, empty) -> x
] + [(op, _sink_reshape) for op in OPS.values() if op.kind <= FusionKind.BROADCAST and len(op.attrs) == 0
     or op in (ops.clip, ops.leaky_relu)] + [(op, _empty) for op in OPS.values()]


def simplify(g: Graph) -> Graph:
    return apply_rules(g, RULES)
