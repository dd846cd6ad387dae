"""The float32 exp, tanh, sigmoid, log and erf kernels (compiler/ops/vecmath.py) against the correctly rounded result (float64
numpy, rounded once) on a sweep over every binade of float32, denormals, +-0, +-inf and NaN included, compiled and
scheduled as the CPU builds them (vectorized)."""

import math

import numpy as np
import pytest
import tvm
from tvm import te

from tensorforge.compiler.backend.build import resolve_target
from tensorforge.compiler.backend.cpu.rules import schedule_cpu
from tensorforge.compiler.ops import vecmath

SPECIAL = [1.0, 0.7071067, 0.7071068, 1.1754942e-38, 0.84375, -0.84375, 1.25, -1.25, 2.857142, 2.857143, 6.0, -6.0,
           3.7252903e-09, 0.0, -0.0, np.inf, -np.inf, np.nan, 88.72283935546875, 88.7228, 88.73, -87.33, -103.97, -104.0, -104.1,
           0.625, -0.625, 0.6249999, 9.0, -9.0, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38]


def sweep(step: int = 9973) -> np.ndarray:
    """Every `step`-th float32 bit pattern (all signs, binades and NaN payloads) plus the edge cases."""
    bits = np.arange(0, 1 << 32, step, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([bits.view(np.float32), np.array(SPECIAL, np.float32)])
    return np.concatenate([x, np.ones(-x.size % 64, np.float32)])  # whole vectors: the schedule vectorizes


def ulp_distance(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Distance in units in the last place, counting across zero; NaN against NaN is 0, NaN against a number huge."""
    def ordered(a):
        i = a.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    d = np.abs(ordered(got) - ordered(want))
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    d[nan_got & nan_want] = 0
    d[nan_got ^ nan_want] = 1 << 40
    return d


def run(fn, x: np.ndarray) -> np.ndarray:
    target = resolve_target("cpu")
    xp = te.placeholder(x.shape, "float32", name="x")
    y = te.compute(x.shape, lambda i: fn(xp[i]), name="y")
    func = schedule_cpu(te.create_prim_func([xp, y]), target)
    assert "T.vectorized" in func.script()  # the point: arithmetic that vectorizes, not a libm call per element
    out = tvm.runtime.tensor(np.zeros_like(x))
    tvm.compile(tvm.IRModule({"main": func}), target=target)["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("name, fn, reference, max_ulp", [
    ("exp", vecmath.exp, np.exp, 1),
    ("tanh", vecmath.tanh, np.tanh, 1),
    ("sigmoid", vecmath.sigmoid, lambda v: 1 / (1 + np.exp(-v)), 2),
    ("log", vecmath.log, np.log, 2),
    ("erf", vecmath.erf, lambda v: np.vectorize(math.erf, otypes=[np.float64])(v), 2),
])
def test_within_a_few_ulp_over_the_whole_range(name, fn, reference, max_ulp):
    x = sweep()
    with np.errstate(all="ignore"):
        want = reference(x.astype(np.float64)).astype(np.float32)
    got = run(fn, x)
    d = ulp_distance(got, want)
    worst = int(np.argmax(d))
    assert d[worst] <= max_ulp, f"{name}({x[worst]!r}) = {got[worst]!r}, correctly rounded {want[worst]!r}"
    for v in (np.inf, -np.inf, np.nan, 0.0):  # the edges exactly
        with np.errstate(all="ignore"):
            expected = np.float32(reference(np.float64(v)))
        at = np.flatnonzero(np.isnan(x) if np.isnan(v) else x == v)[0]
        assert got[at] == expected or (np.isnan(got[at]) and np.isnan(expected)), (name, v, got[at], expected)


def test_exp_fast_is_within_bf16s_needs():
    """exp_fast (the bf16 mode's softmax exponent): relative error under 4e-6 on [-87, 88] (bf16's step is 4e-3),
    clamped to exp(-87) / exp(88) outside, NaN stays NaN."""
    x = sweep()
    got = run(vecmath.exp_fast, x)
    inside = (x >= -87.0) & (x <= 88.0)
    want = np.exp(x[inside].astype(np.float64))
    rel = np.abs(got[inside] - want) / want
    assert rel.max() < 4e-6, (x[inside][np.argmax(rel)], rel.max())
    assert np.all(got[x < -87.0] == np.float32(np.exp(np.float64(-87.0)))) or \
        np.allclose(got[x < -87.0], np.exp(-87.0), rtol=4e-6)
    assert np.allclose(got[x > 88.0], np.exp(88.0), rtol=4e-6)
    assert np.all(np.isnan(got[np.isnan(x)]))


def test_tanh_gelu_is_vectorized_and_accurate():
    """GELU's tanh form (GPT-2) computes its tanh with vecmath: against float64 over [-12, 12], NaN and +-inf, and
    its kernel has vector code (te.tanh would be a scalar libm call per element)."""
    from tensorforge.compiler import ops
    from tensorforge.compiler.ops.activation import _gelu_ref

    x = np.concatenate([np.linspace(-12, 12, 20001, dtype=np.float32),
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38], np.float32)])
    xt = te.placeholder(x.shape, "float32", name="x")
    y = ops.gelu.lower(xt, approximate="tanh")
    target = resolve_target("cpu")
    lib = tvm.compile(tvm.IRModule({"main": schedule_cpu(te.create_prim_func([xt, y]), target)}), target=target)
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    with np.errstate(over="ignore", invalid="ignore"):
        want = _gelu_ref(x.astype(np.float64), approximate="tanh")
    got = out.numpy()
    finite = np.isfinite(want) & (np.abs(x) < 1e30)
    # 1 + tanh cancels for x << 0 (float32 gives 0 where the value is 4e-16, as libm tanh would): absolute there
    np.testing.assert_allclose(got[finite], want[finite], rtol=2e-6, atol=2e-7)
    assert np.isnan(got[np.isnan(x)]).all() and got[x == np.inf][0] == np.inf
    asm = lib.mod.inspect_source("asm")
    assert "tanhf" not in asm and ("zmm" in asm or "ymm" in asm)


def _elementwise_kernel(ops_chain, x):
    """Compile a builder-API graph applying `ops_chain` (op names) in turn to x as one fused kernel; run it."""
    from tensorforge import compile_model
    from tensorforge.compiler import ops
    from tensorforge.compiler.ir import Graph, TensorType

    g = Graph("chain")
    v = g.add_input("x", TensorType(x.shape, "float32"))
    for name in ops_chain:
        (v,) = g.add_node(getattr(ops, name), [v], {})
    g.outputs = [v]
    m = compile_model(g)
    return m, m.run({"x": x})[0]


@pytest.mark.parametrize("name, reference", [
    ("exp", np.exp), ("log", np.log), ("tanh", np.tanh), ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
    ("erf", lambda v: np.vectorize(math.erf, otypes=[np.float64])(v)),
])
def test_elementwise_ops_compute_with_vecmath(name, reference):
    """The float32 elementwise ops lower to vecmath: within 2 ulp on the sweep (topi.fast_tanh, which the tanh op
    used before, is thousands of ulp off near zero)."""
    x = sweep(step=99991)
    with np.errstate(all="ignore"):
        want = reference(x.astype(np.float64)).astype(np.float32)
    _, got = _elementwise_kernel([name], x)
    assert ulp_distance(got, want).max() <= 2


def test_nested_chain_compiles_and_stays_accurate():
    """tanh(sigmoid(exp(tanh(x)))) in one kernel: the inner level is vecmath, the nested ones libm (vecmath.stage),
    so the expression tree stays small (inlined fully, four levels ran the compiler out of memory)."""
    x = np.linspace(-6, 6, 4096, dtype=np.float32)
    m, got = _elementwise_kernel(["tanh", "exp", "sigmoid", "tanh"], x)
    assert m.num_kernels == 1
    want = np.tanh(1 / (1 + np.exp(-np.exp(np.tanh(x.astype(np.float64))))))
    assert ulp_distance(got, want.astype(np.float32)).max() <= 4


def _least_squares_on_chebyshev_nodes(f, lo, hi, degree, center):
    k = np.arange(4000)
    x = (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / len(k))
    coeffs, *_ = np.linalg.lstsq(np.vander(x - center, degree + 1, increasing=True), f(x), rcond=None)
    return coeffs


def test_erf_coefficients_are_the_documented_fits():
    """vecmath.erf's polynomials come from the fits its comment describes (so they can be redone, e.g. for float16):
    P: (erf(x) / x - 1) in x^2 below 0.921875; Q: log(erfc(a)) + a^2 in a - center up to 3.925."""
    erf, erfc = np.vectorize(math.erf), np.vectorize(math.erfc)
    small = _least_squares_on_chebyshev_nodes(lambda t: erf(np.sqrt(t)) / np.sqrt(t) - 1, 1e-12,
                                              vecmath._ERF_SMALL_END ** 2, len(vecmath._ERF_P) - 1, 0.0)
    large = _least_squares_on_chebyshev_nodes(lambda a: np.log(erfc(a)) + a * a, vecmath._ERF_SMALL_END,
                                              vecmath._ERF_ONE_FROM, len(vecmath._ERF_Q) - 1, vecmath._ERF_CENTER)
    np.testing.assert_allclose(vecmath._ERF_P, small.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(vecmath._ERF_Q, large.astype(np.float32), rtol=1e-6)
    assert math.erfc(vecmath._ERF_ONE_FROM) < 2.0 ** -25  # erf rounds to 1 from there on
