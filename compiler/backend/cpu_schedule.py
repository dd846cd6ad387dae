"""CPU schedule rules: one kernel's PrimFunc (from te.create_prim_func) -> a scheduled PrimFunc.

Rules are tried in order; the first that applies and succeeds wins. A rule works on a fresh `s_tir.Schedule`, so a
rule that fails half-way leaves nothing behind, and the generic rule at the end degrades step by step instead of
failing. `schedule_cpu` never raises for a valid PrimFunc: at worst it returns the function unscheduled.

  conv_packed   anchor `conv2d_nchw_packed` (cpu_kernels.py): [ow_tile x oc_block] register tile, reductions
                outside it, computed into a local buffer under the tile loop of the kernel's final NCHW epilogue
  conv_rowwise  anchors `conv2d_depthwise` / `conv2d_nchw_plain`: vectorized over output width; plain convs keep
                [8 channels x 16 columns] in registers, depthwise convs accumulate one output plane per task
  dense_packed  anchor `dense_packed`: [m_tile x n_tile] register tile, k outside it
  matmul        anchor `matmul` (numpy semantics, ops/nn.py): [i_tile x j_tile] register tile, k outside it,
                parallel over batch x tiles; transpose prologues inlined, or packed per batch when strided along j
  generic       injective and reduction blocks: inline, parallel outer spatial loops, vectorize inner ones
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
from typing import Callable

import tvm
from tvm import s_tir, tirx
from tvm.sym import detect_linear_equation

from compiler.backend import cpu_attention
from compiler.backend import cpu_kernels as K
from compiler.backend import cpu_winograd as KW

log = logging.getLogger(__name__)

VECTOR_MAX = 64          # widest loop handed to `vectorize` (LLVM splits it into registers)
PARALLEL_MIN_WORK = 4096  # iterations worth a parallel launch (~ a few microseconds)
PLANE_MAX = 16384       # depthwise conv: a whole output plane (floats) per parallel task, else one row
PLAIN_SEGMENT_MAX = 16   # plain conv: [8 x 16] accumulators; vectors wider than 16 lanes were 5x slower
PLAIN_CHANNEL_TILE = 8
DENSE_M_TILE = 4
DENSE_X_BLOCK_BYTES = 256 * 1024  # rows of x per block: they stay in L2 while every weight panel streams past them
MATMUL = "matmul"        # block name of ops/nn.py's matmul lowering
MATMUL_I_TILE = 4        # register tile rows ...
MATMUL_J_TILE = 64       # ... and columns (4 x 64 fp32 = 16 AVX-512 accumulators)
MATMUL_PACK_BATCH_MIN = 4  # with this many batch entries a strided B operand is packed per entry, else once, whole
PACK_J = 8               # packing: rows (along j) per transposed block

_SPATIAL = 0  # tirx.IterVar.DataPar


def schedule_cpu(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """Schedule one kernel for the CPU `target`; returns a new PrimFunc (never raises for a valid one)."""
    sch, _ = schedule_cpu_traced(func, target)
    return func if sch is None else sch.mod["main"]


def schedule_cpu_traced(func: tirx.PrimFunc, target: tvm.target.Target):
    """(the schedule, with its trace, and the name of the rule that made it), or (None, None) when not even the
    generic rule applies (library calls need no schedule). The trace replays the schedule on the unscheduled
    function: the knob search (backend/tuning.py) stores it as a tuning record."""
    names = _block_names(func)
    for applies, rule in _RULES:
        if not applies(names):
            continue
        try:
            sch = s_tir.Schedule(func)
            rule(sch, target)
            return sch, rule.__name__
        except Exception as err:  # ScheduleError, TVMError: fall through to a simpler rule
            log.debug("schedule rule %s failed: %s", rule.__name__, err)
    try:
        sch = s_tir.Schedule(func)
        _schedule_generic(sch, target)
        return sch, _schedule_generic.__name__
    except Exception as err:
        log.debug("generic CPU schedule failed, kernel left unscheduled (library calls need none): %s", err)
        return None, None


# Schedule-only parameters that the knob search (backend/tuning.py) varies per kernel, by the rule that scheduled
# it: {rule: {"module.NAME": candidate values}}. The defaults above are the first guess; none of these changes
# the kernel's computation (tile sizes fixed by packed weights or tiled inputs are not here).
TUNABLE = {
    "_schedule_dense": {"cpu_schedule.DENSE_M_TILE": (2, 4, 6, 8),
                        "cpu_schedule.DENSE_X_BLOCK_BYTES": (64 * 1024, 256 * 1024, 1024 * 1024)},
    "_schedule_matmul": {"cpu_schedule.MATMUL_I_TILE": (2, 4, 6, 8),
                         "cpu_schedule.MATMUL_J_TILE": (32, 48, 64, 128)},
    "_schedule_weight_grad": {"cpu_schedule.MATMUL_I_TILE": (2, 4, 6, 8),
                              "cpu_schedule.MATMUL_J_TILE": (32, 48, 64, 128)},
    "schedule_attention": {"cpu_attention.ROWS": (2, 4, 6, 8), "cpu_attention.J_TILE": (32, 64, 128)},
    "schedule_winograd": {"cpu_winograd.GEMM_P_TILE": (2, 4, 6, 8)},
}


def _knob_owner(key: str):
    """"module.NAME" -> (the backend module that holds the parameter, NAME)."""
    module, name = key.split(".")
    mod = sys.modules.get(f"compiler.backend.{module}")
    if mod is None or not hasattr(mod, name):
        raise KeyError(f"no schedule parameter {key}")
    return mod, name


@contextlib.contextmanager
def knobs(values: dict):
    """Schedule with some TUNABLE parameters set to other values: {"module.NAME": value}."""
    old = {}
    try:
        for key, value in values.items():
            mod, name = _knob_owner(key)
            old[(mod, name)] = getattr(mod, name)
            setattr(mod, name, value)
        yield
    finally:
        for (mod, name), value in old.items():
            setattr(mod, name, value)


def knob_variants(rule: str | None) -> list[dict]:
    """Every combination of the rule's TUNABLE values except the defaults themselves."""
    space = TUNABLE.get(rule or "", {})
    if not space:
        return []
    keys = list(space)
    default = tuple(getattr(*_knob_owner(k)) for k in keys)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys)) if combo != default]


