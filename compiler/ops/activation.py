"""Composite activations that frontends and exporters spell out as chains of primitive ops; the `recognize` pass
rewrites those chains into these single ops (readable IR, one TE stage, fusable like any elementwise op)."""

from __future__ import annotations

import math

import numpy as np
from tvm import te

from tensorforge.runtime.errors import AutodiffError

from . import vecmath
from .elementwise import _erf, same_type
from .registry import Attr, FusionKind, defop, ops

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_ref(x, *, approximate, fast_erf=False):
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * x64 * (1.0 + np.tanh(SQRT_2_OVER_PI * (x64 + 0.044715 * x64 ** 3)))
    else:
        y = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
    return y.astype(x.dtype)


def _gelu_lower(x, *, approximate, fast_erf=False):
    # float32: vecmath's erf and tanh (within 2 ulp, vectorized); te.erf and te.tanh are scalar libm calls per element
    # (erf: 22 ms vs 0.5 ms on 2M floats, one thread; GPT-2's MLP GELU on 64 x 3072: 1.9 ms of a 0.5 ms bf16 dense).
    # Where x reads a vecmath stage of the same kernel, libm (vecmath.stage explains why). fast_erf (set by the CPU's
    # bf16 mode, passes/cpu/bf16_weights.py): topi.fast_erf, 3e-7 absolute, 6x faster than vecmath's erf.
    fast = vecmath.applies(x)
    if approximate != "tanh" and fast:
        from tvm import topi

        scaled = te.compute(x.shape, lambda *i: x(*i) * te.const(1.0 / math.sqrt(2.0), x.dtype), name="gelu_in")
        erf = topi.fast_erf(scaled) if fast_erf else vecmath.compute(scaled, vecmath.erf, "gelu_erf")
        return te.compute(x.shape, lambda *i: te.const(0.5, x.dtype) * x(*i) * (te.const(1.0, x.dtype) + erf(*i)),
                          name="gelu")

    def f(*i):
        v = x(*i)
        if approximate == "tanh":
            arg = te.const(SQRT_2_OVER_PI, x.dtype) * (v + te.const(0.044715, x.dtype) * v * v * v)
            inner = vecmath.tanh(arg) if fast else te.tanh(arg)
        else:
            inner = te.erf(v * te.const(1.0 / math.sqrt(2.0), x.dtype))
        return te.const(0.5, x.dtype) * v * (te.const(1.0, x.dtype) + inner)

    return te.compute(x.shape, f, name="gelu", tag=vecmath.TAG if fast else "")


def _gelu_grad(e, n, dy):
    """d/dx x * Phi(x) = Phi(x) + x * phi(x) (the erf form), or the tanh form's derivative: one op."""
    if n.attrs.get("approximate", "none") not in ("none", "tanh"):
        raise AutodiffError(f"gradient of gelu (node {n.name or '?'}) with approximate="
                            f"{n.attrs['approximate']!r} is not supported")
    return [e.op(ops.gelu_grad, [n.inputs[0], dy], approximate=n.attrs.get("approximate", "none"))]


gelu = defop("gelu", FusionKind.ELEMWISE, infer=same_type, attrs={"approximate": Attr("str", "none"),
                                                                   "fast_erf": Attr("bool", False)},
             reference=_gelu_ref, lower=_gelu_lower, grad=_gelu_grad,
             doc="x * Phi(x): exact (erf) or approximate='tanh' as GPT-2 and PyTorch's approximate='tanh'.")
