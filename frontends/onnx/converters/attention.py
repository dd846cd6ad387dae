"""Attention and the classification losses, composed of matmul, softmax, gathers and masks."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from tensorforge.compiler import ops  # noqa: F401
from tensorforge.frontends.onnx.dtypes import onnx_dtype

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401


# -- attention: composed of matmul, softmax and masks built at compile time where they can be ---------------------
def _neg_inf_where(b, allowed, dt):
    """An additive bias: 0 where `allowed`, -inf elsewhere."""
    return b.emit(ops.where, [allowed, np.asarray(0, dt), np.asarray(-np.inf, dt)])


def _add_bias(b, bias, x):
    return x if bias is None else b.emit(ops.add, [bias, x])


@converter(since=23)
def Attention(b, Q, K, V, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *, is_causal=0,
              kv_num_heads=None, q_num_heads=None, qk_matmul_output_mode=0, scale=None, softcap=0.0,
              softmax_precision=None, left_window_size=-1, right_window_size=-1):
    """onnx's reference (`op_attention.py`) step by step: Q, K scaled by sqrt(scale) each, softcap, an additive
    bias (mask, causal and window frontiers, key padding), softmax, rows with no attendable key zeroed."""
    rank = b.type(Q).rank
    # float16/bfloat16 compute in float32 (products, sums, softmax) and round once, at the outputs
    half = b.type(Q).dtype
    if half in ("float16", "bfloat16"):
        Q, K, V, attn_mask, past_key, past_value = (
            x if x is None or b.type(x).dtype != half else b.emit(ops.cast, [x], to="float32")
            for x in (Q, K, V, attn_mask, past_key, past_value))
    dt = b.type(Q).dtype
    if rank == 3:
        if q_num_heads is None or kv_num_heads is None:
            raise b.error("3-D inputs need the q_num_heads and kv_num_heads attributes")

        def heads(x, n):
            bs, s, hidden = b.type(x).shape
            return b.emit(ops.transpose, [_reshape(b, x, (bs, s, n, hidden // n))], perm=(0, 2, 1, 3))

        Q, K, V = heads(Q, q_num_heads), heads(K, kv_num_heads), heads(V, kv_num_heads)
    elif rank != 4:
        raise b.error(f"Q must be 3-D or 4-D, got {b.type(Q)}")
    batch, hq, sq, dh = b.type(Q).shape
    s = np.asarray(np.sqrt(1 / np.sqrt(dh) if scale is None else scale), dt)
    if past_key is not None:
        K = b.emit(ops.concat, [past_key, K], axis=2)
    if past_value is not None:
        V = b.emit(ops.concat, [past_value, V], axis=2)
    present_key, present_value = K, V
    skv = b.type(K).shape[2]

    # the additive bias, broadcastable to (batch, heads, q, kv)
    bias = None
    if attn_mask is not None:
        mask = attn_mask
        if b.type(mask).dtype == "bool":
            mask = _neg_inf_where(b, mask, dt)
        short = skv - b.type(mask).shape[-1]
        if short > 0:
            mr = b.type(mask).rank
            mask = b.emit(ops.pad, [mask], pads=(0,) * (2 * mr - 1) + (short,), value=-np.inf)
        bias = mask
    past = b.type(past_key).shape[2] if past_key is not None else 0
    rows, cols = np.arange(sq).reshape(sq, 1), np.arange(skv).reshape(1, skv)
    if nonpad_kv_seqlen is not None and past_key is None:  # per-batch frontier: offset[b] = nonpad[b] - q_len
        lens = _reshape(b, b.emit(ops.cast, [nonpad_kv_seqlen], to="int64"), (batch, 1, 1, 1))
        offset = b.emit(ops.sub, [lens, np.asarray(sq, np.int64)])
        diff = b.emit(ops.sub, [b.emit(ops.add, [rows, offset]), cols])  # (batch, 1, q, kv)
    else:
        diff = rows + past - cols
    if is_causal:
        bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.greater_equal, [diff, np.asarray(0, np.int64)]), dt))
    for size, sign in ((left_window_size, 1), (right_window_size, -1)):
        if size is not None and size >= 0:
            d = diff if sign == 1 else b.emit(ops.neg, [diff])
            bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.less_equal, [d, np.asarray(size, np.int64)]), dt))
    if nonpad_kv_seqlen is not None:
        lens = _reshape(b, b.emit(ops.cast, [nonpad_kv_seqlen], to="int64"), (batch, 1, 1, 1))
        bias = _add_bias(b, bias, _neg_inf_where(b, b.emit(ops.less, [cols, lens]), dt))

    # grouped-query attention: each K/V head serves hq / hkv query heads, interleaved [h0, h0, h1, h1, ...]
    hkv = b.type(K).shape[1]
    if hq != hkv:
        if hq % hkv:
            raise b.error(f"{hq} query heads do not divide into {hkv} key/value heads")

        def repeat(x):
            _, _, n, d = b.type(x).shape
            x = b.emit(ops.broadcast_to, [_reshape(b, x, (batch, hkv, 1, n, d))], shape=(batch, hkv, hq // hkv, n, d))
            return _reshape(b, x, (batch, hq, n, d))

        K, V = repeat(K), repeat(V)
    kt = b.emit(ops.transpose, [b.emit(ops.mul, [K, s])], perm=(0, 1, 3, 2))
    qk = b.emit(ops.matmul, [b.emit(ops.mul, [Q, s]), kt])
    if softcap is not None and softcap > 0:
        c = np.asarray(softcap, dt)
        qk = b.emit(ops.mul, [b.emit(ops.tanh, [b.emit(ops.div, [qk, c])]), c])
    scores = _add_bias(b, bias, qk)
    qk_out = scores if qk_matmul_output_mode == 2 else qk
    if softmax_precision is not None and onnx_dtype(softmax_precision) not in (dt, half):
        scores = b.emit(ops.cast, [scores], to=onnx_dtype(softmax_precision))
    probs = b.emit(ops.softmax, [scores], axis=b.type(scores).rank - 1)
    if bias is not None:  # rows whose bias is -inf everywhere have no attendable key: zero probabilities
        # (counted as "no key above -inf": a max over -inf compiles to the dtype's lowest finite value)
        live = b.emit(ops.cast, [b.emit(ops.greater, [bias, np.asarray(-np.inf, dt)])], to="int8")
        dead = b.emit(ops.equal, [b.emit(ops.reduce_max, [live], axes=(b.type(bias).rank - 1,), keepdims=True),
                                  np.asarray(0, np.int8)])
        if not (isinstance(dead, np.ndarray) and not dead.any()):
            probs = b.emit(ops.where, [dead, np.asarray(0, b.type(probs).dtype), probs])
    if b.type(probs).dtype != dt:
        probs = b.emit(ops.cast, [probs], to=dt)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    y = b.emit(ops.matmul, [probs, V])
    if rank == 3:
        y = b.emit(ops.transpose, [y], perm=(0, 2, 1, 3))
        y = _reshape(b, y, (batch, sq, hq * b.type(y).shape[-1]))
    if dt != half:
        y, present_key, present_value, qk_out = (b.emit(ops.cast, [x], to=half)
                                                 for x in (y, present_key, present_value, qk_out))
    return y, present_key, present_value, qk_out


# -- losses: log-probabilities picked at the targets with gather_elements, weighted, reduced -------------------------
def _nll(b, log_prob, target, weight, ignore_index, reduction):
    if reduction not in ("none", "sum", "mean"):
        raise b.error(f"unknown reduction {reduction!r}")
    xt, tt = b.type(log_prob), b.type(target)
    dt = xt.dtype
    t = target
    ignored = None
    if ignore_index is not None:  # ignored targets may be out of range: pick class 0 there, weighted 0
        ignored = b.emit(ops.equal, [t, np.asarray(ignore_index, tt.dtype)])
        t = b.emit(ops.where, [ignored, np.asarray(0, tt.dtype), t])
    picked = b.emit(ops.gather_elements, [log_prob, _reshape(b, t, tt.shape[:1] + (1,) + tt.shape[1:])], axis=1)
    loss = b.emit(ops.neg, [_reshape(b, picked, tt.shape)])
    w = b.emit(ops.take, [weight, t], axis=0) if weight is not None else None
    if ignored is not None:
        w = b.emit(ops.where, [ignored, np.asarray(0, dt), np.asarray(1, dt) if w is None else w])
    if w is not None:
        loss = b.emit(ops.mul, [loss, w])
    if reduction == "none":
        return loss
    every = tuple(range(len(tt.shape)))
    total = b.emit(ops.reduce_sum, [loss], axes=every, keepdims=False)
    if reduction == "sum":
        return total
    if w is None:
        return b.emit(ops.div, [total, np.asarray(prod(tt.shape), dt)])
    return b.emit(ops.div, [total, b.emit(ops.reduce_sum, [w], axes=every, keepdims=False)])


@converter(since=12)
def NegativeLogLikelihoodLoss(b, input, target, weight=None, *, ignore_index=None, reduction="mean"):
    return _nll(b, input, target, weight, ignore_index, reduction)


@converter(since=12)
def SoftmaxCrossEntropyLoss(b, scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    log_prob = b.emit(ops.log_softmax, [scores], axis=1)
    return _nll(b, log_prob, labels, weights, ignore_index, reduction), log_prob


@converter(since=23)
def RMSNormalization(b, X, scale, *, axis=-1, epsilon=1e-5, stash_type=1):
    xt = b.type(X)
    ax = _axis(b, axis, xt.rank)
    ms = b.emit(ops.reduce_mean, [b.emit(ops.mul, [X, X])], axes=tuple(range(ax, xt.rank)), keepdims=True)
    inv = b.emit(ops.reciprocal, [b.emit(ops.sqrt, [b.emit(ops.add, [ms, _c(b, X, epsilon)])])])
    return b.emit(ops.mul, [b.emit(ops.mul, [X, inv]), scale])


@converter()
def Swish(b, X, *, alpha=1.0):
    return b.emit(ops.mul, [X, b.emit(ops.sigmoid, [b.emit(ops.mul, [X, _c(b, X, alpha)])])])


@converter()
def SwiGLU(b, A, B, *, alpha=1.0):
    return b.emit(ops.mul, [Swish(b, A, alpha=alpha), B])
