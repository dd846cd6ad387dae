"""Schedules written for training kernels: a weight gradient's product, im2col, the run-time dense weight pack, a
batch norm backward's per-channel sums (a reduction over outer and inner axes) and an optimizer update that writes
several outputs."""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from tensorforge.compiler.backend.cpu.common import (
    PARALLEL_MIN_WORK, SPATIAL, Rule, attempt, inline_all, is_output, is_spatial_block, iter_types,
    k_blocked_register_tile, largest_divisor, loop_extent, loop_work, reads_along, register_tile, root_blocks,
    schedule_spatial, task_rows, vector_lanes)
from tensorforge.compiler.backend.cpu import prefetch
from tensorforge.compiler.backend.cpu.matmul import MatmulKnobs, matmul_j_tile
from tensorforge.compiler.ops.nn import MATMUL
from tensorforge.compiler.ops.train_pack import ANN_IM2COL_DIMS, DENSE_WEIGHT_PACK, IM2COL, WGRAD

PACK_K_TILE = 16  # run-time dense weight pack: source row elements per vector


def schedule_weight_grad(sch: s_tir.Schedule, target: tvm.target.Target,
                         knobs: MatmulKnobs = MatmulKnobs()) -> None:
    """A weight gradient (ops/train_pack.py's weight_grad_gemm): a 2-D matmul, then its weight-shaped view and the
    elementwise epilogue (an optimizer update). The product is small (the weight's size), so it gets a loop nest
    of its own: parallel(j_tile, i_tile) > [i_tile x j_tile] accumulators in registers, k outside the unrolled
    rows and the vectorized columns, written back to a buffer the epilogue's plain loop nest then reads (or, for
    a dense's 2-D weight with nothing after it, to the weight gradient itself). A long reduction runs in k blocks
    (`_weight_grad_blocked`), on AMD Zen in whole-k tiles (`_full_k_tiles`); a task of one tile prefetches the
    lines it will store (prefetch.py). (Computing the product under a 4-D epilogue's loops would need the view's
    index arithmetic undone.)"""
    lanes = vector_lanes(target)
    mm = sch.get_sblock(MATMUL)
    inline_all(sch, keep={MATMUL})
    if len(sch.get_loops(mm)) != 3:
        raise ValueError("weight gradient product is not a 2-D matmul")
    out = sch.cache_write(mm, 0, "local")  # mm now accumulates locally; `out` copies it to the product buffer
    _write_weight_directly(sch)
    i, j = sch.get_loops(out)
    k = loop_extent(sch, sch.get_loops(mm)[-1])
    blocked = k >= WGRAD_MIN_BATCH
    if blocked and knobs == MatmulKnobs() and _full_k_tiles(target) and not _rows_transposed(sch, mm):
        full = next((c for c in FULL_K_COLS if loop_extent(sch, j) % c == 0), None)
        if full is not None:
            blocked, knobs = False, MatmulKnobs(i_tile=FULL_K_ROWS, j_tile=full)
    nt = _weight_grad_j_tile(loop_extent(sch, j), lanes, knobs.j_tile)
    it = largest_divisor(loop_extent(sch, i), knobs.i_tile)
    if blocked and loop_extent(sch, i) > it and loop_extent(sch, j) % nt == 0:
        _weight_grad_blocked(sch, mm, out, it, nt, k, lanes, target)
    else:
        rows = loop_extent(sch, i)
        ii, ji = _tasks(sch, mm, i, j, it, nt)
        # a task stores its tile after only k steps: its lines fetched first (prefetch.py)
        prefetch.mark(sch, sch.get_loops(out)[0], it, nt, -(-rows // it))
        vec = min(lanes, nt)
        mk = register_tile(sch, mm, vec)
        attempt(sch.unroll, ii)
        jwo, jwl = sch.split(ji, [None, vec])
        attempt(sch.unroll, jwo)
        attempt(sch.vectorize, jwl)
        init = sch.decompose_reduction(mm, mk)
        attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
        attempt(lambda: sch.unroll(sch.get_loops(init)[-2]))
    for block in sch.get_output_blocks(sch.get_sblock("root")):  # the view and its epilogue: one loop nest
        if not sch.get(block).same_as(sch.get(out)):
            attempt(schedule_spatial, sch, block, lanes)


def _write_weight_directly(sch) -> None:
    """A dense's weight gradient (weight shape = the product's, 2-D) with nothing after it: the write-back of the
    accumulators writes the weight gradient itself, not a product buffer that a second loop nest copies (a 1.6 MB
    copy for a 512 x 784 weight: 0.59 -> 0.55 ms at 64 batch rows, 512 x 512 0.38 -> 0.35, one Zen 4 core)."""
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    if len(outputs) != 1:
        return
    view = sch.get(outputs[0])
    if view.name_hint != WGRAD or len(view.writes[0].source.shape) != 2:
        return
    attempt(sch.reverse_compute_inline, outputs[0])


FULL_K_ROWS, FULL_K_COLS = 8, (48, 32)  # whole-k register tiles on Zen: 8 rows x 48 or 32 columns, exact


def _full_k_tiles(target) -> bool:
    """A long reduction (WGRAD_MIN_BATCH batch rows or more) as whole-k register tiles of 8 x 48 (or 8 x 32 where
    48 does not divide the columns: a partial tile's predicate slows every tile) rather than k blocks
    (`_weight_grad_blocked`), untuned: on AMD Zen, and not for rows read transposed (the stem's 147 x 64 from
    25088 rows: 8 -> 16 ms). Measured on a Zen 4 core, ResNet-50's weight gradients at batch 2 (one thread),
    blocked -> whole-k, GMAC/s: 64x576 from 6272 rows 33 -> 45, 256x64 29 -> 57, 128x256 41 -> 47, 512x128 from
    1568 rows 51 -> 56, 256x512 43 -> 49, 256x2304 from 392 49 -> 51, 1024x256 47 -> 52. The k blocks were measured
    better on the Xeon (their docstring) and stay there."""
    return str(target.attrs.get("mcpu", "")).startswith("znver")


def _rows_transposed(sch, mm) -> bool:
    """The rows operand is read (k, row): its contiguous index follows the product's rows."""
    block = sch.get(mm)
    acc = block.writes[0].source
    return any(not r.source.same_as(acc) for r in reads_along(block, block.iter_vars[0].var))


WGRAD_K_BLOCK = 32  # rows of the batch per pass over a block's register tiles (their operand slices stay in L1)
WGRAD_ROW_BLOCK = 1024  # weight rows per parallel task at most (fewer where the cores need more tasks)
WGRAD_TASK_COLS = 256  # weight columns per parallel task at most
WGRAD_MIN_BATCH = 128  # batch rows from which the product is blocked over them (MLP's 64 rows: not)


def _weight_grad_blocked(sch, mm, out, it: int, nt: int, k: int, lanes: int, target) -> None:
    """A weight gradient reduces over the whole batch (2048 rows for 16 x 128 tokens): one parallel task per
    [row block x up to 256 columns] block of the weight, and inside it, per block of WGRAD_K_BLOCK batch rows, every
    [it x nt] register tile steps through the same [k block x task columns] slice of the columns operand, copied to
    a contiguous buffer first. In place its rows are a power-of-two stride apart (256 or 1024 floats), so they fall
    into a few L1 sets and evict each other; and the copy reads whole 1 KB pieces of each row, where a task of one
    register tile's 64 columns read 256 bytes of every row, too little for the prefetcher when the operand comes
    from memory (a saved activation does). The task's accumulators (up to 1024 x 256) live in L2: each register
    tile loads and stores them once per k block. Measured on the Xeon (2 threads, dW of a 2048-row batch, caches
    flushed): 256 x 256 1.03 -> 0.85 ms, 256 x 1024 3.04 -> 2.79 ms (against 64-column tasks with the copy);
    against 128 x 64 tasks, 128-step k blocks and no copy (operands in cache): 1024 x 256 287 -> 413 GFLOP/s,
    256 x 1024 291 -> 362, 256 x 256 326 -> 359."""
    i, j = sch.get_loops(out)
    m, n = loop_extent(sch, i), loop_extent(sch, j)
    cols = max(c for c in range(nt, min(n, WGRAD_TASK_COLS) + 1, nt) if n % c == 0)
    _tasks(sch, mm, i, j, task_rows(m, it, WGRAD_ROW_BLOCK, n // cols, target), cols)
    vec = min(lanes, nt)
    ko = k_blocked_register_tile(sch, mm, it, largest_divisor(k, WGRAD_K_BLOCK), vec, nt)
    attempt(_copy_column_slice, sch, mm, ko, vec)
    _, wl = sch.split(sch.get_loops(out)[-1], [None, vec])
    attempt(sch.vectorize, wl)


def _copy_column_slice(sch, mm, ko, vec: int) -> None:
    """Copy the k block's slice of the columns operand (the read indexed by the product's column) into a buffer of
    its own at the k-block loop `ko`, vectorized."""
    block = sch.get(mm)
    acc = block.writes[0].source
    cols = [r for r in reads_along(block, block.iter_vars[1].var) if not r.source.same_as(acc)]
    if len(cols) != 1:
        raise ValueError("no single columns operand")
    index = next(i for i, r in enumerate(block.reads) if r.same_as(cols[0]))
    copy = sch.cache_read(mm, index, "global")
    sch.compute_at(copy, ko)
    _, cl = sch.split(sch.get_loops(copy)[-1], [None, vec])
    sch.vectorize(cl)


def _tasks(sch, mm, i, j, rows: int, nt: int):
    """Parallel tasks of [rows x nt] over the write-back's loops (columns outer), the product computed in each;
    returns the write-back's inner (row, column) loops."""
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, nt])
    sch.reorder(jo, io, ii, ji)
    tile = sch.fuse(jo, io)
    sch.parallel(tile)
    sch.compute_at(mm, tile, preserve_unit_loops=True)
    return ii, ji


def _weight_grad_j_tile(n: int, lanes: int, j_tile: int) -> int:
    """Register-tile width of a weight gradient: 64 or 48 columns where the last, partial tile wastes at most a
    tenth (measured: 64 with a partial tile beats matmul's exact 16 on 784 columns by 1.35x), else as matmul."""
    for t in (j_tile, 3 * j_tile // 4):
        if n >= t and t % lanes == 0 and -(-n // t) * t <= 1.1 * n:
            return t
    return matmul_j_tile(n, lanes, j_tile)


def schedule_im2col(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """im2col (ops/train_pack.py), x (N, C, H, W) -> (N*OH*OW, C*KH*KW): rows split into (n, oh, ow) and columns
    into (c, kh, kw), so the index arithmetic (divisions by OH*OW, OW, KH*KW, KW) and the padding test fold into
    the loops; parallel over (n, oh), kh and kw unrolled, each row written in order. The generic rule vectorized
    the flat columns: gathers with the divisions per lane, 3.5x slower (1 thread, 32x32x16x16 3x3: 1.93 -> 0.55
    ms; 32x64x8x8: 1.02 -> 0.25 ms)."""
    inline_all(sch)
    blk = sch.get_sblock(IM2COL)
    if not is_output(sch, blk) or len(sch.get_loops(blk)) != 2:
        raise ValueError("im2col is not a kernel's 2-D output")
    n, oh, ow, c, kh, kw = (int(d) for d in sch.get(blk).annotations[ANN_IM2COL_DIMS])
    rows, cols = sch.get_loops(blk)
    bn, p, _ = sch.split(rows, [n, oh, ow])
    _, i, j = sch.split(cols, [c, kh, kw])
    outer = sch.fuse(bn, p)
    if loop_work(sch, blk) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(i)
    sch.unroll(j)


def schedule_dense_weight_pack(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """dense_weight_pack (ops/train_pack.py), (N, K) -> (N / b, K, b): a transposition per block of b rows.
    Vectorized along K, which reads each source row contiguously, with the b rows unrolled in groups of 16 and
    strided stores; vectorizing along the lanes instead gathers down a column (stride K: with K a power of two
    the rows share cache sets, 10x slower for 512 x 512)."""
    inline_all(sch)
    blk = sch.get_sblock(DENSE_WEIGHT_PACK)
    ob, k, lane = sch.get_loops(blk)
    kext, lext = loop_extent(sch, k), loop_extent(sch, lane)
    if kext is None or lext is None:
        raise ValueError("dynamic pack shape")
    ko, ki = sch.split(k, [None, PACK_K_TILE])
    lo, li = sch.split(lane, [None, largest_divisor(lext, 16)])
    sch.reorder(ob, ko, lo, li, ki)
    outer = sch.fuse(ob, ko)
    if loop_work(sch, blk) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(li)
    sch.vectorize(ki)


def schedule_outer_reduction(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """A reduction over leading and trailing axes around kept ones (the per-channel sums of a batch norm's
    backward: axes (0, 2, 3) of NCHW), which the generic rule leaves a serial scalar loop: the trailing reduced axes
    are contiguous in memory, so they fuse into one loop whose `lanes` partial sums (rfactor) are vectors,
    parallel over the kept axes. Raises for any other kernel."""
    inline_all(sch)
    blocks = root_blocks(sch)
    reductions = [b for b in blocks if not is_spatial_block(sch, b)]
    if len(reductions) != 1 or blocks[0] != reductions[0]:
        raise ValueError("not a single reduction (and an epilogue)")
    block = reductions[0]
    blk = sch.get(block)
    types = iter_types(sch, block)
    loops = sch.get_loops(block)
    nspatial = types.count(SPATIAL)
    if len(loops) != len(types) or types != sorted(types) or nspatial == len(types) or len(blk.reads) < 1:
        raise ValueError("not spatial loops then reduction loops")
    kept = [i for i, t in enumerate(types) if t == SPATIAL and (loop_extent(sch, loops[i]) or 0) > 1]
    if not kept:
        raise ValueError("a full reduction")
    reads = [r for r in blk.reads if len(r.region) >= 2]
    reduce_vars = [iv.var for iv, t in zip(blk.iter_vars, types) if t != SPATIAL]
    trailing = 0  # reduce vars indexing the reads' last dims, innermost first, in order
    for k, var in enumerate(reversed(reduce_vars)):
        if not reads or not all(k < len(r.region) and r.region[-1 - k].min.same_as(var) for r in reads):
            break
        trailing += 1
    if trailing == 0 or trailing == len(reduce_vars):
        raise ValueError("no leading reduced axis: the generic row reduction suits it")
    lanes = vector_lanes(target)
    inner_loops = loops[len(loops) - trailing:]
    inner = sch.fuse(*inner_loops) if trailing > 1 else inner_loops[0]
    ext = loop_extent(sch, inner)
    if ext is None or ext < 2 * lanes or ext % lanes:
        raise ValueError("trailing reduced axes too short or not a multiple of the vector width")
    _, ri = sch.split(inner, [None, lanes])
    rf = sch.rfactor(ri, nspatial)
    outer = sch.fuse(*sch.get_loops(rf)[:nspatial])
    if loop_work(sch, rf) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.vectorize(sch.get_loops(rf)[-1])
    sch.decompose_reduction(rf, sch.get_loops(rf)[1])
    final = sch.get_loops(block)
    attempt(lambda: sch.fuse(*final[:nspatial]))
    for b in blocks[1:]:  # the epilogue (a mean's division): one value per kept element
        attempt(schedule_spatial, sch, b, lanes)


def schedule_multi_output_elementwise(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """An elementwise kernel that writes several outputs of one shape (an optimizer update: the new moments, then
    the parameter read from them): the outputs' loop nests merge into one parallel, vectorized nest whose body
    computes every output in turn, instead of a loop nest (and a parallel launch) per output. Raises where the
    kernel is anything else (a reduction, outputs of different shapes, one output), leaving it to the generic
    rule."""
    if not all(is_spatial_block(sch, b) for b in root_blocks(sch)):
        raise ValueError("not an elementwise kernel")
    inline_all(sch)
    blocks = root_blocks(sch)
    shapes = {tuple(loop_extent(sch, lp) for lp in sch.get_loops(b)) for b in blocks}
    if len(blocks) < 2 or len(shapes) != 1 or None in next(iter(shapes)):
        raise ValueError("not several outputs of one static shape")
    written = [w.source for b in blocks for w in sch.get(b).writes]
    for b in blocks:  # merging is sound only if each block reads the others' outputs at its own point
        blk = sch.get(b)
        for r in list(blk.reads) + list(blk.writes):
            if any(r.source.same_as(w) for w in written) and not _at_own_point(r, blk):
                raise ValueError("an output is read at another point than it is written")
    for depth in range(len(next(iter(shapes)))):  # outermost first: each merge leaves one nest of that depth
        sch.merge(*[sch.get_loops(b)[depth] for b in blocks])
    schedule_spatial(sch, blocks[-1], vector_lanes(target))


def _at_own_point(region, blk) -> bool:
    """Does a buffer region of `blk` touch exactly element (v0, v1, ...) of the block's own iteration vars?"""
    rng = region.region
    return len(rng) == len(blk.iter_vars) and all(
        isinstance(r.extent, tirx.IntImm) and int(r.extent) == 1 and r.min.same_as(iv.var)
        for r, iv in zip(rng, blk.iter_vars))


weight_grad_rule = Rule("weight_grad", schedule_weight_grad, blocks=(WGRAD,), knobs=MatmulKnobs())
dense_weight_pack_rule = Rule("dense_weight_pack", schedule_dense_weight_pack, blocks=(DENSE_WEIGHT_PACK,))
im2col_rule = Rule("im2col", schedule_im2col, blocks=(IM2COL,))
outer_reduction_rule = Rule("outer_reduction", schedule_outer_reduction)
multi_output_elementwise_rule = Rule("multi_output_elementwise", schedule_multi_output_elementwise)
