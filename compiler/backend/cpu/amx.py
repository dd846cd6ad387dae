"""The AMX schedules (ops/amx.py `dense_amx`, ops/amx_matmul.py `matmul_amx`; ops/amx_conv.py `conv2d_amx` in
backend/cpu/amx_conv.py, from the tile instructions here): 32 x 32
register tiles of AMX tile registers, tensorized.

A tile task computes a [32 rows x 32 columns] block of the product over the whole K: tiles 0-3 accumulate it
(float32, 16 x 16 each), tiles 4-5 hold two 16-row slices of x (bf16), tiles 6-7 two 16-column slices of the
packed weight, and each 32-wide step of K is four `tdpbf16ps`. The tile registers are named by immediates in
LLVM's AMX intrinsics (`llvm.x86.tileloadd64` and friends), called from TIR through a tensor intrinsic registered
here, one per count of K blocks. Each task loads the tile configuration (`ldtilecfg`: palette 1, all eight tiles
16 rows x 64 bytes) before its first tile instruction: the configuration is per thread. The process must have asked
Linux for AMX state (runtime/cpu_features.py `request_amx`) or the first tile instruction faults.

Loop order (dense, schedule_gemm_row_tiles): tasks of [weight column panel x up to 8 row blocks], parallel, each
tile over the whole K, so a task reads its weight panel from memory once and from L2 after, while x (converted once
to bf16 bits, block `amx_a`, in parallel) stays in L2 as well; the next task's panel is prefetched. The elementwise
epilogue (bias, activation, the fused chain) is computed per tile from the float32 accumulators, vectorized.

Pitfalls met on TVM 0.27 (keep them in mind when changing these schedules):
  - TVM widens kernel-internal bfloat16 buffers to float32 (its bf16 legalization), so a converted operand handed
    to a tile load must be uint16 bits (ops/amx.py `bf16_bits`); params may stay bfloat16.
  - Memory that the intrinsics touch only through `address_of` is invisible to TVM's buffer liveness. The dense
    product lives in `local` scope, and so does the product of a 1x1 conv's row task (schedule_amx_conv_rows);
    other convs write their product back in a loop of its own: a per-tile write-back of the global conv product
    (`reverse_compute_at` under the tile loop) let the tile stores land in the converted input's allocation, and
    switching to `access_ptr` failed to build. Check numerics on several shapes after any change.
  - One intrinsic per reduction extent: TE drops reduction axes of extent 1, so K and the conv's reduction steps
    are padded to at least two blocks (ops/amx.py `padded_k`, ops/amx_conv.py `conv_channel_blocks`).
"""

from __future__ import annotations

import struct

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tensorforge.compiler.backend.cpu.common import Rule, anchor_epilogue, attempt, largest_divisor, loop_extent
from tensorforge.compiler.ops.amx import AMX_A, DENSE_AMX, K_BLOCK, M_TILE, N_BLOCK, N_TILE, PAIR, TILE_ROWS, pair_half
from tensorforge.compiler.ops.amx_matmul import AMX_MM_A, AMX_MM_B, MATMUL_AMX

_BYTES_PER_ROW = K_BLOCK * 2  # 64: every tile is TILE_ROWS x 64 bytes


def tile_config_bytes() -> list[int]:
    """The 64-byte `ldtilecfg` operand: palette 1, tiles 0-7 each TILE_ROWS rows of 64 bytes."""
    cfg = [0] * 64
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = _BYTES_PER_ROW  # colsb, little-endian uint16
        cfg[48 + t] = TILE_ROWS
    return cfg


# tile_config_bytes() as 8 little-endian uint64 words (configure_tiles compares and loads them)
_CFG_WORDS = struct.unpack("<8Q", bytes(tile_config_bytes()))


