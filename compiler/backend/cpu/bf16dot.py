"""The AVX512-BF16 schedules: dense_amx, conv2d_amx and matmul_amx with `unit="avx512bf16"` (product blocks
`*_dp`, ops/amx.py `product_name`) and the bf16 Winograd conv (ops/winograd.py, block `winograd_gemm_dp`) on CPUs
with AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake), in zmm register tiles of `vdpbf16ps`.

One `vdpbf16ps` multiplies 16 float32 lanes by pairs of bf16: acc[j] += a0 * b[j][0] + a1 * b[j][1]. The operands
are the AMX layouts as they are: a packed weight's [n block][k block][k pair] row (16 columns x 2 k, 64 bytes) is
one zmm, an A pair (two k of one row, 4 bytes) is broadcast to every lane. A register tile is `rows` x `cols`
blocks of 16 columns: per k pair, `cols` weight loads, `rows` broadcasts and rows x cols dot products into
rows x cols accumulators (16 of the 32 zmm registers with the default 8 x 2). That is twice the multiply-adds of
an fp32 FMA per instruction; on a 2-FMA-port Xeon both issue two per cycle, on Zen 4 `vdpbf16ps` zmm issues as
two halves like an fp32 FMA.

LLVM 22 declares the instruction as `llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x
bfloat>)`, and TVM turns every bfloat16 vector expression into float32 (its BF16ComputeLegalize), so the operands
cannot reach the intrinsic as bfloat16 from TIR. The tensor intrinsic calls `tf_dpbf16ps` (int32 vectors) instead,
a three-line LLVM function (ops/amx.py `DPBF16PS_LL`) that bitcasts and calls the intrinsic; the schedule imports it into the
kernel's LLVM module (`pragma_import_llvm` on the task loop), where LLVM inlines it (alwaysinline, linkonce_odr so
that the objects of a parallel build link).
"""

from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tensorforge.compiler.backend.cpu.amx import _registered, bits_to_f32, convert_in_parallel
from tensorforge.compiler.backend.cpu.amx_conv import schedule_conv_conversion
from tensorforge.compiler.backend.cpu.common import Rule, anchor_epilogue, attempt, loop_extent
from tensorforge.compiler.backend.cpu.winograd import schedule_grouped, schedule_stages, tile_group
from tensorforge.compiler.ops.amx import AMX_A, DENSE_AMX, DP_SUFFIX, DPBF16PS_LL, N_BLOCK, PAIR, ROW_MULTIPLE, pair_half
from tensorforge.compiler.ops.amx_conv import AMX_CONV_A, CONV_AMX
from tensorforge.compiler.ops.amx_matmul import AMX_MM_A, AMX_MM_B, MATMUL_AMX
from tensorforge.compiler.ops.winograd import WINO_GEMM_DP

DENSE_DP, CONV_DP, MATMUL_DP = DENSE_AMX + DP_SUFFIX, CONV_AMX + DP_SUFFIX, MATMUL_AMX + DP_SUFFIX

ROWS = ROW_MULTIPLE["avx512bf16"]  # register tile rows: the products' row padding on this unit (ops/amx.py)
COLS = 2  # register tile columns in blocks of 16: divides the weights' column padding (N_TILE / N_BLOCK)


