"""The key/value cache of token-by-token decoding (compiler/decoding.py).

`cache_write(cache, new, position, axis)` is `cache` with `new` written at [position, position + new.shape[axis])
along `axis`. It declares `in_place`: its kernel writes those slots alone, into the buffer of `cache` itself, so
it is only ever planned where its output is that buffer (a persistent state updated in place, backend/plan.py
checks it): one token's keys move per step, never the whole cache. A position outside the cache raises at run time.

`cached_attention(q, k, v, position[, mask])` is causal attention over such a cache: query row i, the token at
position + i, attends to keys 0 .. position + i and reads no later slot (passes/cached_attention.py puts it where
attention reads the caches just written). Both kernels are written in TIR directly (te.extern): the loops over the
keys run to a bound known only at run time, which TE's computes cannot say.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from tensorforge.compiler.ir.types import TensorType

from .attention import check_mask, softmax_times
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

INT_DTYPES = ("int32", "int64")


def _infer(types, *, axis):
    cache, new, position = types
    if not 0 <= axis < cache.rank:
        fail(f"axis {axis} out of range for rank {cache.rank}")
    if new.dtype != cache.dtype or new.rank != cache.rank or any(
            a != b for i, (a, b) in enumerate(zip(new.shape, cache.shape)) if i != axis):
        fail(f"new entries {new} do not fit cache {cache} outside axis {axis}")
    if new.shape[axis] > cache.shape[axis]:
        fail(f"{new.shape[axis]} new entries exceed the cache's {cache.shape[axis]} along axis {axis}")
    if position.dtype not in INT_DTYPES or position.numel != 1:
        fail(f"position must be one int32/int64 element, got {position}")
    return TensorType(cache.shape, cache.dtype)


def _reference(cache, new, position, *, axis):
    start, count = int(np.asarray(position).reshape(-1)[0]), new.shape[axis]
    if not 0 <= start <= cache.shape[axis] - count:
        raise IndexError(f"cache position {start} (+{count} entries) outside the cache's {cache.shape[axis]}")
    out = cache.copy()
    index = [slice(None)] * cache.ndim
    index[axis] = slice(start, start + count)
    out[tuple(index)] = new
    return out


def _lower(cache, new, position, *, axis):
    shape = [int(d) for d in cache.shape]
    new_shape = [int(d) for d in new.shape]
    size, count = shape[axis], new_shape[axis]
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))

    def gen(_cache, newb, posb, outb):
        with IRBuilder() as ib:
            N, P, O = T.buffer_proxy(newb), T.buffer_proxy(posb), T.buffer_proxy(outb)
            start = T.cast(P[(0,) * len(posb.shape)], "int64")
            with T.serial(0, 1):
                with T.Assert(tirx.all(start >= 0, start <= size - count),
                              f"cache_write: position outside the cache of {size} entries along axis {axis} "
                              f"({count} written per step)"):
                    with T.serial(0, outer) as o:
                        with T.serial(0, count) as s:
                            with T.serial(0, inner) as i:
                                src = _unflat(o, s, i, new_shape, axis)
                                dst = _unflat(o, s + start, i, shape, axis)
                                O[dst] = N[src]
        return ib.get()

    # the output is the cache's own buffer (in_place): only the new slots are written
    return te.extern([shape], [cache, new, position], lambda ins, outs: gen(*ins, *outs), name="cache_write",
                     tag="cache_write", dtype=[cache.dtype])


def _unflat(o, s, i, shape, axis):
    """The index of (outer o, axis s, inner i) in `shape`."""
    idx = []
    for d in reversed(shape[axis + 1:]):
        idx.append(i % d)
        i = i // d
    before = []
    for d in reversed(shape[:axis]):
        before.append(o % d)
        o = o // d
    return tuple(before[::-1]) + (s,) + tuple(idx[::-1])


cache_write = defop(
    "cache_write", FusionKind.OPAQUE, infer=_infer, reference=_reference, lower=_lower, grad=NO_RULE_YET,
    attrs={"axis": Attr("int")}, arity=(3, 3), in_place=True,
    flops=lambda n: 0,
    doc="cache with `new` written at `position` along `axis`; the kernel writes those slots into the cache's own "
        "buffer (in_place)")


# -- attention over the written part of a cache ------------------------------------------------------------------------

def _cached_attention_infer(types, *, scale, nan_guard=False):
    q, k, v, position = types[:4]
    if q.rank < 2 or not q.rank == k.rank == v.rank or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        fail(f"q, k and v must have the same rank and leading (batch, head) dims, got {q}, {k}, {v}")
    if q.dtype != "float32" or not q.dtype == k.dtype == v.dtype:
        fail(f"q, k and v must be float32, got {q}, {k}, {v}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        fail(f"shapes do not chain: q {q} @ k^T {k}, then @ v {v}")
    if q.shape[-2] > k.shape[-2]:
        fail(f"{q.shape[-2]} query rows exceed the cache's {k.shape[-2]} keys")
    if position.dtype not in INT_DTYPES or position.numel != 1:
        fail(f"position must be one int32/int64 element, got {position}")
    if len(types) == 5:
        check_mask(types[4], q, k)
    return TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)


def _cached_attention_ref(q, k, v, position, mask=None, *, scale, nan_guard=False):
    start, sq = int(np.asarray(position).reshape(-1)[0]), q.shape[-2]
    if not 0 <= start <= k.shape[-2] - sq:
        raise IndexError(f"cache position {start} (+{sq} rows) outside the cache's {k.shape[-2]} entries")
    s = np.matmul(q.astype(np.float64), np.swapaxes(k.astype(np.float64), -1, -2)) * scale
    if mask is not None:
        s = s + np.broadcast_to(mask, s.shape).astype(np.float64)
    s = np.where(np.arange(k.shape[-2])[None, :] > start + np.arange(sq)[:, None], -np.inf, s)  # row i: j <= start+i
    return softmax_times(s, v, nan_guard).astype(q.dtype)


def _lanes(n: int) -> int:
    return next(w for w in (16, 8, 4, 2, 1) if n % w == 0)


def _cached_attention_lower(q, k, v, position, mask=None, *, scale, nan_guard=False):
    """Per (batch, head), in parallel, and per query row i: the scores of keys 0 .. position + i (the dot products
    vectorized along D), their max, then exp-weighted rows of V summed in registers; no later key is read."""
    *batch, sq, d = (int(x) for x in q.shape)
    skv, dv = int(k.shape[-2]), int(v.shape[-1])
    heads = int(np.prod(batch, dtype=np.int64))
    ld = _lanes(d)
    mask_shape = [int(x) for x in mask.shape] if mask is not None else None

    def lead(t):  # (batch..., ) indices of task t
        idx = []
        for size in reversed(batch):
            idx.append(t % size)
            t = t // size
        return tuple(idx[::-1])

    def mask_at(M, b, i, j):
        full = (*b, i, j)
        full = full[len(full) - len(mask_shape):]
        return M[tuple(0 if s == 1 else x for s, x in zip(mask_shape, full))]

    def gen(qb, kb, vb, pb, *rest):
        mb, ob = (rest[0], rest[1]) if mask is not None else (None, rest[0])
        with IRBuilder() as ib:
            Q, K, V, P, O = (T.buffer_proxy(x) for x in (qb, kb, vb, pb, ob))
            M = T.buffer_proxy(mb) if mb is not None else None
            start = T.cast(P[(0,) * len(pb.shape)], "int32")
            with T.serial(0, 1):
                with T.Assert(tirx.all(start >= 0, start <= skv - sq),
                              f"attention over the cache: position outside the cache of {skv} entries"):
                    with T.parallel(0, heads) as t:
                        b = lead(t)
                        s = T.buffer_proxy(T.alloc_buffer((skv,), "float32", scope="local"))
                        acc = T.buffer_proxy(T.alloc_buffer((ld,), "float32", scope="local"))
                        out = T.buffer_proxy(T.alloc_buffer((dv,), "float32", scope="local"))
                        red = T.buffer_proxy(T.alloc_buffer((2,), "float32", scope="local"))  # max, sum
                        with T.serial(0, sq) as i:
                            red[0] = tirx.min_value("float32")
                            with T.serial(0, start + i + 1) as j:
                                with T.vectorized(0, ld) as lane:
                                    acc[lane] = T.float32(0)
                                with T.serial(0, d // ld) as c:
                                    with T.vectorized(0, ld) as lane:
                                        acc[lane] = acc[lane] + Q[(*b, i, c * ld + lane)] * K[(*b, j, c * ld + lane)]
                                dot = acc[0]
                                for lane in range(1, ld):
                                    dot = dot + acc[lane]
                                x = dot * T.float32(scale)
                                if M is not None:
                                    x = x + mask_at(M, b, i, j)
                                s[j] = x
                                red[0] = tirx.max(red[0], x)
                            red[1] = T.float32(0)
                            with T.vectorized(0, dv) as c:
                                out[c] = T.float32(0)
                            with T.serial(0, start + i + 1) as j:
                                s[j] = tirx.exp(s[j] - red[0])
                                red[1] = red[1] + s[j]
                                with T.vectorized(0, dv) as c:
                                    out[c] = out[c] + s[j] * V[(*b, j, c)]
                            with T.vectorized(0, dv) as c:
                                # nan_guard: no finite maximum (every key -inf, or an inf/NaN score) gives zeros
                                O[(*b, i, c)] = tirx.Select(red[1] > T.float32(0), out[c] / red[1], T.float32(0)) \
                                    if nan_guard else out[c] / red[1]
        return ib.get()

    ins = [q, k, v, position] + ([mask] if mask is not None else [])
    return te.extern([(*batch, sq, dv)], ins, lambda i, o: gen(*i, *o), name="cached_attention",
                     tag="cached_attention", dtype=["float32"])


cached_attention = defop(
    "cached_attention", FusionKind.OPAQUE, infer=_cached_attention_infer, reference=_cached_attention_ref,
    lower=_cached_attention_lower, grad=NO_RULE_YET, attrs={"scale": Attr("float"), "nan_guard": Attr("bool", False)},
    arity=(4, 5),
    flops=lambda n: 2 * n.inputs[0].type.numel * n.inputs[1].type.shape[-2]
    + 2 * n.outputs[0].type.numel * n.inputs[1].type.shape[-2],
    doc="causal attention over a cache: query row i, the token at position + i, attends to keys 0 .. position + i "
        "(softmax(scale * q k^T + mask) over those, times v); later slots are not read")