@T.macro
def configure_tiles():
    """Load the tile configuration (`ldtilecfg`) unless this thread has it already (`sttilecfg` reads it back and
    compares). `ldtilecfg` costs ~47 ns (180 cycles, measured on an Emerald Rapids core: as much as 11
    `tdpbf16ps`), `sttilecfg` hides behind the tile work; a task with few reduction steps (a 1x1 conv on 64
    channels: 8 `tdpbf16ps`) spent more on the configuration than on its products. Reading it back each time, rather
    than remembering it, stays right when other code in the thread (oneDNN, through PyTorch) configures the tiles
    differently in between."""
    cur = T.alloc_buffer((8,), "uint64", scope="local")
    want = T.alloc_buffer((8,), "uint64", scope="local")
    for q in range(8):
        cur[q] = T.uint64(0)
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sttilecfg", T.address_of(cur[0])))
    want[0] = T.uint64(_CFG_WORDS[0])
    want[1] = T.uint64(_CFG_WORDS[1])
    want[2] = T.uint64(_CFG_WORDS[2])
    want[3] = T.uint64(_CFG_WORDS[3])
    want[4] = T.uint64(_CFG_WORDS[4])
    want[5] = T.uint64(_CFG_WORDS[5])
    want[6] = T.uint64(_CFG_WORDS[6])
    want[7] = T.uint64(_CFG_WORDS[7])
    if (cur[0] != want[0] or cur[1] != want[1] or cur[2] != want[2] or cur[3] != want[3] or cur[4] != want[4]
            or cur[5] != want[5] or cur[6] != want[6] or cur[7] != want[7]):
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(want[0])))


def _registered(name: str) -> bool:
    """Whether a tensor intrinsic of this name is registered already (they are registered on first use)."""
    try:
        TensorIntrin.get(name)
        return True
    except Exception:  # TVMError: no such intrinsic
        return False


def bits_to_f32(v):
    """uint16 bf16 bits -> float32 (exact), as the products' TE computes widen them (ops/amx.py from_bf16_bits)."""
    return T.reinterpret("float32", T.shift_left(T.Cast("uint32", v), T.uint32(16)))


def load(tile: int, ptr, stride):
    """tileloadd: tile register `tile` (an immediate) <- 16 rows of 64 bytes at `ptr`, `stride` bytes apart."""
    return T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.int8(tile), ptr, stride)


def store(tile: int, ptr, stride):
    return T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.int8(tile), ptr, stride)


def dot(c: int, a: int, b: int):
    """tdpbf16ps: tile c (16 x 16 float32) += tile a (16 x 32 bf16) . tile b (16 pairs x 16 x 2 bf16)."""
    return T.call_llvm_intrin("void", "llvm.x86.tdpbf16ps", T.int8(c), T.int8(a), T.int8(b))


def _zeros_desc(shape: tuple[int, int, int], scope: str):
    """The description of an init block: C = 0 over `shape` (float32, in `scope`)."""
    d0, d1, d2 = shape

    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (d0, d1, d2), "float32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:d0, 0:d1, 0:d2])
            for i, j, k in T.grid(d0, d1, d2):
                with T.sblock("init"):
                    vi, vj, vk = T.axis.remap("SSS", [i, j, k])
                    C[vi, vj, vk] = T.float32(0)

    return desc


@T.macro
def zero_accumulators():
    """tilezero of the accumulator tiles 0-3."""
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(0)))
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(1)))
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(2)))
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(3)))


def _init_intrin(kind: str, shape: tuple[int, int, int], scope: str, zero: bool) -> str:
    """An init block's tensor intrinsic (C = 0 over `shape`) that writes no memory: it makes sure of the tile
    configuration (configure_tiles) and, with `zero`, zeroes the accumulator tiles 0-3."""
    name = f"tensorforge_amx_{kind}_{'x'.join(map(str, shape))}_{scope}"
    if _registered(name):
        return name
    d0, d1, d2 = shape
    desc = _zeros_desc(shape, scope)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        s0, s1 = T.int32(), T.int32()
        C = T.match_buffer(c, (d0, d1, d2), "float32", offset_factor=1, strides=[s0, s1, 1], scope=scope)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:d0, 0:d1, 0:d2])
            configure_tiles()
            if zero:
                zero_accumulators()

    TensorIntrin.register(name, desc, impl)
    return name


