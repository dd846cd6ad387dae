"""dense on the CPU's matrix unit (Intel AMX): `dense_amx`, its weight layout, packer and TE compute.

The product is computed in bfloat16 with float32 accumulation by AMX tiles (`tdpbf16ps`): the CPU's bf16 mode
(`precision="bf16"`) on a CPU with AMX-BF16 (passes/cpu/amx.py picks it; backend/cpu/amx.py schedules it).

Layouts (bf16 = bfloat16, rounded to nearest even):
  weight  (N, K) float32 -> (N_pad / 16, K_pad / 32, 16, 16, 2) bf16, zero padded: [n block][k block][k pair][n][2].
          One [k block] of one [n block] is one 16 x 64-byte B tile (16 rows of k pairs, 16 columns of n, the
          pair innermost: AMX's "VNNI" layout). Packed once, at compile time.
  x       (M, K) float32 -> (M_pad, K_pad / 32, 16, 2) bf16 bits (uint16), inside the kernel (block `amx_a`): rows
          padded to a multiple of 32 (re-reading the last row; the write-back drops them), k padded with zeros (to at
          least 64).
          A 16-row slice of one [k block] is one A tile. It is stored as uint16 bit patterns because TVM widens
          kernel-internal bfloat16 buffers to float32; the conversion rounds to nearest even, NaN stays NaN.

The product `dense_amx` is (M_pad, N_pad / 16, 16) float32; the schedule computes it in 32 x 32 register tiles
(4 accumulator tiles, 2 A and 2 B tiles: the 8 tile registers) and the write-back `dense_amx_out` adds the bias
and drops the padding; fused elementwise epilogues follow it.

The reference rounds x and the weight to bf16 as the kernel does and multiplies in float32 (numpy), so the
interpreter checks the packing; the kernel's sums differ from it only in summation order.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType

from . import nn
from .nn import _dense_infer
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

TILE_ROWS = 16   # rows of an AMX tile
PAIR = 2         # bf16 values per 32-bit lane (tdpbf16ps multiplies pairs)
K_BLOCK = 32     # k values per tile row (64 bytes of bf16)
N_BLOCK = 16     # n values per B tile row (16 float32 accumulators)
M_TILE = 32      # rows of the register tile: 2 A tiles
N_TILE = 32      # columns of the register tile: 2 B tiles

AMX_A = "amx_a"
DENSE_AMX = "dense_amx"
DENSE_AMX_OUT = "dense_amx_out"

# The unit that computes the products of dense_amx, conv2d_amx and matmul_amx (their `unit` attr): AMX tiles
# (`tdpbf16ps`, backend/cpu/amx.py) or AVX512-BF16 vector dot products (`vdpbf16ps`, backend/cpu/bf16dot.py) on
# CPUs without AMX (AMD Zen 4, Intel Cooper Lake). The operands' layouts are the same for both: one 64-byte B tile
# row (16 columns x a pair of k) is one zmm operand of vdpbf16ps, one A pair (two k of one row) its broadcast lane.
UNITS = ("amx", "avx512bf16")
# The rows a product is padded to, per unit: AMX's register tile is two 16-row A tiles, the vdpbf16ps register tile
# (backend/cpu/bf16dot.py) 8 rows. Zen 4, one core, bf16: ViT-base's 197 rows as 200 instead of 224 (every dense
# layer 11 % less work), ResNet-50's 7x7 1x1 convs 56 pixels instead of 64.
ROW_MULTIPLE = {"amx": M_TILE, "avx512bf16": 8}
UNIT_LABELS = {"amx": "AMX", "avx512bf16": "AVX512-BF16"}  # as reports name them
UNIT_ATTR = Attr("str", "amx")
DP_SUFFIX = "_dp"  # the product block's name on AVX512-BF16: dense_amx_dp, conv2d_amx_dp, matmul_amx_dp


# `vdpbf16ps` for kernels written in TIR: LLVM declares the instruction with <32 x bfloat> operands, and TVM turns
# every bfloat16 vector expression into float32 (its BF16ComputeLegalize), so kernels call this LLVM function with
# int32 vectors instead; the schedule (or the kernel, `pragma_import_llvm`) imports it into the kernel's LLVM module,
# where LLVM inlines it (alwaysinline; linkonce_odr so that the objects of a parallel build link).
DPBF16PS_LL = """
define linkonce_odr <16 x float> @tf_dpbf16ps(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) alwaysinline {
  %ab = bitcast <16 x i32> %a to <32 x bfloat>
  %bb = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %ab, <32 x bfloat> %bb)
  ret <16 x float> %r
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
"""


def product_name(base: str, unit: str) -> str:
    """The product block's name for `unit`: the schedule rules dispatch on it."""
    if unit not in UNITS:
        fail(f"unknown bf16 unit {unit!r}; supported: {', '.join(UNITS)}")
    return base if unit == "amx" else base + DP_SUFFIX

