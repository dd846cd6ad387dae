"""Winograd F(m x m, 3 x 3) convolution on NCHW[16]c activations: transforms, TE compute and CPU schedule.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from tvm import s_tir, te, tirx, topi

from compiler.backend.cpu.common import (
    Knobs, Rule, attempt, inline_all, largest_divisor, loop_extent, register_tile, root_blocks, schedule_spatial,
    vector_lanes)

BLOCK = 16            # channel lanes of the NCHW[16]c activations
WINO_PAD = "winograd_pad"
WINO_INPUT_ROWS = "winograd_input_rows"
WINO_INPUT = "winograd_input"
WINO_GEMM = "winograd_gemm"
WINO_OUTPUT_COLS = "winograd_output_cols"
WINO_OUTPUT = "winograd_output"
GEMM_P_TILE = 4       # register tile of the batched GEMM: tiles ... (measured: 6 x 64, 8 x 32, 6 x 32 are slower)
GEMM_OC_TILES = (64, 32, 16)  # ... x output channels (4 x 64 fp32 = 16 AVX-512 accumulators)

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


def transform_weight(w: np.ndarray, m: int) -> np.ndarray:
    """OIHW 3x3 weight -> U = G g G^T packed as (alpha, alpha, OC/nb, IC, nb) float32, nb = gemm_oc_tile(OC)."""
    _, g, _ = matrices(m)
    u = np.einsum("ak,oikl,bl->abio", g, np.asarray(w, np.float64), g)  # (alpha, alpha, IC, OC)
    alpha, _, ic, oc = u.shape
    nb = gemm_oc_tile(oc)
    return np.ascontiguousarray(u.reshape(alpha, alpha, ic, oc // nb, nb).transpose(0, 1, 3, 2, 4)).astype(np.float32)


def _tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    return -(-oh // m), -(-ow // m)


def output_size(h: int, w: int, pads) -> tuple[int, int]:
    top, left, bottom, right = pads
    return h + top + bottom - 2, w + left + right - 2


def reference(x: np.ndarray, u: np.ndarray, bias, *, pads, tile: int, out_channels: int) -> np.ndarray:
    """The algorithm in numpy (float32 like the kernel): x NCHW[16]c, U from `transform_weight`; NCHW[16]c out."""
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
                            out_channels: int) -> te.Tensor:
    """x (N, IC/16, H, W, 16), U (alpha, alpha, OC/nb, IC, nb) -> (N, OC/16, OH, OW, 16), 3x3 stride 1."""
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
    tiles_pad = -(-tiles // GEMM_P_TILE) * GEMM_P_TILE  # whole register tiles; the extra rows repeat the last

    def rows_body(eps, j, p, c):  # (B^T d)[eps, j] = sum_i B^T[eps, i] d[i, j]
        if tiles_pad != tiles:
            p = tirx.min(p, tiles - 1)
        img, t = p // per_image, p % per_image
        y0, x0 = t // tw * m, t % tw * m
        d = [xp[img, c // b, y0 + i, x0 + j, c % b] for i in range(alpha)]
        return _select(eps, [_sparse_sum(bt[e], d) for e in range(alpha)])

    rows = te.compute((alpha, alpha, tiles_pad, ic), rows_body, name=WINO_INPUT_ROWS)
    # V[eps, nu] = sum_j (B^T d)[eps, j] B^T[nu, j]
    v = te.compute((alpha, alpha, tiles_pad, ic),
                   lambda e, f, p, c: _select(f, [_sparse_sum(bt[k], [rows[e, j, p, c] for j in range(alpha)])
                                                  for k in range(alpha)]), name=WINO_INPUT)
    rk = te.reduce_axis((0, ic), name="rk")
    mm = te.compute((alpha, alpha, tiles_pad, out_channels),
                    lambda e, f, p, o: te.sum(v[e, f, p, rk] * u[e, f, o // nb, rk, o % nb], axis=rk),
                    name=WINO_GEMM)
    # (M A)[i, r] = sum_j M[i, j] A^T[r, j]
    cols = te.compute((alpha, m, tiles, out_channels),
                      lambda i, r, p, o: _select(r, [_sparse_sum(at[k], [mm[i, j, p, o] for j in range(alpha)])
                                                     for k in range(m)]), name=WINO_OUTPUT_COLS)

    def y_body(img, ob, yy, xx, lane):  # Y[q, r] = sum_i A^T[q, i] (M A)[i, r]
        p = img * per_image + yy // m * tw + xx // m
        o = ob * b + lane
        val = _select(yy % m, [_sparse_sum(at[q], [cols[i, xx % m, p, o] for i in range(alpha)])
                               for q in range(m)])
        return val if bias is None else val + bias[o]

    return te.compute((n, out_channels // b, oh, ow, b), y_body, name=WINO_OUTPUT, tag="winograd")


# ---------------------------------------------------------------------------------------------- schedule

@dataclass(frozen=True)
class WinogradKnobs(Knobs):
    p_tile: int = GEMM_P_TILE  # register tile of the batched GEMM: tiles x output channels

    SPACE: ClassVar[dict[str, tuple]] = {"p_tile": (2, 4, 6, 8)}


def schedule_winograd(sch: s_tir.Schedule, target, knobs: WinogradKnobs = WinogradKnobs()) -> None:
    """pad: parallel rows, vector lanes. input transform: parallel over (tile, channel block) > per row eps: its
    B^T d row, then its alpha outputs; unrolled, 16 lanes a vector. GEMM: parallel over (eps, nu, oc tile, tile
    group) > [4 tiles x nb channels] accumulators in registers, k outside. output: parallel over (image, oc block,
    tile row) > tile > per column r: its M A column, then its m outputs; unrolled, 16 lanes a vector, the epilogue
    inlined into its stores."""
    lanes = vector_lanes(target)
    # every stage but the output transform, which is inlined into the epilogue
    inline_all(sch, keep={WINO_PAD, WINO_INPUT_ROWS, WINO_INPUT, WINO_GEMM, WINO_OUTPUT_COLS})
    outs = sch.get_output_blocks(sch.get_sblock("root"))
    if len(outs) != 1 or len(sch.get_loops(outs[0])) != 5:
        raise ValueError("winograd epilogue is not a single NCHW[16]c block")
    out = outs[0]
    m = int(sch.get(sch.get_sblock(WINO_GEMM)).reads[1].source.shape[0]) - 2  # alpha - 2, from U's shape
    _schedule_output(sch, out, m, lanes)
    _schedule_gemm(sch, lanes, knobs.p_tile)
    _schedule_input(sch, lanes)
    for block in root_blocks(sch):
        if sch.get(block).name_hint == WINO_PAD:
            schedule_spatial(sch, block, lanes)


def _schedule_output(sch, out, m, lanes):
    n, ob, yy, xx, lane = sch.get_loops(out)
    ty, yi = sch.split(yy, [None, m])
    tx, xi = sch.split(xx, [None, m])
    sch.reorder(n, ob, ty, tx, xi, yi, lane)  # column r of (M A) is read by the m outputs of column r
    sch.parallel(sch.fuse(n, ob, ty))
    sch.unroll(yi)
    sch.unroll(xi)
    sch.vectorize(lane)
    # column r of M A (alpha x 16 values) right before the m outputs that read it: 384 bytes, a stack array (a
    # buffer of 1 KB or more would be a heap workspace taken and freed per tile)
    cols = sch.get_sblock(WINO_OUTPUT_COLS)
    sch.compute_at(cols, xi)
    i, o = sch.get_loops(cols)[-2:]  # the tile's p and column r are single points: no loops
    sch.unroll(i)
    sch.vectorize(o)


def _schedule_gemm(sch, lanes, p_tile):
    mm = sch.get_sblock(WINO_GEMM)
    nb = int(sch.get(mm).reads[1].source.shape[4])
    wb = sch.cache_write(mm, 0, "local")  # mm accumulates in a local tile; wb copies it to M
    e, f, p, o = sch.get_loops(wb)
    pt = largest_divisor(loop_extent(sch, p), p_tile)
    po, pi = sch.split(p, [None, pt])
    oo, oi = sch.split(o, [None, nb])
    sch.reorder(e, f, oo, po, pi, oi)
    tile = sch.fuse(e, f, oo, po)
    sch.parallel(tile)
    sch.compute_at(mm, tile, preserve_unit_loops=True)
    vec = min(lanes, nb)
    mk = register_tile(sch, mm, vec)
    sch.unroll(pi)
    oio, oil = sch.split(oi, [None, vec])
    sch.unroll(oio)
    sch.vectorize(oil)
    init = sch.decompose_reduction(mm, mk)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    attempt(lambda: sch.unroll(sch.get_loops(init)[-2]))


def _schedule_input(sch, lanes):
    v = sch.get_sblock(WINO_INPUT)
    e, f, p, c = sch.get_loops(v)
    cb, cl = sch.split(c, [None, BLOCK])
    sch.reorder(p, cb, e, f, cl)
    tile = sch.fuse(p, cb)
    sch.parallel(tile)
    sch.unroll(e)
    sch.unroll(f)
    sch.vectorize(cl)
    # row eps of B^T d (alpha x 16 values) right before the alpha outputs that read it: a stack array, as above
    rows = sch.get_sblock(WINO_INPUT_ROWS)
    sch.compute_at(rows, e)
    j, c = sch.get_loops(rows)[-2:]
    sch.unroll(j)
    sch.vectorize(c)


winograd_rule = Rule("winograd", schedule_winograd, blocks=(WINO_GEMM,), knobs=WinogradKnobs())
