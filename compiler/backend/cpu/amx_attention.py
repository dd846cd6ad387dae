"""The schedule of `attention_amx` (ops/amx_attention.py): one parallel task per [batch x head] slab, in it one pass
per block of 32 query rows.

Per slab: k^T and v converted once to B tiles (uint32 pair words, on the stack). Per row block: its q rows to A
tiles, the 32 x Skv scores in 32 x 32 AMX register tiles (dense's tensor intrinsic, backend/cpu/amx.py), the row
max and the row sum as vector partials, the exponentials (vecmath's exp_fast: bf16's precision) as A tiles, p @ v
in 32 x 32 tiles, and the division by the row sum in the write-back (with the fused epilogue). Every intermediate of the row
block (scores 32 x Skv float32, exponentials, p) lives on the stack and stays in L1.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.amx import amx_fill_intrin, amx_intrin
from tensorforge.compiler.backend.cpu.common import (
    Rule, attempt, inline_spatial, loop_extent, row_partials, vector_lanes, vector_partials, vectorize_or_unroll)
from tensorforge.compiler.ops.amx import M_TILE, N_BLOCK, N_TILE
from tensorforge.compiler.ops.amx_attention import EXP, MAX, NORM, SUM, K, O, P, Q, S, V

_TILE_COLS = N_TILE // N_BLOCK  # 16-column blocks per 32 x 32 register tile


def _tiles(sch: s_tir.Schedule, name: str) -> None:
    """The product `name` (loops: 32 rows, column blocks, 16 columns, k blocks, k pair, pair, under the row block)
    in 32 x 32 tiles on the stack, tensorized: a tile's init (configure, zero the accumulator tiles) and its
    update over every k block, its operands on the stack as well."""
    block = sch.get_sblock(name)
    i, jb, jt, kb, kp, kt = sch.get_loops(block)[-6:]
    jbo, jbi = sch.split(jb, [None, _TILE_COLS])
    sch.reorder(jbo, i, jbi, jt, kb, kp, kt)
    sch.set_scope(block, 0, "local")
    init = sch.decompose_reduction(block, i)
    sch.tensorize(i, amx_intrin(loop_extent(sch, kb), b_bits=True, operands="local"))
    sch.tensorize(sch.get_loops(init)[-3], amx_fill_intrin((M_TILE, _TILE_COLS, N_BLOCK), "local"))


def schedule_amx_attention(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    lanes = vector_lanes(target)
    inline_spatial(sch, {Q, K, V, S, MAX, EXP, SUM, P, O, NORM})
    root = sch.get_sblock("root")
    (final,) = sch.get_output_blocks(root)
    padded = NORM in {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    norm = sch.get_sblock(NORM) if padded else final
    *batch, m, c = sch.get_loops(norm)
    if not batch:
        raise ValueError("attention_amx without batch or head dims")
    slab = sch.fuse(*batch) if len(batch) > 1 else batch[0]
    mo, _ = sch.split(m, [None, M_TILE])
    sch.parallel(slab)
    partials = {name: row_partials(sch, sch.get_sblock(name), lanes) for name in (MAX, SUM)}
    for name in (O, P, SUM, EXP, MAX, S, Q):  # consumers first
        sch.compute_at(sch.get_sblock(name), mo, preserve_unit_loops=True)
        if partials.get(name) is not None:
            sch.compute_at(partials[name], mo, preserve_unit_loops=True)
    for name in (V, K):
        sch.compute_at(sch.get_sblock(name), slab, preserve_unit_loops=True)
    # every intermediate on the stack, the tiles' operands too (workspace allocations per task and row block:
    # 12 x 197 x 197 0.627 -> 0.584 ms, one core)
    for name in (Q, K, V, P, EXP, MAX, SUM):
        sch.set_scope(sch.get_sblock(name), 0, "local")
    _tiles(sch, S)
    _tiles(sch, O)
    for rf in partials.values():
        if rf is not None:
            sch.set_scope(rf, 0, "local")
            vector_partials(sch, rf)
    for name in (Q, P):  # A tiles: 16 pairs of one row, 32 uint16 lanes
        loops = sch.get_loops(sch.get_sblock(name))
        attempt(lambda: sch.vectorize(sch.fuse(*loops[-2:])))
    for name in (K, V):  # B tiles: 16 columns of words (k's gathered along its rows: scattering the words was slower)
        attempt(sch.vectorize, sch.get_loops(sch.get_sblock(name))[-1])
    vectorize_or_unroll(sch, sch.get_loops(sch.get_sblock(EXP))[-1], lanes)
    vectorize_or_unroll(sch, c, lanes)
    if padded:
        sch.reverse_compute_at(final, slab, preserve_unit_loops=True)
        sch.set_scope(norm, 0, "local")
        vectorize_or_unroll(sch, sch.get_loops(final)[-1], lanes)


amx_attention_rule = Rule("amx_attention", schedule_amx_attention, blocks=(S, O), needs_all=True)
