"""Accurate float32 exp, tanh, sigmoid, log and erf as plain arithmetic on TIR expressions, so that LLVM vectorizes
them.

Wired into the float32 lowering of the elementwise ops exp, log, tanh, sigmoid and erf (ops/elementwise.py), GELU in
both forms and its gradient (ops/activation.py, ops/backward.py), softmax (ops/norm.py), attention's exponent
(ops/attention.py) and the LSTM kernels' gates (ops/rnn.py). Each function repeats its argument several times, so
a fused chain of them (tanh of a sigmoid of ...) inlined as one expression tree grows exponentially; `stage` makes
the first level vecmath and any level that reads another vecmath stage of the same kernel a libm call (accurate,
scalar). Within one function, the values used more than once are bound by TIR Lets (`_Lets`).

TVM lowers `exp`/`tanh` to scalar libm calls (accurate, one call per element), and topi's `fast_exp`/`fast_tanh` are
vectorizable approximations that lose accuracy at the ends of the range (fast_tanh is ~1e-7 *absolute*, thousands of
ulp near zero; fast_exp clamps before the denormals). These keep the vector speed and stay within 2 ulp of the
correctly rounded result over the whole float32 range, NaN and +-inf included (tests/ops/test_vecmath.py sweeps it).

    exp:      Cephes expf. n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), a degree-7 polynomial, then
              the scale 2^n applied as two powers of two (each a normal float built from its bits), so results in
              the denormal range are rounded once.
    tanh:     |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf); else sign(x) (1 - 2 / (exp(2|x|) + 1)).
    sigmoid:  t = exp(-|x|); 1 / (1 + t) for x >= 0, t / (1 + t) below (no overflow, denormal tails kept).
    log:      Cephes logf (below).
    erf:      two fitted polynomials and one exp (below).
"""

from __future__ import annotations

import math

from tvm import tirx

F32 = "float32"
_EXP_HI = 88.72283935546875  # above: +inf
_EXP_LO = -104.0  # below: 0 (exp(-104) is under half the smallest denormal)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = HI + LO, HI exact in few bits (Cody-Waite)
_LOG2E = 1.44269504088896341
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
_TANH_P = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)


def _c(v: float):
    return tirx.const(v, F32)


def _is_nan(x):
    bits = tirx.reinterpret("int32", x) & tirx.const(0x7FFFFFFF, "int32")
    return bits > tirx.const(0x7F800000, "int32")


class _Lets:
    """Let bindings for the values a function uses more than once: `v = lets(value)` gives a variable, and
    `lets.wrap(result)` binds them all around the result. Each value is then computed once, and the expression stays
    a small tree for TVM's passes: without them a fused dense+GELU kernel printed as 740 kB of TIR, and CSE and the
    simplifier took 2.3 s over it. Constants and variables are not bound."""

    def __init__(self):
        self.binds = []

    def __call__(self, value, name: str = "v"):
        if hasattr(value, "asobject"):  # a TE tensor element
            value = value.asobject()
        if isinstance(value, (tirx.Var, tirx.IntImm, tirx.FloatImm)) or str(value.ty) == "bool":
            return value  # (a bool Let fails to vectorize)
        var = tirx.Var(name, value.ty)
        self.binds.append((var, value))
        return var

    def wrap(self, body):
        for var, value in reversed(self.binds):
            body = tirx.Let(var, value, body)
        return body


def _pow2(n):
    """2^n for an int32 n in [-126, 127], from its bits."""
    return tirx.reinterpret(F32, (n + tirx.const(127, "int32")) << tirx.const(23, "int32"))


def _exp_poly(b, xc):
    """(e^r, n) with xc = n ln2 + r, |r| <= ln2 / 2: the Cody-Waite reduction and the polynomial of `exp`."""
    n = b(tirx.floor(xc * _c(_LOG2E) + _c(0.5)), "n")
    r = b(xc - n * _c(_LN2_HI) - n * _c(_LN2_LO), "r")
    p = _c(_EXP_P[0])
    for c in _EXP_P[1:]:
        p = p * r + _c(c)
    return p * r * r + r + _c(1.0), b(n.astype("int32"), "ni")


def _exp_normal(x):
    """exp(x) for x known to give a normal float32 (-87 < x < 88) and not NaN: `exp` without its clamps and special
    cases, bit for bit the same there (2^n in one factor: both of exp's factors are exact powers of two)."""
    b = _Lets()
    p, ni = _exp_poly(b, b(x, "x"))
    return b.wrap(p * _pow2(ni))


