"""The numpy-matmul schedule (ops/nn.py's `matmul`): [i_tile x j_tile] register tiles, k outside them, parallel
over batch x tiles; transpose prologues inlined, or packed per batch entry when strided along j."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import tvm
from tvm import s_tir, tirx
from tvm.sym import detect_linear_equation

from tensorforge.compiler.backend.cpu.common import (
    PARALLEL_MIN_WORK, SPATIAL, Knobs, Rule, anchor_epilogue, attempt, inline_all, largest_divisor, loop_extent,
    loop_work, reads_along, vector_lanes)
from tensorforge.compiler.ops.nn import MATMUL  # the matmul block name (a weight gradient's product too)

MATMUL_PACK_BATCH_MIN = 4  # with this many batch entries a strided B operand is packed per entry, else once, whole
PACK_J = 8               # packing: rows (along j) per transposed block


@dataclass(frozen=True)
class MatmulKnobs(Knobs):
    """The register tile of a matmul (and of a weight gradient's product, training.py)."""

    i_tile: int = 4   # register tile rows ...
    j_tile: int = 64  # ... and columns (4 x 64 fp32 = 16 AVX-512 accumulators)

    SPACE: ClassVar[dict[str, tuple]] = {"i_tile": (2, 4, 6, 8), "j_tile": (32, 48, 64, 128)}


def schedule_matmul(sch: s_tir.Schedule, target: tvm.target.Target,
                    knobs: MatmulKnobs = MatmulKnobs()) -> None:
    """numpy-matmul anchor C[b.., i, j] = sum_k A[b.., i, k] * B[b.., k, j] (i absent when A is 1-D).

    The epilogue's loops: parallel(batch.., j_tile, i_tile) > [i_tile x j_tile] write-back; the matmul is computed
    at the tile loop into a local [i_tile x j_tile] buffer with k outside the unrolled rows and the vectorized
    columns, so LLVM keeps it in registers. Prologues (transposes, reshapes) are inlined into the operand reads,
    except a B operand whose inlined read would be strided along j: its producer stays a stage writing a
    contiguous [k, j] panel, computed per batch entry (under the parallel batch loop) or once for all."""
    lanes = vector_lanes(target)
    mm = sch.get_sblock(MATMUL)
    i_var, j_var, _, nb = _matmul_axes(sch, mm)
    pack = _matmul_strided_producer(sch, mm, j_var)
    keep = (sch.get(pack).name_hint,) if pack is not None else ()
    out = anchor_epilogue(sch, mm, *keep)
    loops = sch.get_loops(out)
    if len(loops) != nb + (i_var is not None) + 1:
        raise ValueError("matmul epilogue does not have the matmul's loops")
    batch, i, j = loops[:nb], (loops[nb] if i_var is not None else None), loops[-1]
    n = loop_extent(sch, j)
    nt = matmul_j_tile(n, lanes, knobs.j_tile)
    jo, ji = sch.split(j, [None, nt])
    if i is not None:
        io, ii = sch.split(i, [None, largest_divisor(loop_extent(sch, i), knobs.i_tile)])
        sch.reorder(*batch, jo, io, ii, ji)  # i inner: consecutive tiles reuse the same [k x j_tile] B panel
        tiles = [jo, io]
    else:
        tiles, ii = [jo], None
    nbatch = 1
    for b in batch:
        nbatch *= loop_extent(sch, b)
    per_batch = pack is not None and nbatch >= MATMUL_PACK_BATCH_MIN
    if per_batch:
        bfused = sch.fuse(*batch) if len(batch) > 1 else batch[0]
        tile = sch.fuse(*tiles) if len(tiles) > 1 else tiles[0]
        sch.parallel(bfused)
    else:
        tile = sch.fuse(*batch, *tiles) if len(batch) + len(tiles) > 1 else tiles[0]
        if loop_work(sch, out) * loop_extent(sch, sch.get_loops(mm)[-1]) >= PARALLEL_MIN_WORK:
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
        attempt(sch.unroll, ii)
    jwo, jwl = sch.split(ji, [None, vec])
    attempt(sch.unroll, jwo)
    attempt(sch.vectorize, jwl)
    if pack is not None:
        if per_batch:
            sch.compute_at(pack, bfused, preserve_unit_loops=True)
        attempt(_schedule_pack, sch, pack, lanes, not per_batch)
    init = sch.decompose_reduction(mm, mk)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    attempt(lambda: sch.unroll(sch.get_loops(init)[-2]))


def _matmul_axes(sch: s_tir.Schedule, mm):
    """(i, j, k, number of batch axes) of the matmul block's iter vars; i is None when A is 1-D. Raises when B
    is 1-D (a matrix-vector product: the generic row reduction suits it) or the block is not a matmul."""
    blk = sch.get(mm)
    ivs = blk.iter_vars
    types = [int(iv.iter_type) for iv in ivs]
    if len(ivs) < 2 or types.count(SPATIAL) != len(ivs) - 1 or types[-1] == SPATIAL or len(blk.reads) != 2:
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
    b_buf = reads_along(blk, j_var)
    producers = [p for p in sch.get_producers(mm)
                 if any(w.source.same_as(b_buf[0].source) for w in sch.get(p).writes)]
    if not producers:
        return None
    trial = sch.copy()
    inline_all(trial, keep={MATMUL})
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
    kext, jext = loop_extent(sch, k), loop_extent(sch, j)
    if parallel and len(loops) > 2:
        attempt(lambda: sch.parallel(sch.fuse(*loops[:-2]) if len(loops) > 3 else loops[0]))
    if kext is None or jext is None or kext < 4:
        return
    ko, ki = sch.split(k, [None, largest_divisor(kext, lanes)])
    jo, ji = sch.split(j, [None, largest_divisor(jext, PACK_J)])
    sch.reorder(jo, ko, ji, ki)
    sch.unroll(ji)
    sch.vectorize(ki)


def matmul_j_tile(n: int, lanes: int, j_tile: int = MatmulKnobs.j_tile) -> int:
    """Register-tile width: a divisor of n that is a multiple of the vector width, else n itself when small, else
    the full tile width (the last tile is then partial)."""
    for t in range(j_tile, lanes - 1, -lanes):
        if n % t == 0:
            return t
    return n if n < j_tile else j_tile


matmul_rule = Rule("matmul", schedule_matmul, blocks=(MATMUL,), knobs=MatmulKnobs())
