"""Elementwise and broadcasting ops, declared from two tables: one line per op, and their gradient rules.

The type rules are written once per class (lesson 3): unary ops keep their input type, binary ops broadcast as
numpy does and require equal dtypes. So are the gradient rules: a unary rule gives its input's gradient, a binary
rule both operands' gradients before they are summed back to the operands' shapes (`e.sum_to`).

A gradient rule is `rule(e, node, dy) -> [gradient of each input or None]`: `e` is the `Emitter`
(compiler/autodiff/reverse.py) that adds backward nodes, `node` the forward node (its inputs and output are there
to reuse: sigmoid's backward reads y, not x), `dy` the gradient of its output.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx, topi

from tensorforge.compiler.ir.types import TensorType

from . import vecmath
from .registry import GRAD_MARKS, NOT_DIFFERENTIABLE, NO_RULE_YET, Attr, FusionKind, defop, fail, ops


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


def _sigmoid_lower(x):
    # float32: vecmath's sigmoid (within 2 ulp, vectorized); te.exp and topi.sigmoid compile to a scalar libm call
    # per element (3x slower on AVX-512), topi.fast_exp lost accuracy (the LSTM/GRU gates are mostly this)
    return vecmath.stage(vecmath.sigmoid, x, "sigmoid", topi.sigmoid)


def _tanh_lower(x):
    # float32: vecmath's tanh (within 1 ulp, vectorized); topi.fast_tanh was ~1e-7 *absolute*, thousands of ulp
    # near zero
    return vecmath.stage(vecmath.tanh, x, "tanh", topi.tanh)


def _vecmath_lower(fn, libm):
    """float32: `fn` from vecmath (vectorized, within 2 ulp); other dtypes and nested chains: `libm` (a scalar call
    per element, correctly rounded or nearly)."""
    return lambda x: vecmath.stage(fn, x, libm.__name__, libm)


def _x(n):
    return n.inputs[0]


def _y(n):
    return n.outputs[0]


def _piecewise_constant(e, n, dy):
    return None  # zero almost everywhere


# name: the gradient of the input (lesson 3: one line per op), written with the forward's own output where that is
# cheaper; or NOT_DIFFERENTIABLE / NO_RULE_YET. Every op of UNARY has an entry.
UNARY_GRADS = {
    "relu": lambda e, n, dy: e.op(ops.relu_grad, [_x(n), dy]),
    "sigmoid": lambda e, n, dy: e.mul(dy, e.mul(_y(n), e.op(ops.sub, [1.0, _y(n)]))),
    "tanh": lambda e, n, dy: e.mul(dy, e.op(ops.sub, [1.0, e.mul(_y(n), _y(n))])),
    "exp": lambda e, n, dy: e.mul(dy, _y(n)),
    "log": lambda e, n, dy: e.op(ops.div, [dy, _x(n)]),
    "sqrt": lambda e, n, dy: e.op(ops.div, [e.scale(dy, 0.5), _y(n)]),
    "abs": lambda e, n, dy: e.mul(dy, e.op(ops.sub, [e.op(ops.gt_mask, [_x(n), 0.0]),
                                                     e.op(ops.gt_mask, [e.const(0.0, _x(n).type.dtype), _x(n)])])),
    "neg": lambda e, n, dy: e.op(ops.neg, [dy]),
    "erf": lambda e, n, dy: e.mul(e.scale(dy, 2 / math.sqrt(math.pi)),
                                  e.op(ops.exp, [e.op(ops.neg, [e.mul(_x(n), _x(n))])])),
    "floor": _piecewise_constant,
    "ceil": _piecewise_constant,
    "sin": lambda e, n, dy: e.mul(dy, e.op(ops.cos, [_x(n)])),
    "cos": lambda e, n, dy: e.op(ops.neg, [e.mul(dy, e.op(ops.sin, [_x(n)]))]),
    "reciprocal": lambda e, n, dy: e.op(ops.neg, [e.mul(dy, e.mul(_y(n), _y(n)))]),
    "sign": _piecewise_constant,
    "round": _piecewise_constant,
    **dict.fromkeys(("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh"), NO_RULE_YET),
    "logical_not": NOT_DIFFERENTIABLE,
    "bitwise_not": NOT_DIFFERENTIABLE,
}


def _unary_rule(grad):
    """The rule of a one-input op from its table entry: the input's gradient as a list."""
    return grad if any(grad is m for m in GRAD_MARKS) else (lambda e, n, dy, _r=grad: [_r(e, n, dy)])


