"""Recurrent layers (LSTM, GRU, RNN), unrolled over the static sequence at import."""

from __future__ import annotations

from math import prod  # noqa: F401

import numpy as np  # noqa: F401
from onnx import helper  # noqa: F401

from tensorforge.compiler import ops  # noqa: F401
from tensorforge.compiler.ops.rnn import pack_lstm_weight

from .base import CONVERTERS, converter  # noqa: F401
from .base import _axis, _reshape, _spatial_pads, _require_2d, _as_2d, _c, _slice  # noqa: F401
from .elementwise import HardSigmoid  # noqa: F401


# -- recurrent layers: unrolled over the (static) sequence into dense / add / activations / slices ----------------
def _rnn_activation(b, name, alpha, beta):
    def act(x):
        dt = b.type(x).dtype
        if name == "Sigmoid":
            return b.emit(ops.sigmoid, [x])
        if name == "Tanh":
            return b.emit(ops.tanh, [x])
        if name == "Relu":
            return b.emit(ops.relu, [x])
        if name == "HardSigmoid":
            return HardSigmoid(b, x, alpha=0.2 if alpha is None else alpha, beta=0.5 if beta is None else beta)
        if name == "LeakyRelu":
            return b.emit(ops.leaky_relu, [x], alpha=0.01 if alpha is None else alpha)
        if name == "Affine":
            return b.emit(ops.add, [b.emit(ops.mul, [x, np.asarray(alpha, dt)]), np.asarray(beta or 0.0, dt)])
        if name == "ScaledTanh":
            t = b.emit(ops.tanh, [b.emit(ops.mul, [x, np.asarray(beta, dt)])])
            return b.emit(ops.mul, [t, np.asarray(alpha, dt)])
        raise b.error(f"activation {name!r} is not supported")

    return act


