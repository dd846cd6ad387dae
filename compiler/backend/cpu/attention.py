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

from dataclasses import dataclass
from typing import ClassVar

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import SPATIAL, Knobs, Rule, vector_lanes
from tensorforge.compiler.ops.attention import EXP, KT, MAX, OUT_PADDED, PV, QK, SUM

UNROLL_MAX = 16  # longest loop unrolled where it cannot be vectorized (odd sequence lengths: ViT's 197)


@dataclass(frozen=True)
class AttentionKnobs(Knobs):
    rows: int = 4     # query rows per tile: [4 x 64] fp32 accumulators are 16 AVX-512 registers
    j_tile: int = 64  # score columns per register tile

    SPACE: ClassVar[dict[str, tuple]] = {"rows": (2, 4, 6, 8), "j_tile": (32, 64, 128)}


def _loops_extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _divisor(n: int, limit: int, multiple: int = 1) -> int:
    """The largest divisor of n up to `limit` that is a multiple of `multiple`, else the largest divisor."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0 and d % multiple == 0:
            return d
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _vector(sch, loop, lanes: int) -> None:
    """Vectorize `loop` in pieces of `lanes` (the outer piece unrolled) when it divides; else unroll a short one."""
    ext = _loops_extent(sch, loop)
    if ext % lanes == 0 and ext > lanes:
        o, i = sch.split(loop, [None, lanes])
        sch.unroll(o)
        sch.vectorize(i)
    elif ext <= lanes and ext % 4 == 0:
        sch.vectorize(loop)
    elif ext <= UNROLL_MAX:
        sch.unroll(loop)


def _row_partials(sch: s_tir.Schedule, block, lanes: int):
    """A reduction along Skv as `lanes` partial results per row (rfactor), combined after: the partials' block,
    or None where Skv is no multiple of the vector width."""
    r = sch.get_loops(block)[-1]
    ext = _loops_extent(sch, r)
    if ext % lanes or ext == lanes:
        return None
    _, ri = sch.split(r, [None, lanes])
    return sch.rfactor(ri, len(sch.get(block).iter_vars) - 1)


def _vector_partials(sch: s_tir.Schedule, rf) -> None:
    """rfactor puts the lane first among the partials block's iter vars (and compute_at its loops in that order):
    move it innermost and vectorize it."""
    lane, *rest = sch.get_loops(rf)[-len(sch.get(rf).iter_vars):]
    sch.reorder(*rest, lane)
    sch.vectorize(lane)


def _inline_spatial(sch: s_tir.Schedule, keep: set[str]) -> None:
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):  # prologue views, the score expression, fast_exp's pieces, epilogues
        blk = sch.get(block)
        if blk.name_hint in keep or blk.name_hint in outputs or blk.init is not None or \
                any(int(iv.iter_type) != SPATIAL for iv in blk.iter_vars):
            continue
        sch.compute_inline(block)


def schedule_attention(sch: s_tir.Schedule, target: tvm.target.Target,
                       knobs: AttentionKnobs = AttentionKnobs()) -> None:
    lanes = vector_lanes(target)
    _inline_spatial(sch, {KT, EXP, OUT_PADDED})
    root = sch.get_sblock("root")
    (final,) = sch.get_output_blocks(root)
    # padded query rows (ops/attention.py): the row tiles drive the padded result, the write-back follows per head
    padded = OUT_PADDED in {sch.get(b).name_hint for b in sch.get_child_blocks(root)}
    out = sch.get_sblock(OUT_PADDED) if padded else final
    *batch, i, c = sch.get_loops(out)
    sq = _loops_extent(sch, i)
    rows = _divisor(sq, knobs.rows)
    io, ii = sch.split(i, [None, rows])
    bh = (sch.fuse(*batch) if len(batch) > 1 else batch[0]) if batch else io
    sch.parallel(bh)

    partials = {name: _row_partials(sch, sch.get_sblock(name), lanes) for name in (MAX, SUM)}
    # per row tile: every stage but the K^T panel, consumers first
    for name in (PV, SUM, EXP, MAX, QK):
        sch.compute_at(sch.get_sblock(name), io, preserve_unit_loops=True)
        if partials.get(name) is not None:
            sch.compute_at(partials[name], io, preserve_unit_loops=True)
    # per head: the K^T panel, read along D (k's contiguous axis), written along Skv
    kt = sch.get_sblock(KT)
    sch.compute_at(kt, bh, preserve_unit_loops=True)
    _vector(sch, sch.get_loops(kt)[-1], lanes)  # contiguous panel stores, k read with a stride of D
    for name in (KT, QK, MAX, EXP, SUM, PV):  # per-task scratch: stack buffers, not workspace allocations
        sch.set_scope(sch.get_sblock(name), 0, "local")

    # Q K^T: [rows x J] accumulators in registers, D outside them
    qk = sch.get_sblock(QK)
    qr, qj, qd = sch.get_loops(qk)[-3:]
    skv = _loops_extent(sch, qj)
    jt = _divisor(skv, knobs.j_tile, lanes)
    qjo, qji = sch.split(qj, [None, jt])
    sch.reorder(qjo, qd, qr, qji)
    if _loops_extent(sch, qjo) <= UNROLL_MAX:  # constant accumulator offsets: LLVM keeps them in registers
        sch.unroll(qjo)
    sch.unroll(qr)
    _vector(sch, qji, lanes)
    sch.decompose_reduction(qk, qd)

    # exp @ V: [rows x Dv] accumulators, Skv outside
    pv = sch.get_sblock(PV)
    pr, pc, pj = sch.get_loops(pv)[-3:]
    sch.reorder(pj, pr, pc)
    sch.unroll(pr)
    _vector(sch, pc, lanes)
    sch.decompose_reduction(pv, pj)

    for rf in partials.values():
        if rf is not None:
            sch.set_scope(rf, 0, "local")
            _vector_partials(sch, rf)

    ex = sch.get_sblock(EXP)
    _vector(sch, sch.get_loops(ex)[-1], lanes)
    _vector(sch, c, lanes)
    if padded:
        sch.reverse_compute_at(final, bh, preserve_unit_loops=True)
        sch.set_scope(out, 0, "local")
        _vector(sch, sch.get_loops(final)[-1], lanes)


attention_rule = Rule("attention", schedule_attention, blocks=(QK, PV), needs_all=True, knobs=AttentionKnobs())
