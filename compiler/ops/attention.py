"""Scaled dot-product attention as one op. Exporters write it as matmul -> scale -> (+ mask) -> softmax -> matmul;
the `recognize` pass rewrites that chain into `attention`, whose CPU kernel (backend/cpu/attention.py)
computes each head's scores, softmax and weighted sum in one pass over cache-resident buffers.

    attention(q, k, v[, mask]) {scale, causal, nan_guard} = softmax(scale * q @ k^T + mask + causal_bias) @ v
      q (..., Sq, D), k (..., Skv, D), v (..., Skv, Dv), the same leading (batch, head) dims; mask additive,
      broadcastable to (..., Sq, Skv); causal: key j is masked (-inf) for query i when j > i (PyTorch's is_causal);
      nan_guard: a row whose softmax is NaN (every key masked with -inf, or an inf/NaN score) gives zeros, as
      transformers' `torch.where(isnan(p), 0, p)` after the softmax does.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import FLOAT_DTYPES, TensorType

from . import vecmath
from .registry import Attr, FusionKind, broadcast_per_sample, defop, fail

# the stages of the lowering, by block name: the CPU schedule finds them by these names
KT, QK, MAX, EXP, SUM, PV, OUT = ("attention_kt", "attention_qk", "attention_max", "attention_exp", "attention_sum",
                                  "attention_pv", "attention")
OUT_PADDED = "attention_padded"  # the padded rows' result, before the write-back `attention` drops them

# Sequence lengths that do not split into register tiles (ViT's 197 tokens, a prime) are computed over the next
# multiple: keys padded to SKV_ROUND (masked out: their scores are the lowest float, their exponentials 0), query
# rows to SQ_ROUND (they re-read the last row; the write-back drops them). Unpadded, 197 left [1 x 1] register
# tiles: ViT-base's attention took 14.5 ms per layer on one core.
SKV_ROUND = 16
SQ_ROUND = 4
# Lengths known only at run time (a kernel over a symbolic sequence length, backend/symbolic.py) are always padded:
# the keys to this (the CPU schedule's score tile then divides them), the query rows to SQ_ROUND.
SKV_ROUND_RUNTIME = 32


def _padded(n, m: int, runtime: int | None = None):
    """n itself where it needs no padding, else n rounded up to a multiple of m (of `runtime`, else m, where n is
    a size known at run time: always rounded)."""
    if not isinstance(n, int):
        m = runtime or m
        return (n + m - 1) // m * m
    return n if n <= m or n % m == 0 else -(-n // m) * m


def _size(x):
    """A dimension as an int, or as the TIR variable it is in a kernel over run-time sizes."""
    return int(x) if isinstance(x, (int, tirx.IntImm)) else x


def _attention_infer(types, *, scale, causal, nan_guard=False):
    q, k, v = types[:3]
    if q.rank < 2 or not q.rank == k.rank == v.rank:
        fail(f"q, k and v must have the same rank >= 2, got {q}, {k}, {v}")
    if q.dtype not in FLOAT_DTYPES or not q.dtype == k.dtype == v.dtype:
        fail(f"q, k and v must share one float dtype, got {q}, {k}, {v}")
    if not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        fail(f"q, k and v must have the same leading (batch, head) dims, got {q}, {k}, {v}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        fail(f"shapes do not chain: q {q} @ k^T {k}, then @ v {v}")
    if len(types) == 4:
        check_mask(types[3], q, k)
    return TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)


def check_mask(mask: TensorType, q: TensorType, k: TensorType) -> None:
    """An additive mask must have q's dtype and broadcast to the scores' shape (..., Sq, Skv)."""
    scores = q.shape[:-1] + (k.shape[-2],)
    try:
        fits = mask.rank <= len(scores) and np.broadcast_shapes(mask.shape, scores) == scores
    except ValueError:
        fits = False
    if mask.dtype != q.dtype or not fits:
        fail(f"the mask {mask} must be {q.dtype} and broadcast to the scores' shape {list(scores)}")


def causal_bias(sq: int, skv: int, dtype) -> np.ndarray:
    """0 where key j may be attended from query i (j <= i), -inf elsewhere: the additive form of causal=True."""
    return np.where(np.arange(skv)[None, :] > np.arange(sq)[:, None], -np.inf, 0.0).astype(dtype)


def _attention_ref(q, k, v, mask=None, *, scale, causal, nan_guard=False):
    s = np.matmul(q.astype(np.float64), np.swapaxes(k.astype(np.float64), -1, -2)) * scale
    if mask is not None:
        s = s + mask.astype(np.float64)
    if causal:
        s = s + causal_bias(q.shape[-2], k.shape[-2], np.float64)
    return softmax_times(s, v, nan_guard).astype(q.dtype)


def softmax_times(s: np.ndarray, v: np.ndarray, nan_guard: bool) -> np.ndarray:
    """softmax(s) @ v in float64 (the references' last step); with `nan_guard`, NaN probabilities count as 0."""
    with np.errstate(invalid="ignore"):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
    if nan_guard:
        p = np.where(np.isnan(p), 0.0, p)
    return np.matmul(p, v.astype(np.float64))


def _bcast_index(t, idx):
    """Index a broadcast operand with the full index (numpy rules: align right, size-1 dims read 0)."""
    idx = idx[len(idx) - len(t.shape):]
    return t(*[0 if isinstance(d, (int, tirx.IntImm)) and int(d) == 1 else i for d, i in zip(t.shape, idx)])


def _attention_lower(q, k, v, mask=None, *, scale, causal, nan_guard=False):
    """Stages: K^T (a contiguous panel per head), Q K^T, the row max of the scaled and masked scores, their
    exponentials, the row sums, exp @ V, and the division by the row sum (the softmax's, applied to Dv columns
    instead of Skv). Accumulates in the operands' dtype (fp16/bf16 kernels: see mixed_precision for fp32 sums)."""
    *batch, sq, d = (_size(x) for x in q.shape)
    skv, dv, nb = _size(k.shape[-2]), int(v.shape[-1]), len(batch)
    d = int(d)
    sq_pad, skv_pad = _padded(sq, SQ_ROUND), _padded(skv, SKV_ROUND, SKV_ROUND_RUNTIME)
    pad_q = not isinstance(sq, int) or sq_pad != sq
    pad_kv = not isinstance(skv, int) or skv_pad != skv
    row = (lambda i: tirx.min(i, sq - 1)) if pad_q else (lambda i: i)
    key = (lambda j: tirx.min(j, skv - 1)) if pad_kv else (lambda j: j)
    dt = q.dtype
    kt = te.compute((*batch, d, skv_pad), lambda *i: k(*i[:nb], key(i[nb + 1]), i[nb]), name=KT)
    rd = te.reduce_axis((0, d), name="rd")
    qk = te.compute((*batch, sq_pad, skv_pad),
                    lambda *i: te.sum(q(*i[:-2], row(i[-2]), rd) * kt(*i[:-2], rd, i[-1]), axis=rd), name=QK)
    lowest = tirx.min_value(dt)

    def score(*i):
        s = qk(*i) * tirx.const(scale, dt)
        if mask is not None:
            s = s + _bcast_index(mask, (*i[:-2], row(i[-2]), key(i[-1])))
        if causal:
            s = tirx.Select(i[-1] > i[-2], lowest, s)
        if pad_kv:
            s = tirx.Select(i[-1] >= skv, lowest, s)
        return s

    rm = te.reduce_axis((0, skv_pad), name="rm")
    row_max = te.compute((*batch, sq_pad), lambda *i: te.max(score(*i, rm), axis=rm), name=MAX)
    shifted = te.compute((*batch, sq_pad, skv_pad), lambda *i: score(*i) - row_max(*i[:-1]),
                         name="attention_shifted")
    if vecmath.enabled(dt):  # vecmath's exp vectorizes, within 1 ulp; te.exp is a scalar libm call per element
        ex = vecmath.compute(shifted, vecmath.exp, EXP)
    else:
        ex = te.compute((*batch, sq_pad, skv_pad), lambda *i: te.exp(shifted(*i)), name=EXP)
    rs = te.reduce_axis((0, skv_pad), name="rs")
    row_sum = te.compute((*batch, sq_pad), lambda *i: te.sum(ex(*i, rs), axis=rs), name=SUM)
    rj = te.reduce_axis((0, skv_pad), name="rj")
    pv = te.compute((*batch, sq_pad, dv),
                    lambda *i: te.sum(ex(*i[:-1], rj) * v(*i[:-2], key(rj), i[-1]), axis=rj), name=PV)
    def divided(*i):
        total = row_sum(*i[:-1])
        # the guard: a row with no finite maximum sums to 0 (every key -inf) or NaN (an inf or NaN score)
        return tirx.Select(total > tirx.const(0, dt), pv(*i) / total, tirx.const(0, dt)) if nan_guard \
            else pv(*i) / total

    if not pad_q:
        return te.compute((*batch, sq, dv), divided, name=OUT)
    padded = te.compute((*batch, sq_pad, dv), divided, name=OUT_PADDED)
    return te.compute((*batch, sq, dv), lambda *i: padded(*i), name=OUT)


def _attention_grad(e, n, dy):
    """Through the decomposition: P = softmax(S), S = scale * Q K^T + mask (+ causal bias), O = P V.
    dV = P^T dO, dS = P * (dP - rowsum(dP * P)) with dP = dO V^T, dQ = scale dS K, dK = scale dS^T Q, dmask = dS
    summed to the mask's shape."""
    from .registry import ops

    q, k, v = n.inputs[:3]
    mask = n.inputs[3] if len(n.inputs) == 4 else None
    scale = n.attrs["scale"]
    r = q.type.rank
    swap = tuple(range(r - 2)) + (r - 1, r - 2)

    def t(x):
        return e.op(ops.transpose, [x], perm=swap)

    s = e.scale(e.op(ops.matmul, [q, t(k)]), scale)
    if mask is not None:
        s = e.add(s, mask)
    if n.attrs["causal"]:
        s = e.add(s, e.const(causal_bias(q.type.shape[-2], k.type.shape[-2], q.type.dtype), q.type.dtype))
    p = e.op(ops.softmax, [s], axis=r - 1)
    dv = e.op(ops.matmul, [t(p), dy])
    dp = e.op(ops.matmul, [dy, t(v)])
    rows = e.op(ops.reduce_sum, [e.mul(dp, p)], axes=(r - 1,), keepdims=True)
    ds = e.mul(p, e.op(ops.sub, [dp, rows]))
    dq = e.scale(e.op(ops.matmul, [ds, k]), scale)
    dk = e.scale(e.op(ops.matmul, [t(ds), q]), scale)
    return [dq, dk, dv] + ([e.sum_to(ds, mask.type.shape)] if mask is not None else [])


attention = defop("attention", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_attention_infer, arity=(3, 4),
                  attrs={"scale": Attr("float"), "causal": Attr("bool", False), "nan_guard": Attr("bool", False)},
                  reference=_attention_ref, lower=_attention_lower, grad=_attention_grad, prologue=True,
                  per_sample=broadcast_per_sample,  # per (batch, head): q, k, v (and a mask) of the output's rank
                  doc="softmax(scale * q @ k^T + mask [causal]) @ v over the last two axes. Its kernel may read "
                      "q, k and v through transposes and reshapes (the heads split out of a projection).")
