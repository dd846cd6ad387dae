"""The layer-norm backward's schedule (ops/backward.py `layer_norm_grad`): one parallel task per block of rows, each
computing its rows' statistics, dx and its partial column sums of dscale while the rows are in L1.

Per task (ln_grad_part_rows rows, 16 for 2048 x 256): each row's four sums (x; squared deviations; g = dy * scale;
g * xhat) as `lanes` vector partials and their combination, dx vectorized along the row, then the block's partial
dscale (rows outer, a vector of columns inner: vector adds, no horizontal ones). The partials' sum over the blocks
is a small serial loop after. The generic rule ran each stage over all rows as a parallel loop of its own: 2 ms for
2048 x 256 on two cores.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    PARALLEL_MIN_WORK, Rule, attempt, inline_all, loop_extent, loop_work, vector_lanes)
from tensorforge.compiler.ops.backward import LN_GRAD_STAGES

SUM, SQDEV, RSTD, SUM_G, SUM_GX, DX, PART, DSCALE = LN_GRAD_STAGES


def schedule_layer_norm_grad(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    lanes = vector_lanes(target)
    dx = sch.get_sblock(DX)
    rows, n = (loop_extent(sch, lp) for lp in sch.get_loops(dx))
    part = sch.get_sblock(PART)
    blocks = loop_extent(sch, sch.get_loops(part)[0])
    if None in (rows, n, blocks) or n % lanes or n < 2 * lanes:
        raise ValueError("not a static layer_norm_grad with rows of whole vectors")
    inline_all(sch, keep=set(LN_GRAD_STAGES))
    partials = {}
    for name in (SUM, SQDEV, SUM_G, SUM_GX):
        block = sch.get_sblock(name)
        _, ki = sch.split(sch.get_loops(block)[-1], [None, lanes])
        partials[name] = sch.rfactor(ki, 1)
    task, _ = sch.split(sch.get_loops(dx)[0], [blocks, None])
    task = sch.merge(task, sch.get_loops(part)[0])
    if loop_work(sch, dx) >= PARALLEL_MIN_WORK:
        sch.parallel(task)
    for name in (SUM_GX, SUM_G, RSTD, SQDEV, SUM):  # consumers first
        sch.compute_at(sch.get_sblock(name), task, preserve_unit_loops=True)
        if name in partials:
            rf = partials[name]
            sch.compute_at(rf, task, preserve_unit_loops=True)
            lane, *rest = sch.get_loops(rf)[1:]  # compute_at orders the partials' loops lane, row, k
            sch.reorder(*rest, lane)
            sch.vectorize(lane)
            attempt(sch.decompose_reduction, rf, rest[-1])
    _, vi = sch.split(sch.get_loops(dx)[-1], [None, lanes])
    sch.vectorize(vi)
    _, j, r = sch.get_loops(part)  # one block's rows, outer; a vector of columns, inner
    jo, ji = sch.split(j, [None, lanes])
    sch.reorder(jo, r, ji)
    sch.vectorize(ji)
    attempt(sch.decompose_reduction, part, r)
    j, t = sch.get_loops(sch.get_sblock(DSCALE))
    jo, ji = sch.split(j, [None, lanes])
    sch.reorder(jo, t, ji)
    sch.vectorize(ji)
    attempt(sch.decompose_reduction, sch.get_sblock(DSCALE), t)


layer_norm_grad_rule = Rule("layer_norm_grad", schedule_layer_norm_grad, blocks=(DX, PART), needs_all=True)
