"""The packed dense schedule: [m_tile x n_tile] register tiles over x row blocks that stay in L2."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    Knobs, Rule, anchor_epilogue, attempt, k_blocked_register_tile, largest_divisor, loop_extent, register_tile,
    task_rows, vector_lanes)
from tensorforge.compiler.ops.packed import ANN_N_TILE, DENSE_M_ROUND, DENSE_PACKED


@dataclass(frozen=True)
class DenseKnobs(Knobs):
    m_tile: int = 4                  # register tile rows (the columns are the packed weight block)
    x_block_bytes: int = 256 * 1024  # rows of x per block: they stay in L2 while every weight panel streams past
    k_block: int = 128               # k steps per pass over a block's row tiles (0: no blocking): the weight panel's
    #                                  [k_block x n_tile] slice stays in L1 while every row tile of the block reads it

    SPACE: ClassVar[dict[str, tuple]] = {"m_tile": (2, 4, 6, 8),
                                         "x_block_bytes": (64 * 1024, 256 * 1024, 1024 * 1024),
                                         "k_block": (0, 64, 128, 256)}


def schedule_dense(sch: s_tir.Schedule, target: tvm.target.Target, knobs: DenseKnobs = DenseKnobs()) -> None:
    """[m_tile x n_tile] register tile (n_tile = the packed weight block), k outside it.

    Loop order [x row block] > [weight panel] > [row tile]: each [k x n_tile] weight panel is read once per block of
    x rows that fits in L2 and reused by every row tile of the block. With the row tile outermost the whole weight
    streamed past once per 4 rows: GPT-2's 154 MB LM head 16 times at seq 64 (66 -> 103 GFLOP/s, 1 thread)."""
    lanes = vector_lanes(target)
    dense = sch.get_sblock(DENSE_PACKED)
    nt = int(sch.get(dense).annotations[ANN_N_TILE])
    out = anchor_epilogue(sch, dense)
    if len(sch.get_loops(out)) != 2:
        raise ValueError("dense epilogue is not a single 2-D block")
    m, n = sch.get_loops(out)
    dm, dn = sch.get_loops(dense)[:2]
    # tile the product's extents: rows and columns may be padded past the output's (ops/packed.py dense_rows)
    m_ext, n_ext, k = loop_extent(sch, dm), loop_extent(sch, dn), loop_extent(sch, sch.get_loops(dense)[-1])
    if m_ext is None:  # rows known at run time (backend/symbolic.py)
        _symbolic_rows(sch, dense, out, dm, dn, nt, DENSE_M_ROUND, math.gcd(lanes, nt))
        return
    padded = (m_ext, n_ext) != (loop_extent(sch, m), loop_extent(sch, n))
    mt = largest_divisor(m_ext, knobs.m_tile)
    vec = math.gcd(lanes, nt)  # 24 columns on AVX2: three 8-lane vectors
    kb = largest_divisor(k, knobs.k_block) if knobs.k_block else 0
    if kb >= 32 and k >= 2 * kb and m_ext > mt:
        # the rows of a block: its [rows x k_block] slice of x within x_block_bytes, and enough blocks for every core
        mb = task_rows(m_ext, mt, knobs.x_block_bytes // (4 * kb), n_ext // nt, target)
        _blocked_over_k(sch, dense, out, (dm, dn) if padded else (m, n), padded, mb, mt, nt, kb, vec)
        return
    rows = max(mt, knobs.x_block_bytes // (4 * k) // mt * mt)
    mb = next(r for r in range(min(rows, m_ext) // mt * mt, 0, -mt) if m_ext % r == 0)

    def tiles(mm, nn):
        mbo, mrest = sch.split(mm, [None, mb])
        mo, mi = sch.split(mrest, [None, mt])
        no, ni = sch.split(nn, [None, nt])
        sch.reorder(mbo, no, mo, mi, ni)
        tile = sch.fuse(mbo, no, mo)
        sch.parallel(tile)
        return tile, ni

    if not padded:  # the write-back drives the tiles; the product is computed per tile into registers
        tile, ni = tiles(m, n)
        sch.compute_at(dense, tile, preserve_unit_loops=True)
    else:
        # the product is padded (GPT-2's 50257 logits, ViT's 197 rows): tiles over the padded product, with the
        # write-back (clipped to the output) computed per tile after it. Driving from the write-back would give
        # the last tile a shorter product, a variable extent that keeps LLVM from vectorizing every tile.
        tile, _ = tiles(dm, dn)
        sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
        ni = sch.get_loops(out)[-1]
    sch.set_scope(dense, 0, "local")
    rk = register_tile(sch, dense, vec)
    _, ni_l = sch.split(ni, [None, vec])
    attempt(sch.vectorize, ni_l)
    init = sch.decompose_reduction(dense, rk)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))


def _symbolic_rows(sch, dense, out, dm, dn, nt: int, mt: int, vec: int) -> None:
    """Rows known only at run time (the product's rows rounded up to `mt`, ops/packed.py dense_compute): one
    parallel task per weight panel [k x n_tile], inside it every [mt x n_tile] register tile of rows, k outside
    the tile. The panel stays in L2 while all the rows pass it, no loop is split by a size unknown here, and only
    the write-back of each tile (clipped to the real rows) has a bound to check. At 16 to 384 rows of BERT-base's
    products it ran at 0.90-1.01 of the kernel built for each (benchmarks/results/symbolic_kernels.md)."""
    mo, mi = sch.split(dm, [None, mt])
    no, ni = sch.split(dn, [None, nt])
    sch.reorder(no, mo, mi, ni)
    sch.parallel(no)
    sch.reverse_compute_at(out, mo, preserve_unit_loops=True)
    sch.set_scope(dense, 0, "local")
    rk = register_tile(sch, dense, vec)
    _, ni_l = sch.split(sch.get_loops(out)[-1], [None, vec])
    attempt(sch.vectorize, ni_l)
    init = sch.decompose_reduction(dense, rk)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))


def _blocked_over_k(sch, dense, out, loops, padded: bool, mb: int, mt: int, nt: int, kb: int, vec: int) -> None:
    """One parallel task per [mb rows x n_tile columns] block; inside it, for each k block, every [mt x n_tile]
    register tile of the block steps through the same [kb x n_tile] weight slice, which stays in L1. The block's
    accumulators ([mb x n_tile], in L1) carry over from one k block to the next. Without it, each register tile
    streamed the whole [k x n_tile] panel from L2: 146 against 212 GFLOP/s at 128 x 3072 -> 768 (1 thread,
    AVX-512)."""
    mm, nn = loops
    mbo, mrest = sch.split(mm, [None, mb])
    no, _ = sch.split(nn, [None, nt])
    sch.reorder(mbo, no, mrest)
    tile = sch.fuse(mbo, no)
    sch.parallel(tile)
    if padded:
        sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    else:
        sch.compute_at(dense, tile, preserve_unit_loops=True)
    sch.set_scope(dense, 0, "local")
    k_blocked_register_tile(sch, dense, mt, kb, vec)
    _, ni_l = sch.split(sch.get_loops(out)[-1], [None, vec])
    attempt(sch.vectorize, ni_l)


dense_rule = Rule("dense", schedule_dense, blocks=(DENSE_PACKED,), knobs=DenseKnobs())
