"""The softmax schedule (ops/norm.py `softmax` over the last axis of a tensor of rank 3 or more, with any
elementwise prologue fused in): one [batch x head] slab per parallel task, and in it one row at a time, every stage
of the row while it is in L1.

Per row: its max (vectorized: `lanes` partial maxima, then their max), exp(x - max) into a row buffer on the stack
(vecmath's exp, vectorized), the row's sum of it (the same two-step way), and the product with its reciprocal. The
generic rule ran each stage over the whole tensor as a parallel loop of its own: on ViT-base's attention
probabilities (12 x 197 x 208 floats, 2 MB) each stage went through L3. Stage by stage over a slab (197 x 208
floats, in L2) was the step between: per row, 12 x 197 x 208 0.318 -> 0.236 ms (0.248 -> 0.168 ms with the bf16
mode's exp_fast), 12 x 128 x 128 and 12 x 64 x 1024 within 5 % either way (one core, Xeon). The row buffer is
"local": a global one per row cost a workspace allocation per row.
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
    row = sch.get_loops(norm)[-2]
    sch.set_scope(exp, 0, "local")  # one row of exp(x - max): a stack buffer, no workspace call per row
    for block in (total, sum_rf, exp, mx, mx_rf):  # consumers first
        sch.compute_at(block, row, preserve_unit_loops=True)
    for rf in (mx_rf, sum_rf):  # compute_at made the partials' loops in the block's iter order: the lane, then the
        lane, k = sch.get_loops(rf)[-2:]  # reduction; the lanes go innermost
        sch.reorder(k, lane)
        sch.vectorize(lane)
        attempt(sch.decompose_reduction, rf, k)
    for block in (exp, norm):
        _, vi = sch.split(sch.get_loops(block)[-1], [None, lanes])
        sch.vectorize(vi)


softmax_rule = Rule("softmax_slabs", schedule_softmax_slabs, blocks=(MAX, SUM, NORM), needs_all=True)