# name: (numpy reference, TE lowering)
UNARY = {
    "relu": (lambda x: np.maximum(x, np.zeros((), x.dtype)), lambda x: _relu_lower(x)),
    "sigmoid": (_keep(lambda x: 1.0 / (1.0 + np.exp(-x))), _sigmoid_lower),
    "tanh": (np.tanh, _tanh_lower),
    "exp": (np.exp, _vecmath_lower(vecmath.exp, topi.exp)),
    "log": (np.log, _vecmath_lower(vecmath.log, topi.log)),
    "sqrt": (np.sqrt, topi.sqrt),
    "abs": (np.abs, topi.abs),
    "neg": (np.negative, topi.negative),
    "erf": (_erf, _vecmath_lower(vecmath.erf, topi.erf)),
    "floor": (np.floor, topi.floor),
    "ceil": (np.ceil, topi.ceil),
    "sin": (np.sin, topi.sin),
    "cos": (np.cos, topi.cos),
    "reciprocal": (_keep(lambda x: 1.0 / x), lambda x: topi.divide(te.const(1, x.dtype), x)),
    "sign": (np.sign, topi.sign),
    "round": (np.round, lambda x: te.compute(x.shape, lambda *i: te.nearbyint(x(*i)), name="round")),  # half even
    "tan": (np.tan, topi.tan),
    "asin": (np.arcsin, topi.asin),
    "acos": (np.arccos, topi.acos),
    "atan": (np.arctan, topi.atan),
    "sinh": (np.sinh, lambda x: (topi.exp(x) - topi.exp(topi.negative(x))) * 0.5),  # no LLVM sinh/cosh intrinsic
    "cosh": (np.cosh, lambda x: (topi.exp(x) + topi.exp(topi.negative(x))) * 0.5),
    "asinh": (np.arcsinh, topi.asinh),
    "acosh": (np.arccosh, topi.acosh),
    "atanh": (np.arctanh, topi.atanh),
    "logical_not": (np.logical_not, topi.logical_not),
    "bitwise_not": (np.invert, topi.bitwise_not),
}

def _pow_lower(a, b):
    if str(a.dtype).startswith("float"):
        return topi.power(a, b)
    # integer powers: TVM's power is float-only; float64 is exact for the results that fit the integer type
    return topi.cast(topi.round(topi.power(topi.cast(a, "float64"), topi.cast(b, "float64"))), a.dtype)


def _broadcast_compute(a, b, fn, name):
    """out[i] = fn(a[i'], b[i'']) with numpy broadcasting, as one stage (shapes are static here)."""
    shape = [int(d) for d in np.broadcast_shapes(tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape))]

    def at(t, i):
        return t(*[i[len(i) - len(t.shape) + k] if int(t.shape[k]) != 1 else 0 for k in range(len(t.shape))])

    return te.compute(shape, lambda *i: fn(at(a, i), at(b, i)), name=name)


def _is_float(t) -> bool:
    return str(t.dtype).startswith(("float", "bfloat"))


def _relu_lower(x):
    # max(x, 0) that keeps NaN (np.maximum does; TVM's max drops it): one select, it vectorizes
    if not _is_float(x):
        return topi.nn.relu(x)
    zero = te.const(0, x.dtype)
    return te.compute(x.shape, lambda *i: tirx.Select(x(*i) < zero, zero, x(*i)), name="compute")


