"""The LSTM recurrence with its recurrent product in bf16 dot products (AVX512-BF16 `vdpbf16ps`): `lstm_sequence_dp`,
the CPU's bf16 mode's `lstm_sequence` for inference (passes/cpu/amx.py `lstm_bf16` rewrites it).

    lstm_sequence_dp(x_proj, w_pairs, h0, c0) {reverse} -> (Y, C)
      as lstm_sequence (compiler/ops/rnn.py), with z_t = x_proj[t] + bf16(h_{t-1}) @ bf16(R)^T, float32 sums;
      w_pairs (H/U, H/2, 4, U) uint32: the packed recurrent weight's k pairs, w_pairs[jb, p, g, u] holding the bf16
      bits of w_packed[jb, 2p, g, u] (low half) and w_packed[jb, 2p + 1, g, u] (high half) (`pair_lstm_weight`).

A step is one pass over the recurrent weight, which is L2-resident, not L1: in float32 (1 MB for H = 256) the step is
bound by L2's bandwidth (one FMA per 64 bytes); as bf16 pairs the same dot products read half the bytes, and one
`vdpbf16ps` does 32 multiply-adds. Each task (a block of U hidden units, every gate) writes its part of h_t as bf16
pairs (a double-buffered scratch) for the next step's products; the cell state and the gates stay float32. The
reference rounds h and R to bf16 as the kernel does.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from tensorforge.compiler.ir.types import TensorType

from .amx import DPBF16PS_LL, PAIR, bf16_bits, round_bf16
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail
from .rnn import GATES, ROW_BLOCKS, _block, _time_loop, cell_update, gate_sums, lstm_cell_ref, lstm_unit_block

DP_FUNCTION = "tf_dpbf16ps"  # ops/amx.py DPBF16PS_LL, imported into the kernel's LLVM module


def pair_lstm_weight(w_packed: np.ndarray) -> np.ndarray:
    """lstm_sequence's packed recurrent weight (H/U, H, 4, U) float32 -> (H/U, H/2, 4, U) uint32 bf16 pair words."""
    import ml_dtypes

    bits = np.asarray(w_packed, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16).astype(np.uint32)
    return np.ascontiguousarray(bits[:, 0::2] | (bits[:, 1::2] << 16))


def unpair_lstm_weight(w_pairs: np.ndarray) -> np.ndarray:
    """The inverse of `pair_lstm_weight` (the weight rounded to bf16), float32 (H/U, H, 4, U)."""
    lo = (w_pairs & 0xFFFF).astype(np.uint32) << 16
    hi = w_pairs & 0xFFFF0000
    nb, half, g, u = w_pairs.shape
    out = np.empty((nb, 2 * half, g, u), np.uint32)
    out[:, 0::2], out[:, 1::2] = lo, hi
    return out.view(np.float32)