def dp_intrin(b_bits: bool) -> str:
    """The tensor intrinsic for one `vdpbf16ps`: C[0:16] += A[0] * B[0:16, 0] + A[1] * B[0:16, 1], A a pair of bf16
    bits (uint16), B the bfloat16 packed weight (or, with `b_bits`, matmul_amx's uint32 pair words, one per column:
    ops/amx_matmul.py), C float32 accumulators (local)."""
    name = f"tensorforge_dpbf16ps_{'bits' if b_bits else 'bf16'}"
    scope = "local"
    if _registered(name):
        return name

    b_shape, b_dtype = ((N_BLOCK,), "uint32") if b_bits else ((N_BLOCK, PAIR), "bfloat16")

    def widen_b(B, j, t):
        """B's element (column j, pair half t) as float32."""
        return bits_to_f32(pair_half(B[j], t)) if b_bits else T.Cast("float32", B[j, t])

    def b_row(B):
        """The 16 columns' pairs as one int32x16 operand."""
        return T.reinterpret("int32x16", B.vload([0], "uint32x16") if b_bits else B.vload([0, 0], "bfloat16x32"))

    def b_all(B):
        return B[0:N_BLOCK] if b_bits else B[0:N_BLOCK, 0:PAIR]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (PAIR,), "uint16", offset_factor=1)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1)
        C = T.match_buffer(c, (N_BLOCK,), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:N_BLOCK], A[0:PAIR], b_all(B))
            T.writes(C[0:N_BLOCK])
            for j, t in T.grid(N_BLOCK, PAIR):
                with T.sblock("update"):
                    vj, vt = T.axis.remap("SR", [j, t])
                    C[vj] = C[vj] + bits_to_f32(A[vt]) * widen_b(B, vj, vt)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (PAIR,), "uint16", offset_factor=1)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1)
        C = T.match_buffer(c, (N_BLOCK,), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:N_BLOCK], A[0:PAIR], b_all(B))
            T.writes(C[0:N_BLOCK])
            C[T.Ramp(0, 1, N_BLOCK)] = T.call_extern(
                "float32x16", "tf_dpbf16ps", C.vload([0], "float32x16"),
                T.Broadcast(T.reinterpret("int32", A.vload([0], "uint16x2")), N_BLOCK), b_row(B))

    TensorIntrin.register(name, desc, impl)
    return name


def _in_registers(sch: s_tir.Schedule, block, *unrolled) -> None:
    """A register tile: the tensorized update's tile loops `unrolled`, and `block` (its init, or its store) over the
    tile's last three loops: rows and 16-column blocks unrolled, the 16 columns one vector. So LLVM keeps every
    accumulator in a zmm register."""
    for loop in unrolled:
        sch.unroll(loop)
    *_, rows, cols, lanes = sch.get_loops(block)
    sch.unroll(rows)
    sch.unroll(cols)
    sch.vectorize(lanes)


def _tile_tasks(sch: s_tir.Schedule, batch, rows, col_blocks, cols, reduction, parallel: bool = True) -> tuple:
    """[batch x pair of 16-column blocks x ROWS rows] tasks, parallel, of a product's loops; per task the reduction
    outside the ROWS x COLS*16 register tile, its last loop (the pair half) inside. Returns the task loop and the
    tile's row and column-block loops. Not `parallel` (inside a parallel loop already): the loops stay nested,
    the row-tile loop is the task loop."""
    ro, ri = sch.split(rows, [None, ROWS])
    co, ci = sch.split(col_blocks, [None, COLS])
    sch.reorder(*batch, co, ro, *reduction[:-1], ri, ci, cols, reduction[-1])
    if not parallel:
        return ro, ri, ci
    tile = sch.fuse(*batch, co, ro)
    sch.parallel(tile)
    return tile, ri, ci


def _in_dot_products(sch: s_tir.Schedule, prod, tile, first_k, cols, ri, ci, b_bits: bool) -> None:
    """The register tile's products as `vdpbf16ps` (its 16 columns `cols` tensorized), its accumulators zeroed
    before the reduction's first loop `first_k`, all in registers."""
    init = sch.decompose_reduction(prod, first_k)
    sch.tensorize(cols, dp_intrin(b_bits))
    _in_registers(sch, init, ri, ci)
    sch.annotate(tile, "pragma_import_llvm", DPBF16PS_LL)


def schedule_dp_gemm(sch: s_tir.Schedule, anchor: str, conversions: tuple[str, ...], b_bits: bool) -> None:
    """[batch x column panel x row tile] tasks, parallel; per task a ROWS x COLS*16 register tile over the whole K
    (k block, k pair outside the tile), the epilogue per tile from the registers."""
    prod = sch.get_sblock(anchor)
    out = anchor_epilogue(sch, prod, *conversions)
    *batch, i, jb, jt, kb, kk, kt = sch.get_loops(prod)
    tile, ii, jbi = _tile_tasks(sch, batch, i, jb, jt, (kb, kk, kt))
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.set_scope(prod, 0, "local")
    _in_dot_products(sch, prod, tile, kb, jt, ii, jbi, b_bits)
    convert_in_parallel(sch, conversions)
    attempt(sch.vectorize, sch.get_loops(out)[-1])


