"""Index checks for gathers and scatters whose indices arrive at run time (compiler/ops/shape.py).

The ops' TE lowerings read their indices through an `index_check` stage that counts negative indices from the end
and clamps them into the axis, so no kernel reads or writes outside a tensor on any target. The stage's block
carries `INDEX_CHECK` (the error message) and `INDEX_SIZES` (the axis size, or one per entry of the indices' last
axis for gather_nd/scatter_nd); on the CPU this pass puts an assertion in front of the clamp, so an index outside
[-size, size) raises (TVM's generated code returns the error to the caller; `model.run` raises it) instead of
being clamped in silence. Asserts are host code: GPU kernels only clamp.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from tensorforge.compiler.ops.shape import INDEX_CHECK, INDEX_SIZES  # the annotations the ops' index_check blocks carry


def insert_index_asserts(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with an assertion in each `index_check` block (an unscheduled TE PrimFunc: loops, blocks)."""
    body = _visit(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def scalar_index_checks(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """After scheduling: a vectorized loop around an assertion becomes serial (LLVM cannot branch on a vector of
    conditions). Index checks are small next to the gathers they guard."""
    body = _visit(func.body, devectorize=True)
    return func if body.same_as(func.body) else func.with_body(body)


def _has_check(s) -> bool:
    if isinstance(s, tirx.SeqStmt):
        return any(_has_check(x) for x in s.seq)
    if isinstance(s, tirx.For):
        return _has_check(s.body)
    if isinstance(s, s_tir.SBlockRealize):
        return INDEX_CHECK in s.block.annotations or _has_check(s.block.body)
    return False


def _visit(s, devectorize=False):
    if isinstance(s, tirx.SeqStmt):
        parts = [_visit(x, devectorize) for x in s.seq]
        return s if all(a.same_as(b) for a, b in zip(parts, s.seq)) else tirx.SeqStmt(parts)
    if isinstance(s, tirx.For):
        b = _visit(s.body, devectorize)
        kind = s.kind
        if devectorize and kind == tirx.ForKind.VECTORIZED and _has_check(s.body):
            kind = tirx.ForKind.SERIAL
        return s if b.same_as(s.body) and kind == s.kind else tirx.For(
            s.loop_var, s.min, s.extent, kind, b, s.thread_binding, s.annotations, s.step)
    if isinstance(s, s_tir.SBlockRealize):
        blk = s.block
        if devectorize:
            body = blk.body if INDEX_CHECK in blk.annotations else _visit(blk.body, devectorize)
        else:
            body = _with_assert(blk) if INDEX_CHECK in blk.annotations else _visit(blk.body)
        if body.same_as(blk.body):
            return s
        new = s_tir.SBlock(blk.iter_vars, blk.reads, blk.writes, blk.name_hint, body, blk.init, blk.alloc_buffers,
                           blk.match_buffers, blk.annotations)
        return s_tir.SBlockRealize(s.iter_values, s.predicate, new)
    return s


def _first_load(e):
    """The first BufferLoad in an expression (depth first), or None."""
    if type(e).__name__ == "BufferLoad":  # tirx.BufferLoad is a factory function in TVM 0.27, not the class
        return e
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        sub = getattr(e, field, None)
        if sub is not None and not isinstance(sub, (int, float, str)):
            found = _first_load(sub)
            if found is not None:
                return found
    for arg in getattr(e, "args", None) or []:
        found = _first_load(arg)
        if found is not None:
            return found
    return None


def _with_assert(blk):
    """assert -n <= idx[v] < n; then the block's own (clamping) store. The block reads the indices at its own
    iteration point; with several sizes the last iteration variable picks the size."""
    if len(blk.reads):
        src = blk.reads[0]
        v = tirx.BufferLoad(src.source, [r.min for r in src.region])
        dt = str(src.source.dtype)
    else:  # no read region recorded: look for the load in the block's store
        v = _first_load(blk.body.value)
        if v is None:
            # the clamp folded to a constant (an axis of size 1: every index becomes 0) and no longer reads the
            # index: nothing to check against, and no memory is touched out of range
            return blk.body
        dt = str(v.buffer.dtype)
    sizes = [int(n) for n in blk.annotations[INDEX_SIZES]]
    n = tirx.const(sizes[0], dt)
    if len(sizes) > 1:  # one size per entry of the indices' last axis (a 0-d index has no iteration variable)
        last = blk.iter_vars[-1].var
        for k in range(1, len(sizes)):
            n = tirx.Select(last == k, tirx.const(sizes[k], dt), n)
    ok = tirx.And(v >= -n, v < n)
    # positional: TVM 0.27's Python signature says (kind, condition, ...), its constructor takes (condition, kind)
    check = tirx.AssertStmt(ok, tvm.ir.StringImm("IndexError"), [tvm.ir.StringImm(str(blk.annotations[INDEX_CHECK]))])
    return tirx.SeqStmt([check, blk.body])