def exp(x):
    b = _Lets()
    x = b(x, "x")
    # below _EXP_LO the result is 0 (the select at the end); those lanes compute exp(0) meanwhile, not exp(-104):
    # that one's scaling made a denormal, and on Intel cores every vector op producing a denormal takes a microcode
    # assist (masked or padded attention scores, -inf or the lowest float, ran 3-4x slower)
    xc = b(tirx.Select(x < _c(_EXP_LO), _c(0.0), tirx.min(x, _c(_EXP_HI))), "xc")
    p, ni = _exp_poly(b, xc)
    half = b(ni >> tirx.const(1, "int32"), "half")  # floor(n / 2): both halves in [-75, 64], normal powers of two
    y = p * _pow2(half) * _pow2(ni - half)
    y = tirx.Select(x > _c(_EXP_HI), _c(float("inf")), y)
    y = tirx.Select(x < _c(_EXP_LO), _c(0.0), y)
    return b.wrap(tirx.Select(_is_nan(x), x, y))


FAST_EXP_LO, FAST_EXP_HI = -87.0, 88.0  # exp_fast's clamp: 2^n stays a normal float
_INV_FACTORIALS = (1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0)  # e^r's Taylor polynomial, degree 5, highest first


def exp_fast(x):
    """exp to bf16's precision, for the CPU's bf16 mode (softmax's exponent, whose probabilities the next product
    rounds to bf16 anyway: its step is 4e-3): relative error under 4e-6 on [-87, 88] (degree-5 Taylor polynomial on
    [-ln2/2, ln2/2] after a one-constant range reduction), about half of `exp`'s instructions. Clamped: below -87 it
    returns exp(-87) (1.6e-38, not 0), above 88 exp(88); NaN stays NaN."""
    b = _Lets()
    x = b(x, "x")
    xc = b(tirx.max(tirx.min(x, _c(FAST_EXP_HI)), _c(FAST_EXP_LO)), "xc")
    n = b(tirx.floor(xc * _c(_LOG2E) + _c(0.5)), "n")
    r = b(xc - n * _c(math.log(2.0)), "r")
    p = _c(_INV_FACTORIALS[0])
    for c in _INV_FACTORIALS[1:]:
        p = p * r + _c(c)
    return b.wrap(tirx.Select(_is_nan(x), x, p * _pow2(n.astype("int32"))))


def tanh(x):
    b = _Lets()
    x = b(x, "x")
    z = b(x * x, "z")
    p = _c(_TANH_P[0])
    for c in _TANH_P[1:]:
        p = p * z + _c(c)
    small = p * z * x + x
    a = b(tirx.abs(x), "a")
    # |x| capped at 44, where tanh is 1 already: e^(2|x|) then stays a normal float (`_exp_normal`, no clamps);
    # bit for bit the results of the uncapped form
    large = b(_c(1.0) - _c(2.0) / (_exp_normal(tirx.min(a, _c(44.0)) * _c(2.0)) + _c(1.0)), "large")
    large = tirx.Select(x < _c(0.0), -large, large)
    return b.wrap(tirx.Select(_is_nan(x), x, tirx.Select(a < _c(0.625), small, large)))


def sigmoid(x):
    b = _Lets()
    x = b(x, "x")
    t = b(exp(-tirx.abs(x)), "t")
    d = b(_c(1.0) + t, "d")
    return b.wrap(tirx.Select(x >= _c(0.0), _c(1.0) / d, t / d))  # NaN: t is NaN, so both are


# -- log: Cephes logf. x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(1 + f) = f - f^2/2 + f^3 P(f); e ln 2 added in
# two parts. Denormals are scaled by 2^23 first.
_SQRTHF = 0.707106781186547524
_LOG_P = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
          2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def log(x):
    i32 = "int32"
    b = _Lets()
    x = b(x, "x")
    denormal = x < _c(1.1754943508222875e-38)  # (a bool Let does not vectorize)
    xs = tirx.Select(denormal, x * _c(8388608.0), x)
    bits = b(tirx.reinterpret(i32, xs), "bits")
    e = ((bits >> tirx.const(23, i32)) & tirx.const(0xFF, i32)) - tirx.Select(denormal, tirx.const(149, i32),
                                                                             tirx.const(126, i32))
    m = b(tirx.reinterpret(F32, (bits & tirx.const(0x007FFFFF, i32)) | tirx.const(0x3F000000, i32)), "m")  # [0.5, 1)
    low = m < _c(_SQRTHF)
    e = e - tirx.Select(low, tirx.const(1, i32), tirx.const(0, i32))
    f = b(tirx.Select(low, m + m - _c(1.0), m - _c(1.0)), "f")
    z = b(f * f, "z")
    p = _c(_LOG_P[0])
    for c in _LOG_P[1:]:
        p = p * f + _c(c)
    ef = b(e.astype(F32), "ef")
    y = p * f * z + ef * _c(_LN2_LO) - _c(0.5) * z
    y = f + y + ef * _c(_LN2_HI)
    y = tirx.Select(x == _c(float("inf")), x, y)
    y = tirx.Select(x == _c(0.0), _c(float("-inf")), y)
    return b.wrap(tirx.Select(x < _c(0.0), _c(float("nan")), tirx.Select(_is_nan(x), x, y)))


