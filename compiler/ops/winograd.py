"""Winograd F(m x m, 3 x 3) convolution on NCHW[16]c activations: the op, its transforms and TE compute.

For a stride-1, dilation-1, 3x3 conv, each m x m output tile needs an alpha x alpha input tile (alpha = m + 2):

    Y = A^T [ U (.) V ] A,     U = G g G^T (per output/input channel pair, at compile time),  V = B^T d B

and the element-wise products summed over input channels are alpha^2 independent matrix products
M[xi] = V[xi] @ U[xi] of (tiles x IC) by (IC x OC). F(4, 3) does 36 multiplies per 16 outputs where the direct
conv does 144: 4x fewer, paid for by the input and output transforms and by two trips through memory (V and M).

The kernel is six TE stages in one PrimFunc; each transform is two 1-D passes (rows, then columns):
  winograd_pad          the input zero-padded to whole tiles (N, IC/16, th*m + 2, tw*m + 2, 16)
  winograd_input_rows   B^T d per tile (alpha, alpha, P, IC), P = N * th * tw tiles
  winograd_input        V = (B^T d) B (alpha, alpha, P, IC)
  winograd_gemm         M (alpha, alpha, P, OC) = V @ U per (eps, nu); U is (alpha, alpha, OC/nb, IC, nb)
  winograd_output_cols  M A (alpha, m, P, OC)
  winograd_output       (N, OC/16, OH, OW, 16) = A^T (M A) + bias, the conv's fused epilogue inlined after it
Each transform output is a sum of at most alpha non-zero terms (+x, -x, c*x) of the previous pass, selected by
the unrolled loop index, so no multiply by 0 or 1 reaches the machine code. The first version wrote
V[eps, nu] = sum_ij B^T[eps, i] d[i, j] B^T[nu, j] in one pass and left TIR's common-subexpression pass to find
the shared row sums in the 36 unrolled outputs: 3-6 s to compile each kernel (ResNet-50: 31 s in all). Two passes
need no CSE: 0.3 s a kernel (ResNet-50: ~4 s in all), at the same speed (benchmarks/results/winograd.md).

The op `winograd_conv2d`: a stride-1, dilation-1, ungrouped 3x3 conv on NCHW[16]c activations whose weight was
transformed at compile time (U = G g G^T, `transform_weight`). The `winograd` pass
(passes/cpu/winograd.py) rewrites `conv2d_nchwc` into it where it is faster. Its reference runs the same
algorithm in numpy (input transform, batched products, output transform); the tests compare it with the direct
conv as well.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

from tensorforge.compiler.ir.types import TensorType

from .amx import (K_BLOCK, N_TILE, PAIR, bf16_bits, from_bf16_bits, pack_amx_weight, padded_k, padded_rows,
                  round_bf16)
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

BLOCK = 16            # channel lanes of the NCHW[16]c activations
WINO_PAD = "winograd_pad"
WINO_INPUT_ROWS = "winograd_input_rows"
WINO_INPUT = "winograd_input"
WINO_GEMM = "winograd_gemm"
WINO_OUTPUT_COLS = "winograd_output_cols"
WINO_OUTPUT = "winograd_output"
# the compute pads the tiles to whole groups of GEMM_P_TILE; the CPU schedule's knob (WinogradKnobs) starts from it
GEMM_P_TILE = 4       # register tile of the batched GEMM: tiles ... (measured: 6 x 64, 8 x 32, 6 x 32 are slower)
GEMM_OC_TILES = (64, 32, 16)  # ... x output channels (4 x 64 fp32 = 16 AVX-512 accumulators)
# bf16 on AVX512-BF16 (unit "avx512bf16", backend/cpu/bf16dot.py): V as bf16 bits in the AMX A-tile layout, U as the
# AMX dense weight layout per (eps, nu), the products `vdpbf16ps` register tiles. Only F(2, 3): with V and U rounded
# to bf16, F(4, 3)'s transforms carry the rounding to 5 % of a ResNet layer's largest output (F(2, 3): 0.4 %, the
# direct bf16 conv 0.27 %).
WINO_GEMM_DP = "winograd_gemm_dp"
DP_TILE = 2

# Lavin & Gray's matrices (points 0, +-1, +-2, inf): A^T (m x alpha), G (alpha x 3), B^T (alpha x alpha).
_MATRICES = {
    2: (np.array([[1, 1, 1, 0], [0, 1, -1, -1]]),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])),
    4: (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])),
}
TILE_SIZES = tuple(_MATRICES)


def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of F(m, 3) in float64."""
    at, g, bt = _MATRICES[m]
    return at.astype(np.float64), g.astype(np.float64), bt.astype(np.float64)


