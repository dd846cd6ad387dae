"""CPU schedule of the `attention` kernel (compiler/ops/attention.py).

The kernel's stages, per (batch, head) -- the parallel loop -- and per tile of `rows` query rows:
  K^T panel   once per head: k transposed into a contiguous [D x Skv] panel (prologue transposes read through)
  Q K^T       [rows x J] register tiles (J a multiple of the vector width), D outside them; into a [rows x Skv]
              buffer that stays in L1
  max, exp    row max of the scaled, masked scores; exp(score - max) vectorized along Skv (fast_exp)
  sum         row sums, vectorized as `lanes` partial sums per row
  exp @ V     [rows x Dv] register tile, Skv outside it; divided by the row sum in the write-back (plus any
              elementwise epilogue)
Nothing of size Skv x Skv reaches memory: the decomposed form writes the scores and the probabilities out and reads
them back (3 kernels), this one keeps a row tile's scores in registers and L1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    UNROLL_MAX, Knobs, Rule, divides, inline_spatial, loop_extent, row_partials, vector_lanes, vector_partials,
    vectorize_or_unroll)
from tensorforge.compiler.ops.attention import EXP, KT, MAX, OUT_PADDED, PV, QK, SKV_ROUND_RUNTIME, SQ_ROUND, SUM



@dataclass(frozen=True)
class AttentionKnobs(Knobs):
    rows: int = 4     # query rows per tile: [4 x 64] fp32 accumulators are 16 AVX-512 registers
    j_tile: int = 64  # score columns per register tile

    SPACE: ClassVar[dict[str, tuple]] = {"rows": (2, 4, 6, 8), "j_tile": (32, 64, 128)}


def _divisor(n: int, limit: int, multiple: int = 1) -> int:
    """The largest divisor of n up to `limit` that is a multiple of `multiple`, else the largest divisor."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0 and d % multiple == 0:
            return d
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def schedule_attention(sch: s_tir.Schedule, target: tvm.target.Target,
                       knobs: AttentionKnobs = AttentionKnobs()) -> None:
    lanes = vector_lanes(target)
    inline_spatial(sch, {KT, EXP, OUT_PADDED})
    root = sch.get_sblock("root")
    (final,) = sch.get_output_blocks(root)
    # padded query rows (ops/attention.py): the row tiles drive the padded result, the write-back follows per head
    padded = OUT_PADDED in {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    out = sch.get_sblock(OUT_PADDED) if padded else final
    *batch, i, c = sch.get_loops(out)
    sq = loop_extent(sch, i)
    # a length known only at run time: its rows padded to SQ_ROUND (ops/attention.py)
    rows = _divisor(sq, knobs.rows) if sq is not None else math.gcd(knobs.rows, SQ_ROUND)
    io, ii = sch.split(i, [None, rows])
    bh = (sch.fuse(*batch) if len(batch) > 1 else batch[0]) if batch else io
    sch.parallel(bh)

    partials = {name: row_partials(sch, sch.get_sblock(name), lanes) for name in (MAX, SUM)}
    # per row tile: every stage but the K^T panel, consumers first
    for name in (PV, SUM, EXP, MAX, QK):
        sch.compute_at(sch.get_sblock(name), io, preserve_unit_loops=True)
        if partials.get(name) is not None:
            sch.compute_at(partials[name], io, preserve_unit_loops=True)
    # per head: the K^T panel, read along D (k's contiguous axis), written along Skv
    kt = sch.get_sblock(KT)
    sch.compute_at(kt, bh, preserve_unit_loops=True)
    vectorize_or_unroll(sch, sch.get_loops(kt)[-1], lanes)  # contiguous panel stores, k read with a stride of D
    for name in (KT, QK, MAX, EXP, SUM, PV):  # per-task scratch: stack buffers, not workspace allocations
        sch.set_scope(sch.get_sblock(name), 0, "local")

    # Q K^T: [rows x J] accumulators in registers, D outside them
    qk = sch.get_sblock(QK)
    qr, qj, qd = sch.get_loops(qk)[-3:]
    skv = loop_extent(sch, qj)
    if skv is not None:
        jt = _divisor(skv, knobs.j_tile, lanes)
    else:  # keys padded to SKV_ROUND_RUNTIME (ops/attention.py): a tile that divides it
        jt = next(t for t in (knobs.j_tile, SKV_ROUND_RUNTIME, lanes, 1) if divides(sch, qj, t))
    qjo, qji = sch.split(qj, [None, jt])
    sch.reorder(qjo, qd, qr, qji)
    if skv is not None and loop_extent(sch, qjo) <= UNROLL_MAX:  # constant accumulator offsets: in registers
        sch.unroll(qjo)
    elif skv is None:
        # a tile count known at run time: each [rows x J] tile accumulates in a buffer of its own, written to the
        # scores after its D loop (indexed by the run-time tile, the scores' accumulators stayed in memory: 1.65x
        # the exact kernel's time at 384 tokens)
        tile = sch.cache_write(qk, 0, "local")
        sch.reverse_compute_at(tile, qjo, preserve_unit_loops=True)
        vectorize_or_unroll(sch, sch.get_loops(tile)[-1], lanes)
        sch.unroll(sch.get_loops(tile)[-2])
    sch.unroll(qr)
    vectorize_or_unroll(sch, qji, lanes)
    sch.decompose_reduction(qk, qd)

    # exp @ V: [rows x Dv] accumulators, Skv outside
    pv = sch.get_sblock(PV)
    pr, pc, pj = sch.get_loops(pv)[-3:]
    sch.reorder(pj, pr, pc)
    sch.unroll(pr)
    vectorize_or_unroll(sch, pc, lanes)
    sch.decompose_reduction(pv, pj)

    for rf in partials.values():
        if rf is not None:
            sch.set_scope(rf, 0, "local")
            vector_partials(sch, rf)

    ex = sch.get_sblock(EXP)
    vectorize_or_unroll(sch, sch.get_loops(ex)[-1], lanes)
    vectorize_or_unroll(sch, c, lanes)
    if padded:
        sch.reverse_compute_at(final, bh, preserve_unit_loops=True)
        sch.set_scope(out, 0, "local")
        vectorize_or_unroll(sch, sch.get_loops(final)[-1], lanes)


attention_rule = Rule("attention", schedule_attention, blocks=(QK, PV), needs_all=True, knobs=AttentionKnobs())