def amx_fill_intrin(shape: tuple[int, int, int], scope: str) -> str:
    """The tensor intrinsic for a tile's init block (C = 0 over `shape`, the 32 x 32 accumulators in the layout of
    the product): it loads the tile configuration and zeroes tiles 0-3, writing no memory. It is one half of a pair:
    the update intrinsic that follows it in the same tile task (`amx_intrin`, `amx_conv_intrin`) accumulates into
    tiles 0-3 as they are and stores them to C at its end; the schedules tensorize both, adjacent. Zeroing in
    registers saves the 4 KB memset and four tile loads per tile: a 1x1 conv with 64 input channels has only two
    reduction steps per tile."""
    return _init_intrin("fill", shape, scope, zero=True)


def amx_task_intrin(shape: tuple[int, int, int], scope: str) -> str:
    """The tensor intrinsic for a task's init block (C = 0 over `shape`, the whole task's product): it makes sure of
    the tile configuration, once for the task (configure_tiles), and writes no memory: the task's update intrinsics
    (`amx_conv_intrin(zero_first=True)`) zero their accumulator tiles themselves and overwrite C. A per-tile fill
    checked the configuration once per 32 x 32 tile: `sttilecfg` and the loads that compare it took 13 % of a 1x1
    conv on 64 channels (perf, 64 -> 256 at 56x56, one core)."""
    return _init_intrin("task", shape, scope, zero=False)