def gemm_oc_tile(out_channels: int) -> int:
    return next(t for t in GEMM_OC_TILES if out_channels % t == 0)


def transform_weight(w: np.ndarray, m: int, aligned: bool = False) -> np.ndarray:
    """OIHW 3x3 weight -> U = G g G^T packed as (alpha, alpha, OC/nb, IC, nb) float32, nb = gemm_oc_tile(OC);
    `aligned`: 64-byte aligned (a compiled model then runs on it where it lies, ops/packed.py `_laid_out`).
    In float64, one block of nb output channels at a time: the block's 3 x 3 kernels times G (x) G, a (9, alpha^2)
    matrix, written into its place (an unoptimized einsum over all five indices took 0.57 s of ResNet-50's
    compile, one product over the whole weight 0.2 s for 512 x 512 in fresh memory, the blocks 0.045 s)."""
    from tensorforge.runtime.plan import aligned_empty

    _, g, _ = matrices(m)
    oc, ic = w.shape[:2]
    alpha = g.shape[0]
    kron = np.einsum("ak,bl->klab", g, g).reshape(9, alpha * alpha)  # vec(G g G^T) = vec(g) @ kron
    nb = gemm_oc_tile(oc)
    shape = (alpha, alpha, oc // nb, ic, nb)
    out = aligned_empty(shape, np.float32) if aligned else np.empty(shape, np.float32)
    flat = np.asarray(w).reshape(oc, ic * 9)
    for j in range(oc // nb):
        u = flat[j * nb:(j + 1) * nb].reshape(nb * ic, 9).astype(np.float64) @ kron  # (nb * IC, alpha^2)
        np.copyto(out[:, :, j], u.reshape(nb, ic, alpha, alpha).transpose(2, 3, 1, 0), casting="same_kind")
    return out


def transform_weight_dp(w: np.ndarray, m: int = DP_TILE) -> np.ndarray:
    """OIHW 3x3 weight -> U = G g G^T as bf16, per (eps, nu) the AMX dense weight layout of U[eps, nu]^T (OC x IC):
    (alpha, alpha, OC/16, IC/32, 16, 16, 2) (ops/amx.py pack_amx_weight)."""
    _, g, _ = matrices(m)
    u = np.einsum("ak,oikl,bl->aboi", g, np.asarray(w, np.float64), g).astype(np.float32)  # (alpha, alpha, OC, IC)
    return np.stack([np.stack([pack_amx_weight(u[a, b]) for b in range(u.shape[1])]) for a in range(u.shape[0])])


def _unpack_dp(u: np.ndarray, ic: int) -> np.ndarray:
    """`transform_weight_dp`'s layout -> float32 (alpha, alpha, IC, OC)."""
    alpha, _, ob, kb, kp, oi, pair = u.shape
    full = np.asarray(u).astype(np.float32).transpose(0, 1, 3, 4, 6, 2, 5)  # (a, b, kb, kp, pair, ob, oi)
    return full.reshape(alpha, alpha, kb * kp * pair, ob * oi)[:, :, :ic]


def _tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    return -(-oh // m), -(-ow // m)


def output_size(h: int, w: int, pads) -> tuple[int, int]:
    top, left, bottom, right = pads
    return h + top + bottom - 2, w + left + right - 2


def reference(x: np.ndarray, u: np.ndarray, bias, *, pads, tile: int, out_channels: int, unit: str = "") -> np.ndarray:
    """The algorithm in numpy (float32 like the kernel): x NCHW[16]c, U from `transform_weight` (with `unit`, from
    `transform_weight_dp`, and V rounded to bf16); NCHW[16]c out."""
    at, _, bt = (a.astype(np.float32) for a in matrices(tile))
    m, alpha = tile, tile + 2
    n, icb, h, w, b = x.shape
    oh, ow = output_size(h, w, pads)
    th, tw = _tiles(oh, ow, m)
    top, left, _, _ = pads
    xp = np.zeros((n, icb, th * m + 2, tw * m + 2, b), np.float32)
    hh, ww = min(h, xp.shape[2] - top), min(w, xp.shape[3] - left)
    xp[:, :, top:top + hh, left:left + ww] = x[:, :, :hh, :ww]
    xc = xp.transpose(0, 2, 3, 1, 4).reshape(n, th * m + 2, tw * m + 2, icb * b)
    rows = np.arange(th)[:, None] * m + np.arange(alpha)[None]  # (th, alpha)
    cols = np.arange(tw)[:, None] * m + np.arange(alpha)[None]
    d = xc[:, rows[:, :, None, None], cols[None, None]]  # (n, th, alpha, tw, alpha, IC)
    v = np.einsum("ea,ntaubc,fb->efntuc", bt, d, bt, optimize=True).reshape(alpha, alpha, n * th * tw, -1)
    if unit:
        uu = _unpack_dp(u, icb * b)
        v = round_bf16(v)
    else:
        alpha_, _, ocb_n, ic, nb = u.shape
        uu = u.transpose(0, 1, 3, 2, 4).reshape(alpha, alpha, ic, ocb_n * nb)
    mm = np.matmul(v, uu)  # (alpha, alpha, P, OC)
    y = np.einsum("ia,abpo,jb->pijo", at, mm, at, optimize=True).reshape(n, th, tw, m, m, -1)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, th * m, tw * m, -1)[:, :oh, :ow, :out_channels]
    if bias is not None:
        y = y + bias.astype(np.float32)
    return np.ascontiguousarray(y.reshape(n, oh, ow, out_channels // BLOCK, BLOCK).transpose(0, 3, 1, 2, 4))


# ---------------------------------------------------------------------------------------------- TE compute

def _sparse_sum(coeffs, terms):
    """sum_i coeffs[i] * terms[i] over the non-zero coefficients, +-1 as adds and subtractions."""
    expr = None
    for c, t in zip(coeffs, terms):
        if c == 0:
            continue
        if c == 1:
            e, neg = t, False
        elif c == -1:
            e, neg = t, True
        else:
            e, neg = t * float(c), False
        if expr is None:
            expr = -e if neg else e
        else:
            expr = expr - e if neg else expr + e
    return expr if expr is not None else tirx.const(0.0, "float32")


def _select(index, exprs):
    """exprs[index] for a loop variable `index`; unrolled, the chain folds to one expression."""
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(index == i, exprs[i], out)
    return out


def conv2d_winograd_compute(x: te.Tensor, u: te.Tensor, bias: te.Tensor | None, *, pads, tile: int,
                            out_channels: int, unit: str = "") -> te.Tensor:
    """x (N, IC/16, H, W, 16), U (alpha, alpha, OC/nb, IC, nb) -> (N, OC/16, OH, OW, 16), 3x3 stride 1. With `unit`
    ("avx512bf16"): U from `transform_weight_dp`, V as bf16 bits, the products in bf16 with float32 sums."""
    at, _, bt = matrices(tile)
    m, alpha = tile, tile + 2
    n, icb, h, w, b = (int(d) for d in x.shape)
    nb = int(u.shape[4])
    ic = icb * b
    oh, ow = output_size(h, w, pads)
    th, tw = _tiles(oh, ow, m)
    top, left, _, _ = pads
    bottom, right = th * m + 2 - h - top, tw * m + 2 - w - left
    xp = x
    if top or left or bottom > 0 or right > 0:
        xp = topi.nn.pad(x, [0, 0, top, left, 0], [0, 0, max(bottom, 0), max(right, 0), 0], name=WINO_PAD)
    per_image = th * tw
    tiles = n * per_image
    widen = (lambda v: v.astype("float32")) if unit else (lambda v: v)  # a bfloat16 input (bf16_activations)
    # whole register tiles; the extra rows repeat the last
    tiles_pad = padded_rows(tiles, unit) if unit else -(-tiles // GEMM_P_TILE) * GEMM_P_TILE

    def rows_body(eps, j, p, c):  # (B^T d)[eps, j] = sum_i B^T[eps, i] d[i, j]
        if tiles_pad != tiles:
            p = tirx.min(p, tiles - 1)
        img, t = p // per_image, p % per_image
        y0, x0 = t // tw * m, t % tw * m
        d = [widen(xp[img, c // b, y0 + i, x0 + j, c % b]) for i in range(alpha)]
        return _select(eps, [_sparse_sum(bt[e], d) for e in range(alpha)])

    rows = te.compute((alpha, alpha, tiles_pad, ic), rows_body, name=WINO_INPUT_ROWS)
    # V[eps, nu] = sum_j (B^T d)[eps, j] B^T[nu, j]
    def v_body(e, f, p, c):
        return _select(f, [_sparse_sum(bt[k], [rows[e, j, p, c] for j in range(alpha)]) for k in range(alpha)])

    if unit:  # V (alpha, alpha, P, IC/32, 16, 2) bf16 bits; M (alpha, alpha, P, OC/16, 16)
        kb = int(u.shape[3])  # padded_k: at least two blocks, the second of 32 channels zeros
        whole = kb * K_BLOCK == ic

        def v_bits(e, f, p, c, kp, t):
            k = c * K_BLOCK + kp * PAIR + t
            if whole:
                return bf16_bits(v_body(e, f, p, k))
            return tirx.if_then_else(k < ic, bf16_bits(v_body(e, f, p, tirx.min(k, ic - 1))), tirx.const(0, "uint16"))

        v = te.compute((alpha, alpha, tiles_pad, kb, K_BLOCK // PAIR, PAIR), v_bits, name=WINO_INPUT)
        rkb = te.reduce_axis((0, kb), name="rkb")
        rkp = te.reduce_axis((0, K_BLOCK // PAIR), name="rkp")
        rkt = te.reduce_axis((0, PAIR), name="rkt")
        prod = te.compute((alpha, alpha, tiles_pad, out_channels // BLOCK, BLOCK),
                          lambda e, f, p, ob, oi: te.sum(from_bf16_bits(v[e, f, p, rkb, rkp, rkt])
                                                         * u[e, f, ob, rkb, rkp, oi, rkt].astype("float32"),
                                                         axis=[rkb, rkp, rkt]), name=WINO_GEMM_DP)

        def mm(e, f, p, o):
            return prod[e, f, p, o // BLOCK, o % BLOCK]
    else:
        v = te.compute((alpha, alpha, tiles_pad, ic), v_body, name=WINO_INPUT)
        rk = te.reduce_axis((0, ic), name="rk")
        mm = te.compute((alpha, alpha, tiles_pad, out_channels),
                        lambda e, f, p, o: te.sum(v[e, f, p, rk] * u[e, f, o // nb, rk, o % nb], axis=rk),
                        name=WINO_GEMM)
    # (M A)[i, r] = sum_j M[i, j] A^T[r, j]
    cols = te.compute((alpha, m, tiles, out_channels),
                      lambda i, r, p, o: _select(r, [_sparse_sum(at[k], [mm(i, j, p, o) for j in range(alpha)])
                                                     for k in range(m)]), name=WINO_OUTPUT_COLS)

    def y_body(img, ob, yy, xx, lane):  # Y[q, r] = sum_i A^T[q, i] (M A)[i, r]
        p = img * per_image + yy // m * tw + xx // m
        o = ob * b + lane
        val = _select(yy % m, [_sparse_sum(at[q], [cols[i, xx % m, p, o] for i in range(alpha)])
                               for q in range(m)])
        return val if bias is None else val + bias[o]

    return te.compute((n, out_channels // b, oh, ow, b), y_body, name=WINO_OUTPUT, tag="winograd")


# ---------------------------------------------------------------------------------------------- the op

def _infer(types, *, pads, tile, out_channels, unit=""):
    x, u = types[0], types[1]
    if tile not in TILE_SIZES:
        fail(f"tile {tile} is not one of {TILE_SIZES}")
    if x.rank != 5 or x.shape[4] != BLOCK:
        fail(f"expects an NCHW[{BLOCK}]c input, got {x}")
    n, icb, h, w, b = x.shape
    alpha = tile + 2
    if unit:
        if unit != "avx512bf16" or tile != DP_TILE:
            fail(f"unit {unit!r} with tile {tile}: only avx512bf16 with tile {DP_TILE}")
        want = (alpha, alpha, out_channels // BLOCK, padded_k(icb * b) // K_BLOCK, K_BLOCK // PAIR, BLOCK, PAIR)
        if u.dtype != "bfloat16" or u.shape != want or (icb * b) % K_BLOCK or out_channels % N_TILE:
            fail(f"transformed weight {u} is not bfloat16{list(want)} (channels multiples of 32)")
        if x.dtype not in ("float32", "bfloat16"):
            fail(f"expects a float32 or bfloat16 input, got {x}")
    elif (u.rank != 5 or u.shape[:2] != (alpha, alpha) or u.shape[3] != icb * b
            or u.shape[2] * u.shape[4] != out_channels or out_channels % b):
        fail(f"transformed weight {u} is not ({alpha}, {alpha}, OC/nb, {icb * b}, nb) for {out_channels} "
             f"output channels")
    elif x.dtype != u.dtype:
        fail(f"input {x} and weight {u} differ in dtype")
    if len(types) == 3 and types[2].shape != (out_channels,):
        fail(f"bias must have shape ({out_channels},), got {types[2]}")
    oh, ow = output_size(h, w, pads)
    if oh <= 0 or ow <= 0:
        fail(f"a 3x3 kernel does not fit input {h}x{w} with pads {pads}")
    return TensorType((n, out_channels // b, oh, ow, b), "float32" if unit else x.dtype)


def _reference(x, u, b=None, *, pads, tile, out_channels, unit=""):
    return reference(x, u, b, pads=pads, tile=tile, out_channels=out_channels, unit=unit)


def _lower(x, u, b=None, *, pads, tile, out_channels, unit=""):
    return conv2d_winograd_compute(x, u, b, pads=pads, tile=tile, out_channels=out_channels, unit=unit)


winograd_conv2d = defop(
    "winograd_conv2d", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(2, 3),
    attrs={"pads": Attr("ints", (0, 0, 0, 0)), "tile": Attr("int", 4), "out_channels": Attr("int"),
           "unit": Attr("str", "")},
    reference=_reference, lower=_lower, grad=NO_RULE_YET, bf16_input=True,
    # counted as the direct 3x3 conv it replaces; input (N, IC/b, H, W, b)
    flops=lambda n: 2 * n.outputs[0].type.numel * n.inputs[0].type.shape[1] * n.inputs[0].type.shape[4] * 9,
    doc="3x3 conv (stride 1, dilation 1, groups 1) by Winograd F(tile x tile, 3 x 3) on NCHW[16]c activations; "
        "weight U = G g G^T as (tile+2, tile+2, OC/nb, IC, nb); output NCHW[16]c. With unit avx512bf16: F(2 x 2, 3 x 3) "
        "in bfloat16 with float32 sums (`vdpbf16ps`), U in the AMX dense weight layout per (eps, nu), the input float32 "
        "or bfloat16 (V is rounded to bfloat16 either way).")
