"""recognize: rewrite decomposed activations, as exporters spell them, into single ops.

    0.5 * x * (1 + erf(x / sqrt(2)))                          -> gelu(x)                  (any order of the products)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   -> gelu(x, approximate="tanh")
A product is read as a bag of factors (through nested muls and divisions by constants), so every association
and operand order an exporter picks matches the same rule.
"""

from __future__ import annotations

import math

import numpy as np

from compiler import ops
from compiler.ir import Graph, Value

from .rewrite import Rewrite, apply_rules


def _splat(v: Value) -> float | None:
    if v.is_param and v.data.size and np.all(v.data == v.data.reshape(-1)[0]):
        return float(v.data.reshape(-1)[0])
    return None


def _factors(v: Value, depth: int = 6) -> tuple[list[Value], float]:
    """v as (non-constant factors, constant coefficient), looking through mul and division by constants."""
    p = v.producer
    if depth and p is not None and p.op is ops.mul:
        fa, ca = _factors(p.inputs[0], depth - 1)
        fb, cb = _factors(p.inputs[1], depth - 1)
        return fa + fb, ca * cb
    if depth and p is not None and p.op is ops.div and _splat(p.inputs[1]) not in (None, 0.0):
        f, c = _factors(p.inputs[0], depth - 1)
        return f, c / _splat(p.inputs[1])
    c = _splat(v)
    return ([], c) if c is not None else ([v], 1.0)


def _terms(v: Value) -> tuple[list[Value], float]:
    """v as (non-constant terms, constant offset) through add."""
    p = v.producer
    if p is not None and p.op is ops.add:
        ta, ca = _terms(p.inputs[0])
        tb, cb = _terms(p.inputs[1])
        return ta + tb, ca + cb
    c = _splat(v)
    return ([], c) if c is not None else ([v], 0.0)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(abs(b), 1e-12)


def _is_cube_of(v: Value, x: Value) -> bool:
    p = v.producer
    if p is not None and p.op is ops.pow and p.inputs[0] is x and _splat(p.inputs[1]) == 3.0:
        return True
    f, c = _factors(v)
    return c == 1.0 and len(f) == 3 and all(t is x for t in f)


def _gelu(r: Rewrite, n):
    out = n.outputs[0]
    factors, coef = _factors(out)
    if len(factors) != 2 or not _close(coef, 0.5):
        return None
    for x, other in (factors, factors[::-1]):
        if x.type != out.type:
            continue
        terms, offset = _terms(other)
        if len(terms) != 1 or not _close(offset, 1.0) or terms[0].producer is None:
            continue
        act = terms[0].producer
        arg_f, arg_c = _factors(act.inputs[0])
        if act.op is ops.erf and arg_f == [x] and _close(arg_c, 1 / math.sqrt(2)):
            return r.emit(ops.gelu, [x], approximate="none")
        inner = arg_f[0].producer if len(arg_f) == 1 else None
        if act.op is ops.tanh and inner is not None and inner.op is ops.add and _close(arg_c, math.sqrt(2 / math.pi)):
            a, b = inner.inputs  # x + 0.044715 * x^3, either order (x itself may be a sum: look one level only)
            if x in (a, b):
                cube_f, cube_c = _factors(b if a is x else a)
                if _close(cube_c, 0.044715) and ((len(cube_f) == 1 and _is_cube_of(cube_f[0], x)) or
                                                 (len(cube_f) == 3 and all(t is x for t in cube_f))):
                    return r.emit(ops.gelu, [x], approximate="tanh")
    return None


def recognize(g: Graph) -> Graph:
    return apply_rules(g, [(ops.mul, _gelu), (ops.div, _gelu)])