MIN_ROWS = 16    # passes/cpu/amx.py: fewer rows than this keep the float32 kernel (a 32-row tile would idle)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def padded_k(k: int) -> int:
    """K rounded up to whole 32-wide blocks, at least two (TE drops a reduction axis of extent 1, and the tensor
    intrinsic matches a block loop)."""
    return max(_round_up(k, K_BLOCK), 2 * K_BLOCK)


def pack_amx_weight(w: np.ndarray) -> np.ndarray:
    """(N, K) float32 -> (N_pad / 16, K_pad / 32, 16, 16, 2) bfloat16, zero padded (C-contiguous)."""
    import ml_dtypes

    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    n_pad, k_pad = _round_up(n, N_TILE), padded_k(k)
    full = np.zeros((n_pad, k_pad), ml_dtypes.bfloat16)
    full[:n, :k] = w.astype(ml_dtypes.bfloat16)
    return np.ascontiguousarray(
        full.reshape(n_pad // N_BLOCK, N_BLOCK, k_pad // K_BLOCK, K_BLOCK // PAIR, PAIR).transpose(0, 2, 3, 1, 4))


def unpack_amx_weight(wp: np.ndarray, n: int, k: int) -> np.ndarray:
    """The inverse of `pack_amx_weight`, as float32 (N, K)."""
    nb, kb, kp, nt, pair = wp.shape
    full = np.asarray(wp).astype(np.float32).transpose(0, 3, 1, 2, 4).reshape(nb * nt, kb * kp * pair)
    return full[:n, :k]


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even) -> float32."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def bf16_bits(v):
    """A float32 TIR value -> its nearest bfloat16 as uint16 bits (ties to even; a NaN stays a quiet NaN)."""
    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    rounded = (u + tirx.const(0x7FFF, "uint32") + ((u >> 16) & one)) >> 16
    # a NaN keeps its sign and becomes quiet (rounding could carry it into an infinity); the test is on the bits:
    # TVM folds v != v to false, and LLVM scalarizes a vector isnan select
    nan = (u & tirx.const(0x7FFFFFFF, "uint32")) > tirx.const(0x7F800000, "uint32")
    return tirx.Select(nan, (u >> 16) | tirx.const(0x40, "uint32"), rounded).astype("uint16")


def operand_bits(v, keep, dtype: str):
    """An activation element as bf16 bits (uint16): a float32 one rounded (`bf16_bits`), a bfloat16 one (stored so
    by passes/cpu/bf16_activations.py) as it is; zero where `keep` is false (padding; None: everywhere). `dtype`:
    the tensor's."""
    if str(dtype) == "bfloat16":
        bits = tirx.reinterpret("uint16", v)
        return bits if keep is None else tirx.if_then_else(keep, bits, tirx.const(0, "uint16"))
    return bf16_bits(v if keep is None else tirx.if_then_else(keep, v, tirx.const(0.0, "float32")))


ACTIVATION_DTYPES = ("float32", "bfloat16")  # the dtypes of a bf16_input op's input 0


def pair_half(w, t):
    """Half `t` (0: low, 1: high) of a uint32 word holding a pair of bf16 bits, as uint16 bits (matmul_amx's B words
    hold a k pair: one 32-bit lane of a B tile)."""
    return tirx.Cast("uint16", tirx.shift_right(w, tirx.Cast("uint32", t) * tirx.const(16, "uint32")))


def from_bf16_bits(b):
    """uint16 bfloat16 bits -> the float32 value (exact)."""
    return tirx.reinterpret("float32", b.astype("uint32") << tirx.const(16, "uint32"))


def padded_rows(m: int, unit: str) -> int:
    """`m` product rows padded for `unit`'s register tile (ROW_MULTIPLE)."""
    return _round_up(m, ROW_MULTIPLE[unit])


def a_tiles(x: te.Tensor, k_blocks: int, name: str, unit: str = "amx") -> te.Tensor:
    """x (..., M, K) float32 -> (..., M_pad, k_blocks, 16, 2) bf16 bits, the A-tile layout: rows padded for `unit`
    (`padded_rows`, re-reading the last row), K padded with zeros to `k_blocks` blocks of 32."""
    *lead, m, k = (int(d) for d in x.shape)
    nl, m_pad = len(lead), padded_rows(m, unit)

    def value(*i):
        row, kb, kp, kt = i[nl:]
        col = kb * K_BLOCK + kp * PAIR + kt
        whole = k_blocks * K_BLOCK == k  # else zeros past k (an inf there times a zero weight would give NaN)
        # clamped only where there is padding: a min() in the vectorized column's index made LLVM gather it, one
        # scalar load per element (the attention's q conversion took most of its kernel)
        v = x(*i[:nl], row if m_pad == m else tirx.min(row, m - 1), col if whole else tirx.min(col, k - 1))
        return bf16_bits(v if whole else tirx.if_then_else(col < k, v, tirx.const(0.0, "float32")))

    return te.compute((*lead, m_pad, k_blocks, K_BLOCK // PAIR, PAIR), value, name=name,
                      tag="injective")


def dense_amx_compute(x: te.Tensor, wp: te.Tensor, bias: te.Tensor | None, *, n: int, unit: str = "amx"
                      ) -> te.Tensor:
    """(M, K) float32 x packed bf16 weight -> (M, N) float32 = bf16(x) @ bf16(w).T (+ bias)."""
    n_blocks, k_blocks = int(wp.shape[0]), int(wp.shape[1])
    m, m_pad = int(x.shape[0]), padded_rows(int(x.shape[0]), unit)
    xa = a_tiles(x, k_blocks, AMX_A, unit)
    rkb = te.reduce_axis((0, k_blocks), name="rkb")
    rkp = te.reduce_axis((0, K_BLOCK // PAIR), name="rkp")
    rkt = te.reduce_axis((0, PAIR), name="rkt")
    prod = te.compute(
        (m_pad, n_blocks, N_BLOCK),
        lambda i, jb, jt: te.sum(from_bf16_bits(xa[i, rkb, rkp, rkt]) * wp[jb, rkb, rkp, jt, rkt].astype("float32"),
                                 axis=[rkb, rkp, rkt]),
        name=product_name(DENSE_AMX, unit), tag=DENSE_AMX)

    def out(i, j):
        v = prod[i, j // N_BLOCK, j % N_BLOCK]
        return v if bias is None else v + bias[j]

    return te.compute((m, n), out, name=DENSE_AMX_OUT, tag="broadcast" if bias is not None else "injective")


def _infer(types, *, n, k, unit="amx"):
    x, wp = types[0], types[1]
    if x.dtype != "float32" or wp.dtype != "bfloat16":
        fail(f"expects a float32 x and a bfloat16 packed weight, got {x} and {wp}")
    if (wp.rank != 5 or wp.shape[2:] != (K_BLOCK // PAIR, N_BLOCK, PAIR) or wp.shape[0] * N_BLOCK < n
            or wp.shape[1] * K_BLOCK < k):
        fail(f"packed weight {wp} does not match n={n}, k={k}")
    return _dense_infer([x, TensorType((n, k), "float32")] + types[2:])


def _reference(x, wp, b=None, *, n, k, unit="amx"):
    return nn._dense_ref(round_bf16(x), unpack_amx_weight(wp, n, k), b)


def _lower(x, wp, b=None, *, n, k, unit):
    return dense_amx_compute(x, wp, b, n=n, unit=unit)


dense_amx = defop(
    "dense_amx", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(2, 3),
    attrs={"n": Attr("int"), "k": Attr("int"), "unit": UNIT_ATTR},
    reference=_reference, lower=_lower, grad=NO_RULE_YET, flops=nn.gemm_flops,
    doc="dense in bfloat16 on AMX tiles (or AVX512-BF16 dot products) with float32 sums; weight (N, K) stored as (N/16, K/32, 16, 16, 2) bf16.")
