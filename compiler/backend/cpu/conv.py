"""Convolution schedules: the packed NCHW conv, the NCHW[b]c (blocked) convs, and the row-wise depthwise / plain
convs. Each anchor block, and the register tile it should use, come from the compute (compiler/ops/packed.py,
nchwc.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import tvm
from tvm import s_tir

from tensorforge.compiler.backend.cpu.common import (
    Knobs, Rule, anchor_epilogue, attempt, largest_divisor, loop_extent, root_blocks, schedule_spatial, vector_lanes)
from tensorforge.compiler.ops.nchwc import CONV_DW_NCHWC, CONV_NCHWC
from tensorforge.compiler.ops.packed import ANN_OC_BLOCK, ANN_OW_TILE, CONV_DEPTHWISE, CONV_PACKED, CONV_PLAIN, PAD

PLANE_MAX = 16384       # depthwise conv: a whole output plane (floats) per parallel task, else one row
PLAIN_SEGMENT_MAX = 16   # plain conv: [8 x 16] accumulators; vectors wider than 16 lanes were 5x slower
PLAIN_CHANNEL_TILE = 8


@dataclass(frozen=True)
class ConvKnobs(Knobs):
    """Schedule-only parameters of the NCHW[x]c conv (the output width tile is fixed by the compute's padding)."""

    oc_tile: int = 2        # output-channel blocks per register tile: each input broadcast feeds that many FMAs ...
    accumulators: int = 16  # ... with the width tile split to keep oc_tile x width vector accumulators within this
    #                         (at most 12 with AVX2's 16 registers). ResNet-50, one core, every NCHW16c conv kernel:
    #                         1 x 14 or 1 x 7 tiles 21.1 ms, 2 x 7 16.2 ms; 2 x 14 and 4 x 7 (28 accumulators) spill

    SPACE: ClassVar[dict[str, tuple]] = {"oc_tile": (1, 2, 4), "accumulators": (16, 28)}


def schedule_conv_packed(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Loops of the final epilogue block: parallel(n, oc_block, oh) > ow_tile > [oc_block x ow_tile] write-back;
    the conv is computed at the ow_tile loop into a local [ow_tile x oc_block] tile: (ic, kh, kw) outside, ow
    unrolled, oc vectorized, so LLVM keeps the tile in ow_tile vector registers."""
    conv = sch.get_sblock(CONV_PACKED)
    ann = sch.get(conv).annotations
    tile = int(ann[ANN_OW_TILE])
    ocb = int(ann[ANN_OC_BLOCK])
    out = anchor_epilogue(sch, conv, PAD)
    if len(sch.get_loops(out)) != 4:
        raise ValueError("conv epilogue is not a single NCHW block")
    n, o, h, w = sch.get_loops(out)
    oo, oi = sch.split(o, [None, ocb])
    wo, wi = sch.split(w, [None, tile])
    sch.reorder(n, oo, h, wo, oi, wi)
    sch.compute_at(conv, wo, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    loops = sch.get_loops(conv)
    cw, coi, ric, rkh, rkw = loops[-5:]
    sch.reorder(ric, rkh, rkw, cw, coi)
    sch.unroll(cw)
    sch.vectorize(coi)
    sch.parallel(sch.fuse(n, oo, h))
    _schedule_tile_writeback(sch, out, oi, wi)
    init = sch.decompose_reduction(conv, ric)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    attempt(lambda: sch.unroll(sch.get_loops(init)[-2]))
    _schedule_pad(sch, target)


def schedule_conv_nchwc(sch: s_tir.Schedule, target: tvm.target.Target, knobs: ConvKnobs = ConvKnobs()) -> None:
    """Blocked layout (dense or depthwise conv): loops of the final epilogue block: parallel(n, oc_block, oh) > ow_tile > [ow_tile x
    oc_block] write-back, one contiguous vector store per output column; the conv is computed at the ow_tile loop
    into a local tile with the reductions outside it, (ic_block, kh, kw, ic_lane) order, ow unrolled, oc vectorized.
    With `knobs.oc_tile` > 1 (not depthwise) the tile spans that many output-channel blocks: parallel(n,
    oc_block / oc_tile, oh) > ow_tile > [oc_tile x ow_tile x oc_block]."""
    names = {sch.get(b).name_hint for b in root_blocks(sch)}
    conv = sch.get_sblock(CONV_NCHWC if CONV_NCHWC in names else CONV_DW_NCHWC)
    ann = sch.get(conv).annotations
    tile = int(ann[ANN_OW_TILE])
    out = anchor_epilogue(sch, conv, PAD)
    if len(sch.get_loops(out)) != 5:
        raise ValueError("conv epilogue is not a single NCHW[x]c block")
    n, o, h, w, oi = sch.get_loops(out)
    blocked_input = len(sch.get(conv).iter_vars) == 9  # n, ob, oh, ow, oi + (ic_block, kh, kw, ic_lane)
    depthwise = len(sch.get(conv).iter_vars) == 7  # n, c, oh, ow, ci + (kh, kw)
    oct_ = 1 if depthwise else largest_divisor(loop_extent(sch, o), knobs.oc_tile)
    if oct_ > 1:
        budget = knobs.accumulators if vector_lanes(target) >= 16 else min(knobs.accumulators, 12)
        tile = largest_divisor(tile, max(1, budget // oct_))
    o, ot = sch.split(o, [None, oct_])
    wo, wi = sch.split(w, [None, tile])
    sch.reorder(n, o, h, wo, ot, wi, oi)
    sch.compute_at(conv, wo, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    loops = sch.get_loops(conv)
    if depthwise:
        cw, coi, rkh, rkw = loops[-4:]
        sch.reorder(rkh, rkw, cw, coi)
        first = rkh
    elif blocked_input:
        co, _, cw, coi, rcb, rkh, rkw, rci = loops[-8:]
        sch.reorder(rcb, rkh, rkw, rci, co, cw, coi)
        first = rcb
    else:
        co, _, cw, coi, ric, rkh, rkw = loops[-7:]
        sch.reorder(ric, rkh, rkw, co, cw, coi)
        first = ric
    if not depthwise:
        sch.unroll(co)
    sch.unroll(cw)
    sch.vectorize(coi)
    sch.unroll(ot)
    rows = sch.fuse(n, o, h)
    sch.parallel(rows)
    sch.unroll(wi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(conv, first)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    attempt(lambda: sch.unroll(sch.get_loops(init)[-2]))
    if depthwise and PAD in names:
        # pad only the KH input rows each output row reads, in L1, instead of a whole padded copy of the input:
        # at batch 8 MobileNetV2's early depthwise inputs (38 MB) padded to DRAM and read back cost 3x per image
        pad = sch.get_sblock(PAD)
        sch.compute_at(pad, rows, preserve_unit_loops=True)
        attempt(lambda: sch.vectorize(sch.get_loops(pad)[-1]))
    else:
        _schedule_pad(sch, target)


def _schedule_tile_writeback(sch, out, oi, wi):
    """The [oc_block x ow_tile] register tile goes to NCHW memory: one vector store per output channel."""
    sch.unroll(oi)
    sch.vectorize(wi)  # measured: 1.3x over fully unrolled scalar stores on a 3-input-channel conv, equal elsewhere


def _schedule_pad(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    for block in root_blocks(sch):
        if sch.get(block).name_hint == PAD:
            schedule_spatial(sch, block, vector_lanes(target))


def schedule_conv_rowwise(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Depthwise / plain conv, vectorized over output width.

    A plain (grouped) conv keeps [channels x row segment] in registers, so each input vector load feeds several
    FMAs. A depthwise conv reads a different input channel per output channel, so its work per row is tiny; it
    accumulates a whole output plane per channel instead (one row at a time in registers), because TVM 0.27 lowers
    every local buffer to a TVMBackendAllocWorkspace call at its scope: one call per row would dominate."""
    lanes = vector_lanes(target)
    names = {sch.get(b).name_hint for b in root_blocks(sch)}
    depthwise = CONV_DEPTHWISE in names
    conv = sch.get_sblock(CONV_DEPTHWISE if depthwise else CONV_PLAIN)
    out = anchor_epilogue(sch, conv, PAD)
    if len(sch.get_loops(out)) != 4:
        raise ValueError("conv epilogue is not a single NCHW block")
    n, o, h, w = sch.get_loops(out)
    ow = loop_extent(sch, w)
    if depthwise:
        sch.parallel(sch.fuse(n, o))
        sch.compute_at(conv, h if loop_extent(sch, h) * ow > PLANE_MAX else sch.get_loops(out)[0],
                       preserve_unit_loops=True)
        sch.set_scope(conv, 0, "local")
        ch, cw, ric, rkh, rkw = sch.get_loops(conv)[-5:]
        piece = largest_divisor(ow, 2 * lanes)
        if piece < lanes // 2 and ow > 2 * lanes:
            piece = lanes  # no good divisor: a predicated tail
        cwo, cw = sch.split(cw, [None, piece])
        sch.reorder(ch, cwo, ric, rkh, rkw, cw)
        sch.vectorize(cw)
        attempt(sch.vectorize, w)
        init = sch.decompose_reduction(conv, ric)
        attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
        _schedule_pad(sch, target)
        return
    seg = largest_divisor(ow, PLAIN_SEGMENT_MAX)
    if seg < 8 and ow > PLAIN_SEGMENT_MAX:
        seg = PLAIN_SEGMENT_MAX
    channels = largest_divisor(loop_extent(sch, o), PLAIN_CHANNEL_TILE)
    oo, oi = sch.split(o, [None, channels])
    wo, wi = sch.split(w, [None, seg])
    sch.reorder(n, oo, h, wo, oi, wi)
    sch.parallel(sch.fuse(n, oo, h))
    sch.compute_at(conv, wo, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    _, co, _, cw, ric, rkh, rkw = sch.get_loops(conv)[-7:]
    sch.reorder(ric, rkh, rkw, co, cw)
    sch.unroll(co)
    sch.vectorize(cw)
    attempt(sch.vectorize, wi)
    init = sch.decompose_reduction(conv, ric)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _schedule_pad(sch, target)


conv_packed_rule = Rule("conv_packed", schedule_conv_packed, blocks=(CONV_PACKED,))
conv_nchwc_rule = Rule("conv_nchwc", schedule_conv_nchwc, blocks=(CONV_NCHWC,), knobs=ConvKnobs())
# the depthwise NCHW[x]c conv has no knobs (its tile is one output-channel block): a rule of its own, so the knob
# search does not time it with knobs that change nothing
conv_dw_nchwc_rule = Rule("conv_dw_nchwc", schedule_conv_nchwc, blocks=(CONV_DW_NCHWC,))
conv_rowwise_rule = Rule("conv_rowwise", schedule_conv_rowwise, blocks=(CONV_DEPTHWISE, CONV_PLAIN))