def _rnn(b, kind, X, W, R, B, sequence_lens, initial_h, initial_c, P, *, activations, activation_alpha,
         activation_beta, clip, direction, hidden_size, layout, linear_before_reset=0, input_forget=0):
    gates, defaults = {"RNN": (1, ["Tanh"]), "GRU": (3, ["Sigmoid", "Tanh"]),
                       "LSTM": (4, ["Sigmoid", "Tanh", "Tanh"])}[kind]
    if input_forget:
        raise b.error("input_forget=1 is not supported")
    ndir = 2 if direction == "bidirectional" else 1
    acts = list(activations) if activations else defaults * ndir
    if len(acts) == len(defaults):
        acts = acts * ndir
    alphas, betas = list(activation_alpha or []), list(activation_beta or [])
    fns = [_rnn_activation(b, a, alphas[i] if i < len(alphas) else None, betas[i] if i < len(betas) else None)
           for i, a in enumerate(acts)]
    if layout:
        X = b.emit(ops.transpose, [X], perm=(1, 0, 2))
        initial_h = None if initial_h is None else b.emit(ops.transpose, [initial_h], perm=(1, 0, 2))
        initial_c = None if initial_c is None else b.emit(ops.transpose, [initial_c], perm=(1, 0, 2))
    seq, batch, _ = b.type(X).shape
    H = hidden_size if hidden_size is not None else b.type(R).shape[-1]
    dt = b.type(X).dtype
    lens = None if sequence_lens is None else [int(v) for v in b.const(sequence_lens, "sequence_lens")]
    if lens is not None and all(v == seq for v in lens):
        lens = None

    def pick(t, d, rows=None):  # direction d of a (dirs, ...) tensor, optionally rows [a, b) of axis 1
        t = _slice(b, t, [d], [d + 1], [0], None)
        shape = b.type(t).shape[1:]
        t = _reshape(b, t, shape)
        return t if rows is None else _slice(b, t, [rows[0]], [rows[1]], [0], None)

    def clipped(x):
        return x if clip is None else b.emit(ops.clip, [x], min=-clip, max=clip)

    ys, hs, cs = [], [], []
    for d in range(ndir):
        reverse = direction == "reverse" or d == 1
        f = fns[d * len(defaults):(d + 1) * len(defaults)]
        if (kind == "LSTM" and acts[d * 3:(d + 1) * 3] == defaults and not alphas and not betas and clip is None
                and P is None and lens is None):
            y, h, c = _lstm_sequence(b, X, pick(W, d), pick(R, d), None if B is None else pick(B, d),
                                     None if initial_h is None else pick(initial_h, d),
                                     None if initial_c is None else pick(initial_c, d), H, reverse)
            ys.append(y)
            hs.append(h)
            cs.append(c)
            continue
        # Weights stay (gates*H, in) / (gates*H, H), the layout of a dense layer, so they are packed for the
        # register-tiled GEMV/GEMM kernels (pack_weights) whether they are initializers or trained inputs.
        # LSTM and RNN read every gate's recurrent product from one (batch, gates*H) dense per step, so each step is
        # two kernels: [x_t slice + h @ R^T + add] and [gate slices + activations + cell update]. GRU's candidate
        # gate multiplies h by r before its product (unless linear_before_reset), so it keeps one dense per gate.
        fused_gates = kind != "GRU" or bool(linear_before_reset)
        R_all = pick(R, d) if fused_gates else None  # (gates*H, H)
        Rg = [pick(R, d, (g * H, (g + 1) * H)) for g in range(gates)]
        in_size = b.type(X).shape[-1]
        xw = b.emit(ops.dense, [_reshape(b, X, (seq * batch, in_size)), pick(W, d)])
        xw = _reshape(b, xw, (seq, batch, gates * H))  # every step's input projection at once
        if B is not None:
            bd = pick(B, d)
            wb = _slice(b, bd, [0], [gates * H], [0], None)
            rb = [_slice(b, bd, [(gates + g) * H], [(gates + g + 1) * H], [0], None) for g in range(gates)]
            if kind == "GRU" and linear_before_reset:
                xw = b.emit(ops.add, [xw, wb])
            else:
                xw = b.emit(ops.add, [xw, b.emit(ops.add, [wb, b.emit(ops.concat, rb, axis=0)])])
        else:
            rb = None
        h = pick(initial_h, d) if initial_h is not None else np.zeros((batch, H), dt)
        c = pick(initial_c, d) if initial_c is not None else np.zeros((batch, H), dt)
        peep = [pick(P, d, (g * H, (g + 1) * H)) for g in range(3)] if P is not None else None
        outs = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            # the recurrent product is emitted before the x_t slice, so that the fuser reaches the dense first and
            # takes the add (with the slice read inline) as its epilogue: one kernel, not dense + slice/add
            hr_all = b.emit(ops.dense, [h, R_all]) if fused_gates else None
            xt = _reshape(b, _slice(b, xw, [t], [t + 1], [0], None), (batch, gates * H))
            if fused_gates and kind != "GRU":
                pre_all = b.emit(ops.add, [hr_all, xt])  # (batch, gates*H)
                pre = [_slice(b, pre_all, [g * H], [(g + 1) * H], [1], None) for g in range(gates)]
            else:
                xg = [_slice(b, xt, [g * H], [(g + 1) * H], [1], None) for g in range(gates)]
                if fused_gates:  # GRU with linear_before_reset: all three recurrent products from h
                    hr = [_slice(b, hr_all, [g * H], [(g + 1) * H], [1], None) for g in range(gates)]
                else:
                    hr = [b.emit(ops.dense, [h, Rg[g]]) for g in range(gates)]
            if kind == "RNN":
                h_new = f[0](clipped(pre[0]))
                c_new = c
            elif kind == "GRU":  # gates z, r, h
                z = f[0](clipped(b.emit(ops.add, [xg[0], hr[0]])))
                r = f[0](clipped(b.emit(ops.add, [xg[1], hr[1]])))
                if linear_before_reset:
                    rec = hr[2] if rb is None else b.emit(ops.add, [hr[2], rb[2]])
                    if rb is not None:  # only Wb went into xw: add Rbz, Rbr here
                        z = f[0](clipped(b.emit(ops.add, [b.emit(ops.add, [xg[0], hr[0]]), rb[0]])))
                        r = f[0](clipped(b.emit(ops.add, [b.emit(ops.add, [xg[1], hr[1]]), rb[1]])))
                    hh = f[1](clipped(b.emit(ops.add, [xg[2], b.emit(ops.mul, [r, rec])])))
                else:
                    hh = f[1](clipped(b.emit(ops.add, [xg[2], b.emit(ops.dense, [b.emit(ops.mul, [r, h]), Rg[2]])])))
                # h' = (1 - z) * hh + z * h = hh + z * (h - hh)
                h_new = b.emit(ops.add, [hh, b.emit(ops.mul, [z, b.emit(ops.sub, [h, hh])])])
                c_new = c
            else:  # LSTM gates i, o, f, c
                if peep is not None:
                    pre[0] = b.emit(ops.add, [pre[0], b.emit(ops.mul, [c, peep[0]])])
                    pre[2] = b.emit(ops.add, [pre[2], b.emit(ops.mul, [c, peep[2]])])
                i_g, f_g = f[0](clipped(pre[0])), f[0](clipped(pre[2]))
                c_new = b.emit(ops.add, [b.emit(ops.mul, [f_g, c]), b.emit(ops.mul, [i_g, f[1](clipped(pre[3]))])])
                if peep is not None:
                    pre[1] = b.emit(ops.add, [pre[1], b.emit(ops.mul, [c_new, peep[1]])])
                o_g = f[0](clipped(pre[1]))
                h_new = b.emit(ops.mul, [o_g, f[2](c_new)])
            if lens is not None:  # steps past a sequence's length keep its state and output zeros
                live = np.array([[t < n] for n in lens])
                h_new = b.emit(ops.where, [live, h_new, h])
                c_new = b.emit(ops.where, [live, c_new, c])
                outs[t] = b.emit(ops.where, [live, h_new, np.zeros((), dt)])
            else:
                outs[t] = h_new
            h, c = h_new, c_new
        ys.append(b.emit(ops.concat, [_reshape(b, o, (1, 1, batch, H)) for o in outs], axis=0))
        hs.append(_reshape(b, h, (1, batch, H)))
        cs.append(_reshape(b, c, (1, batch, H)))
    Y = b.emit(ops.concat, ys, axis=1) if ndir > 1 else ys[0]  # (seq, dirs, batch, H)
    Yh = b.emit(ops.concat, hs, axis=0) if ndir > 1 else hs[0]
    Yc = b.emit(ops.concat, cs, axis=0) if ndir > 1 else cs[0]
    if layout:
        Y = b.emit(ops.transpose, [Y], perm=(2, 0, 1, 3))
        Yh = b.emit(ops.transpose, [Yh], perm=(1, 0, 2))
        Yc = b.emit(ops.transpose, [Yc], perm=(1, 0, 2))
    return (Y, Yh, Yc) if kind == "LSTM" else (Y, Yh)


