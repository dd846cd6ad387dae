"""The AMX conv schedule (ops/amx_conv.py `conv2d_amx`): [batch x oc block pair x 32-pixel tile] tasks of 32 x 32
register tiles, the reduction over (32-channel block, kh, kw) steps, each tap's A tile read at a constant pixel stride
from the converted input; 1x1 convs in tasks of whole output rows. The tile instructions, the configuration and the
pitfalls: backend/cpu/amx.py."""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tensorforge.compiler.backend.cpu.amx import (
    _registered, amx_fill_intrin, amx_task_intrin, bits_to_f32, dot, load, store, zero_accumulators)
from tensorforge.compiler.backend.cpu.common import Rule, anchor_epilogue, attempt, loop_extent
from tensorforge.compiler.ops.amx import K_BLOCK, M_TILE, N_BLOCK, N_TILE, PAIR, TILE_ROWS
from tensorforge.compiler.ops.amx_conv import (
    AMX_CONV_A, ANN_ROW, ANN_STEP, ANN_TAPS, ANN_TASK_PIXELS, CONV_AMX, IN_BLOCK)


def schedule_conv_conversion(sch: s_tir.Schedule) -> None:
    """The conv input's bf16 conversion (block AMX_CONV_A): parallel over (batch, channel block, padded row), the 32
    channels of a pixel as two NCHW[16]c vectors, one contiguous load each."""
    a = sch.get_sblock(AMX_CONV_A)
    n_, c_, f_, pairs, pair = sch.get_loops(a)
    rows, _ = sch.split(f_, [None, int(sch.get(a).annotations[ANN_ROW])])
    sch.parallel(sch.fuse(n_, c_, rows))
    sch.unroll(pairs)
    attempt(sch.vectorize, pair)



