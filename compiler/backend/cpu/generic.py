"""The generic schedule (injective and reduction blocks: inline, parallel outer spatial loops, vectorize inner
ones), the last resort of every kernel, and the NCHW[b]c -> NCHW layout transform."""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from tensorforge.compiler.backend.cpu.common import (
    PARALLEL_MIN_WORK, SPATIAL, VECTOR_MAX, Rule, attempt, inline_all, is_spatial_block, iter_types, loop_extent,
    loop_work, root_blocks, schedule_spatial, vector_lanes, vector_piece)
from tensorforge.compiler.ops.nchwc import LAYOUT_TRANSFORM

UNBLOCK_W_TILE = 8


def schedule_generic(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    lanes = vector_lanes(target)
    inline_all(sch)
    for block in root_blocks(sch):
        if is_spatial_block(sch, block):
            attempt(schedule_spatial, sch, block, lanes)
        else:
            attempt(_schedule_reduction, sch, block, lanes)


def _schedule_reduction(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel over the spatial loops; the innermost one moves inside the reduction and is vectorized when it
    indexes the last axis of both the output and an input (pooling windows, softmax over channels)."""
    loops = sch.get_loops(block)
    types = iter_types(sch, block)
    if len(loops) != len(types) or not loops:
        if loops and types and types[0] == SPATIAL:
            sch.parallel(loops[0])
        return
    spatial = [l for l, t in zip(loops, types) if t == SPATIAL]
    reduce = [l for l, t in zip(loops, types) if t != SPATIAL]
    if not spatial:
        return
    work = loop_work(sch, block)
    vec = spatial[-1] if _vectorizable_spatial(sch, block, len(spatial) - 1) else None
    if vec is None and _schedule_row_reduction(sch, block, spatial, reduce, lanes, work):
        return
    outer = spatial[:-1] if vec is not None else spatial
    if vec is not None and loop_extent(sch, vec) > VECTOR_MAX:
        o, vec = sch.split(vec, [None, vector_piece(loop_extent(sch, vec), lanes)])
        outer = [*outer, o]
    if vec is not None:
        sch.reorder(*outer, *reduce, vec)
    if outer and work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if vec is not None:
        attempt(sch.vectorize, vec)
        if reduce:
            attempt(sch.decompose_reduction, block, reduce[0])


def _schedule_row_reduction(sch: s_tir.Schedule, block, spatial: list, reduce: list, lanes: int, work: int) -> bool:
    """A reduction along the contiguous last axis (layer-norm row sums, softmax over the last axis): `lanes` partial
    results (rfactor) make the loads and the adds vectors and cut the serial dependency chain by `lanes`. The
    partials are combined by a scalar loop, `lanes` adds per row. False if the pattern differs."""
    blk = sch.get(block)
    inner = reduce[-1]
    ext = loop_extent(sch, inner)
    ivar = blk.iter_vars[-1]
    if (ext is None or ext < 2 * lanes or ext % lanes or int(ivar.iter_type) == SPATIAL
            or len(spatial) + len(reduce) != len(blk.iter_vars)
            or not any(len(r.region) and any(v.same_as(ivar.var) for v in tirx.analysis.undefined_vars(
                r.region[-1].min)) for r in blk.reads)):
        return False
    _, ri = sch.split(inner, [None, lanes])
    rf = sch.rfactor(ri, len(spatial))  # partials [spatial..., lanes]: one vector store per row
    for blk_, vector in ((rf, True), (block, False)):  # loops: spatial..., reduce..., (the lanes loop)
        loops = sch.get_loops(blk_)
        outer = sch.fuse(*loops[:len(spatial)]) if len(spatial) > 1 else loops[0]
        if work >= PARALLEL_MIN_WORK:
            sch.parallel(outer)
        if vector:
            sch.vectorize(loops[-1])
            sch.decompose_reduction(rf, sch.get_loops(rf)[1])
    return True


def _vectorizable_spatial(sch: s_tir.Schedule, block, index: int) -> bool:
    blk = sch.get(block)
    iv = blk.iter_vars[index]
    if int(iv.iter_type) != SPATIAL or not isinstance(iv.dom.extent, tirx.IntImm) or int(iv.dom.extent) < 4:
        return False

    reduce_vars = [v.var for v in blk.iter_vars if int(v.iter_type) != SPATIAL]

    def last_index_vars(region) -> list:
        return list(tirx.analysis.undefined_vars(region.region[-1].min)) if len(region.region) else []

    def in_last_index(region) -> bool:
        return any(v.same_as(iv.var) for v in last_index_vars(region))

    def gathers(region) -> bool:  # a row reduction (x[i, r]) read across lanes of i: strided, not a vector load
        used = last_index_vars(region)
        return not in_last_index(region) and any(v.same_as(r) for v in used for r in reduce_vars)

    return (any(in_last_index(w) for w in blk.writes) and any(in_last_index(r) for r in blk.reads)
            and not any(gathers(r) for r in blk.reads))


def schedule_from_blocked(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """NCHW[b]c -> NCHW (from_blocked, with any slice or elementwise op fused after it): a [b channels x W_TILE
    columns] transposition per step, the channel lanes unrolled and the columns vectorized, so each source pixel's
    b lanes are read together (one cache line) and each destination row piece is one vector store. The generic rule
    vectorized whole rows, gathering every element at stride b: 1 thread, 8x6x56x56x16 1.91 -> 0.54 ms,
    8x9x56x56x16 3.13 -> 1.49 ms. Raises for anything else (to_blocked writes 5-D)."""
    inline_all(sch)
    blocks = root_blocks(sch)
    if len(blocks) != 1 or len(sch.get_loops(blocks[0])) != 4:
        raise ValueError("not a single 4-D output")
    block = blocks[0]
    reads = [r for r in sch.get(block).reads if len(r.source.shape) == 5]
    if len(reads) != 1 or not isinstance(reads[0].source.shape[4], tirx.IntImm):
        raise ValueError("no NCHW[b]c operand")
    lanes = int(reads[0].source.shape[4])
    n, c, h, w = sch.get_loops(block)
    cb, ci = sch.split(c, [None, lanes])
    wo, wi = sch.split(w, [None, min(UNBLOCK_W_TILE, loop_extent(sch, w))])
    sch.reorder(n, cb, h, wo, ci, wi)
    outer = sch.fuse(n, cb, h)
    if loop_work(sch, block) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(ci)
    sch.vectorize(wi)


from_blocked_rule = Rule("from_blocked", schedule_from_blocked, blocks=(LAYOUT_TRANSFORM,))
generic_rule = Rule("generic", schedule_generic)