# (bits of the same width, magnitude mask, bits of +inf) per float type: NaN <=> (bits & mask) > inf
_NAN_BITS = {"float32": ("int32", 0x7FFFFFFF, 0x7F800000), "float64": ("int64", 0x7FFFFFFFFFFFFFFF,
             0x7FF0000000000000), "float16": ("int16", 0x7FFF, 0x7C00), "bfloat16": ("int16", 0x7FFF, 0x7F80)}


def nan_test(v, dtype: str | None = None):
    """v is NaN, tested on its bits. TVM 0.27's `tirx.isnan` gives wrong answers inside vectorized reductions (an
    argmax along a leading axis picked index 1 everywhere) and fails on bfloat16; integer bit tests vectorize and
    work for every float type. `x != x` is simplified to false by TVM."""
    if dtype is None:  # a TE value has .dtype; a call's result (tirx.exp(...)) only its type, .ty
        dtype = v.dtype if hasattr(v, "dtype") else v.ty
    if str(dtype) in ("float16", "bfloat16"):  # their 16-bit lanes do not vectorize beside 32-bit ones here
        return nan_test(v.astype("float32"), "float32")
    bits, mask, inf = _NAN_BITS[str(dtype)]
    return (tirx.reinterpret(bits, v) & tirx.const(mask, bits)) > tirx.const(inf, bits)


def _nan_max(x, y):
    """np.maximum: NaN if either is NaN (the first one if both), else the larger; TVM's max drops NaN."""
    return tirx.Select(tirx.Or(x > y, nan_test(x)), x, y)


def _nan_min(x, y):
    return tirx.Select(tirx.Or(x < y, nan_test(x)), x, y)


def _extreme_binary_lower(largest: bool):
    def lower(a, b):
        if not _is_float(a):
            return (topi.maximum if largest else topi.minimum)(a, b)
        return _broadcast_compute(a, b, _nan_max if largest else _nan_min, "T_maximum" if largest else "T_minimum")

    return lower


def _int_safe_divisor(y, dtype):
    """y, or 1 where dividing by y could trap: x86 idiv raises SIGFPE for y == 0 and for INT_MIN / -1, which
    kills the process. (Testing x == INT_MIN as well does not work: TVM's simplifier drops that test.)"""
    dtype = str(dtype)
    bad = y == te.const(0, dtype)
    if dtype.startswith("int"):
        bad = tirx.Or(bad, y == te.const(-1, dtype))
    return tirx.Select(bad, te.const(1, dtype), y)


def _wrapping_neg(x, dtype):
    """-x modulo 2**bits (INT_MIN stays INT_MIN, as numpy). Narrow types negate in int64 and truncate; int64
    negates directly, which LLVM wraps (pinned by tests/ops/test_defined_behaviour.py). Not as unsigned: TVM's
    simplifier folds 0u - u to 0."""
    dtype = str(dtype)
    if dtype != "int64":
        return (tirx.const(0, "int64") - x.astype("int64")).astype(dtype)
    return tirx.const(0, dtype) - x


def _div_lower(a, b):
    if _is_float(a):
        return topi.divide(a, b)  # IEEE: x/0 is +-inf, 0/0 nan
    dt = str(a.dtype)

    def f(x, y):  # truncated (C, ONNX, onnxruntime); x / 0 is 0 as numpy's integer division; x / -1 wraps
        q = tirx.truncdiv(x, _int_safe_divisor(y, dt))
        if dt.startswith("int"):
            q = tirx.Select(y == te.const(-1, dt), _wrapping_neg(x, dt), q)
        return tirx.Select(y == te.const(0, dt), te.const(0, dt), q)

    return _broadcast_compute(a, b, f, "T_divide")


def _div_ref(a, b):
    if a.dtype.kind == "f":
        return (a / b).astype(a.dtype)
    with np.errstate(all="ignore"):  # x // 0 is 0 and INT_MIN // -1 wraps, without a warning
        q = np.floor_divide(a, b)
        r = np.remainder(a, b)
    return q + ((r != 0) & ((a < 0) != (b < 0))).astype(q.dtype)  # floored -> truncated toward zero