def schedule_dp_dense(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    schedule_dp_gemm(sch, DENSE_DP, (AMX_A,), b_bits=False)


def schedule_dp_matmul(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    schedule_dp_gemm(sch, MATMUL_DP, (AMX_MM_A, AMX_MM_B), b_bits=True)


dp_dense_rule = Rule("dp_dense", schedule_dp_dense, blocks=(DENSE_DP,))
dp_matmul_rule = Rule("dp_matmul", schedule_dp_matmul, blocks=(MATMUL_DP,))


def schedule_dp_conv(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """[batch x oc block pair x ROWS-pixel tile] tasks, parallel; per task a ROWS pixels x COLS*16 channels
    register tile over every reduction step, and the write-back (bias, the fused epilogue) of its pixels from the
    registers, as dense does. The GEMM's rows are the output's pixels in order (ops/amx_conv.py: Wv = OW on this
    unit), so the write-back's (row, column) become one pixel index first; the product never reaches memory (it
    went there and back in a second loop nest: Zen 4, one core, bf16 ResNet-50 45.9 -> 44.5 ms, MobileNetV2 7.04 ->
    6.74 ms)."""
    prod = sch.get_sblock(CONV_DP)
    out = anchor_epilogue(sch, prod, AMX_CONV_A)
    ow = loop_extent(sch, sch.get_loops(out)[3])
    sch.transform_block_layout(out, lambda b, ob, y, z, oi: (b, ob, y * ow + z, oi))
    b, ob, m, oi, r, rp, rt = sch.get_loops(prod)
    tile, mi, obi = _tile_tasks(sch, (b,), m, ob, oi, (r, rp, rt))
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.set_scope(prod, 0, "local")
    _in_dot_products(sch, prod, tile, r, oi, mi, obi, b_bits=False)
    schedule_conv_conversion(sch)
    *_, o_ob, o_m, o_oi = sch.get_loops(out)
    sch.unroll(o_ob)
    sch.unroll(o_m)
    attempt(sch.vectorize, o_oi)


dp_conv_rule = Rule("dp_conv", schedule_dp_conv, blocks=(CONV_DP,))


def schedule_dp_winograd(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """winograd_conv2d in bf16 (ops/winograd.py, unit avx512bf16): the transforms as the float32 kernel schedules
    them (backend/cpu/winograd.py), V stored as bf16 bits; the products per (eps, nu) as dense's: a ROWS x COLS*16
    register tile over IC, stored to M for the output transform. Where the tiles split into groups whose V and M
    fit in L2 (`tile_group`), every stage runs per group (`schedule_grouped`), the products as (eps, nu) > oc block
    pair > ROWS tiles of the group; elsewhere the stages run one after the other over all tiles, the products in
    [(eps, nu) x oc block pair x ROWS tiles] tasks."""
    group = tile_group(sch, WINO_GEMM_DP, ROWS)

    def tasks():
        prod = sch.get_sblock(WINO_GEMM_DP)
        store = sch.cache_write(prod, 0, "local")
        e, f, p, ob, oi, rkb, rkp, rkt = sch.get_loops(prod)
        tile, pi, obi = _tile_tasks(sch, (e, f), p, ob, oi, (rkb, rkp, rkt))
        in_registers(prod, store, tile, pi, obi, oi, rkb)

    def in_group(prod, store):
        e, f, p, ob, oi, rkb, rkp, rkt = sch.get_loops(prod)[-8:]
        tile, pi, obi = _tile_tasks(sch, (e, f), p, ob, oi, (rkb, rkp, rkt), parallel=False)
        in_registers(prod, store, tile, pi, obi, oi, rkb)

    def in_registers(prod, store, tile, pi, obi, oi, rkb):
        sch.reverse_compute_at(store, tile, preserve_unit_loops=True)
        _in_dot_products(sch, prod, tile, rkb, oi, pi, obi, b_bits=False)
        _in_registers(sch, store)

    if group is None:
        schedule_stages(sch, target, WINO_GEMM_DP, tasks)
    else:
        schedule_grouped(sch, target, WINO_GEMM_DP, group, in_group)


dp_winograd_rule = Rule("dp_winograd", schedule_dp_winograd, blocks=(WINO_GEMM_DP,))
