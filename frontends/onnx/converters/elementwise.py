"""Elementwise and broadcasting ops, and activations composed of them."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from tensorforge.compiler import ops  # noqa: F401
from tensorforge.runtime.errors import FrontendError

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401


# -- elementwise ------------------------------------------------------------------------------------------------------
def _unary(op):
    def convert(b, X):
        return b.emit(op, [X])

    return convert


for _onnx, _op in {"Relu": ops.relu, "Sigmoid": ops.sigmoid, "Tanh": ops.tanh, "Exp": ops.exp, "Log": ops.log,
                   "Sqrt": ops.sqrt, "Abs": ops.abs, "Neg": ops.neg, "Erf": ops.erf, "Floor": ops.floor,
                   "Ceil": ops.ceil, "Sin": ops.sin, "Cos": ops.cos, "Reciprocal": ops.reciprocal, "Sign": ops.sign,
                   "Round": ops.round, "Tan": ops.tan, "Asin": ops.asin, "Acos": ops.acos, "Atan": ops.atan,
                   "Sinh": ops.sinh, "Cosh": ops.cosh, "Asinh": ops.asinh, "Acosh": ops.acosh, "Atanh": ops.atanh,
                   "Not": ops.logical_not, "BitwiseNot": ops.bitwise_not, "IsNaN": ops.isnan}.items():
    CONVERTERS[_onnx] = {1: _unary(_op)}


def _legacy_broadcast(b, A, B, broadcast, axis):
    """Opset < 7: B broadcasts onto A only with broadcast=1, aligned at `axis`."""
    if broadcast and axis is not None:
        ra, rb = b.type(A).rank, b.type(B).rank
        ax = _axis(b, axis, ra)
        B = _reshape(b, B, b.type(B).shape + (1,) * (ra - ax - rb))
    return A, B


def _binary(op):
    def convert(b, A, B, broadcast=0, axis=None):
        A, B = _legacy_broadcast(b, A, B, broadcast, axis)
        return b.emit(op, [A, B])

    return convert


for _onnx, _op in {"Add": ops.add, "Sub": ops.sub, "Mul": ops.mul, "Div": ops.div, "Less": ops.less,
                   "Greater": ops.greater, "LessOrEqual": ops.less_equal, "GreaterOrEqual": ops.greater_equal,
                   "And": ops.logical_and, "Or": ops.logical_or, "Xor": ops.logical_xor,
                   "BitwiseAnd": ops.bitwise_and, "BitwiseOr": ops.bitwise_or, "BitwiseXor": ops.bitwise_xor}.items():
    CONVERTERS[_onnx] = {1: _binary(_op)}


@converter()
def Pow(b, X, Y, *, broadcast=0, axis=None):
    X, Y = _legacy_broadcast(b, X, Y, broadcast, axis)
    dt = b.type(X).dtype
    if b.type(Y).dtype != dt:  # the result has the base's type; an exponent of another type is converted
        Y = b.emit(ops.cast, [Y], to=dt)
    return b.emit(ops.pow, [X, Y])


def _variadic(op):
    def convert(b, *xs):
        acc = xs[0]
        for x in xs[1:]:
            acc = b.emit(op, [acc, x])
        return acc

    return convert


for _onnx, _op in {"Sum": ops.add, "Max": ops.maximum, "Min": ops.minimum}.items():
    CONVERTERS[_onnx] = {1: _variadic(_op)}


@converter(sequences=True)
def Identity(b, input):
    return input  # a tensor, or a sequence of tensors (also an optional's, compiled as present)


@converter()
def Dropout(b, data, ratio=None, training_mode=None, *, is_test=0, seed=None, **_legacy):
    # inference (or a zero ratio): Dropout is the identity and keeps every element
    training = training_mode is not None and bool(b.const(training_mode, "training_mode"))
    if training:
        p = 0.5 if ratio is None else float(np.asarray(b.const(ratio, "ratio")).reshape(-1)[0])
        if p != 0.0:
            return _seeded_dropout(b, data, p, seed)
    # kept as a dropout node: a zero-copy view in inference, seeded train-mode dropout under compile_training
    try:
        if ratio is None or isinstance(ratio, (int, float)):  # opset < 12: an attribute (default 0.5)
            p = 0.5 if ratio is None else float(ratio)
        else:
            p = float(np.asarray(b.const(ratio, "ratio")).reshape(-1)[0])
    except FrontendError:
        p = 0.0  # a ratio only known at run time: inference only, where Dropout is the identity anyway
    return (b.emit(ops.dropout, [data], p=p) if p > 0 else data), np.ones(b.type(data).shape, bool)


def _seeded_dropout(b, data, p, seed):
    """Training-mode Dropout with a `seed` attribute draws the mask as onnx's reference does (np.random.seed(seed),
    uniform(0, 1, shape) >= ratio), once, at compile time: every run then drops the same elements, which is what
    a seeded op means there. Without a seed each run would need a fresh mask (compile_training draws those)."""
    if seed is None:
        raise b.error("training_mode=True with a non-zero ratio and no seed attribute drops different random "
                      "elements on each run; only inference (or a seeded Dropout, whose mask is fixed at compile "
                      "time) is supported: use compiler.compile_training to train with dropout")
    if not 0.0 <= p < 1.0:
        raise b.error(f"ratio must be in [0, 1), got {p}")
    dt = b.type(data).dtype
    mask = np.random.RandomState(int(seed) % 2 ** 32).uniform(0, 1.0, b.type(data).shape) >= p
    scale = (mask * np.asarray(1 / (1 - p), dt)).astype(dt)
    return b.emit(ops.mul, [data, scale]), mask


@converter()
def Clip_1(b, input, *, min=-3.4028234663852886e38, max=3.4028234663852886e38):
    return b.emit(ops.clip, [input], min=min, max=max)


@converter(since=11)
def Clip(b, input, min=None, max=None):
    lo = float(b.const(min, "min")) if min is not None else -np.inf
    hi = float(b.const(max, "max")) if max is not None else np.inf
    return b.emit(ops.clip, [input], min=lo, max=hi)


@converter()
def LeakyRelu(b, X, *, alpha=0.01):
    return b.emit(ops.leaky_relu, [X], alpha=alpha)


# -- more elementwise: activations composed of existing ops (they fuse into one kernel) -----------------------------
@converter()
def Size(b, data):
    return np.array(b.type(data).numel, np.int64)


@converter()
def Mod(b, A, B, *, fmod=0):
    return b.emit(ops.mod, [A, B], fmod=bool(fmod))


@converter()
def BitShift(b, X, Y, *, direction):
    if direction not in ("LEFT", "RIGHT"):
        raise b.error(f"unknown direction {direction!r}")
    return b.emit(ops.left_shift if direction == "LEFT" else ops.right_shift, [X, Y])


@converter()
def IsInf(b, X, *, detect_negative=1, detect_positive=1):
    inf = b.emit(ops.isinf, [X])
    if detect_negative and detect_positive:
        return inf
    side = b.emit(ops.greater if detect_positive else ops.less, [X, _c(b, X, 0)])
    if not (detect_negative or detect_positive):
        return b.emit(ops.logical_and, [inf, b.emit(ops.logical_not, [inf])])
    return b.emit(ops.logical_and, [inf, side])


@converter()
def HardSigmoid(b, X, *, alpha=0.2, beta=0.5):
    y = b.emit(ops.add, [b.emit(ops.mul, [X, _c(b, X, alpha)]), _c(b, X, beta)])
    return b.emit(ops.clip, [y], min=0.0, max=1.0)


@converter()
def HardSwish(b, X):
    return b.emit(ops.mul, [X, HardSigmoid(b, X, alpha=1 / 6, beta=0.5)])


@converter()
def Elu(b, X, *, alpha=1.0):
    neg = b.emit(ops.mul, [b.emit(ops.sub, [b.emit(ops.exp, [X]), _c(b, X, 1)]), _c(b, X, alpha)])
    return b.emit(ops.where, [b.emit(ops.less, [X, _c(b, X, 0)]), neg, X])


@converter()
def Selu(b, X, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    neg = b.emit(ops.sub, [b.emit(ops.mul, [b.emit(ops.exp, [X]), _c(b, X, alpha)]), _c(b, X, alpha)])
    y = b.emit(ops.where, [b.emit(ops.less_equal, [X, _c(b, X, 0)]), neg, X])
    return b.emit(ops.mul, [y, _c(b, X, gamma)])


@converter()
def Celu(b, X, *, alpha=1.0):
    e = b.emit(ops.sub, [b.emit(ops.exp, [b.emit(ops.div, [X, _c(b, X, alpha)])]), _c(b, X, 1)])
    neg = b.emit(ops.minimum, [b.emit(ops.mul, [e, _c(b, X, alpha)]), _c(b, X, 0)])
    return b.emit(ops.add, [b.emit(ops.relu, [X]), neg])


@converter()
def ThresholdedRelu(b, X, *, alpha=1.0):
    return b.emit(ops.where, [b.emit(ops.greater, [X, _c(b, X, alpha)]), X, _c(b, X, 0)])


@converter()
def Shrink(b, input, *, bias=0.0, lambd=0.5):
    x = input
    lo = b.emit(ops.add, [x, _c(b, x, bias)])
    hi = b.emit(ops.sub, [x, _c(b, x, bias)])
    y = b.emit(ops.where, [b.emit(ops.greater, [x, _c(b, x, lambd)]), hi, _c(b, x, 0)])
    return b.emit(ops.where, [b.emit(ops.less, [x, _c(b, x, -lambd)]), lo, y])


@converter()
def PRelu(b, X, slope):
    return b.emit(ops.where, [b.emit(ops.less, [X, _c(b, X, 0)]), b.emit(ops.mul, [X, slope]), X])


@converter()
def Softplus(b, X):
    return b.emit(ops.log, [b.emit(ops.add, [b.emit(ops.exp, [X]), _c(b, X, 1)])])


@converter()
def Softsign(b, input):
    return b.emit(ops.div, [input, b.emit(ops.add, [b.emit(ops.abs, [input]), _c(b, input, 1)])])


@converter()
def Mish(b, X):
    return b.emit(ops.mul, [X, b.emit(ops.tanh, [Softplus(b, X)])])


@converter()
def Mean(b, *xs):
    return b.emit(ops.div, [_variadic(ops.add)(b, *xs), _c(b, xs[0], len(xs))])
