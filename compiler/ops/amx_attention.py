"""Attention as one kernel on the CPU's matrix unit (Intel AMX): `attention_amx`, the CPU's bf16 mode's attention
(passes/cpu/amx.py `amx_attention` rewrites `attention` into it; backend/cpu/amx_attention.py schedules it).

    attention_amx(q, k, v[, mask]) {scale, causal} = softmax(scale * bf16(q) @ bf16(k)^T + mask [causal])
                                                      @ bf16(v), float32 sums and softmax

Both products run on AMX tiles with the operand layouts of ops/amx_matmul.py, inside one kernel, per [batch x head]
slab and block of 32 query rows: the scores of the block (32 x keys, float32) and their exponentials stay in L1,
not written out and read back by a separate softmax kernel (the split form, matmul_amx -> softmax -> matmul_amx,
went through memory three times per layer). Stages, by block name:

  attention_amx_q   q -> A tiles (bf16 bits), as dense_amx's x          (..., Sq_pad, D_pad / 32, 16, 2)
  attention_amx_k   k -> B tiles of k^T (uint32 pair words)             (..., Skv_pad / 16, D_pad / 32, 16, 16)
  attention_amx_v   v -> B tiles (the keys are v's k)                   (..., Dv_pad / 16, Skv_pad / 32, 16, 16)
  attention_amx_s   q k^T on the tiles                                  (..., Sq_pad, Skv_pad / 16, 16)
  attention_amx_max the row max of the scaled, masked scores
  attention_amx_exp exp(score - max) (float32)
  attention_amx_sum their row sum
  attention_amx_p   the exponentials -> A tiles (bf16 bits), unnormalized (in (0, 1])
  attention_amx_o   p v on the tiles                                    (..., Sq_pad, Dv_pad / 16, 16)
  attention_amx     o / sum                                             (..., Sq, Dv)
                    (where Sq or Dv is padded: attention_amx_norm over the padded rows and columns, then
                    attention_amx drops them)

Keys are padded to a multiple of 32 (scores of padded keys are the lowest float: exponential 0; padded values 0),
query rows to a multiple of 32 (re-reading the last row), D and Dv with zeros. The reference rounds q, k, v and the
unnormalized exponentials to bf16 as the kernel does.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from . import vecmath
from .amx import (K_BLOCK, M_TILE, N_BLOCK, PAIR, UNIT_ATTR, _round_up, a_tiles, bf16_bits, padded_k,
                  round_bf16)
from .amx_matmul import pair_words, tile_product
from .attention import _attention_infer, _bcast_index, causal_bias
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

Q, K, V, S, MAX, EXP, SUM, P, O, NORM, OUT = (
    "attention_amx_q", "attention_amx_k", "attention_amx_v", "attention_amx_s", "attention_amx_max",
    "attention_amx_exp", "attention_amx_sum", "attention_amx_p", "attention_amx_o", "attention_amx_norm",
    "attention_amx")
KEY_TILE = 32  # keys are padded to a multiple of this: 32-column score tiles, 32-key blocks of p @ v


def attention_amx_compute(q, k, v, mask=None, *, scale, causal, unit="amx"):
    *batch, sq, d = (int(x) for x in q.shape)
    skv, dv, nb = int(k.shape[-2]), int(v.shape[-1]), len(batch)
    m_pad, n_pad = _round_up(sq, M_TILE), max(_round_up(skv, KEY_TILE), 2 * K_BLOCK)
    dv_pad = _round_up(dv, 2 * N_BLOCK)
    qa = a_tiles(q, padded_k(d) // K_BLOCK, Q)
    kw = pair_words(k, nb, d, skv, padded_k(d), n_pad, True, K)  # k^T: rows d, columns the keys
    vw = pair_words(v, nb, skv, dv, n_pad, dv_pad, False, V)  # rows: the keys
    s = tile_product(qa, kw, nb, S, S)
    row = (lambda i: i) if m_pad == sq else (lambda i: tirx.min(i, sq - 1))
    key = (lambda j: j) if n_pad == skv else (lambda j: tirx.min(j, skv - 1))
    lowest = tirx.min_value("float32")

    def score(*i):
        m, n = i[-2], i[-1]
        x = s(*i[:-1], n // N_BLOCK, n % N_BLOCK) * tirx.const(scale, "float32")
        if mask is not None:
            x = x + _bcast_index(mask, (*i[:-2], row(m), key(n)))
        if causal:
            x = tirx.Select(n > m, lowest, x)
        if n_pad != skv:
            x = tirx.Select(n >= skv, lowest, x)
        return x

    rm = te.reduce_axis((0, n_pad), name="rm")
    row_max = te.compute((*batch, m_pad), lambda *i: te.max(score(*i, rm), axis=rm), name=MAX)
    shifted = te.compute((*batch, m_pad, n_pad), lambda *i: score(*i) - row_max(*i[:-1]), name="attention_amx_shifted")
    ex = vecmath.compute(shifted, vecmath.exp_fast, EXP)  # bf16's precision is enough: p is rounded to bf16
    rs = te.reduce_axis((0, n_pad), name="rs")
    row_sum = te.compute((*batch, m_pad), lambda *i: te.sum(ex(*i, rs), axis=rs), name=SUM)
    pa = te.compute((*batch, m_pad, n_pad // K_BLOCK, K_BLOCK // PAIR, PAIR),
                    lambda *i: bf16_bits(ex(*i[:nb], i[nb], i[nb + 1] * K_BLOCK + i[nb + 2] * PAIR + i[nb + 3])),
                    name=P, tag="injective")
    o = tile_product(pa, vw, nb, O, O)
    exact = m_pad == sq and dv_pad == dv
    norm = te.compute((*batch, m_pad, dv_pad), lambda *i: o(*i[:-1], i[-1] // N_BLOCK, i[-1] % N_BLOCK)
                      / row_sum(*i[:-1]), name=OUT if exact else NORM, tag="injective")
    if exact:
        return norm
    return te.compute((*batch, sq, dv), lambda *i: norm(*i), name=OUT, tag="injective")


def _infer(types, *, scale, causal, unit="amx"):
    if any(t.dtype != "float32" for t in types):
        fail(f"expects float32 operands, got {', '.join(str(t) for t in types)}")
    if types[0].rank < 3:
        fail(f"expects (..., seq, dim) operands of rank >= 3, got {types[0]}")
    return _attention_infer(types, scale=scale, causal=causal)


def _reference(q, k, v, mask=None, *, scale, causal, unit="amx"):
    s = np.matmul(round_bf16(q), np.swapaxes(round_bf16(k), -1, -2)) * np.float32(scale)
    if mask is not None:
        s = s + mask
    if causal:
        s = s + causal_bias(q.shape[-2], k.shape[-2], np.float32)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return (np.matmul(round_bf16(e), round_bf16(v)) / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _lower(q, k, v, mask=None, *, scale, causal, unit):
    return attention_amx_compute(q, k, v, mask, scale=scale, causal=causal, unit=unit)


attention_amx = defop(
    "attention_amx", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(3, 4), reference=_reference,
    lower=_lower, grad=NO_RULE_YET, prologue=True,
    attrs={"scale": Attr("float"), "causal": Attr("bool", False), "unit": UNIT_ATTR},
    flops=lambda n: 2 * n.outputs[0].type.numel // n.inputs[2].type.shape[-1] * n.inputs[1].type.shape[-2]
    * (n.inputs[0].type.shape[-1] + n.inputs[2].type.shape[-1]),
    doc="scaled dot-product attention in one kernel: both products in bfloat16 on AMX tiles with float32 sums, the "
        "softmax in float32 between them (the scores stay in L1).")
