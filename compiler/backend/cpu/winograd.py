"""CPU schedule of the Winograd conv (compiler/ops/winograd.py: the algorithm, its six TE stages and their block
names). pad: parallel rows, vector lanes. input transform: parallel over (tile, channel block) > per row eps: its
B^T d row, then its alpha outputs. GEMM: parallel over (eps, nu, oc tile, tile group) > [p_tile tiles x nb
channels] accumulators in registers, k outside. output: parallel over (image, oc block, tile row) > tile > per
column r: its M A column, then its m outputs; the epilogue inlined into its stores.

`schedule_grouped` (the bf16 kernel's, backend/cpu/bf16dot.py, where it applies) runs the stages per group of tiles
instead, one after the other: parallel over groups > the group's padding, input transform, products and output
transform, so that V and M stay in the core's L2 instead of going through memory between the stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    Knobs, Rule, attempt, inline_all, largest_divisor, loop_extent, register_tile, root_blocks, schedule_spatial,
    vector_lanes)
from tensorforge.compiler.ops.winograd import (
    BLOCK, GEMM_P_TILE, WINO_GEMM, WINO_INPUT, WINO_INPUT_ROWS, WINO_OUTPUT_COLS, WINO_PAD)


@dataclass(frozen=True)
class WinogradKnobs(Knobs):
    p_tile: int = GEMM_P_TILE  # register tile of the batched GEMM: tiles x output channels

    SPACE: ClassVar[dict[str, tuple]] = {"p_tile": (2, 4, 6, 8)}


def schedule_winograd(sch: s_tir.Schedule, target, knobs: WinogradKnobs = WinogradKnobs()) -> None:
    """pad: parallel rows, vector lanes. input transform: parallel over (tile, channel block) > per row eps: its
    B^T d row, then its alpha outputs; unrolled, 16 lanes a vector. GEMM: parallel over (eps, nu, oc tile, tile
    group) > [p_tile tiles x nb channels] accumulators in registers, k outside. output: parallel over (image, oc block,
    tile row) > tile > per column r: its M A column, then its m outputs; unrolled, 16 lanes a vector, the epilogue
    inlined into its stores."""
    lanes = vector_lanes(target)
    schedule_stages(sch, target, WINO_GEMM, lambda: _schedule_gemm(sch, lanes, knobs.p_tile))


def schedule_stages(sch: s_tir.Schedule, target, gemm: str, schedule_gemm) -> None:
    """The Winograd kernel's stages around its batched GEMM (block `gemm`, scheduled by `schedule_gemm()`): the
    float32 kernel's and the bf16 one's (backend/cpu/bf16dot.py)."""
    lanes = vector_lanes(target)
    # every stage but the output transform, which is inlined into the epilogue
    inline_all(sch, keep={WINO_PAD, WINO_INPUT_ROWS, WINO_INPUT, gemm, WINO_OUTPUT_COLS})
    outs = sch.get_output_blocks(sch.get_sblock("root"))
    if len(outs) != 1 or len(sch.get_loops(outs[0])) != 5:
        raise ValueError("winograd epilogue is not a single NCHW[16]c block")
    out = outs[0]
    m = int(sch.get(sch.get_sblock(gemm)).reads[1].source.shape[0]) - 2  # alpha - 2, from U's shape
    _schedule_output(sch, out, m, lanes)
    schedule_gemm()
    _schedule_input(sch, lanes)
    for block in root_blocks(sch):
        if sch.get(block).name_hint == WINO_PAD:
            schedule_spatial(sch, block, lanes)


# A group's V and M (and the input rows it reads) stay within this many bytes (half a Zen 4 core's L2), and the
# kernel is grouped only where that leaves at least GROUPS_MIN groups of at least GROUP_MIN tiles (the groups are the
# parallel tasks). bf16, one Zen 4 core, 3x3 convs 64 channels at 56x56: 0.83 -> 0.61 ms; 128 at 28x28: 0.645 ->
# 0.579; at 14x14 (49 tiles) the gain was 1-6 % in one group or in 8-tile ones: not grouped.
GROUP_BYTES = 512 * 1024
GROUP_MIN, GROUPS_MIN = 32, 4


def tile_group(sch: s_tir.Schedule, gemm: str, rows: int) -> int | None:
    """Tiles per group for `schedule_grouped`, or None where the kernel is better (or only) scheduled by stages:
    a multiple of the GEMM's row tile `rows` dividing its padded tile count, the largest whose V and M fit
    GROUP_BYTES with at least GROUPS_MIN groups; the output's height and width must be whole tiles."""
    block = sch.get(sch.get_sblock(gemm))
    v, m_ = block.reads[0].source, block.writes[0].source
    alpha, tiles_pad = int(v.shape[0]), int(v.shape[2])
    ic = int(np.prod([int(d) for d in v.shape[3:]]))
    oc = int(np.prod([int(d) for d in m_.shape[3:]]))
    per_tile = alpha * alpha * (ic * v.dtype.bits // 8 + oc * 4)
    out = sch.get(sch.get_output_blocks(sch.get_sblock("root"))[0])
    _, _, oh, ow, _ = (int(d) for d in out.writes[0].source.shape)
    if oh % (alpha - 2) or ow % (alpha - 2):
        return None
    fits = [g for g in range(GROUP_MIN, tiles_pad // GROUPS_MIN + 1)
            if tiles_pad % g == 0 and g % rows == 0 and g * per_tile <= GROUP_BYTES]
    return max(fits, default=None)


def schedule_grouped(sch: s_tir.Schedule, target, gemm: str, group: int, schedule_gemm) -> None:
    """parallel over groups of `group` tiles > the group's padding, input transform (per tile and channel block:
    row eps of B^T d, then its alpha outputs), products and output transform (per tile, as `_schedule_output`).
    The products are computed at the group loop into a local M (`gemm`'s cache_write, the block `store` copying it
    out), then `schedule_gemm(prod, store)` tiles them. The output is visited tile by tile in tile order (its
    block's layout transformed to (tile, column, row, oc block, lane)), so that a group is a range of tiles: the
    last group's output stops at the last tile, its products cover the padded tiles (`tile_group` divides their
    count)."""
    lanes = vector_lanes(target)
    inline_all(sch, keep={WINO_PAD, WINO_INPUT_ROWS, WINO_INPUT, gemm, WINO_OUTPUT_COLS})
    out = sch.get_output_blocks(sch.get_sblock("root"))[0]
    prod = sch.get_sblock(gemm)
    m = int(sch.get(prod).reads[1].source.shape[0]) - 2
    *_, yy, xx, _ = sch.get_loops(out)
    th, tw = loop_extent(sch, yy) // m, loop_extent(sch, xx) // m
    sch.transform_block_layout(out, lambda b, o, y, x, lane: ((b * th + y // m) * tw + x // m, x % m, y % m, o, lane))
    p, xi, yi, ob, lane = sch.get_loops(out)
    grp, pi = sch.split(p, [None, group])
    sch.reorder(grp, pi, ob, xi, yi, lane)
    sch.parallel(grp)
    _output_tile(sch, xi, yi, lane)
    # producers after their consumers, each computed at the group loop
    store = sch.cache_write(prod, 0, "local")
    sch.compute_at(store, grp, preserve_unit_loops=True)
    sch.compute_at(prod, grp, preserve_unit_loops=True)
    v = sch.get_sblock(WINO_INPUT)
    sch.compute_at(v, grp, preserve_unit_loops=True)
    e, f, p, *channel = sch.get_loops(v)[1:]
    _transform_rows(sch, e, f, p, channel, lanes)
    for block in root_blocks(sch):
        if sch.get(block).name_hint == WINO_PAD:
            sch.compute_at(block, grp, preserve_unit_loops=True)
            attempt(sch.vectorize, sch.get_loops(block)[-1])
    schedule_gemm(prod, store)


def _schedule_output(sch, out, m, lanes):
    n, ob, yy, xx, lane = sch.get_loops(out)
    ty, yi = sch.split(yy, [None, m])
    tx, xi = sch.split(xx, [None, m])
    sch.reorder(n, ob, ty, tx, xi, yi, lane)  # column r of (M A) is read by the m outputs of column r
    sch.parallel(sch.fuse(n, ob, ty))
    _output_tile(sch, xi, yi, lane)


def _output_tile(sch, xi, yi, lane):
    """One output tile: per column r (loop `xi`), its M A column, then its m outputs (`yi`), 16 lanes a vector."""
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
    e, f, p, *channel = sch.get_loops(v)
    sch.parallel(_transform_rows(sch, e, f, p, channel, lanes))


def _transform_rows(sch, e, f, p, channel, lanes):
    """The input transform's loops (e, f, tile p, channel loops) as tile > channel block > per row eps: its B^T d
    row, then its alpha outputs (16 lanes a vector). Returns the fused (tile, channel block) loop."""
    c = sch.fuse(*channel) if len(channel) > 1 else channel[0]  # bf16 V: (k block, k pair, pair half)
    cb, cl = sch.split(c, [None, BLOCK])
    sch.reorder(p, cb, e, f, cl)
    tile = sch.fuse(p, cb)
    sch.unroll(e)
    sch.unroll(f)
    sch.vectorize(cl)
    # row eps of B^T d (alpha x 16 values) right before the alpha outputs that read it: a stack array, as above
    rows = sch.get_sblock(WINO_INPUT_ROWS)
    sch.compute_at(rows, e)
    j, c = sch.get_loops(rows)[-2:]
    sch.unroll(j)
    sch.vectorize(c)
    return tile


winograd_rule = Rule("winograd", schedule_winograd, blocks=(WINO_GEMM,), knobs=WinogradKnobs())
