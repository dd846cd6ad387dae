"""Elementwise and broadcasting ops, declared from two tables: one line per op.

The type rules are written once per class (lesson 3): unary ops keep their input type, binary ops broadcast as
numpy does and require equal dtypes.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, topi

from compiler.ir.types import TensorType

from .registry import Attr, FusionKind, defop, fail


def same_type(types, **_attrs):
    return types[0]


def broadcast_types(types):
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        fail(f"operands have different dtypes {', '.join(str(t) for t in types)}")
    try:
        shape = np.broadcast_shapes(*(t.shape for t in types))
    except ValueError:
        fail(f"shapes {', '.join(str(t.shape) for t in types)} do not broadcast")
    return TensorType(shape, types[0].dtype)


def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()


def _keep(fn):
    """Wrap a numpy function so that the result keeps the input dtype (numpy promotes some to float64)."""
    return lambda x: np.asarray(fn(x)).astype(x.dtype, copy=False)


# name: (numpy reference, TE lowering)
UNARY = {
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), topi.nn.relu),
    "sigmoid": (_keep(lambda x: 1.0 / (1.0 + np.exp(-x))), topi.sigmoid),
    "tanh": (np.tanh, topi.tanh),
    "exp": (np.exp, topi.exp),
    "log": (np.log, topi.log),
    "sqrt": (np.sqrt, topi.sqrt),
    "abs": (np.abs, topi.abs),
    "neg": (np.negative, topi.negative),
    "erf": (_erf, topi.erf),
    "floor": (np.floor, topi.floor),
    "ceil": (np.ceil, topi.ceil),
    "sin": (np.sin, topi.sin),
    "cos": (np.cos, topi.cos),
    "reciprocal": (_keep(lambda x: 1.0 / x), lambda x: topi.divide(te.const(1, x.dtype), x)),
}

# name: (numpy reference, TE lowering)
BINARY = {
    "add": (np.add, topi.add),
    "sub": (np.subtract, topi.subtract),
    "mul": (np.multiply, topi.multiply),
    "div": (lambda a, b: (a / b).astype(a.dtype) if a.dtype.kind == "f" else np.floor_divide(a, b), topi.divide),
    "maximum": (np.maximum, topi.maximum),
    "minimum": (np.minimum, topi.minimum),
    "pow": (lambda a, b: np.power(a, b).astype(a.dtype), topi.power),
}

for _name, (_ref, _te) in UNARY.items():
    globals()[_name] = defop(_name, FusionKind.ELEMWISE, infer=same_type,
                             reference=lambda x, _f=_ref: np.asarray(_f(x)).astype(x.dtype, copy=False),
                             lower=lambda x, _f=_te: _f(x))

for _name, (_ref, _te) in BINARY.items():
    globals()[_name] = defop(_name, FusionKind.BROADCAST, infer=broadcast_types, arity=(2, 2),
                             reference=lambda a, b, _f=_ref: np.asarray(_f(a, b)).astype(a.dtype, copy=False),
                             lower=lambda a, b, _f=_te: _f(a, b))


def _clip_lower(x, *, min, max):
    lo = te.const(min, x.dtype)
    hi = te.const(max, x.dtype)
    return te.compute(x.shape, lambda *i: te.max(te.min(x(*i), hi), lo), name="clip")


clip = defop("clip", FusionKind.ELEMWISE, infer=same_type,
             attrs={"min": Attr("float", -math.inf), "max": Attr("float", math.inf)},
             reference=lambda x, *, min, max: np.clip(x, min, max).astype(x.dtype),
             lower=_clip_lower)

leaky_relu = defop("leaky_relu", FusionKind.ELEMWISE, infer=same_type, attrs={"alpha": Attr("float", 0.01)},
                   reference=lambda x, *, alpha: np.where(x >= 0, x, x * x.dtype.type(alpha)),
                   lower=lambda x, *, alpha: topi.nn.leaky_relu(x, alpha))


def _cast_infer(types, *, to):
    return TensorType(types[0].shape, to)


cast = defop("cast", FusionKind.ELEMWISE, infer=_cast_infer, attrs={"to": Attr("str")},
             reference=lambda x, *, to: x.astype(to), lower=lambda x, *, to: topi.cast(x, to))


def _compare_infer(types):
    return TensorType(broadcast_types(types).shape, "bool")


equal = defop("equal", FusionKind.BROADCAST, infer=_compare_infer, arity=(2, 2),
              reference=lambda a, b: np.asarray(np.equal(a, b)), lower=lambda a, b: topi.equal(a, b))


def _where_infer(types):
    cond, a, b = types
    if cond.dtype != "bool":
        fail(f"the condition must be bool, got {cond}")
    out = broadcast_types([a, b])
    try:
        shape = np.broadcast_shapes(cond.shape, out.shape)
    except ValueError:
        fail(f"condition {cond} does not broadcast with {out}")
    return TensorType(shape, out.dtype)


where = defop("where", FusionKind.BROADCAST, infer=_where_infer, arity=(3, 3),
              reference=lambda c, a, b: np.asarray(np.where(c, a, b)).astype(a.dtype, copy=False),
              lower=lambda c, a, b: topi.where(c, a, b))
