"""Accurate float32 exp, tanh and sigmoid as plain arithmetic on TIR expressions, so that LLVM vectorizes them.

Wired into the tanh form of GELU (ops/activation.py: GPT-2's MLP), whose argument is a short expression. Not yet
into the elementwise ops (issue 16, item 3): each function repeats its argument several times, so a fused chain
of them (tanh -> sigmoid -> ...) inlined as trees grows exponentially and the test run slowed to a crawl; binding
the argument with a Let fixed that but then tanh's loop no longer vectorized. The next step is a Let-bound form
that vectorizes (or CSE before vectorizing), then using it in elementwise exp/tanh/sigmoid, softmax, attention and
the LSTM kernels.

TVM lowers `exp`/`tanh` to scalar libm calls (accurate, one call per element), and topi's `fast_exp`/`fast_tanh` are
vectorizable approximations that lose accuracy at the ends of the range (fast_tanh is ~1e-7 *absolute*, thousands of
ulp near zero; fast_exp clamps before the denormals). These keep the vector speed and stay within 2 ulp of the
correctly rounded result over the whole float32 range, NaN and +-inf included (tests/ops/test_vecmath.py sweeps it).

    exp:      Cephes expf. n = round(x / ln 2), r = x - n ln 2 in two parts (Cody-Waite), a degree-7 polynomial, then
              the scale 2^n applied as two powers of two (each a normal float built from its bits), so results in
              the denormal range are rounded once.
    tanh:     |x| < 0.625: x + x^3 P(x^2) (Cephes tanhf); else sign(x) (1 - 2 / (exp(2|x|) + 1)).
    sigmoid:  t = exp(-|x|); 1 / (1 + t) for x >= 0, t / (1 + t) below (no overflow, denormal tails kept).
"""

from __future__ import annotations

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


def _pow2(n):
    """2^n for an int32 n in [-126, 127], from its bits."""
    return tirx.reinterpret(F32, (n + tirx.const(127, "int32")) << tirx.const(23, "int32"))


def exp(x):
    xc = tirx.max(tirx.min(x, _c(_EXP_HI)), _c(_EXP_LO))
    n = tirx.floor(xc * _c(_LOG2E) + _c(0.5))
    r = xc - n * _c(_LN2_HI)
    r = r - n * _c(_LN2_LO)
    p = _c(_EXP_P[0])
    for c in _EXP_P[1:]:
        p = p * r + _c(c)
    p = p * r * r + r + _c(1.0)
    ni = n.astype("int32")
    half = ni >> tirx.const(1, "int32")  # floor(n / 2): both halves in [-75, 64], normal powers of two
    y = p * _pow2(half) * _pow2(ni - half)
    y = tirx.Select(x > _c(_EXP_HI), _c(float("inf")), y)
    y = tirx.Select(x < _c(_EXP_LO), _c(0.0), y)
    return tirx.Select(_is_nan(x), x, y)


def tanh(x):
    z = x * x
    p = _c(_TANH_P[0])
    for c in _TANH_P[1:]:
        p = p * z + _c(c)
    small = p * z * x + x
    a = tirx.abs(x)
    large = _c(1.0) - _c(2.0) / (exp(a + a) + _c(1.0))
    large = tirx.Select(x < _c(0.0), -large, large)
    return tirx.Select(a < _c(0.625), small, large)  # NaN: the large branch, exp(NaN) = NaN


def sigmoid(x):
    t = exp(-tirx.abs(x))
    d = _c(1.0) + t
    return tirx.Select(x >= _c(0.0), _c(1.0) / d, t / d)  # NaN: t is NaN, so both are