# name: (da, db) before summing back to the operands' shapes; or NOT_DIFFERENTIABLE / NO_RULE_YET. Every op of
# BINARY has an entry.
BINARY_GRADS = {
    "add": lambda e, n, dy: (dy, dy),
    "sub": lambda e, n, dy: (dy, e.op(ops.neg, [dy])),
    "mul": lambda e, n, dy: (e.mul(dy, n.inputs[1]), e.mul(dy, n.inputs[0])),
    "div": lambda e, n, dy: (e.op(ops.div, [dy, n.inputs[1]]),
                             e.op(ops.neg, [e.op(ops.div, [e.mul(dy, _y(n)), n.inputs[1]])])),
    "maximum": lambda e, n, dy: _select_grad(e, dy, e.op(ops.ge_mask, n.inputs)),
    "minimum": lambda e, n, dy: _select_grad(e, dy, e.op(ops.ge_mask, n.inputs[::-1])),
    "pow": lambda e, n, dy: (
        e.mul(dy, e.mul(n.inputs[1], e.op(ops.pow, [n.inputs[0], e.op(ops.sub, [n.inputs[1], 1.0])]))),
        e.mul(dy, e.mul(e.op(ops.log, [n.inputs[0]]), _y(n)))),
    **dict.fromkeys(("logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor",
                     "left_shift", "right_shift"), NOT_DIFFERENTIABLE),
}


def _select_grad(e, dy, mask):
    """maximum/minimum: the gradient goes to the selected operand (the first one on ties)."""
    da = e.mul(dy, mask)
    return da, e.op(ops.sub, [dy, da])


def _binary_rule(grad):
    """The rule of a broadcasting two-input op from its table entry: both gradients summed back to the operands'
    shapes (once for the whole class, lesson 3)."""
    if any(grad is m for m in GRAD_MARKS):
        return grad
    return lambda e, n, dy, _r=grad: [e.sum_to(g, v.type.shape) for g, v in zip(_r(e, n, dy), n.inputs)]


# name: (numpy reference, TE lowering)
BINARY = {
    "add": (np.add, topi.add),
    "sub": (np.subtract, topi.subtract),
    "mul": (np.multiply, topi.multiply),
    "div": (_div_ref, _div_lower),
    "maximum": (np.maximum, _extreme_binary_lower(True)),
    "minimum": (np.minimum, _extreme_binary_lower(False)),
    "pow": (lambda a, b: np.power(a, b).astype(a.dtype), _pow_lower),
    "logical_and": (np.logical_and, topi.logical_and),
    "logical_or": (np.logical_or, topi.logical_or),
    "logical_xor": (np.logical_xor, topi.logical_xor),
    "bitwise_and": (np.bitwise_and, topi.bitwise_and),
    "bitwise_or": (np.bitwise_or, topi.bitwise_or),
    "bitwise_xor": (np.bitwise_xor, topi.bitwise_xor),
    "left_shift": (np.left_shift, topi.left_shift),
    "right_shift": (np.right_shift, topi.right_shift),
}

for _name, (_ref, _te) in UNARY.items():
    globals()[_name] = defop(_name, FusionKind.ELEMWISE, infer=same_type,
                             reference=lambda x, _f=_ref: np.asarray(_f(x)).astype(x.dtype, copy=False),
                             lower=lambda x, _f=_te: _f(x), grad=_unary_rule(UNARY_GRADS[_name]))

for _name, (_ref, _te) in BINARY.items():
    globals()[_name] = defop(_name, FusionKind.BROADCAST, infer=broadcast_types, arity=(2, 2),
                             reference=lambda a, b, _f=_ref: np.asarray(_f(a, b)).astype(a.dtype, copy=False),
                             lower=lambda a, b, _f=_te: _f(a, b), grad=_binary_rule(BINARY_GRADS[_name]))