# -- erf: two polynomials and one exp, no division. |x| < 0.921875: x + x P(x^2); above, 1 - erfc(|x|) with
# log(erfc(a)) = Q(a - 2.4234375) - a^2; from 3.925 on, 1 (erfc there is below half an ulp of 1). The coefficients
# are least-squares fits on Chebyshev nodes in float64 (tests/ops/test_vecmath.py refits them), within 1 ulp in
# float32 Horner form. They replaced fdlibm's sf_erf.c (four rationals, two divisions): 2.8 -> 1.25 ms per 2M floats
# (benchmarks/results/vecmath.md); GELU's erf was the costliest elementwise code in BERT and in a training step.
_ERF_SMALL_END = 0.921875
_ERF_ONE_FROM = 3.925
_ERF_CENTER = 2.4234375
_ERF_P = (0.12837915122509003, -0.3761250376701355, 0.11281904578208923, -0.026769496500492096,
          0.004997011739760637, -0.0006008737254887819)
_ERF_Q = (-1.5294793844223022, -0.3614668846130371, 0.058678459376096725, -0.011546885594725609,
          0.0023331274278461933, -0.00045742819202132523, 8.470356260659173e-05, -1.4283556993177626e-05,
          1.6355553498215158e-06)


def _horner(t, coeffs):
    p = _c(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = p * t + _c(c)
    return p


def erf(x):
    """Branch-free: both polynomials are evaluated and one chosen per lane."""
    b = _Lets()
    x = b(x, "x")
    a = b(tirx.abs(x), "a")
    small = x + x * _horner(x * x, _ERF_P)
    # |x| is capped where erf is 1 so that exp never reaches the denormals (a microcode assist per lane)
    ac = b(tirx.min(a, _c(_ERF_ONE_FROM)), "ac")
    # the exponent lies in [-17, -0.8] for every ac (NaN lanes are replaced below): no clamps needed
    large = b(tirx.Select(a < _c(_ERF_ONE_FROM),
                          _c(1.0) - _exp_normal(_horner(ac - _c(_ERF_CENTER), _ERF_Q) - ac * ac), _c(1.0)), "large")
    y = tirx.Select(a < _c(_ERF_SMALL_END), small, tirx.Select(x < _c(0.0), -large, large))
    return b.wrap(tirx.Select(_is_nan(x), x, y))


# -- the elementwise stages the ops lower to --------------------------------------------------------------------------
TAG = "vecmath"


def _reads_vecmath(t, seen: dict) -> bool:
    """Does TE tensor `t` (transitively, through the compute stages of the same kernel) read a vecmath stage?"""
    op = t.op
    if op in seen:
        return seen[op]
    seen[op] = op.tag == TAG or any(_reads_vecmath(u, seen) for u in getattr(op, "input_tensors", ()))
    return seen[op]


def enabled(dtype: str) -> bool:
    """vecmath applies to float32 on the CPU. Lowering for CUDA (backend/cuda/build.py lowers inside its target's
    scope) keeps TVM's exp/tanh/erf: on a GPU they are a few fast instructions, and nvcc took minutes over the
    polynomials."""
    import tvm

    target = tvm.target.Target.current(allow_none=True)
    return dtype == F32 and (target is None or target.kind.name != "cuda")


def applies(x) -> bool:
    """Whether a vecmath function may compute on TE tensor `x`: float32 on the CPU (`enabled`), and `x` reads no
    vecmath stage of the same kernel (see `stage`)."""
    return enabled(x.dtype) and not _reads_vecmath(x, {})


def stage(fn, x, name: str, fallback):
    """out[i] = fn(x[i]) as one float32 TE stage tagged "vecmath", or `fallback(x)` (the libm call, a TE tensor)
    where vecmath does not apply (`applies`), e.g. x itself reads a vecmath stage of the same kernel: each function repeats its argument several times, and
    a nested chain (tanh of a sigmoid of ...) inlined as one expression tree grows exponentially (four levels ran
    the compiler out of memory). One level, the common case, is the vectorized form."""
    return compute(x, fn, name) if applies(x) else fallback(x)


def compute(x, fn, name: str):
    from tvm import te

    return te.compute(x.shape, lambda *i: fn(x(*i)), name=name, tag=TAG)