def amx_zero_intrin(rows: int) -> str:
    """The tensor intrinsic for a task's zeroed sums (C = 0 over (rows, 2, 16), rows a multiple of 32, in local
    memory): it makes sure of the tile configuration once for the task (configure_tiles) and stores a zeroed tile
    over each 16 x 16 quarter. The task's `amx_intrin(load_c=True)` calls then load, add to and store those sums."""
    name = f"tensorforge_amx_zero_{rows}"
    if _registered(name):
        return name
    nb = N_TILE // N_BLOCK
    desc = _zeros_desc((rows, nb, N_BLOCK), "local")

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        s0, s1 = T.int32(), T.int32()
        C = T.match_buffer(c, (rows, nb, N_BLOCK), "float32", offset_factor=1, strides=[s0, s1, 1], scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:nb, 0:N_BLOCK])
            configure_tiles()
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.int8(0)))
            for r in range(rows // TILE_ROWS):
                T.evaluate(store(0, T.address_of(C[r * TILE_ROWS, 0, 0]), T.Cast("int64", s0 * 4)))
                T.evaluate(store(0, T.address_of(C[r * TILE_ROWS, 1, 0]), T.Cast("int64", s0 * 4)))

    TensorIntrin.register(name, desc, impl)
    return name


def amx_intrin(k_blocks: int, b_bits: bool = False, load_c: bool = False, zero_first: bool = False,
               prefetch: int = 0, operands: str = "global") -> str:
    """The tensor intrinsic for one 32 x 32 tile over `k_blocks` blocks of K (registered on first use). B is a
    bfloat16 param (dense_amx's packed weight) or, with `b_bits`, bf16 bits (uint16) converted in the kernel
    (matmul_amx's second operand). The accumulator tiles start as the fill intrinsic left them (zero), with
    `load_c` as loaded from C (a later group of K blocks adding to the sums of the earlier ones), or with
    `zero_first` zeroed here (after amx_task_intrin). `operands`: A's and B's scope ("local": attention_amx's
    stack buffers). With `prefetch` = R (schedule_gemm_row_tiles), the tile is
    one of R row blocks that share a weight panel, and prefetches its R-th of the next panel (which follows this
    one in B) into L2, spread over its K blocks; the row block's index comes from A's offset."""
    name = (f"tensorforge_amx_bf16_32x32x{k_blocks * K_BLOCK}" + ("_bits" if b_bits else "")
            + ("_acc" if load_c else "") + ("_z" if zero_first else "") + (f"_pf{prefetch}" if prefetch else "")
            + ("" if operands == "global" else f"_{operands}"))
    if _registered(name):
        return name
    kp, nb = K_BLOCK // PAIR, N_TILE // N_BLOCK
    rows = M_TILE
    prefetching = prefetch > 0
    row_bytes = 4 if b_bits else 2  # bytes per element of B: the tile row stride is B's k pair stride
    b_shape = (nb, k_blocks, kp, N_BLOCK) if b_bits else (nb, k_blocks, kp, N_BLOCK, PAIR)
    b_dtype = "uint32" if b_bits else "bfloat16"

    def b_block(B, jb, kb):
        """The first element of B's tile (jb, kb)."""
        return B[jb, kb, 0, 0] if b_bits else B[jb, kb, 0, 0, 0]

    def b_all(B):
        return B[0:nb, 0:k_blocks, 0:kp, 0:N_BLOCK] if b_bits else B[0:nb, 0:k_blocks, 0:kp, 0:N_BLOCK, 0:PAIR]

    def widen_b(B, jb, kb, kk, jt, kt):
        """B's element as float32: a half of matmul_amx's pair words, or the packed bfloat16 weight."""
        return bits_to_f32(pair_half(B[jb, kb, kk, jt], kt)) if b_bits else T.Cast("float32", B[jb, kb, kk, jt, kt])

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (rows, k_blocks, kp, PAIR), "uint16", offset_factor=1, scope=operands)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1, scope=operands)
        C = T.match_buffer(c, (rows, nb, N_BLOCK), "float32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:nb, 0:N_BLOCK], A[0:rows, 0:k_blocks, 0:kp, 0:PAIR], b_all(B))
            T.writes(C[0:rows, 0:nb, 0:N_BLOCK])
            for i, jb, jt, kb, kk, kt in T.grid(rows, nb, N_BLOCK, k_blocks, kp, PAIR):
                with T.sblock("update"):
                    vi, vjb, vjt, vkb, vkk, vkt = T.axis.remap("SSSRRR", [i, jb, jt, kb, kk, kt])
                    C[vi, vjb, vjt] = C[vi, vjb, vjt] + bits_to_f32(A[vi, vkb, vkk, vkt]) * widen_b(
                        B, vjb, vkb, vkk, vjt, vkt)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa0, sa1, sa2 = T.int32(), T.int32(), T.int32()
        sb0, sb1, sb2, sb3 = T.int32(), T.int32(), T.int32(), T.int32()
        sc0, sc1 = T.int32(), T.int32()
        a_off = T.int32()
        A = T.match_buffer(a, (rows, k_blocks, kp, PAIR), "uint16", offset_factor=1, strides=[sa0, sa1, sa2, 1],
                           elem_offset=a_off, scope=operands)
        B = T.match_buffer(b, b_shape, b_dtype, offset_factor=1,
                           strides=[sb0, sb1, sb2, 1] if b_bits else [sb0, sb1, sb2, sb3, 1], scope=operands)
        C = T.match_buffer(c, (rows, nb, N_BLOCK), "float32", offset_factor=1, strides=[sc0, sc1, 1],
                           scope="local")
        with T.sblock("root"):
            T.reads(C[0:rows, 0:nb, 0:N_BLOCK], A[0:rows, 0:k_blocks, 0:kp, 0:PAIR], b_all(B))
            T.writes(C[0:rows, 0:nb, 0:N_BLOCK])
            # tiles 0-3 hold C: zeroed by the fill intrinsic just before (amx_fill_intrin), or loaded here
            if zero_first:  # the task's init (amx_task_intrin) configured the tiles
                zero_accumulators()
            if load_c:  # the tile configuration was loaded by the task's zeroing (amx_zero_intrin)
                T.evaluate(load(0, T.address_of(C[0, 0, 0]), T.Cast("int64", sc0 * 4)))
                T.evaluate(load(1, T.address_of(C[0, 1, 0]), T.Cast("int64", sc0 * 4)))
                T.evaluate(load(2, T.address_of(C[TILE_ROWS, 0, 0]), T.Cast("int64", sc0 * 4)))
                T.evaluate(load(3, T.address_of(C[TILE_ROWS, 1, 0]), T.Cast("int64", sc0 * 4)))
            # the loads in the order of their first use (oneDNN's brgemm does likewise): a tile register has no
            # renaming, and issued first the four loads held the products back; 128 x 3072 -> 768 on one core 1201
            # -> 1304-1322 GFLOP/s, 128 x 768 -> 3072 1117 -> 1120-1168
            for kb in range(k_blocks):
                if prefetching:
                    # this row block's share of the next column panel (2 * k_blocks KB, 32 lines per K block),
                    # `prefetch` row blocks to a task: the row block's index from A's offset
                    for q in range(-(-32 // prefetch)):
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.prefetch",
                            T.address_of(B[2, 0, 0, 0, (((a_off // (sa0 * rows)) % prefetch * k_blocks + kb) * 32
                                                        // prefetch + q) * 32]),
                            T.int32(0), T.int32(2), T.int32(1)))
                T.evaluate(load(4, T.address_of(A[0, kb, 0, 0]), T.Cast("int64", sa0 * 2)))
                T.evaluate(load(6, T.address_of(b_block(B, 0, kb)), T.Cast("int64", sb2 * row_bytes)))
                T.evaluate(dot(0, 4, 6))
                T.evaluate(load(7, T.address_of(b_block(B, 1, kb)), T.Cast("int64", sb2 * row_bytes)))
                T.evaluate(dot(1, 4, 7))
                T.evaluate(load(5, T.address_of(A[TILE_ROWS, kb, 0, 0]), T.Cast("int64", sa0 * 2)))
                T.evaluate(dot(2, 5, 6))
                T.evaluate(dot(3, 5, 7))
            T.evaluate(store(0, T.address_of(C[0, 0, 0]), T.Cast("int64", sc0 * 4)))
            T.evaluate(store(1, T.address_of(C[0, 1, 0]), T.Cast("int64", sc0 * 4)))
            T.evaluate(store(2, T.address_of(C[TILE_ROWS, 0, 0]), T.Cast("int64", sc0 * 4)))
            T.evaluate(store(3, T.address_of(C[TILE_ROWS, 1, 0]), T.Cast("int64", sc0 * 4)))

    TensorIntrin.register(name, desc, impl)
    return name


def convert_in_parallel(sch: s_tir.Schedule, names: tuple[str, ...]) -> None:
    """The operands' bf16 conversions (blocks `names`, ops/amx.py a_tiles and the like): parallel over their outer
    loops, vectorized along their 32 lanes (16 pairs)."""
    for name in names:
        block = sch.get_sblock(name)
        if name == AMX_MM_B:  # (..., k pair, 16 columns) uint32 pair words: a vector of 16 columns per k pair
            *outer, kp, nt = sch.get_loops(block)
            sch.parallel(sch.fuse(*outer))
            attempt(lambda: sch.vectorize(nt))
            continue
        sch.parallel(sch.fuse(*sch.get_loops(block)[:-2]))
        attempt(lambda: sch.vectorize(sch.fuse(*sch.get_loops(block)[-2:])))


def schedule_gemm_tiles(sch: s_tir.Schedule, anchor: str, conversions: tuple[str, ...], b_bits: bool) -> None:
    """The product `anchor` in 32 x 32 tiles under its batch loops (none for dense): [batch x column panel x row
    block] tasks, parallel, the epilogue per tile; the operands converted in the kernel (`conversions`: A, and for
    matmul_amx B) first, each in parallel and vectorized along its 32 lanes."""
    prod = sch.get_sblock(anchor)
    out = anchor_epilogue(sch, prod, *conversions)
    *batch, i, jb, jt, kb, kk, kt = sch.get_loops(prod)
    k_blocks = loop_extent(sch, kb)
    io, ii = sch.split(i, [None, M_TILE])
    jbo, jbi = sch.split(jb, [None, N_TILE // N_BLOCK])
    sch.reorder(*batch, jbo, io, ii, jbi, jt, kb, kk, kt)
    tile = sch.fuse(*batch, jbo, io)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.set_scope(prod, 0, "local")
    init = sch.decompose_reduction(prod, ii)
    sch.tensorize(ii, amx_intrin(k_blocks, b_bits=b_bits))
    sch.tensorize(sch.get_loops(init)[-3], amx_fill_intrin((M_TILE, N_TILE // N_BLOCK, N_BLOCK), "local"))
    convert_in_parallel(sch, conversions)
    attempt(sch.vectorize, sch.get_loops(out)[-1])


def schedule_gemm_row_tiles(sch: s_tir.Schedule, anchor: str, conversions: tuple[str, ...], b_bits: bool,
                            row_blocks: int) -> None:
    """[batch x column panel x `row_blocks` row blocks] tasks, each row block's 32 x 32 tile over the whole K:
    summed in the tile registers from zero and stored once (no sums going back and forth between K groups), the
    tile configuration checked once per task. The panel comes from memory for the first row block and from L2 for
    the others. Where a task has every row, each row block also prefetches (`prefetcht1`) its share of the next
    task's panel: one core's stream of weights from L3 at 128 rows is about as long as its tile products, and the
    hardware prefetcher alone leaves the first row block waiting on it."""
    prod = sch.get_sblock(anchor)
    out = anchor_epilogue(sch, prod, *conversions)
    *batch, i, jb, jt, kb, kk, kt = sch.get_loops(prod)
    k_blocks = loop_extent(sch, kb)
    every_row = loop_extent(sch, i) == row_blocks * M_TILE
    io, ii = sch.split(i, [None, M_TILE])
    ioo, ioi = sch.split(io, [None, row_blocks])
    jbo, jbi = sch.split(jb, [None, N_TILE // N_BLOCK])
    sch.reorder(*batch, jbo, ioo, ioi, ii, jbi, jt, kb, kk, kt)
    tile = sch.fuse(*batch, jbo, ioo)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.set_scope(prod, 0, "local")
    init = sch.decompose_reduction(prod, ioi)
    prefetch = row_blocks if every_row and not batch else 0
    sch.tensorize(ii, amx_intrin(k_blocks, b_bits=b_bits, zero_first=True, prefetch=prefetch))
    iio, iii = sch.get_loops(init)[-4:-2]
    sch.tensorize(sch.fuse(iio, iii), amx_task_intrin((row_blocks * M_TILE, N_TILE // N_BLOCK, N_BLOCK), "local"))
    convert_in_parallel(sch, conversions)
    attempt(sch.vectorize, sch.get_loops(out)[-1])


def schedule_gemm_k_groups(sch: s_tir.Schedule, anchor: str, conversions: tuple[str, ...], b_bits: bool,
                           row_blocks: int, k_group: int) -> None:
    """[batch x column panel x `row_blocks` row blocks] tasks; in a task, for each group of `k_group` K blocks,
    every row block's 32 x 32 tile loads its sums, adds the group and stores them: the group's slice of the weight
    panel (k_group KB per 16 columns) stays in L1 for all the row blocks."""
    prod = sch.get_sblock(anchor)
    out = anchor_epilogue(sch, prod, *conversions)
    *batch, i, jb, jt, kb, kk, kt = sch.get_loops(prod)
    io, ii = sch.split(i, [None, M_TILE])
    ioo, ioi = sch.split(io, [None, row_blocks])
    jbo, jbi = sch.split(jb, [None, N_TILE // N_BLOCK])
    kgo, kgi = sch.split(kb, [None, k_group])
    sch.reorder(*batch, jbo, ioo, kgo, ioi, ii, jbi, jt, kgi, kk, kt)
    tile = sch.fuse(*batch, jbo, ioo)
    sch.parallel(tile)
    sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
    sch.set_scope(prod, 0, "local")
    init = sch.decompose_reduction(prod, kgo)
    sch.tensorize(ii, amx_intrin(k_group, b_bits=b_bits, load_c=True))
    *_, zi, zii, _, _ = sch.get_loops(init)
    sch.tensorize(sch.fuse(zi, zii), amx_zero_intrin(row_blocks * M_TILE))
    convert_in_parallel(sch, conversions)
    attempt(sch.vectorize, sch.get_loops(out)[-1])


def schedule_amx_dense(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Whole-K row tiles up to MAX_WHOLE_K_BLOCKS blocks of K (schedule_gemm_row_tiles; one Emerald Rapids core,
    against K groups: 128 x 768 -> 3072 0.545 -> 0.508 ms, 128 x 3072 -> 768 0.479 -> 0.454, 197 x 768 -> 3072
    0.861 -> 0.816), K groups past it where K has several of 4 to 8 blocks (schedule_gemm_k_groups), else whole-K
    tiles."""
    prod = sch.get_sblock(DENSE_AMX)
    *_, i, _, _, kb, _, _ = sch.get_loops(prod)
    k_blocks = loop_extent(sch, kb)
    row_blocks = largest_divisor(loop_extent(sch, i) // M_TILE, MAX_ROW_BLOCKS)
    group = largest_divisor(k_blocks, K_GROUP)
    if k_blocks <= MAX_WHOLE_K_BLOCKS:
        schedule_gemm_row_tiles(sch, DENSE_AMX, (AMX_A,), False, row_blocks)
    elif k_blocks > group >= MIN_K_GROUP:
        schedule_gemm_k_groups(sch, DENSE_AMX, (AMX_A,), False, row_blocks, group)
    else:
        schedule_gemm_tiles(sch, DENSE_AMX, (AMX_A,), b_bits=False)


# Whole-K row tiles up to K = 3072 (a tile's A strip and the task's weight panel 192 KB each); at 4096 K groups
# are faster (128 x 4096 -> 1024 0.85 against 0.91 ms, one core).
MAX_WHOLE_K_BLOCKS = 96

# A task of schedule_gemm_k_groups: up to MAX_ROW_BLOCKS blocks of 32 rows (their sums, 4 KB each, stay in L1),
# K in groups of K_GROUP blocks of 32 (the weight panel's slice, 2 x K_GROUP KB, stays in L1 while every row block
# reads it). Measured on BERT-base's and ViT-base's layers (1 core): 4 and 8 rows blocks alike at 128 rows, 7 (all)
# best at 197 rows (1 row block per task there: 844 GFLOP/s); groups of 4, 8 and 12 within 5 %.
K_GROUP = 8
MIN_K_GROUP = 4  # smaller groups (K blocks a prime number of times) load and store the sums too often
MAX_ROW_BLOCKS = 8


amx_dense_rule = Rule("amx_dense", schedule_amx_dense, blocks=(DENSE_AMX,))


# ---------------------------------------------------------------------------------------------- matmul_amx

def schedule_amx_matmul(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """dense_amx's tiles with the batch loops outermost; both operands converted to bf16 tile layouts first."""
    schedule_gemm_tiles(sch, MATMUL_AMX, (AMX_MM_A, AMX_MM_B), b_bits=True)


amx_matmul_rule = Rule("amx_matmul", schedule_amx_matmul, blocks=(MATMUL_AMX,))