def _clip_bounds(dtype, lo, hi):
    """Bounds representable in `dtype` (infinite ones clamp to an integer type's range)."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return int(np.clip(lo, info.min, info.max)), int(np.clip(hi, info.min, info.max))
    return lo, hi


def _clip_ref(x, *, min, max):
    lo, hi = _clip_bounds(x.dtype, min, max)
    return np.minimum(np.maximum(x, x.dtype.type(lo)), x.dtype.type(hi))  # min > max gives max, as ONNX says


def _clip_lower(x, *, min, max):
    lo, hi = _clip_bounds(str(x.dtype), min, max)
    lo, hi = te.const(lo, x.dtype), te.const(hi, x.dtype)

    def f(*i):  # min(max(x, lo), hi) as selects: NaN stays NaN (TVM's max/min drop it), min > max gives max
        v = x(*i)
        v = tirx.Select(v < lo, lo, v)
        return tirx.Select(v > hi, hi, v)

    return te.compute(x.shape, f, name="clip")


def _clip_dx(e, n, dy):
    return e.mul(dy, e.mul(e.op(ops.ge_mask, [_x(n), n.attrs["min"]]),
                           e.op(ops.ge_mask, [e.const(n.attrs["max"], _x(n).type.dtype), _x(n)])))


clip = defop("clip", FusionKind.ELEMWISE, infer=same_type,
             attrs={"min": Attr("float", -math.inf), "max": Attr("float", math.inf)},
             reference=_clip_ref,
             lower=_clip_lower, grad=_unary_rule(_clip_dx))


def _leaky_relu_dx(e, n, dy):
    return e.mul(dy, e.op(ops.add, [n.attrs["alpha"], e.scale(e.op(ops.gt_mask, [_x(n), 0.0]), 1 - n.attrs["alpha"])]))


leaky_relu = defop("leaky_relu", FusionKind.ELEMWISE, infer=same_type, attrs={"alpha": Attr("float", 0.01)},
                   reference=lambda x, *, alpha: np.where(x >= 0, x, x * x.dtype.type(alpha)),
                   lower=lambda x, *, alpha: topi.nn.leaky_relu(x, alpha), grad=_unary_rule(_leaky_relu_dx))


def _cast_infer(types, *, to):
    return TensorType(types[0].shape, to)


def _cast_grad(e, n, dy):
    src = _x(n).type.dtype
    return [e.op(ops.cast, [dy], to=src) if src.startswith(("float", "bfloat")) else None]


cast = defop("cast", FusionKind.ELEMWISE, infer=_cast_infer, attrs={"to": Attr("str")},
             reference=lambda x, *, to: x.astype(to), lower=lambda x, *, to: topi.cast(x, to), grad=_cast_grad)


def _compare_infer(types):
    return TensorType(broadcast_types(types).shape, "bool")


# name: (numpy reference, TE lowering); all return bool
COMPARE = {
    "equal": (np.equal, topi.equal),
    "less": (np.less, topi.less),
    "greater": (np.greater, topi.greater),
    "less_equal": (np.less_equal, topi.less_equal),
    "greater_equal": (np.greater_equal, topi.greater_equal),
}
for _name, (_ref, _te) in COMPARE.items():
    globals()[_name] = defop(_name, FusionKind.BROADCAST, infer=_compare_infer, arity=(2, 2),
                             reference=lambda a, b, _f=_ref: np.asarray(_f(a, b)), lower=lambda a, b, _f=_te: _f(a, b),
                             grad=NOT_DIFFERENTIABLE)


def _float_test_infer(types):
    if not types[0].dtype.startswith("float"):
        fail(f"expects a float tensor, got {types[0]}")
    return TensorType(types[0].shape, "bool")


isnan = defop("isnan", FusionKind.ELEMWISE, infer=_float_test_infer, reference=lambda x: np.isnan(x),
              lower=lambda x: topi.isnan(x), grad=NOT_DIFFERENTIABLE)
isinf = defop("isinf", FusionKind.ELEMWISE, infer=_float_test_infer, reference=lambda x: np.isinf(x),
              lower=lambda x: topi.isinf(x), grad=NOT_DIFFERENTIABLE)


def _mod_ref(a, b, *, fmod):
    with np.errstate(all="ignore"):
        if fmod:
            return np.fmod(a, b)
        if a.dtype.kind in "iu":  # integer division by zero: numpy gives 0, so do the kernels' guards
            return np.mod(a, np.where(b == 0, 1, b)) * (b != 0)
        return np.mod(a, b)


def _fmod(x, y):
    """C fmod (truncated remainder, sign of x) in float64, as numpy: LLVM has no fmod intrinsic. The quotient of
    float32 operands is truncated exactly in float64 (for quotients below 2**29); inf and nan cases as in C."""
    x64, y64 = x.astype("float64"), y.astype("float64")
    r = x64 - te.trunc(x64 / y64) * y64
    r = tirx.Select(r == 0.0, tirx.copysign(tirx.const(0.0, "float64"), x64), r)  # fmod(-4, 2) is -0
    nan = tirx.const(float("nan"), "float64")
    r = tirx.Select(tirx.isinf(y64), x64, r)  # a finite x is its own remainder by +-inf
    return tirx.Select(tirx.Or(tirx.Or(tirx.isinf(x64), y64 == 0.0), tirx.Or(nan_test(x64, "float64"), nan_test(y64, "float64"))),
                       nan, r)


def _mod_lower(a, b, *, fmod):
    floating = str(a.dtype).startswith("float")

    def f(*i):
        x, y = a(*[i[len(i) - len(a.shape) + k] if a.shape[k] != 1 else 0 for k in range(len(a.shape))]), \
               b(*[i[len(i) - len(b.shape) + k] if b.shape[k] != 1 else 0 for k in range(len(b.shape))])
        if floating:
            r = _fmod(x, y)
            if not fmod:  # floored (sign of y), numpy's divmod: a nonzero remainder of the other sign moves by y
                y64 = y.astype("float64")
                other_sign = tirx.Or(tirx.And(y64 < 0.0, r > 0.0), tirx.And(y64 > 0.0, r < 0.0))
                moved = tirx.Select(other_sign, r + y64, r)
                r = tirx.Select(r == 0.0, tirx.copysign(tirx.const(0.0, "float64"), y64), moved)
            return r.astype(a.dtype)
        safe = _int_safe_divisor(y, a.dtype)  # x % 0 is 0 (numpy); x % -1 = x % 1 = 0 (no SIGFPE for INT_MIN)
        r = te.truncmod(x, safe) if fmod else te.floormod(x, safe)
        return te.if_then_else(y == te.const(0, a.dtype), te.const(0, a.dtype), r)

    shape = [int(d) for d in np.broadcast_shapes(tuple(int(d) for d in a.shape), tuple(int(d) for d in b.shape))]
    return te.compute(shape, f, name="mod")


mod = defop("mod", FusionKind.BROADCAST, infer=lambda types, *, fmod: broadcast_types(types), attrs={"fmod": Attr("bool", False)}, arity=(2, 2),
            reference=lambda a, b, *, fmod: np.asarray(_mod_ref(a, b, fmod=fmod)).astype(a.dtype),
            lower=_mod_lower, grad=NO_RULE_YET,
            doc="Remainder: fmod=True truncated (C fmod, sign of a), else floored (sign of b).")


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


def _where_grad(e, n, dy):
    c, a, b = n.inputs
    zero = e.const(0.0, dy.type.dtype)
    return [None, e.sum_to(e.op(ops.where, [c, dy, zero]), a.type.shape),
            e.sum_to(e.op(ops.where, [c, zero, dy]), b.type.shape)]


where = defop("where", FusionKind.BROADCAST, infer=_where_infer, arity=(3, 3),
              reference=lambda c, a, b: np.asarray(np.where(c, a, b)).astype(a.dtype, copy=False),
              lower=lambda c, a, b: topi.where(c, a, b), grad=_where_grad)
