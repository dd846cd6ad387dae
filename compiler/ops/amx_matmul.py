"""Batched matmul of two activations on the CPU's matrix unit (Intel AMX): `matmul_amx`, attention's two products
in the CPU's bf16 mode (passes/cpu/amx.py splits `attention` into them around a float32 softmax).

    matmul_amx(a, b) = bf16(a) @ bf16(b), float32 sums; a (..., M, K), b (..., K, N), the same leading dims;
    with transpose_b, b is (..., N, K) and read transposed by the conversion (attention's keys, no transpose kernel).

Both operands are rounded and laid out in the kernel: a as dense_amx's x (`amx_mm_a`: (..., M_pad, K_pad/32, 16, 2)
bf16 bits), b as B tiles (`amx_mm_b`: (..., N_pad/16, K_pad/32, 16, 16) uint32 words, [n block][k block][k pair][n],
each word a k pair's bf16 bits, low half first: the B tile's bytes. One word per lane lets the conversion store 16
columns as one vector; as uint16 pairs the lanes ran across two rows of b and LLVM gathered them, one scalar load
per element: most of the attention products' kernel time); the product `matmul_amx` (..., M_pad, N_pad/16, 16) is computed by the dense intrinsic in 32 x 32 tiles
(backend/cpu/amx.py), and `matmul_amx_out` drops the padding.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType

from .amx import (K_BLOCK, M_TILE, N_BLOCK, N_TILE, PAIR, UNIT_ATTR, _round_up, a_tiles, bf16_bits, from_bf16_bits,
                  padded_k, pair_half, product_name, round_bf16)
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

AMX_MM_A = "amx_mm_a"
AMX_MM_B = "amx_mm_b"
MATMUL_AMX = "matmul_amx"
MATMUL_AMX_OUT = "matmul_amx_out"
MIN_ROWS = 16  # passes/cpu/amx.py: fewer rows (or columns) than this stay on the float32 kernels


def pair_words(t: te.Tensor, nb: int, rows: int, cols: int, rows_pad: int, cols_pad: int, transposed: bool,
               name: str) -> te.Tensor:
    """B tiles of the matrix `t` (..., rows, cols), or of its transpose with `transposed` (t is (..., cols, rows)):
    (..., cols_pad / 16, rows_pad / 32, 16, 16) uint32 words, [col block][row block][row pair][col], a word the
    pair's bf16 bits, low half first; zeros past the edges."""
    zero = tirx.const(0.0, "float32")

    def value(*i):
        cblk, rblk, rp, ct = i[nb:]
        col = cblk * N_BLOCK + ct
        c = col if cols == cols_pad else tirx.min(col, cols - 1)  # clamped only where padded (a min() in a
        # vectorized index makes LLVM gather it)

        def bits(rt):
            row = rblk * K_BLOCK + rp * PAIR + rt
            r = row if rows == rows_pad else tirx.min(row, rows - 1)
            x = t(*i[:nb], c, r) if transposed else t(*i[:nb], r, c)
            inside = [cond for cond, pad in ((row < rows, rows != rows_pad), (col < cols, cols != cols_pad)) if pad]
            return bf16_bits(tirx.if_then_else(tirx.all(*inside), x, zero) if inside else x).astype("uint32")

        return bits(0) | (bits(1) << tirx.const(16, "uint32"))

    return te.compute((*[int(d) for d in t.shape[:nb]], cols_pad // N_BLOCK, rows_pad // K_BLOCK, K_BLOCK // PAIR,
                       N_BLOCK), value, name=name, tag="injective")


def tile_product(a: te.Tensor, b: te.Tensor, nb: int, name: str, tag: str) -> te.Tensor:
    """a (..., M_pad, KB, 16, 2) bf16 bits x b (..., N_pad / 16, KB, 16, 16) pair words -> (..., M_pad, N_pad / 16,
    16) float32 sums."""
    *batch, m_pad, kb, _, _ = (int(d) for d in a.shape)
    n_blocks = int(b.shape[nb])
    rkb = te.reduce_axis((0, kb), name="rkb")
    rkp = te.reduce_axis((0, K_BLOCK // PAIR), name="rkp")
    rkt = te.reduce_axis((0, PAIR), name="rkt")
    return te.compute(
        (*batch, m_pad, n_blocks, N_BLOCK),
        lambda *i: te.sum(from_bf16_bits(a(*i[:nb], i[nb], rkb, rkp, rkt))
                          * from_bf16_bits(pair_half(b(*i[:nb], i[nb + 1], rkb, rkp, i[nb + 2]), rkt)),
                          axis=[rkb, rkp, rkt]),
        name=name, tag=tag)


def matmul_amx_compute(a: te.Tensor, b: te.Tensor, unit: str = "amx", transpose_b: bool = False) -> te.Tensor:
    *batch, m, k = (int(d) for d in a.shape)
    n = int(b.shape[-2] if transpose_b else b.shape[-1])
    n_pad, k_pad = _round_up(n, N_TILE), padded_k(k)
    kb = k_pad // K_BLOCK
    nb = len(batch)
    xa = a_tiles(a, kb, AMX_MM_A, unit)
    xb = pair_words(b, nb, k, n, k_pad, n_pad, transpose_b, AMX_MM_B)
    prod = tile_product(xa, xb, nb, product_name(MATMUL_AMX, unit), MATMUL_AMX)
    return te.compute((*batch, m, n), lambda *i: prod(*i[:nb], i[nb], i[nb + 1] // N_BLOCK, i[nb + 1] % N_BLOCK),
                      name=MATMUL_AMX_OUT, tag="injective")


def _infer(types, *, unit="amx", transpose_b=False):
    a, b = types
    if a.dtype != "float32" or b.dtype != "float32" or a.rank < 3 or a.rank != b.rank:
        fail(f"expects float32 operands of one rank >= 3, got {a} and {b}")
    k, n = (b.shape[-1], b.shape[-2]) if transpose_b else (b.shape[-2], b.shape[-1])
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != k:
        fail(f"shapes do not chain: {a} @ {b}{'^T' if transpose_b else ''}")
    return TensorType(a.shape[:-1] + (n,), "float32")


def _reference(a, b, *, unit="amx", transpose_b=False):
    return np.matmul(round_bf16(a), np.swapaxes(round_bf16(b), -1, -2) if transpose_b else round_bf16(b)
                     ).astype(np.float32)


matmul_amx = defop(
    "matmul_amx", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(2, 2), reference=_reference,
    lower=matmul_amx_compute, grad=NO_RULE_YET, prologue=True,
    attrs={"unit": UNIT_ATTR, "transpose_b": Attr("bool", False)},
    flops=lambda n: 2 * n.outputs[0].type.numel * n.inputs[0].type.shape[-1],
    doc="batched matmul of two float32 activations in bfloat16 on AMX tiles (or AVX512-BF16 dot products) with "
        "float32 sums.")