def _lstm_sequence(b, X, W, R, B, h0, c0, H, reverse):
    """One direction of an LSTM with the default activations and no clip, peepholes or sequence lengths, as one
    `lstm_sequence` op (the recurrence in one kernel, compiler/ops/rnn.py) after one dense for every step's input
    projection. ONNX's gate order i, o, f, c becomes the op's i, f, g, o. Returns Y (seq, 1, batch, H), Y_h and
    Y_c (1, batch, H)."""
    seq, batch, in_size = b.type(X).shape
    dt = b.type(X).dtype

    def ifgo(t, offset=0):  # ONNX blocks i, o, f, c along axis 0 (from `offset`) -> i, f, c, o
        return b.emit(ops.concat, [_slice(b, t, [offset + k * H], [offset + (k + 1) * H], [0], None)
                                   for k in (0, 2, 3, 1)], axis=0)

    bias = None if B is None else b.emit(ops.add, [ifgo(B), ifgo(B, 4 * H)])
    x2 = _reshape(b, X, (seq * batch, in_size))
    xw = b.emit(ops.dense, [x2, ifgo(W)] + ([bias] if bias is not None else []))
    xw = _reshape(b, xw, (seq, batch, 4 * H))
    zeros = np.zeros((batch, H), dt)
    y, c = b.emit(ops.lstm_sequence, [xw, pack_lstm_weight(b.emit, ifgo(R), H), zeros if h0 is None else h0,
                                      zeros if c0 is None else c0], reverse=reverse)
    last = 0 if reverse else seq - 1
    y_h = _slice(b, y, [last], [last + 1], [0], None)
    y_c = _slice(b, c, [last], [last + 1], [0], None)
    return _reshape(b, y, (seq, 1, batch, H)), y_h, y_c


@converter()
def RNN(b, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0):
    return _rnn(b, "RNN", X, W, R, B, sequence_lens, initial_h, None, None, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout)


@converter()
def GRU(b, X, W, R, B=None, sequence_lens=None, initial_h=None, *, activation_alpha=None, activation_beta=None,
        activations=None, clip=None, direction="forward", hidden_size=None, layout=0, linear_before_reset=0):
    return _rnn(b, "GRU", X, W, R, B, sequence_lens, initial_h, None, None, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout, linear_before_reset=linear_before_reset)


@converter()
def LSTM(b, X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, activation_alpha=None,
         activation_beta=None, activations=None, clip=None, direction="forward", hidden_size=None, input_forget=0,
         layout=0):
    return _rnn(b, "LSTM", X, W, R, B, sequence_lens, initial_h, initial_c, P, activations=activations,
                activation_alpha=activation_alpha, activation_beta=activation_beta, clip=clip, direction=direction,
                hidden_size=hidden_size, layout=layout, input_forget=input_forget)