# ------------------------------------------------------------------------------------------ helpers

def _block_names(func: tirx.PrimFunc) -> set[str]:
    try:
        sch = s_tir.Schedule(func)
        return {sch.get(b).name_hint for b in _root_blocks(sch)}
    except Exception:
        return set()


def _try(fn: Callable, *args):
    """Run one optional schedule step; a failed step changes nothing (schedule primitives are atomic)."""
    try:
        return fn(*args)
    except Exception as err:
        log.debug("schedule step %s failed: %s", getattr(fn, "__name__", fn), err)
        return None


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _is_output(sch: s_tir.Schedule, block) -> bool:
    root = sch.get_sblock("root")
    outs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    return sch.get(block).name_hint in outs


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _iter_types(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_spatial_block(sch: s_tir.Schedule, block) -> bool:
    return all(t == _SPATIAL for t in _iter_types(sch, block)) and sch.get(block).init is None


def _largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _inline_all(sch: s_tir.Schedule, keep: set[str] = frozenset()) -> None:
    """Inline every non-output spatial block (padding, elementwise, broadcast) into its consumers."""
    for block in _root_blocks(sch):
        name = sch.get(block).name_hint
        if name in keep or _is_output(sch, block) or not _is_spatial_block(sch, block):
            continue
        _try(sch.compute_inline, block)


def _vector_lanes(target: tvm.target.Target) -> int:
    attrs = target.attrs
    feats = " ".join(str(x) for x in attrs.get("mattr", []) or [])
    mcpu = str(attrs.get("mcpu", ""))
    avx512 = ("avx512" in feats or any(c in mcpu for c in ("znver4", "znver5", "skylake-avx512", "cascadelake",
                                                             "icelake", "sapphirerapids", "tigerlake", "cooperlake")))
    return 16 if avx512 else 8


# ------------------------------------------------------------------------------------------ conv: packed

def _schedule_conv_packed(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Loops of the final epilogue block: parallel(n, oc_block, oh) > ow_tile > [oc_block x ow_tile] write-back;
    the conv is computed at the ow_tile loop into a local [ow_tile x oc_block] tile: (ic, kh, kw) outside, ow
    unrolled, oc vectorized, so LLVM keeps the tile in ow_tile vector registers."""
    conv = sch.get_sblock(K.CONV_PACKED)
    ann = sch.get(conv).annotations
    tile = int(ann[K.ANN_OW_TILE])
    ocb = int(ann[K.ANN_OC_BLOCK])
    out = _anchor_epilogue(sch, conv, K.PAD)
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
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _try(lambda: sch.unroll(sch.get_loops(init)[-2]))
    _schedule_pad(sch, target)


def _schedule_conv_nchwc(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Blocked layout (dense or depthwise conv): loops of the final epilogue block: parallel(n, oc_block, oh) > ow_tile > [ow_tile x
    oc_block] write-back, one contiguous vector store per output column; the conv is computed at the ow_tile loop
    into a local tile with the reductions outside it, (ic_block, kh, kw, ic_lane) order, ow unrolled, oc vectorized."""
    names = {sch.get(b).name_hint for b in _root_blocks(sch)}
    conv = sch.get_sblock(K.CONV_NCHWC if K.CONV_NCHWC in names else K.CONV_DW_NCHWC)
    ann = sch.get(conv).annotations
    tile = int(ann[K.ANN_OW_TILE])
    out = _anchor_epilogue(sch, conv, K.PAD)
    if len(sch.get_loops(out)) != 5:
        raise ValueError("conv epilogue is not a single NCHW[x]c block")
    n, o, h, w, oi = sch.get_loops(out)
    wo, wi = sch.split(w, [None, tile])
    sch.reorder(n, o, h, wo, wi, oi)
    sch.compute_at(conv, wo, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    blocked_input = len(sch.get(conv).iter_vars) == 9  # n, ob, oh, ow, oi + (ic_block, kh, kw, ic_lane)
    depthwise = len(sch.get(conv).iter_vars) == 7  # n, c, oh, ow, ci + (kh, kw)
    loops = sch.get_loops(conv)
    if depthwise:
        cw, coi, rkh, rkw = loops[-4:]
        sch.reorder(rkh, rkw, cw, coi)
        first = rkh
    elif blocked_input:
        cw, coi, rcb, rkh, rkw, rci = loops[-6:]
        sch.reorder(rcb, rkh, rkw, rci, cw, coi)
        first = rcb
    else:
        cw, coi, ric, rkh, rkw = loops[-5:]
        sch.reorder(ric, rkh, rkw, cw, coi)
        first = ric
    sch.unroll(cw)
    sch.vectorize(coi)
    rows = sch.fuse(n, o, h)
    sch.parallel(rows)
    sch.unroll(wi)
    sch.vectorize(oi)
    init = sch.decompose_reduction(conv, first)
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _try(lambda: sch.unroll(sch.get_loops(init)[-2]))
    if depthwise and K.PAD in names:
        # pad only the KH input rows each output row reads, in L1, instead of a whole padded copy of the input:
        # at batch 8 MobileNetV2's early depthwise inputs (38 MB) padded to DRAM and read back cost 3x per image
        pad = sch.get_sblock(K.PAD)
        sch.compute_at(pad, rows, preserve_unit_loops=True)
        _try(lambda: sch.vectorize(sch.get_loops(pad)[-1]))
    else:
        _schedule_pad(sch, target)


def _schedule_tile_writeback(sch, out, oi, wi):
    """The [oc_block x ow_tile] register tile goes to NCHW memory: one vector store per output channel."""
    sch.unroll(oi)
    sch.vectorize(wi)  # measured: 1.3x over fully unrolled scalar stores on a 3-input-channel conv, equal elsewhere


def _schedule_pad(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    for block in _root_blocks(sch):
        if sch.get(block).name_hint == K.PAD:
            _schedule_spatial(sch, block, _vector_lanes(target))


# ------------------------------------------------------------------------------------------ conv: row-wise

def _schedule_conv_rowwise(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """Depthwise / plain conv, vectorized over output width.

    A plain (grouped) conv keeps [channels x row segment] in registers, so each input vector load feeds several
    FMAs. A depthwise conv reads a different input channel per output channel, so its work per row is tiny; it
    accumulates a whole output plane per channel instead (one row at a time in registers), because TVM 0.27 lowers
    every local buffer to a TVMBackendAllocWorkspace call at its scope: one call per row would dominate."""
    lanes = _vector_lanes(target)
    names = {sch.get(b).name_hint for b in _root_blocks(sch)}
    depthwise = K.CONV_DEPTHWISE in names
    conv = sch.get_sblock(K.CONV_DEPTHWISE if depthwise else K.CONV_PLAIN)
    out = _anchor_epilogue(sch, conv, K.PAD)
    if len(sch.get_loops(out)) != 4:
        raise ValueError("conv epilogue is not a single NCHW block")
    n, o, h, w = sch.get_loops(out)
    ow = _extent(sch, w)
    if depthwise:
        sch.parallel(sch.fuse(n, o))
        sch.compute_at(conv, h if _extent(sch, h) * ow > PLANE_MAX else sch.get_loops(out)[0],
                       preserve_unit_loops=True)
        sch.set_scope(conv, 0, "local")
        ch, cw, ric, rkh, rkw = sch.get_loops(conv)[-5:]
        piece = _largest_divisor(ow, 2 * lanes)
        if piece < lanes // 2 and ow > 2 * lanes:
            piece = lanes  # no good divisor: a predicated tail
        cwo, cw = sch.split(cw, [None, piece])
        sch.reorder(ch, cwo, ric, rkh, rkw, cw)
        sch.vectorize(cw)
        _try(sch.vectorize, w)
        init = sch.decompose_reduction(conv, ric)
        _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
        _schedule_pad(sch, target)
        return
    seg = _largest_divisor(ow, PLAIN_SEGMENT_MAX)
    if seg < 8 and ow > PLAIN_SEGMENT_MAX:
        seg = PLAIN_SEGMENT_MAX
    channels = _largest_divisor(_extent(sch, o), PLAIN_CHANNEL_TILE)
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
    _try(sch.vectorize, wi)
    init = sch.decompose_reduction(conv, ric)
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _schedule_pad(sch, target)


def _anchor_epilogue(sch: s_tir.Schedule, anchor, *keep: str):
    """Inline the elementwise chain after `anchor`; returns the one block consuming it (a write-back if none)."""
    _inline_all(sch, keep={sch.get(anchor).name_hint, *keep})
    consumers = sch.get_consumers(anchor)
    if not consumers:
        return sch.cache_write(anchor, 0, "global")
    if len(consumers) != 1 or not _is_spatial_block(sch, consumers[0]):
        raise ValueError("anchor has several consumers")
    return consumers[0]


def _register_tile(sch: s_tir.Schedule, block, vec: int):
    """The [rows x cols] accumulator tile of a product computed at its tile loop (last three loops: rows, cols,
    k): k outside the tile, rows unrolled, cols unrolled in `vec`-lane pieces that are vectorized, so that LLVM
    keeps the tile in registers and each k step is one FMA per vector. Returns the k loop."""
    rows, cols, k = sch.get_loops(block)[-3:]
    co, cl = sch.split(cols, [None, vec])
    sch.reorder(k, rows, co, cl)
    sch.unroll(rows)
    sch.unroll(co)
    sch.vectorize(cl)
    return k


# ------------------------------------------------------------------------------------------ dense

def _schedule_dense(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """[m_tile x n_tile] register tile (n_tile = the packed weight block), k outside it.

    Loop order [x row block] > [weight panel] > [row tile]: each [k x n_tile] weight panel is read once per block of
    x rows that fits in L2 and reused by every row tile of the block. With the row tile outermost the whole weight
    streamed past once per 4 rows: GPT-2's 154 MB LM head 16 times at seq 64 (66 -> 103 GFLOP/s, 1 thread)."""
    lanes = _vector_lanes(target)
    dense = sch.get_sblock(K.DENSE_PACKED)
    nt = int(sch.get(dense).annotations[K.ANN_N_TILE])
    out = _anchor_epilogue(sch, dense)
    if len(sch.get_loops(out)) != 2:
        raise ValueError("dense epilogue is not a single 2-D block")
    m, n = sch.get_loops(out)
    m_ext, n_ext, k = _extent(sch, m), _extent(sch, n), _extent(sch, sch.get_loops(dense)[-1])
    mt = _largest_divisor(m_ext, DENSE_M_TILE)
    rows = max(mt, DENSE_X_BLOCK_BYTES // (4 * k) // mt * mt)
    mb = next(r for r in range(min(rows, m_ext) // mt * mt, 0, -mt) if m_ext % r == 0)
    vec = min(lanes, nt)

    def tiles(mm, nn):
        mbo, mrest = sch.split(mm, [None, mb])
        mo, mi = sch.split(mrest, [None, mt])
        no, ni = sch.split(nn, [None, nt])
        sch.reorder(mbo, no, mo, mi, ni)
        tile = sch.fuse(mbo, no, mo)
        sch.parallel(tile)
        return tile, ni

    if n_ext % nt == 0:  # the write-back drives the tiles; the product is computed per tile into registers
        tile, ni = tiles(m, n)
        sch.compute_at(dense, tile, preserve_unit_loops=True)
    else:
        # N is not a multiple of the panel (GPT-2's 50257 logits): tiles over the padded product, with the
        # write-back (clipped to N) computed per tile after it. Driving from the write-back would give the last
        # tile a shorter product, a variable extent that keeps LLVM from vectorizing every tile.
        dm, dn = sch.get_loops(dense)[:2]
        tile, _ = tiles(dm, dn)
        sch.reverse_compute_at(out, tile, preserve_unit_loops=True)
        ni = sch.get_loops(out)[-1]
    sch.set_scope(dense, 0, "local")
    rk = _register_tile(sch, dense, vec)
    _, ni_l = sch.split(ni, [None, vec])
    _try(sch.vectorize, ni_l)
    init = sch.decompose_reduction(dense, rk)
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))


# ------------------------------------------------------------------------------------------ matmul

def _schedule_matmul(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """numpy-matmul anchor C[b.., i, j] = sum_k A[b.., i, k] * B[b.., k, j] (i absent when A is 1-D).

    The epilogue's loops: parallel(batch.., j_tile, i_tile) > [i_tile x j_tile] write-back; the matmul is computed
    at the tile loop into a local [i_tile x j_tile] buffer with k outside the unrolled rows and the vectorized
    columns, so LLVM keeps it in registers. Prologues (transposes, reshapes) are inlined into the operand reads,
    except a B operand whose inlined read would be strided along j: its producer stays a stage writing a
    contiguous [k, j] panel, computed per batch entry (under the parallel batch loop) or once for all."""
    lanes = _vector_lanes(target)
    mm = sch.get_sblock(MATMUL)
    i_var, j_var, _, nb = _matmul_axes(sch, mm)
    pack = _matmul_strided_producer(sch, mm, j_var)
    keep = (sch.get(pack).name_hint,) if pack is not None else ()
    out = _anchor_epilogue(sch, mm, *keep)
    loops = sch.get_loops(out)
    if len(loops) != nb + (i_var is not None) + 1:
        raise ValueError("matmul epilogue does not have the matmul's loops")
    batch, i, j = loops[:nb], (loops[nb] if i_var is not None else None), loops[-1]
    n = _extent(sch, j)
    nt = _matmul_j_tile(n, lanes)
    jo, ji = sch.split(j, [None, nt])
    if i is not None:
        io, ii = sch.split(i, [None, _largest_divisor(_extent(sch, i), MATMUL_I_TILE)])
        sch.reorder(*batch, jo, io, ii, ji)  # i inner: consecutive tiles reuse the same [k x j_tile] B panel
        tiles = [jo, io]
    else:
        tiles, ii = [jo], None
    nbatch = 1
    for b in batch:
        nbatch *= _extent(sch, b)
    per_batch = pack is not None and nbatch >= MATMUL_PACK_BATCH_MIN
    if per_batch:
        bfused = sch.fuse(*batch) if len(batch) > 1 else batch[0]
        tile = sch.fuse(*tiles) if len(tiles) > 1 else tiles[0]
        sch.parallel(bfused)
    else:
        tile = sch.fuse(*batch, *tiles) if len(batch) + len(tiles) > 1 else tiles[0]
        if _work(sch, out) * _extent(sch, sch.get_loops(mm)[-1]) >= PARALLEL_MIN_WORK:
            sch.parallel(tile)
    sch.compute_at(mm, tile, preserve_unit_loops=True)
    sch.set_scope(mm, 0, "local")
    if ii is not None:
        mi, mj, mk = sch.get_loops(mm)[-3:]
    else:
        (mj, mk), mi = sch.get_loops(mm)[-2:], None
    vec = min(lanes, nt)
    mjo, mjl = sch.split(mj, [None, vec])
    sch.reorder(mk, *([mi] if mi is not None else []), mjo, mjl)
    if mi is not None:
        sch.unroll(mi)
    sch.unroll(mjo)
    sch.vectorize(mjl)
    # write-back (with the inlined epilogue): one vector store per row and lane group
    if ii is not None:
        _try(sch.unroll, ii)
    jwo, jwl = sch.split(ji, [None, vec])
    _try(sch.unroll, jwo)
    _try(sch.vectorize, jwl)
    if pack is not None:
        if per_batch:
            sch.compute_at(pack, bfused, preserve_unit_loops=True)
        _try(_schedule_pack, sch, pack, lanes, not per_batch)
    init = sch.decompose_reduction(mm, mk)
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _try(lambda: sch.unroll(sch.get_loops(init)[-2]))


def _matmul_axes(sch: s_tir.Schedule, mm):
    """(i, j, k, number of batch axes) of the matmul block's iter vars; i is None when A is 1-D. Raises when B
    is 1-D (a matrix-vector product: the generic row reduction suits it) or the block is not a matmul."""
    blk = sch.get(mm)
    ivs = blk.iter_vars
    types = [int(iv.iter_type) for iv in ivs]
    if len(ivs) < 2 or types.count(_SPATIAL) != len(ivs) - 1 or types[-1] == _SPATIAL or len(blk.reads) != 2:
        raise ValueError("not a single-reduction matmul block")
    k, j = ivs[-1].var, ivs[-2].var

    def dims_using(region, var):
        return [d for d, r in enumerate(region.region) if any(v.same_as(var) for v in
                                                             tirx.analysis.undefined_vars(r.min))]

    b_reads = [r for r in blk.reads if len(r.region) >= 2 and dims_using(r, j) == [len(r.region) - 1]
               and dims_using(r, k) == [len(r.region) - 2]]
    if len(b_reads) != 1:
        raise ValueError("matmul with a 1-D B operand (matrix-vector): left to the reduction rule")
    (a_read,) = [r for r in blk.reads if not r.same_as(b_reads[0])]
    i = None
    if len(ivs) >= 3 and len(a_read.region) >= 2 and dims_using(a_read, ivs[-3].var) == [len(a_read.region) - 2]:
        i = ivs[-3].var
    return i, j, k, len(ivs) - 2 - (i is not None)


def _matmul_strided_producer(sch: s_tir.Schedule, mm, j_var):
    """The block producing the B operand if inlining its prologue would make B's read strided along j (a
    transposed K in attention scores); None if B is an input or its inlined read is contiguous along j."""
    blk = sch.get(mm)
    b_buf = [r for r in blk.reads if any(v.same_as(j_var) for v in tirx.analysis.undefined_vars(r.region[-1].min))]
    producers = [p for p in sch.get_producers(mm)
                 if any(w.source.same_as(b_buf[0].source) for w in sch.get(p).writes)]
    if not producers:
        return None
    trial = sch.copy()
    _inline_all(trial, keep={MATMUL})
    mm2 = trial.get_sblock(MATMUL)
    j2 = trial.get(mm2).iter_vars[-2].var
    for r in trial.get(mm2).reads:
        for d, rng in enumerate(r.region):
            if not any(v.same_as(j2) for v in tirx.analysis.undefined_vars(rng.min)):
                continue
            coeff = detect_linear_equation(rng.min, [j2]) if d == len(r.region) - 1 else []
            if len(coeff) != 2 or not isinstance(coeff[0], tirx.IntImm) or int(coeff[0]) != 1:
                return producers[0]  # j in an outer dim, scaled, or not linear (reshape index arithmetic)
    return None


def _schedule_pack(sch: s_tir.Schedule, pack, lanes: int, parallel: bool) -> None:
    """The packed B panel [.., k, j], written in [PACK_J x lanes] blocks: each row of a block is a vector along
    k, a contiguous load for the transposed source (k4d[.., j, h, k]) and a strided store into the panel; the
    panel stays in cache for the matmul. (Vectorizing along j instead made gathers: 1.3x slower overall.)"""
    loops = sch.get_loops(pack)
    if len(loops) < 2:
        return
    k, j = loops[-2:]
    kext, jext = _extent(sch, k), _extent(sch, j)
    if parallel and len(loops) > 2:
        _try(lambda: sch.parallel(sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]))
    if kext is None or jext is None or kext < 4:
        return
    ko, ki = sch.split(k, [None, _largest_divisor(kext, lanes)])
    jo, ji = sch.split(j, [None, _largest_divisor(jext, PACK_J)])
    sch.reorder(jo, ko, ji, ki)
    sch.unroll(ji)
    sch.vectorize(ki)


def _matmul_j_tile(n: int, lanes: int) -> int:
    """Register-tile width: a divisor of n that is a multiple of the vector width, else n itself when small, else
    the full tile width (the last tile is then partial)."""
    for t in range(MATMUL_J_TILE, lanes - 1, -lanes):
        if n % t == 0:
            return t
    return n if n < MATMUL_J_TILE else MATMUL_J_TILE


# ------------------------------------------------------------------------------------------ generic

def _schedule_generic(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    lanes = _vector_lanes(target)
    _inline_all(sch)
    for block in _root_blocks(sch):
        if _is_spatial_block(sch, block):
            _try(_schedule_spatial, sch, block, lanes)
        else:
            _try(_schedule_reduction, sch, block, lanes)


def _schedule_spatial(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Fuse outer loops and parallelize them (if worth it); vectorize the innermost axis in pieces."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = _extent(sch, inner)
    outer = list(loops[:-1])
    if ext is None or ext < 4:
        outer.append(inner)
        inner = None
    elif ext > VECTOR_MAX:
        piece = _vector_piece(ext, lanes)
        o, inner = sch.split(inner, [None, piece])
        outer.append(o)
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if _work(sch, block) >= PARALLEL_MIN_WORK:
            sch.parallel(fused)
    if inner is not None:
        _try(sch.vectorize, inner)


def _vector_piece(ext: int, lanes: int) -> int:
    """The widest multiple of 4 up to VECTOR_MAX dividing `ext`, else `lanes` (the split then has a tail)."""
    for d in range(VECTOR_MAX, 3, -4):
        if ext % d == 0:
            return d
    return lanes


def _work(sch: s_tir.Schedule, block) -> int:
    total = 1
    for loop in sch.get_loops(block):
        total *= _extent(sch, loop) or 1
    return total


def _schedule_reduction(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Parallel over the spatial loops; the innermost one moves inside the reduction and is vectorized when it
    indexes the last axis of both the output and an input (pooling windows, softmax over channels)."""
    loops = sch.get_loops(block)
    types = _iter_types(sch, block)
    if len(loops) != len(types) or not loops:
        if loops and types and types[0] == _SPATIAL:
            sch.parallel(loops[0])
        return
    spatial = [l for l, t in zip(loops, types) if t == _SPATIAL]
    reduce = [l for l, t in zip(loops, types) if t != _SPATIAL]
    if not spatial:
        return
    work = _work(sch, block)
    vec = spatial[-1] if _vectorizable_spatial(sch, block, len(spatial) - 1) else None
    if vec is None and _schedule_row_reduction(sch, block, spatial, reduce, lanes, work):
        return
    outer = spatial[:-1] if vec is not None else spatial
    if vec is not None and _extent(sch, vec) > VECTOR_MAX:
        o, vec = sch.split(vec, [None, _vector_piece(_extent(sch, vec), lanes)])
        outer = [*outer, o]
    if vec is not None:
        sch.reorder(*outer, *reduce, vec)
    if outer and work >= PARALLEL_MIN_WORK:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    if vec is not None:
        _try(sch.vectorize, vec)
        if reduce:
            _try(sch.decompose_reduction, block, reduce[0])


def _schedule_row_reduction(sch: s_tir.Schedule, block, spatial: list, reduce: list, lanes: int, work: int) -> bool:
    """A reduction along the contiguous last axis (layer-norm row sums, softmax over the last axis): `lanes` partial
    results (rfactor) make the loads and the adds vectors and cut the serial dependency chain by `lanes`. The
    partials are combined by a scalar loop, `lanes` adds per row. False if the pattern differs."""
    blk = sch.get(block)
    inner = reduce[-1]
    ext = _extent(sch, inner)
    ivar = blk.iter_vars[-1]
    if (ext is None or ext < 2 * lanes or ext % lanes or int(ivar.iter_type) == _SPATIAL
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
    if int(iv.iter_type) != _SPATIAL or not isinstance(iv.dom.extent, tirx.IntImm) or int(iv.dom.extent) < 4:
        return False

    reduce_vars = [v.var for v in blk.iter_vars if int(v.iter_type) != _SPATIAL]

    def last_index_vars(region) -> list:
        return list(tirx.analysis.undefined_vars(region.region[-1].min)) if len(region.region) else []

    def in_last_index(region) -> bool:
        return any(v.same_as(iv.var) for v in last_index_vars(region))

    def gathers(region) -> bool:  # a row reduction (x[i, r]) read across lanes of i: strided, not a vector load
        used = last_index_vars(region)
        return not in_last_index(region) and any(v.same_as(r) for v in used for r in reduce_vars)

    return (any(in_last_index(w) for w in blk.writes) and any(in_last_index(r) for r in blk.reads)
            and not any(gathers(r) for r in blk.reads))


# ------------------------------------------------------------------------------------------ training kernels

def _schedule_weight_grad(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """A weight gradient (cpu_kernels.weight_grad_gemm_compute): a 2-D matmul, then its weight-shaped view and the
    elementwise epilogue (an optimizer update). The product is small (the weight's size), so it gets a loop nest
    of its own: parallel(j_tile, i_tile) > [i_tile x j_tile] accumulators in registers, k outside the unrolled
    rows and the vectorized columns, written back to a buffer the epilogue's plain loop nest then reads.
    (Computing the product under a 4-D epilogue's loops would need the view's index arithmetic undone.)"""
    lanes = _vector_lanes(target)
    mm = sch.get_sblock(MATMUL)
    _inline_all(sch, keep={MATMUL})
    if len(sch.get_loops(mm)) != 3:
        raise ValueError("weight gradient product is not a 2-D matmul")
    out = sch.cache_write(mm, 0, "local")  # mm now accumulates locally; `out` copies it to the product buffer
    i, j = sch.get_loops(out)
    nt = _weight_grad_j_tile(_extent(sch, j), lanes)
    io, ii = sch.split(i, [None, _largest_divisor(_extent(sch, i), MATMUL_I_TILE)])
    jo, ji = sch.split(j, [None, nt])
    sch.reorder(jo, io, ii, ji)
    tile = sch.fuse(jo, io)
    sch.parallel(tile)
    sch.compute_at(mm, tile, preserve_unit_loops=True)
    vec = min(lanes, nt)
    mk = _register_tile(sch, mm, vec)
    _try(sch.unroll, ii)
    jwo, jwl = sch.split(ji, [None, vec])
    _try(sch.unroll, jwo)
    _try(sch.vectorize, jwl)
    init = sch.decompose_reduction(mm, mk)
    _try(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    _try(lambda: sch.unroll(sch.get_loops(init)[-2]))
    for block in sch.get_output_blocks(sch.get_sblock("root")):  # the view and its epilogue: one loop nest
        _try(_schedule_spatial, sch, block, lanes)


def _weight_grad_j_tile(n: int, lanes: int) -> int:
    """Register-tile width of a weight gradient: 64 or 48 columns where the last, partial tile wastes at most a
    tenth (measured: 64 with a partial tile beats matmul's exact 16 on 784 columns by 1.35x), else as matmul."""
    for t in (MATMUL_J_TILE, 3 * MATMUL_J_TILE // 4):
        if n >= t and t % lanes == 0 and -(-n // t) * t <= 1.1 * n:
            return t
    return _matmul_j_tile(n, lanes)


def _schedule_im2col(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """im2col (ops/train_layout.py), x (N, C, H, W) -> (N*OH*OW, C*KH*KW): rows split into (n, oh, ow) and columns
    into (c, kh, kw), so the index arithmetic (divisions by OH*OW, OW, KH*KW, KW) and the padding test fold into
    the loops; parallel over (n, oh), kh and kw unrolled, each row written in order. The generic rule vectorized
    the flat columns: gathers with the divisions per lane, 3.5x slower (1 thread, 32x32x16x16 3x3: 1.93 -> 0.55
    ms; 32x64x8x8: 1.02 -> 0.25 ms)."""
    _inline_all(sch)
    blk = sch.get_sblock(K.IM2COL)
    if not _is_output(sch, blk) or len(sch.get_loops(blk)) != 2:
        raise ValueError("im2col is not a kernel's 2-D output")
    n, oh, ow, c, kh, kw = (int(d) for d in sch.get(blk).annotations[K.ANN_IM2COL_DIMS])
    rows, cols = sch.get_loops(blk)
    bn, p, _ = sch.split(rows, [n, oh, ow])
    _, i, j = sch.split(cols, [c, kh, kw])
    outer = sch.fuse(bn, p)
    if _work(sch, blk) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(i)
    sch.unroll(j)


LAYOUT_TRANSFORM = "T_layout_trans"  # topi.layout_transform's block (ops/layout.py's to_blocked, from_blocked)
UNBLOCK_W_TILE = 8


def _schedule_from_blocked(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """NCHW[b]c -> NCHW (from_blocked, with any slice or elementwise op fused after it): a [b channels x W_TILE
    columns] transposition per step, the channel lanes unrolled and the columns vectorized, so each source pixel's
    b lanes are read together (one cache line) and each destination row piece is one vector store. The generic rule
    vectorized whole rows, gathering every element at stride b: 1 thread, 8x6x56x56x16 1.91 -> 0.54 ms,
    8x9x56x56x16 3.13 -> 1.49 ms. Raises for anything else (to_blocked writes 5-D)."""
    _inline_all(sch)
    blocks = _root_blocks(sch)
    if len(blocks) != 1 or len(sch.get_loops(blocks[0])) != 4:
        raise ValueError("not a single 4-D output")
    block = blocks[0]
    reads = [r for r in sch.get(block).reads if len(r.source.shape) == 5]
    if len(reads) != 1 or not isinstance(reads[0].source.shape[4], tirx.IntImm):
        raise ValueError("no NCHW[b]c operand")
    lanes = int(reads[0].source.shape[4])
    n, c, h, w = sch.get_loops(block)
    cb, ci = sch.split(c, [None, lanes])
    wo, wi = sch.split(w, [None, min(UNBLOCK_W_TILE, _extent(sch, w))])
    sch.reorder(n, cb, h, wo, ci, wi)
    outer = sch.fuse(n, cb, h)
    if _work(sch, block) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(ci)
    sch.vectorize(wi)


PACK_K_TILE = 16  # run-time dense weight pack: source row elements per vector


def _schedule_dense_weight_pack(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """dense_weight_pack (ops/train_layout.py), (N, K) -> (N / b, K, b): a transposition per block of b rows.
    Vectorized along K, which reads each source row contiguously, with the b rows unrolled in groups of 16 and
    strided stores; vectorizing along the lanes instead gathers down a column (stride K: with K a power of two
    the rows share cache sets, 10x slower for 512 x 512)."""
    _inline_all(sch)
    blk = sch.get_sblock("dense_weight_pack")
    ob, k, lane = sch.get_loops(blk)
    kext, lext = _extent(sch, k), _extent(sch, lane)
    if kext is None or lext is None:
        raise ValueError("dynamic pack shape")
    ko, ki = sch.split(k, [None, PACK_K_TILE])
    lo, li = sch.split(lane, [None, _largest_divisor(lext, 16)])
    sch.reorder(ob, ko, lo, li, ki)
    outer = sch.fuse(ob, ko)
    if _work(sch, blk) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.unroll(li)
    sch.vectorize(ki)


def _schedule_outer_reduction(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """A reduction over leading and trailing axes around kept ones (the per-channel sums of a batch norm's
    backward: axes (0, 2, 3) of NCHW), which the generic rule leaves a serial scalar loop: the trailing reduced axes
    are contiguous in memory, so they fuse into one loop whose `lanes` partial sums (rfactor) are vectors,
    parallel over the kept axes. Raises for any other kernel."""
    _inline_all(sch)
    blocks = _root_blocks(sch)
    reductions = [b for b in blocks if not _is_spatial_block(sch, b)]
    if len(reductions) != 1 or blocks[0] != reductions[0]:
        raise ValueError("not a single reduction (and an epilogue)")
    block = reductions[0]
    blk = sch.get(block)
    types = _iter_types(sch, block)
    loops = sch.get_loops(block)
    nspatial = types.count(_SPATIAL)
    if len(loops) != len(types) or types != sorted(types) or nspatial == len(types) or len(blk.reads) < 1:
        raise ValueError("not spatial loops then reduction loops")
    kept = [i for i, t in enumerate(types) if t == _SPATIAL and (_extent(sch, loops[i]) or 0) > 1]
    if not kept:
        raise ValueError("a full reduction")
    reads = [r for r in blk.reads if len(r.region) >= 2]
    reduce_vars = [iv.var for iv, t in zip(blk.iter_vars, types) if t != _SPATIAL]
    trailing = 0  # reduce vars indexing the reads' last dims, innermost first, in order
    for k, var in enumerate(reversed(reduce_vars)):
        if not reads or not all(k < len(r.region) and r.region[-1 - k].min.same_as(var) for r in reads):
            break
        trailing += 1
    if trailing == 0 or trailing == len(reduce_vars):
        raise ValueError("no leading reduced axis: the generic row reduction suits it")
    lanes = _vector_lanes(target)
    inner_loops = loops[len(loops) - trailing:]
    inner = sch.fuse(*inner_loops) if trailing > 1 else inner_loops[0]
    ext = _extent(sch, inner)
    if ext is None or ext < 2 * lanes or ext % lanes:
        raise ValueError("trailing reduced axes too short or not a multiple of the vector width")
    _, ri = sch.split(inner, [None, lanes])
    rf = sch.rfactor(ri, nspatial)
    outer = sch.fuse(*sch.get_loops(rf)[:nspatial])
    if _work(sch, rf) >= PARALLEL_MIN_WORK:
        sch.parallel(outer)
    sch.vectorize(sch.get_loops(rf)[-1])
    sch.decompose_reduction(rf, sch.get_loops(rf)[1])
    final = sch.get_loops(block)
    _try(lambda: sch.fuse(*final[:nspatial]))
    for b in blocks[1:]:  # the epilogue (a mean's division): one value per kept element
        _try(_schedule_spatial, sch, b, lanes)


def _schedule_multi_output_elementwise(sch: s_tir.Schedule, target: tvm.target.Target) -> None:
    """An elementwise kernel that writes several outputs of one shape (an optimizer update: the new moments, then
    the parameter read from them): the outputs' loop nests merge into one parallel, vectorized nest whose body
    computes every output in turn, instead of a loop nest (and a parallel launch) per output. Raises where the
    kernel is anything else (a reduction, outputs of different shapes, one output), leaving it to the generic
    rule."""
    if not all(_is_spatial_block(sch, b) for b in _root_blocks(sch)):
        raise ValueError("not an elementwise kernel")
    _inline_all(sch)
    blocks = _root_blocks(sch)
    shapes = {tuple(_extent(sch, lp) for lp in sch.get_loops(b)) for b in blocks}
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
    _schedule_spatial(sch, blocks[-1], _vector_lanes(target))


def _at_own_point(region, blk) -> bool:
    """Does a buffer region of `blk` touch exactly element (v0, v1, ...) of the block's own iteration vars?"""
    rng = region.region
    return len(rng) == len(blk.iter_vars) and all(
        isinstance(r.extent, tirx.IntImm) and int(r.extent) == 1 and r.min.same_as(iv.var)
        for r, iv in zip(rng, blk.iter_vars))


_RULES = [
    (cpu_attention.is_attention, cpu_attention.schedule_attention),
    (lambda names: KW.WINO_GEMM in names, KW.schedule_winograd),
    (lambda names: K.WGRAD in names, _schedule_weight_grad),
    (lambda names: K.CONV_PACKED in names, _schedule_conv_packed),
    (lambda names: K.CONV_NCHWC in names or K.CONV_DW_NCHWC in names, _schedule_conv_nchwc),
    (lambda names: K.CONV_DEPTHWISE in names or K.CONV_PLAIN in names, _schedule_conv_rowwise),
    (lambda names: K.DENSE_PACKED in names, _schedule_dense),
    (lambda names: MATMUL in names, _schedule_matmul),
    (lambda names: "dense_weight_pack" in names, _schedule_dense_weight_pack),
    (lambda names: K.IM2COL in names, _schedule_im2col),
    (lambda names: LAYOUT_TRANSFORM in names, _schedule_from_blocked),
    (lambda names: True, _schedule_outer_reduction),
    (lambda names: True, _schedule_multi_output_elementwise),
]
