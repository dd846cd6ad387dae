"""The LSTM recurrence over a whole sequence as one op, and its backward.

Unrolled, an LSTM of T steps is T x [recurrent product + gate activations + cell update]: 2-4 kernels a step, each
too small to pay for a kernel launch and a thread-pool round trip (64 steps: ~250 launches). `lstm_sequence` runs
the recurrence as one kernel with a serial time loop; inside a step one parallel loop over (batch rows, blocks of
hidden units) computes the four gates' recurrent products in registers and applies the cell update to them
directly, so that a step is one pass over the recurrent weight. The input projection of every step (x @ W^T + b)
is not part of it: it is one large dense before the op.

    lstm_sequence(x_proj, w_packed, h0, c0) {reverse, save_gates} -> (Y, C[, Z])
      x_proj (T, B, 4H): each step's input projection with both biases, gates in PyTorch's order i, f, g, o
      w_packed (H/U, H, 4, U): the recurrent weight R (4H, H), gate rows i, f, g, o, packed by `pack_lstm_weight`:
               w_packed[jb, k, g, u] = R[g*H + jb*U + u, k] (U = `lstm_unit_block(H)` hidden units per block)
      h0, c0 (B, H): the initial state
      Y, C (T, B, H): every step's hidden and cell state, in time order (reverse: the recurrence runs from T-1 down)
      Z (T, B, 4H), with save_gates: every step's gate pre-activations z_t (training keeps them for the backward)
      z_t = x_proj[t] + h_{t-1} @ R^T;  i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
      c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

The gradient (by BPTT) takes the gate pre-activations saved by the forward (the training graph sets save_gates;
without them it recomputes them with one large dense), then runs
`lstm_sequence_grad`, the reverse recurrence as one kernel (per step: the carried dh = dz_{t+1} @ R and the gates'
backward), and finishes with two large products: dR = dz^T @ h_prev and dh0 = dz_0 @ R.

The CUDA target does not use these kernels (a serial loop in one GPU kernel is the wrong shape):
`unroll_lstm` rewrites the op into the per-step ops before autodiff and compilation.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from tensorforge.runtime.errors import AutodiffError

from tensorforge.compiler.ir.types import FLOAT_DTYPES, TensorType

from . import vecmath
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

GATES = 4
UNIT_BLOCKS = (16, 8, 4, 2, 1)  # hidden units per block of the forward kernel: 4 gates x 16 fp32 = 4 AVX-512 rows
GRAD_BLOCKS = (64, 32, 16, 8, 4, 2, 1)  # hidden units per block of the backward kernel's dh product
ROW_BLOCKS = (4, 2, 1)  # batch rows per task: 4 rows x 4 gates x 16 units = 16 accumulator registers


def lstm_unit_block(hidden: int) -> int:
    return next(u for u in UNIT_BLOCKS if hidden % u == 0)


def pack_lstm_weight(op, r, hidden: int):
    """Emit R (4H, H), gates i, f, g, o, as `lstm_sequence`'s packed weight (H/U, H, 4, U) through reshape and
    transpose: folded at compile time for a constant weight, one cheap copy a step for a trained one. `op` is the
    builder's `op(opdef, inputs, **attrs)`."""
    from .registry import ops

    u = lstm_unit_block(hidden)
    w = op(ops.reshape, [r], shape=(GATES, hidden // u, u, hidden))
    return op(ops.transpose, [w], perm=(1, 3, 0, 2))


def unpack_lstm_weight(op, w_packed):
    """The inverse of `pack_lstm_weight`: (H/U, H, 4, U) -> R (4H, H)."""
    from .registry import ops

    nb, hidden, _, u = w_packed.type.shape
    w = op(ops.transpose, [w_packed], perm=(2, 0, 3, 1))
    return op(ops.reshape, [w], shape=(GATES * hidden, hidden))


def _lstm_infer(types, *, reverse, save_gates):
    x, w, h0, c0 = types
    if x.dtype not in FLOAT_DTYPES or not x.dtype == w.dtype == h0.dtype == c0.dtype:
        fail(f"inputs must share one float dtype, got {x}, {w}, {h0}, {c0}")
    if h0.rank != 2 or c0.shape != h0.shape:
        fail(f"h0 and c0 must both be (batch, hidden), got {h0} and {c0}")
    b, hidden = h0.shape
    u = lstm_unit_block(hidden)
    if x.rank != 3 or x.shape[1:] != (b, GATES * hidden):
        fail(f"x_proj must be (steps, {b}, {GATES * hidden}) for batch {b} and hidden {hidden}, got {x}")
    if w.shape != (hidden // u, hidden, GATES, u):
        fail(f"the packed recurrent weight must be {[hidden // u, hidden, GATES, u]} (pack_lstm_weight), got {w}")
    out = TensorType((x.shape[0], b, hidden), x.dtype)
    return [out, out, x] if save_gates else [out, out]


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _steps(n: int, reverse: bool):
    return range(n - 1, -1, -1) if reverse else range(n)


def lstm_cell_ref(z, c):
    """One step's gates applied (numpy): gate pre-activations z (B, 4H), c_{t-1} -> (h_t, c_t)."""
    i, f, g, o = np.split(z, GATES, axis=1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _lstm_ref(x, w, h0, c0, *, reverse, save_gates):
    steps, _, hidden = x.shape[0], *h0.shape
    r = np.ascontiguousarray(w.transpose(2, 0, 3, 1)).reshape(GATES * hidden, hidden)
    y, c_all = np.empty((steps,) + h0.shape, x.dtype), np.empty((steps,) + h0.shape, x.dtype)
    z_all = np.empty_like(x)
    h, c = h0, c0
    for t in _steps(steps, reverse):
        z = z_all[t] = x[t] + h @ r.T
        h, c = lstm_cell_ref(z, c)
        y[t], c_all[t] = h, c
    return [y, c_all, z_all] if save_gates else [y, c_all]


# -- the kernels: TIR written with the IR builder (a serial time loop around one parallel loop per step) -----------
def _tanh(x, dt):
    """float32: vecmath's tanh (within 1 ulp, vectorizes; tirx.tanh is a scalar libm call per element); other dtypes:
    exact."""
    return vecmath.tanh(x) if dt == "float32" else tirx.tanh(x)


def _sigm(x, dt):
    return vecmath.sigmoid(x) if dt == "float32" else tirx.sigmoid(x)


def _block(n: int, choices) -> int:
    return next(c for c in choices if n % c == 0)


def _time_loop(steps: int, reverse: bool, body):
    """body(t, prev) for the first step (prev None) and then a serial loop over the rest (prev: the step before)."""
    with T.serial(0, 1):  # one root statement for the builder
        body(steps - 1 if reverse else 0, None)
        if steps > 1:
            with T.serial(1, steps) as s:
                t = steps - 1 - s if reverse else s
                body(t, t + 1 if reverse else t - 1)


def gate_sums(X, t, b0: int, jb, rb: int, u: int, hidden: int, dt: str):
    """A task's gate sums (rows b0.. b0+rb, hidden units jb*u.. of every gate; on the stack), started from x_proj."""
    acc = T.buffer_proxy(T.alloc_buffer((rb, GATES, u), dt, scope="local"))
    with T.unroll(0, rb) as r:
        with T.unroll(0, GATES) as g:
            with T.vectorized(0, u) as v:
                acc[r, g, v] = X[t, b0 + r, g * hidden + jb * u + v]
    return acc


def cell_update(acc, C0, C, Y, t, prev, b0, jb, rb: int, u: int, dt: str) -> None:
    """The gates applied to the task's sums: c_t and h_t of its rows and units (c_{t-1} from C0 at the first step)."""
    with T.unroll(0, rb) as r:
        with T.vectorized(0, u) as v:
            j = jb * u + v
            c_prev = C0[b0 + r, j] if prev is None else C[prev, b0 + r, j]
            c = _sigm(acc[r, 1, v], dt) * c_prev + _sigm(acc[r, 0, v], dt) * _tanh(acc[r, 2, v], dt)
            C[t, b0 + r, j] = c
            # tanh of the stored cell, not of its expression: vecmath repeats its argument
            Y[t, b0 + r, j] = _sigm(acc[r, 3, v], dt) * _tanh(C[t, b0 + r, j], dt)


def _lstm_lower(x, w, h0, c0, *, reverse, save_gates):
    steps, b, hidden = int(x.shape[0]), int(h0.shape[0]), int(h0.shape[1])
    nb, u = int(w.shape[0]), int(w.shape[3])
    rb = _block(b, ROW_BLOCKS)
    dt = x.dtype

    def gen(xb, wb, h0b, c0b, yb, cb, zb=None):
        with IRBuilder() as ib:
            X, W, H0, C0, Y, C = (T.buffer_proxy(v) for v in (xb, wb, h0b, c0b, yb, cb))
            Z = T.buffer_proxy(zb) if zb is not None else None

            def step(t, prev):
                with T.parallel(0, nb * (b // rb)) as task:
                    jb, b0 = task % nb, task // nb * rb
                    acc = gate_sums(X, t, b0, jb, rb, u, hidden, dt)
                    with T.serial(0, hidden) as k:
                        with T.unroll(0, rb) as r:
                            hk = H0[b0 + r, k] if prev is None else Y[prev, b0 + r, k]
                            with T.unroll(0, GATES) as g:
                                with T.vectorized(0, u) as v:
                                    acc[r, g, v] = acc[r, g, v] + hk * W[jb, k, g, v]
                    if Z is not None:
                        with T.unroll(0, rb) as r:
                            with T.unroll(0, GATES) as g:
                                with T.vectorized(0, u) as v:
                                    Z[t, b0 + r, g * hidden + jb * u + v] = acc[r, g, v]
                    cell_update(acc, C0, C, Y, t, prev, b0, jb, rb, u, dt)

            _time_loop(steps, reverse, step)
        return ib.get()

    shapes = [(steps, b, hidden), (steps, b, hidden)] + ([(steps, b, GATES * hidden)] if save_gates else [])
    outs = te.extern(shapes, [x, w, h0, c0], lambda ins, outs: gen(*ins, *outs), name="lstm_sequence",
                     tag="lstm_sequence", dtype=[dt] * len(shapes))
    return tuple(outs)


def _shifted(e, seq, first, reverse: bool):
    """(T, B, H) values of the step before each step: `first` (B, H) at the first step, then seq[t -/+ 1]."""
    from .registry import ops

    steps, b, hidden = seq.type.shape
    head = e.op(ops.reshape, [first], shape=(1, b, hidden))
    if steps == 1:
        return head
    if reverse:
        rest = e.op(ops.strided_slice, [seq], begins=(1, 0, 0), ends=(steps, b, hidden), strides=(1, 1, 1))
        return e.op(ops.concat, [rest, head], axis=0)
    rest = e.op(ops.strided_slice, [seq], begins=(0, 0, 0), ends=(steps - 1, b, hidden), strides=(1, 1, 1))
    return e.op(ops.concat, [head, rest], axis=0)


def _lstm_grad(e, n, dys):
    from .registry import ops

    x, w, h0, c0 = n.inputs
    y, c = n.outputs[:2]
    reverse = n.attrs["reverse"]
    steps, b, hidden = y.type.shape
    dt = y.type.dtype
    if len(dys) > 2 and dys[2] is not None:
        raise AutodiffError(f"lstm_sequence {n.name!r}: its saved gate pre-activations are for the backward only; "
                      f"a loss must not depend on them")
    dy, dc = (d if d is not None else e.const(np.zeros(y.type.shape), dt) for d in dys[:2])
    r = unpack_lstm_weight(e.op, w)  # (4H, H)
    h_prev = _shifted(e, y, h0, reverse)
    c_prev = _shifted(e, c, c0, reverse)
    if n.attrs["save_gates"]:
        z = n.outputs[2]
    else:  # every step's gate pre-activations at once: x_proj + h_prev @ R^T
        hr = e.op(ops.dense, [e.op(ops.reshape, [h_prev], shape=(steps * b, hidden)), r])
        z = e.add(hr, e.op(ops.reshape, [x], shape=(steps * b, GATES * hidden)))  # 2-D: the dense's epilogue
        z = e.op(ops.reshape, [z], shape=(steps, b, GATES * hidden))
    dz, dc0 = e.op(lstm_sequence_grad, [z, c, c_prev, r, dy, dc], reverse=reverse)
    dz2 = e.op(ops.reshape, [dz], shape=(steps * b, GATES * hidden))
    # dR = dz^T h_prev, a reduction over every step and batch row: the weight-gradient kernel (blocked over the
    # rows, backend/cpu/training.py); as a matmul of a transposed operand it was 38 % of an LSTM training step
    dr = e.op(ops.weight_grad_gemm, [dz2, e.op(ops.reshape, [h_prev], shape=(steps * b, hidden))],
              shape=(GATES * hidden, hidden), transpose_rows=True)
    first = 0 if not reverse else steps - 1
    dz_first = e.op(ops.reshape, [e.op(ops.strided_slice, [dz], begins=(first, 0, 0), ends=(first + 1, b, GATES * hidden),
                                       strides=(1, 1, 1))], shape=(b, GATES * hidden))
    dh0 = e.op(ops.matmul, [dz_first, r])
    return [dz, pack_lstm_weight(e.op, dr, hidden), dh0, dc0]


lstm_sequence = defop("lstm_sequence", FusionKind.OPAQUE, infer=_lstm_infer, arity=(4, 4),
                      attrs={"reverse": Attr("bool", False), "save_gates": Attr("bool", False)},
                      reference=_lstm_ref, lower=_lstm_lower, grad=_lstm_grad,
                      doc="An LSTM recurrence over a whole sequence (gates i, f, g, o); outputs every step's hidden "
                          "and cell state. See compiler/ops/rnn.py.")


# -- backward ----------------------------------------------------------------------------------------------------------
def _lstm_grad_infer(types, *, reverse):
    z, c, c_prev, r, dy, dc = types
    steps, b, hidden = c.shape if c.rank == 3 else (0, 0, 0)
    state = TensorType((steps, b, hidden), z.dtype)
    if c.rank != 3 or z.shape != (steps, b, GATES * hidden) or r.shape != (GATES * hidden, hidden):
        fail(f"expected z (T, B, 4H), c (T, B, H), R (4H, H), got {z}, {c}, {r}")
    if any(t != state for t in (c, c_prev, dy, dc)):
        fail(f"c, c_prev, dy and dc must all be {state}, got {c}, {c_prev}, {dy}, {dc}")
    return [z, TensorType((b, hidden), z.dtype)]


def _lstm_grad_ref(z, c, c_prev, r, dy, dc, *, reverse):
    steps, b, hidden = c.shape
    dz = np.empty_like(z)
    dh_next, dc_next = np.zeros((b, hidden), z.dtype), np.zeros((b, hidden), z.dtype)
    order = list(_steps(steps, reverse))
    for s, t in enumerate(reversed(order)):
        zi, zf, zg, zo = np.split(z[t], GATES, axis=1)
        i, f, g, o = _sigmoid(zi), _sigmoid(zf), np.tanh(zg), _sigmoid(zo)
        tc = np.tanh(c[t])
        dh = dy[t] + dh_next
        dct = dc[t] + dc_next + dh * o * (1 - tc * tc)
        dz[t] = np.concatenate([dct * g * i * (1 - i), dct * c_prev[t] * f * (1 - f), dct * i * (1 - g * g),
                                dh * tc * o * (1 - o)], axis=1)
        dh_next, dc_next = dz[t] @ r, dct * f
    return [dz, dc_next]


def _lstm_grad_lower(z, c, c_prev, r, dy, dc, *, reverse):
    steps, b, hidden = (int(d) for d in c.shape)
    dt = z.dtype
    u = _block(hidden, GRAD_BLOCKS)
    rb = _block(b, ROW_BLOCKS)
    nb = hidden // u
    lanes = _block(u, (16, 8, 4, 2, 1))

    def gen(zb, cb, cpb, rb_, dyb, dcb, dzb, dc0b):
        with IRBuilder() as ib:
            Z, C, CP, R, DY, DC, DZ, DC0 = (T.buffer_proxy(v) for v in (zb, cb, cpb, rb_, dyb, dcb, dzb, dc0b))

            def step(t, later):  # later: the step processed before this one (None for the first)
                with T.parallel(0, nb * (b // rb)) as task:
                    kb, b0 = task % nb, task // nb * rb
                    dh = T.buffer_proxy(T.alloc_buffer((rb, u), dt, scope="local"))
                    with T.unroll(0, rb) as q:
                        with T.vectorized(0, u) as v:
                            dh[q, v] = DY[t, b0 + q, kb * u + v]
                    if later is not None:  # + dz_later @ R, the hidden state's gradient carried back a step
                        with T.serial(0, GATES * hidden) as j:
                            with T.unroll(0, rb) as q:
                                zj = DZ[later, b0 + q, j]
                                with T.vectorized(0, u) as v:
                                    dh[q, v] = dh[q, v] + zj * R[j, kb * u + v]
                    # the gates' activations first, into registers: each is read several times below, and an
                    # expression repeated there is a copy of vecmath's polynomials (the kernel took 4x to compile)
                    act = T.buffer_proxy(T.alloc_buffer((5, lanes), dt, scope="local"))
                    with T.unroll(0, rb) as q:
                        with T.serial(0, u // lanes) as vo:
                            with T.vectorized(0, lanes) as vi:
                                k, bq = kb * u + vo * lanes + vi, b0 + q
                                act[0, vi] = _sigm(Z[t, bq, k], dt)
                                act[1, vi] = _sigm(Z[t, bq, hidden + k], dt)
                                act[2, vi] = _tanh(Z[t, bq, 2 * hidden + k], dt)
                                act[3, vi] = _sigm(Z[t, bq, 3 * hidden + k], dt)
                                act[4, vi] = _tanh(C[t, bq, k], dt)
                            with T.vectorized(0, lanes) as vi:
                                v = vo * lanes + vi
                                k, bq = kb * u + v, b0 + q
                                i, f, g, o, tc = (act[a, vi] for a in range(5))
                                one = tirx.const(1, dt)
                                dct = DC[t, bq, k] + dh[q, v] * o * (one - tc * tc)
                                if later is not None:
                                    dct = dct + DC0[bq, k]  # the carried cell gradient (DC0 holds it until the end)
                                DZ[t, bq, k] = dct * g * i * (one - i)
                                DZ[t, bq, hidden + k] = dct * CP[t, bq, k] * f * (one - f)
                                DZ[t, bq, 2 * hidden + k] = dct * i * (one - g * g)
                                DZ[t, bq, 3 * hidden + k] = dh[q, v] * tc * o * (one - o)
                                DC0[bq, k] = dct * f

            # the backward runs the steps in the opposite order of the forward
            _time_loop(steps, not reverse, step)
        return ib.get()

    dz, dc0 = te.extern([(steps, b, GATES * hidden), (b, hidden)], [z, c, c_prev, r, dy, dc],
                        lambda ins, outs: gen(*ins, *outs), name="lstm_sequence_grad", tag="lstm_sequence_grad",
                        dtype=[dt, dt])
    return dz, dc0


lstm_sequence_grad = defop(
    "lstm_sequence_grad", FusionKind.OPAQUE, infer=_lstm_grad_infer, arity=(6, 6), attrs={"reverse": Attr("bool", False)},
    reference=_lstm_grad_ref, lower=_lstm_grad_lower, grad=NO_RULE_YET,
    doc="BPTT through lstm_sequence: (z, c, c_prev, R, dY, dC) -> (dz: the gate pre-activations' gradient, dc0).")


# -- the same recurrence as per-step ops (for the CUDA target) --------------------------------------------------------
def unrolled_lstm(op, x, w, h0, c0, *, reverse: bool):
    """Emit `lstm_sequence` as dense / slices / activations per step with the builder's `op(opdef, inputs, **attrs)`;
    returns (Y, C)."""
    from .registry import ops

    steps, b, g4 = x.type.shape
    hidden = g4 // GATES
    r = unpack_lstm_weight(op, w)
    h, c = h0, c0
    ys, cs = [None] * steps, [None] * steps

    def cut(v, axis, lo, hi):
        shape = v.type.shape
        begins, ends = [0] * len(shape), list(shape)
        begins[axis], ends[axis] = lo, hi
        return op(ops.strided_slice, [v], begins=tuple(begins), ends=tuple(ends), strides=(1,) * len(shape))

    for t in _steps(steps, reverse):
        z = op(ops.add, [op(ops.dense, [h, r]), op(ops.reshape, [cut(x, 0, t, t + 1)], shape=(b, g4))])
        i, f, g, o = (cut(z, 1, k * hidden, (k + 1) * hidden) for k in range(GATES))
        i, f, o = (op(ops.sigmoid, [v]) for v in (i, f, o))
        c = op(ops.add, [op(ops.mul, [f, c]), op(ops.mul, [i, op(ops.tanh, [g])])])
        h = op(ops.mul, [o, op(ops.tanh, [c])])
        ys[t] = op(ops.reshape, [h], shape=(1, b, hidden))
        cs[t] = op(ops.reshape, [c], shape=(1, b, hidden))
    if steps == 1:
        return ys[0], cs[0]
    return op(ops.concat, ys, axis=0), op(ops.concat, cs, axis=0)