def amx_conv_intrin(steps: int, kh: int, kw: int, step: int, h_step: int, w_step: int, scope: str = "global",
                    zero_first: bool = False) -> str:
    """The tensor intrinsic for one [2 oc blocks x 32 pixels x 16 oc] tile of `conv2d_amx` (ops/amx_conv.py): the
    reduction over `steps` = (32-channel block, kh, kw) steps, output pixels `step` input pixels apart, tap (i, j)
    at i * h_step + j * w_step flattened pixels; the product C in `scope`. The accumulator tiles start as the fill
    intrinsic just before left them (zero), or with `zero_first` zeroed here (after amx_task_intrin, which zeroed the
    whole task's C, for the description, and configured the tiles)."""
    name = f"tensorforge_amx_conv_{steps}_{kh}x{kw}_{step}_{h_step}_{w_step}_{scope}" + ("_z" if zero_first else "")
    if _registered(name):
        return name
    kp, nb, rows = K_BLOCK // PAIR, N_TILE // N_BLOCK, M_TILE
    cb, taps, halves = steps // (kh * kw), kh * kw, K_BLOCK // IN_BLOCK
    span = step * (rows - 1) + (kh - 1) * h_step + (kw - 1) * w_step + 1

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (cb, span, halves, IN_BLOCK), "uint16", offset_factor=1)
        B = T.match_buffer(b, (nb, steps, kp, N_BLOCK, PAIR), "bfloat16", offset_factor=1)
        C = T.match_buffer(c, (nb, rows, N_BLOCK), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:nb, 0:rows, 0:N_BLOCK], A[0:cb, 0:span, 0:halves, 0:IN_BLOCK],
                    B[0:nb, 0:steps, 0:kp, 0:N_BLOCK, 0:PAIR])
            T.writes(C[0:nb, 0:rows, 0:N_BLOCK])
            for ob, m, oi, r, rp, rt in T.grid(nb, rows, N_BLOCK, steps, kp, PAIR):
                with T.sblock("update"):
                    vob, vm, voi, vr, vp, vt = T.axis.remap("SSSRRR", [ob, m, oi, r, rp, rt])
                    C[vob, vm, voi] = C[vob, vm, voi] + bits_to_f32(
                        A[vr // taps, vm * step + vr // kw % kh * h_step + vr % kw * w_step, vp // 8,
                          vp % 8 * PAIR + vt]) * T.Cast("float32", B[vob, vr, vp, voi, vt])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa0, sa1, sa2 = T.int32(), T.int32(), T.int32()
        sb0, sb1, sb2, sb3 = T.int32(), T.int32(), T.int32(), T.int32()
        sc0, sc1 = T.int32(), T.int32()
        A = T.match_buffer(a, (cb, span, halves, IN_BLOCK), "uint16", offset_factor=1, strides=[sa0, sa1, sa2, 1])
        B = T.match_buffer(b, (nb, steps, kp, N_BLOCK, PAIR), "bfloat16", offset_factor=1,
                           strides=[sb0, sb1, sb2, sb3, 1])
        C = T.match_buffer(c, (nb, rows, N_BLOCK), "float32", offset_factor=1, strides=[sc0, sc1, 1],
                           scope=scope)
        with T.sblock("root"):
            T.reads(C[0:nb, 0:rows, 0:N_BLOCK], A[0:cb, 0:span, 0:halves, 0:IN_BLOCK],
                    B[0:nb, 0:steps, 0:kp, 0:N_BLOCK, 0:PAIR])
            T.writes(C[0:nb, 0:rows, 0:N_BLOCK])
            # tiles 0-3 hold C: zeroed by the fill intrinsic just before (amx_fill_intrin), not loaded, or zeroed here
            if zero_first:
                zero_accumulators()
            for r in range(steps):  # the loads in the order of their first use, as in amx_intrin
                T.evaluate(load(4, T.address_of(A[r // taps, r // kw % kh * h_step + r % kw * w_step, 0, 0]),
                                T.Cast("int64", sa1 * 2 * step)))
                T.evaluate(load(6, T.address_of(B[0, r, 0, 0, 0]), T.Cast("int64", sb2 * 2)))
                T.evaluate(dot(0, 4, 6))
                T.evaluate(load(7, T.address_of(B[1, r, 0, 0, 0]), T.Cast("int64", sb2 * 2)))
                T.evaluate(dot(2, 4, 7))
                T.evaluate(load(5, T.address_of(A[r // taps, r // kw % kh * h_step + r % kw * w_step
                                                  + TILE_ROWS * step, 0, 0]), T.Cast("int64", sa1 * 2 * step)))
                T.evaluate(dot(1, 5, 6))
                T.evaluate(dot(3, 5, 7))
            T.evaluate(store(0, T.address_of(C[0, 0, 0]), T.Cast("int64", sc1 * 4)))
            T.evaluate(store(1, T.address_of(C[0, TILE_ROWS, 0]), T.Cast("int64", sc1 * 4)))
            T.evaluate(store(2, T.address_of(C[1, 0, 0]), T.Cast("int64", sc1 * 4)))
            T.evaluate(store(3, T.address_of(C[1, TILE_ROWS, 0]), T.Cast("int64", sc1 * 4)))

    TensorIntrin.register(name, desc, impl)
    return name


def schedule_amx_conv(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """[batch x oc block pair x 32-pixel tile] tasks, parallel; the product into its own buffer, then the write-back
    (bias, the fused epilogue, the valid columns of each virtual row) as a parallel vectorized loop nest. A conv
    whose product is split in whole output rows (ANN_TASK_PIXELS: 1x1 convs) gets schedule_amx_conv_rows instead."""
    prod = sch.get_sblock(CONV_AMX)
    ann = sch.get(prod).annotations
    step, (kh, kw, h_step, w_step) = int(ann[ANN_STEP]), (int(v) for v in ann[ANN_TAPS])
    if ANN_TASK_PIXELS in ann:
        schedule_amx_conv_rows(sch, prod, int(ann[ANN_TASK_PIXELS]), (kh, kw, step, h_step, w_step))
        return
    out = anchor_epilogue(sch, prod, AMX_CONV_A)
    b, ob, m, oi, r, rp, rt = sch.get_loops(prod)
    steps = loop_extent(sch, r)
    mo, mi = sch.split(m, [None, M_TILE])
    obo, obi = sch.split(ob, [None, N_TILE // N_BLOCK])
    sch.reorder(b, obo, mo, obi, mi, oi, r, rp, rt)
    sch.parallel(sch.fuse(b, obo, mo))
    init = sch.decompose_reduction(prod, obi)
    sch.tensorize(obi, amx_conv_intrin(steps, kh, kw, step, h_step, w_step))
    sch.tensorize(sch.get_loops(init)[-3], amx_fill_intrin((N_TILE // N_BLOCK, M_TILE, N_BLOCK), "global"))
    schedule_conv_conversion(sch)
    loops = sch.get_loops(out)
    sch.parallel(sch.fuse(*loops[:3]))
    attempt(sch.vectorize, loops[-1])


def schedule_amx_conv_rows(sch: s_tir.Schedule, prod, task_pixels: int, geometry: tuple) -> None:
    """[batch x `task_pixels` pixels (whole output rows)] tasks, parallel; a task converts its pixels' input (every
    channel) to the A layout, then for each oc block pair computes its 32-pixel tiles into a product buffer of its
    own (local) and writes them back (bias, the fused epilogue) while they are in L1. The whole-product buffer made
    a 1x1 conv's output cross memory three times (product stored, read back, output stored): the 1x1 convs of
    ResNet-50's first stage ran at 260-350 GFLOP/s on AMX. The conversion in the task (not a parallel loop of its
    own, and read right after it is written): 256 -> 64 at 56x56 0.198 -> 0.114 ms; ResNet-50 bf16 9.74 -> 9.58 ms
    on one core, 6.63 -> 6.01 ms on two (interleaved in one process)."""
    kh, kw, step, h_step, w_step = geometry
    out = anchor_epilogue(sch, prod, AMX_CONV_A)
    b, ob, m, oi, r, rp, rt = sch.get_loops(prod)
    steps = loop_extent(sch, r)
    mt, mrest = sch.split(m, [None, task_pixels])
    mo, mi = sch.split(mrest, [None, M_TILE])
    obo, obi = sch.split(ob, [None, N_TILE // N_BLOCK])
    sch.reorder(b, mt, obo, mo, obi, mi, oi, r, rp, rt)
    task = sch.fuse(b, mt)
    sch.parallel(task)
    sch.set_scope(prod, 0, "local")
    sch.reverse_compute_at(out, obo, preserve_unit_loops=True)
    conversion = sch.get_sblock(AMX_CONV_A)
    sch.compute_at(conversion, task, preserve_unit_loops=True)
    # the init for an oc block pair of the task, before its first tile: the tile configuration checked once there
    # (amx_task_intrin), each tile zeroing its own accumulators
    init = sch.decompose_reduction(prod, mo)
    imo, iob, imi, ioi = sch.get_loops(init)[-4:]
    sch.reorder(iob, imo, imi, ioi)
    sch.fuse(imo, imi)
    sch.tensorize(iob, amx_task_intrin((N_TILE // N_BLOCK, task_pixels, N_BLOCK), "local"))
    sch.tensorize(obi, amx_conv_intrin(steps, kh, kw, step, h_step, w_step, scope="local", zero_first=True))
    *_, pairs, pair = sch.get_loops(conversion)
    sch.unroll(pairs)
    attempt(sch.vectorize, pair)
    attempt(sch.vectorize, sch.get_loops(out)[-1])


amx_conv_rule = Rule("amx_conv", schedule_amx_conv, blocks=(CONV_AMX,))


