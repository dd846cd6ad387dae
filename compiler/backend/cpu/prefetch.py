"""Prefetching a task's output before its product: for register-tiled products whose reduction is short.

A task of a weight gradient over a small batch (ResNet-50's last stage at batch 2: 98 rows) computes one [rows x
cols] register tile in 98 steps and then stores it; the stores miss (a 9.4 MB weight gradient is far larger than
the caches), each needs its line read from memory first, and the next task's loads wait behind them. Measured on a
Zen 4 core, 512 x 4608 from 98 rows: 37 GMAC/s, and 47 with the tile's lines prefetched (for writing) when the task
starts, so that they arrive while it computes.

A schedule rule marks the task loop (`mark`: the loop is the fusion of column tiles outer and row tiles inner, as
training.py's `_tasks` makes it); `insert_prefetches`, run on the scheduled function (backend/build.py), puts one
`llvm.prefetch` per cache line of the tile at the top of the task, for the buffer its write-back block stores.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

PREFETCH_TILE = "tensorforge.prefetch_tile"  # annotation of a task loop: [rows, cols, row tasks]
LINE_BYTES = 64


def mark(sch: s_tir.Schedule, loop, rows: int, cols: int, row_tasks: int) -> None:
    """Task loop `loop` (task t covers rows (t % row_tasks) * rows + [0, rows), columns (t // row_tasks) * cols +
    [0, cols) of the buffer its write-back stores) gets its tile prefetched."""
    sch.annotate(loop, PREFETCH_TILE, [int(rows), int(cols), int(row_tasks)])


def insert_prefetches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with the prefetches of every marked task loop (and the marks removed); unchanged if none."""
    body = _visit(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _visit(s):
    if isinstance(s, tirx.SeqStmt):
        seq = [_visit(x) for x in s.seq]
        return s if all(a.same_as(b) for a, b in zip(seq, s.seq)) else tirx.SeqStmt(seq)
    if isinstance(s, s_tir.SBlockRealize):
        b = s.block
        body = _visit(b.body)
        if body.same_as(b.body):
            return s
        block = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init, b.alloc_buffers,
                             b.match_buffers, b.annotations)
        return s_tir.SBlockRealize(s.iter_values, s.predicate, block)
    if isinstance(s, tirx.For):
        if PREFETCH_TILE in s.annotations:
            return _prefetched(s)
        body = _visit(s.body)
        return s if body.same_as(s.body) else tirx.For(s.loop_var, s.min, s.extent, s.kind, body, s.thread_binding,
                                                       s.annotations)
    return s


def _prefetched(loop: tirx.For) -> tirx.For:
    rows, cols, row_tasks = (int(v) for v in loop.annotations[PREFETCH_TILE])
    annotations = {k: v for k, v in loop.annotations.items() if k != PREFETCH_TILE}
    buf = _stored_buffer(loop.body)
    if buf is None or len(buf.shape) != 2:
        return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, loop.body, loop.thread_binding, annotations)
    t = loop.loop_var
    step = max(1, LINE_BYTES * 8 // tvm.DataType(str(buf.dtype)).bits)  # elements per cache line
    prefetches = []
    for r in range(rows):
        for c in range(0, cols, step):
            i = tirx.floormod(t, row_tasks) * rows + r
            j = tirx.floordiv(t, row_tasks) * cols + c
            address = tirx.address_of(tirx.BufferLoad(buf, [i, j]))
            # rw 1: for writing (the line arrives owned); locality 3: keep in every cache level; 1: data cache
            prefetches.append(tirx.Evaluate(tirx.call_llvm_intrin(
                "void", "llvm.prefetch.p0", address, tirx.const(1, "int32"), tirx.const(3, "int32"),
                tirx.const(1, "int32"))))
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, tirx.SeqStmt(prefetches + [loop.body]),
                    loop.thread_binding, annotations)


def _stored_buffer(s):
    """The buffer of the first block under `s` that stores outside registers (the task's write-back)."""
    if isinstance(s, tirx.SeqStmt):
        for x in s.seq:
            found = _stored_buffer(x)
            if found is not None:
                return found
        return None
    if isinstance(s, tirx.For):
        return _stored_buffer(s.body)
    if isinstance(s, s_tir.SBlockRealize):
        for w in s.block.writes:
            if w.source.scope() not in ("local", "local.fragment"):
                return w.source
        return _stored_buffer(s.block.body)
    return None