def _infer(types, *, reverse):
    x, w, h0, c0 = types
    if x.dtype != "float32" or not x.dtype == h0.dtype == c0.dtype or w.dtype != "uint32":
        fail(f"expects float32 x_proj, h0, c0 and a uint32 paired weight, got {x}, {w}, {h0}, {c0}")
    if h0.rank != 2 or c0.shape != h0.shape:
        fail(f"h0 and c0 must both be (batch, hidden), got {h0} and {c0}")
    b, hidden = h0.shape
    u = lstm_unit_block(hidden)
    if hidden % PAIR or x.rank != 3 or x.shape[1:] != (b, GATES * hidden):
        fail(f"x_proj must be (steps, {b}, {GATES * hidden}) for batch {b} and an even hidden {hidden}, got {x}")
    if w.shape != (hidden // u, hidden // PAIR, GATES, u):
        fail(f"the paired recurrent weight must be {[hidden // u, hidden // PAIR, GATES, u]} (pair_lstm_weight), "
             f"got {w}")
    out = TensorType((x.shape[0], b, hidden), x.dtype)
    return [out, out]


def _reference(x, w, h0, c0, *, reverse):
    """lstm_sequence's reference with the products on bf16-rounded h and R."""
    steps, _, hidden = x.shape[0], *h0.shape
    r = np.ascontiguousarray(unpair_lstm_weight(w).transpose(2, 0, 3, 1)).reshape(GATES * hidden, hidden)
    y, c_all = np.empty((steps,) + h0.shape, np.float32), np.empty((steps,) + h0.shape, np.float32)
    h, c = h0, c0
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        h, c = lstm_cell_ref(x[t] + round_bf16(h) @ r.T, c)
        y[t], c_all[t] = h, c
    return [y, c_all]


def _lower(x, w, h0, c0, *, reverse):
    steps, b, hidden = int(x.shape[0]), int(h0.shape[0]), int(h0.shape[1])
    nb, half, u = int(w.shape[0]), int(w.shape[1]), int(w.shape[3])
    rb = _block(b, ROW_BLOCKS)
    dt = "float32"
    pairs_per_block = u // PAIR

    def gen(xb, wb, h0b, c0b, yb, cb):
        with IRBuilder() as ib:
            X, W, H0, C0, Y, C = (T.buffer_proxy(v) for v in (xb, wb, h0b, c0b, yb, cb))
            with T.attr(tirx.const(0, "int32"), "pragma_import_llvm", DPBF16PS_LL):
                hp = T.buffer_proxy(T.alloc_buffer((2, b, half), "uint32"))  # h as bf16 pairs, by step parity
                with T.serial(0, b) as r:
                    with T.serial(0, half) as p:
                        hp[0, r, p] = _pair(H0[r, 2 * p], H0[r, 2 * p + 1])

                def step(t, prev):
                    # h_{t-1}'s pairs in slot s % 2 (h0's in slot 0), h_t's written to the other, s the step's
                    # place in the recurrence
                    s = steps - 1 - t if reverse else t
                    read, write = s % 2, (s + 1) % 2
                    with T.parallel(0, nb * (b // rb)) as task:
                        jb, b0 = task % nb, task // nb * rb
                        acc = gate_sums(X, t, b0, jb, rb, u, hidden, dt)
                        lanes = tirx.Ramp(0, 1, u)
                        with T.serial(0, half) as p:
                            with T.unroll(0, rb) as r:
                                hk = tirx.Broadcast(tirx.reinterpret("int32", hp[read, b0 + r, p]), u)
                                with T.unroll(0, GATES) as g:
                                    T.buffer_store(acc._buffer, tirx.call_extern(
                                        f"float32x{u}", DP_FUNCTION, tirx.BufferLoad(acc._buffer, [r, g, lanes]), hk,
                                        tirx.reinterpret(f"int32x{u}", tirx.BufferLoad(W._buffer, [jb, p, g, lanes]))),
                                        [r, g, lanes])
                        cell_update(acc, C0, C, Y, t, prev, b0, jb, rb, u, dt)
                        with T.unroll(0, rb) as r:  # h_t's pairs for the next step
                            with T.serial(0, pairs_per_block) as q:
                                k = jb * u + 2 * q
                                hp[write, b0 + r, jb * pairs_per_block + q] = _pair(Y[t, b0 + r, k],
                                                                                      Y[t, b0 + r, k + 1])

                _time_loop(steps, reverse, step)
        return ib.get()

    shapes = [(steps, b, hidden), (steps, b, hidden)]
    outs = te.extern(shapes, [x, w, h0, c0], lambda ins, outs: gen(*ins, *outs), name="lstm_sequence_dp",
                     tag="lstm_sequence_dp", dtype=[dt, dt])
    return tuple(outs)


def _pair(lo, hi):
    """Two float32 values -> one uint32 word of their bf16 bits, `lo` in the low half."""
    return bf16_bits(lo).astype("uint32") | (bf16_bits(hi).astype("uint32") << tirx.const(16, "uint32"))


lstm_sequence_dp = defop(
    "lstm_sequence_dp", FusionKind.OPAQUE, infer=_infer, arity=(4, 4), attrs={"reverse": Attr("bool", False)},
    reference=_reference, lower=_lower, grad=NO_RULE_YET,
    doc="lstm_sequence (inference) with the recurrent product in bf16 dot products (AVX512-BF16), float32 gates and "
        "cell state. See compiler/ops/rnn_bf16.py.")
