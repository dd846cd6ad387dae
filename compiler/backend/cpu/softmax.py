"""The softmax schedule (ops/norm.py `softmax` over the last axis of a tensor of rank 3 or more, with any
elementwise prologue fused in): one [batch x head] slab per parallel task, every stage of the slab while it is in L2.

Per slab: each row's max (vectorized: `lanes` partial maxima, then their max), exp(x - max) into a slab buffer
(vecmath's exp, vectorized), each row's sum of it (the same two-step way), and the division. The generic rule ran
each stage over the whole tensor as a parallel loop of its own: on ViT-base's attention probabilities (12 x 197 x
208 floats, 2 MB) each stage went through L3. A slab (197 x 208 floats) stays in L2; the stage buffers are allocated
once per slab (a buffer per row costs a workspace allocation per row: that was slower than the generic rule).
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    PARALLEL_MIN_WORK, Rule, attempt, inline_all, loop_extent, loop_work, vector_lanes)

MAX, EXP, SUM, NORM = "T_softmax_maxelem", "T_softmax_exp", "T_softmax_expsum", "T_softmax_norm"


def _partials(sch: s_tir.Schedule, name: str, lanes: int):
    """The row reduction `name` as `lanes` partials (rfactor) and their combination: (partials block, block)."""
    block = sch.get_sblock(name)
    k = sch.get_loops(block)[-1]
    _, ki = sch.split(k, [None, lanes])
    return sch.rfactor(ki, len(sch.get_loops(block)) - 2), sch.get_sblock(name)


def schedule_softmax_slabs(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    lanes = vector_lanes(target)
    norm = sch.get_sblock(NORM)
    loops = sch.get_loops(norm)
    if len(loops) < 3 or int(sch.get(norm).annotations["axis"]) != len(loops) - 1:
        raise ValueError("not a softmax over the last axis of a tensor of rank 3 or more")
    n = loop_extent(sch, loops[-1])
    if n is None or n % lanes:
        raise ValueError(f"rows of {n}: not whole vectors")
    inline_all(sch, keep={EXP})  # the prologue into the max and exp stages; delta into exp
    mx_rf, mx = _partials(sch, MAX, lanes)
    sum_rf, total = _partials(sch, SUM, lanes)
    exp = sch.get_sblock(EXP)
    loops = sch.get_loops(norm)
    slab = sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]
    if loop_work(sch, norm) >= PARALLEL_MIN_WORK:
        sch.parallel(slab)
    for block in (total, sum_rf, exp, mx, mx_rf):  # consumers first
        sch.compute_at(block, slab, preserve_unit_loops=True)
    for rf in (mx_rf, sum_rf):  # compute_at made the loops in the block's iter order: the partials' lanes first,
        inner = sch.get_loops(rf)[1:]  # then the rows, the reduction last; the lanes go innermost
        sch.reorder(*inner[1:-1], inner[-1], inner[0])
        sch.vectorize(inner[0])
        attempt(sch.decompose_reduction, rf, inner[-1])
    for block in (exp, norm):
        _, vi = sch.split(sch.get_loops(block)[-1], [None, lanes])
        sch.vectorize(vi)


softmax_rule = Rule("softmax_slabs", schedule_softmax_slabs, blocks=(MAX, SUM, NORM), needs_all=True)
