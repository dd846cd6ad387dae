"""CPU schedule of the Winograd conv (compiler/ops/winograd.py: the algorithm, its six TE stages and their block
names). pad: parallel rows, vector lanes. input transform: parallel over (tile, channel block) > per row eps: its
B^T d row, then its alpha outputs. GEMM: parallel over (eps, nu, oc tile, tile group) > [p_tile tiles x nb
channels] accumulators in registers, k outside. output: parallel over (image, oc block, tile row) > tile > per
column r: its M A column, then its m outputs; the epilogue inlined into its stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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


def _schedule_output(sch, out, m, lanes):
    n, ob, yy, xx, lane = sch.get_loops(out)
    ty, yi = sch.split(yy, [None, m])
    tx, xi = sch.split(xx, [None, m])
    sch.reorder(n, ob, ty, tx, xi, yi, lane)  # column r of (M A) is read by the m outputs of column r
    sch.parallel(sch.fuse(n, ob, ty))
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
    c = sch.fuse(*channel) if len(channel) > 1 else channel[0]  # bf16 V: (k block, k pair, pair half)
    cb, cl = sch.split(c, [None, BLOCK])
    sch.reorder(p, cb, e, f, cl)
    tile = sch.fuse(p, cb)
    sch.parallel(tile)
    sch.unroll(e)
    sch.unroll(f)
    sch.vectorize(cl)
    # row eps of B^T d (alpha x 16 values) right before the alpha outputs that read it: a stack array, as above
    rows = sch.get_sblock(WINO_INPUT_ROWS)
    sch.compute_at(rows, e)
    j, c = sch.get_loops(rows)[-2:]
    sch.unroll(j)
    sch.vectorize(c)


winograd_rule = Rule("winograd", schedule_winograd, blocks=(WINO_GEMM,), knobs=WinogradKnobs())
