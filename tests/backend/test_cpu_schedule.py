"""Every CPU compute + schedule against numpy on small shapes (compiled for the host CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, topi

from benchmarks.kernels_cpu import MATMULS
from tensorforge.compiler.backend.cpu.rules import schedule_cpu
from tensorforge.compiler.ops import packed as K

TARGET = tvm.target.Target.from_device(tvm.cpu())
RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


def _run(inputs: list[te.Tensor], outputs: list[te.Tensor], arrays: list[np.ndarray], *, expect_in_ir=()):
    """Schedule + compile one kernel, run it on `arrays`, return the outputs as numpy arrays."""
    func = schedule_cpu(te.create_prim_func([*inputs, *outputs]), TARGET)
    script = func.script()
    for text in expect_in_ir:
        assert text in script, f"{text!r} not in scheduled IR:\n{script}"
    if sum(np.prod([int(d) for d in o.shape]) for o in outputs) >= 4096:
        assert "T.parallel" in script, script
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu()) for a in arrays]
    outs = [tvm.runtime.empty([int(d) for d in o.shape], "float32", tvm.cpu()) for o in outputs]
    ex["main"](*args, *outs)
    return [o.numpy() for o in outs]


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ conv2d

def conv2d_ref(x, w, b, strides, pads, dilations, groups):
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oc, icg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    ocg = oc // groups
    outs = [np.einsum("nchwyx,ocyx->nohw", win[:, g * icg:(g + 1) * icg], w[g * ocg:(g + 1) * ocg])
            for g in range(groups)]
    out = np.concatenate(outs, axis=1)
    return out if b is None else out + b[None, :, None, None]


def _conv_tensors(c, h, w, oc, k, strides, pads, dilations, groups, bias=True):
    kh, kw = k
    layout = K.conv2d_weight_layout(oc, c // groups, groups, kh, kw)
    wt = _rand(oc, c // groups, kh, kw)
    wp = K.pack_conv2d_weight(wt, layout)
    assert wp.flags.c_contiguous
    x = te.placeholder((1, c, h, w), name="x")
    wpl = te.placeholder(wp.shape, name="w")
    b = te.placeholder((oc,), name="b") if bias else None
    y = K.conv2d_nchw_compute(x, wpl, b, layout=layout, out_channels=oc, kernel=k, strides=strides, pads=pads,
                              dilations=dilations, groups=groups)
    xa, ba = _rand(1, c, h, w), _rand(oc)
    ref = conv2d_ref(xa, wt, ba if bias else None, strides, pads, dilations, groups)
    inputs = [x, wpl] + ([b] if bias else [])
    arrays = [xa, wp] + ([ba] if bias else [])
    return layout, inputs, arrays, y, ref


LOCAL = 'scope="local"'  # the anchor rule succeeded: its accumulator tile lives in registers
ANCHOR_IR = {"packed": "conv2d_nchw_packed_local", "depthwise": "conv2d_depthwise", "plain": "conv2d_nchw_plain"}

# (C, H, W, OC, kernel, strides, pads (top, left, bottom, right), dilations, groups, bias, expected layout kind)
CONV_CASES = {
    "3x3_pad1": (8, 10, 10, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True, "packed"),
    "1x1": (16, 9, 9, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, "packed"),
    "1x1_stride2": (16, 9, 9, 32, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, True, "packed"),
    "7x7_s2_stem": (3, 23, 23, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, True, "packed"),
    "11x11_s4_oc_padded": (3, 35, 35, 24, (11, 11), (4, 4), (2, 2, 2, 2), (1, 1), 1, True, "packed"),
    "5x5_asym_pads": (4, 9, 11, 8, (5, 5), (1, 1), (0, 1, 2, 1), (1, 1), 1, True, "packed"),
    "3x1_dilated": (4, 12, 12, 16, (3, 1), (1, 1), (2, 0, 2, 0), (2, 1), 1, True, "packed"),
    "wide_prime_ow": (4, 3, 37, 16, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, "packed"),
    "ow_1": (8, 3, 3, 16, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, True, "packed"),
    "no_bias": (8, 6, 6, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False, "packed"),
    "depthwise_3x3": (12, 9, 9, 12, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 12, True, "depthwise"),
    "depthwise_s2_mult2": (6, 11, 11, 12, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 6, True, "depthwise"),
    "depthwise_wide_row": (4, 4, 150, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, False, "depthwise"),
    "depthwise_big_plane_rows": (2, 130, 131, 2, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True, "depthwise"),
    "grouped_g3_block16": (12, 7, 7, 48, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 3, True, "packed"),
    "grouped_g4_block8": (8, 7, 7, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4, True, "packed"),
    "grouped_g4_ocg28_block4": (8, 5, 6, 112, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4, True, "packed"),
    "grouped_g4_ocg34_plain": (8, 5, 6, 136, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 4, True, "plain"),
    "grouped_g2_plain": (8, 7, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True, "plain"),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case):
    c, h, w, oc, k, strides, pads, dil, groups, bias, kind = CONV_CASES[case]
    layout, inputs, arrays, y, ref = _conv_tensors(c, h, w, oc, k, strides, pads, dil, groups, bias)
    assert layout["kind"] == kind
    (got,) = _run(inputs, [y], arrays, expect_in_ir=[ANCHOR_IR[kind], LOCAL, "T.vectorized"])
    _close(got, ref)


EPILOGUES = {
    "relu": lambda y, extra: topi.nn.relu(y),
    "residual_add_relu": lambda y, extra: topi.nn.relu(topi.add(y, extra)),
    "bn_clip": lambda y, extra: topi.clip(topi.add(topi.multiply(y, 0.5), 0.25), 0.0, 6.0)  # te.const(0.5) here gives 0!,
}
EPILOGUE_REFS = {
    "relu": lambda r, e: np.maximum(r, 0),
    "residual_add_relu": lambda r, e: np.maximum(r + e, 0),
    "bn_clip": lambda r, e: np.clip(r * 0.5 + 0.25, 0, 6),
}


@pytest.mark.parametrize("epilogue", EPILOGUES)
@pytest.mark.parametrize("case", ["3x3_pad1", "depthwise_3x3", "grouped_g2_plain", "wide_prime_ow"])
def test_conv2d_fused_epilogue(case, epilogue):
    c, h, w, oc, k, strides, pads, dil, groups, bias, kind = CONV_CASES[case]
    layout, inputs, arrays, y, ref = _conv_tensors(c, h, w, oc, k, strides, pads, dil, groups, bias)
    extra = te.placeholder(y.shape, name="residual")
    extra_a = _rand(*[int(d) for d in y.shape])
    out = EPILOGUES[epilogue](y, extra)
    uses_extra = epilogue == "residual_add_relu"
    (got,) = _run(inputs + ([extra] if uses_extra else []), [out], arrays + ([extra_a] if uses_extra else []),
                  expect_in_ir=[ANCHOR_IR[kind], LOCAL])
    _close(got, EPILOGUE_REFS[epilogue](ref, extra_a))


def test_conv2d_two_outputs_falls_back_correctly():
    """Conv output and its relu both leave the kernel: the anchor rule cannot fuse, a fallback must still work."""
    layout, inputs, arrays, y, ref = _conv_tensors(8, 6, 6, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    r = topi.nn.relu(y)
    got_y, got_r = _run(inputs, [y, r], arrays)
    _close(got_y, ref)
    _close(got_r, np.maximum(ref, 0))


def test_pack_conv2d_weight_layout():
    w = _rand(20, 3, 2, 2)
    wp = K.pack_conv2d_weight(w, {"kind": "packed", "oc_block": 16})
    assert wp.shape == (2, 3, 2, 2, 16)
    np.testing.assert_array_equal(wp[1, 2, 1, 0, 3], w[19, 2, 1, 0])
    np.testing.assert_array_equal(wp[1, :, :, :, 4:], 0)


# ------------------------------------------------------------------------------------------ dense

@pytest.mark.parametrize("m,k,n,bias", [(1, 37, 10, True), (8, 64, 200, True), (3, 16, 130, False), (1, 256, 128, True),
                                        (13, 32, 64, True), (197, 24, 80, False), (6, 16, 128, True),
                                        (64, 512, 128, True), (13, 384, 64, False)])  # the last two: blocked over k
def test_dense(m, k, n, bias):
    layout = K.dense_weight_layout(n, k)
    w = _rand(n, k)
    wp = K.pack_dense_weight(w, layout)
    x = te.placeholder((m, k), name="x")
    wpl = te.placeholder(wp.shape, name="w")
    b = te.placeholder((n,), name="b") if bias else None
    y = topi.nn.relu(K.dense_compute(x, wpl, b, layout=layout, n=n))
    xa, ba = _rand(m, k), _rand(n)
    ref = xa @ w.T + (ba if bias else 0)
    inputs, arrays = [x, wpl] + ([b] if bias else []), [xa, wp] + ([ba] if bias else [])
    (got,) = _run(inputs, [y], arrays, expect_in_ir=["dense_packed_local", "T.vectorized"])
    _close(got, np.maximum(ref, 0))


@pytest.mark.parametrize("m, rows", [(1, 1), (3, 3), (4, 4), (6, 6), (13, 16), (50, 50), (51, 51), (197, 200),
                                     (200, 200), (202, 204)])
def test_dense_rows_are_padded_to_whole_register_tiles(m, rows):
    """A row count whose divisors would starve the schedule (ViT's 197 tokens: a 1-row tile; 202 = 2 x 101: 2-row
    blocks) is computed over the next multiple of 4; one with usable divisors (50, 51) is left alone."""
    assert K.dense_rows(m) == rows
    x, wpl = te.placeholder((m, 16), name="x"), te.placeholder((1, 16, 64), name="w")
    out = K.dense_compute(x, wpl, None, layout={"kind": "packed", "n_block": 64}, n=64)
    anchor = out.op.input_tensors[0]
    assert anchor.op.name == K.DENSE_PACKED and tuple(int(d) for d in anchor.shape) == (rows, 64)


# ------------------------------------------------------------------------------------------ injective

def _injective_cases():
    a = te.placeholder((2, 16, 5, 7), name="a")
    a2 = te.placeholder((2, 16, 5, 7), name="a2")
    c = te.placeholder((16, 1, 1), name="c")
    big = te.placeholder((1, 64, 56, 56), name="big")
    v = te.placeholder((1000,), name="v")
    return {
        "broadcast_add_relu": ([a, c], lambda: topi.nn.relu(topi.add(a, c)),
                               lambda x, y: np.maximum(x + y, 0)),
        "transpose": ([a], lambda: topi.transpose(a, (0, 2, 3, 1)), lambda x: x.transpose(0, 2, 3, 1)),
        "concat": ([a, a2], lambda: topi.concatenate([a, topi.exp(a2)], axis=1),
                   lambda x, y: np.concatenate([x, np.exp(y)], axis=1)),
        "reshape": ([a], lambda: topi.reshape(topi.sigmoid(a), (2, 560)),
                    lambda x: (1 / (1 + np.exp(-x))).reshape(2, 560)),
        "pad": ([a], lambda: topi.nn.pad(a, [0, 0, 1, 2], [0, 0, 2, 1]),
                lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2), (2, 1)))),
        "big_elementwise": ([big], lambda: topi.multiply(big, te.const(2.0)), lambda x: 2 * x),
        "vector_1d": ([v], lambda: topi.tanh(v), np.tanh),
    }


@pytest.mark.parametrize("case", list(_injective_cases()))
def test_injective(case):
    inputs, build, ref = _injective_cases()[case]
    arrays = [_rand(*[int(d) for d in t.shape]) for t in inputs]
    (got,) = _run(inputs, [build()], arrays)
    _close(got, ref(*arrays))


# ------------------------------------------------------------------------------------------ reductions

def _pool_ref(x, k, s, pads, kind):
    top, left, bottom, right = pads
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    win = sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    return win.max(axis=(4, 5)) if kind == "max" else win.mean(axis=(4, 5))


def _lrn_ref(x, size, alpha, beta, bias):
    sq = np.pad(x * x, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    s = sliding_window_view(sq, size, axis=1).sum(-1)
    return x / (bias + alpha / size * s) ** beta


def _reduction_cases():
    x = te.placeholder((1, 8, 13, 13), name="x")
    x2 = te.placeholder((4, 1000), name="x2")
    return {
        "maxpool_3x3_s2": (x, lambda: topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max"),
                           lambda a: _pool_ref(a, 3, 2, (1, 1, 1, 1), "max")),
        "avgpool_2x2_s2": (x, lambda: topi.nn.pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), "avg"),
                           lambda a: _pool_ref(a, 2, 2, (0, 0, 0, 0), "avg")),
        "avgpool_3x3_pad_count": (x, lambda: topi.nn.pool2d(x, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "avg",
                                                            count_include_pad=True),
                                  lambda a: _pool_ref(a, 3, 1, (1, 1, 1, 1), "avg")),
        "global_avg_pool": (x, lambda: topi.nn.global_pool(x, "avg"), lambda a: a.mean(axis=(2, 3), keepdims=True)),
        "reduce_sum_axis1": (x, lambda: topi.sum(x, axis=1, keepdims=True), lambda a: a.sum(1, keepdims=True)),
        "reduce_mean_hw": (x, lambda: topi.divide(topi.sum(x, axis=(2, 3)), 169.0), lambda a: a.mean((2, 3))),
        "softmax": (x2, lambda: topi.nn.softmax(x2, axis=-1),
                    lambda a: np.exp(a - a.max(-1, keepdims=True)) / np.exp(a - a.max(-1, keepdims=True)).sum(
                        -1, keepdims=True)),
        "softmax_axis1_4d": (x, lambda: topi.nn.softmax(x, axis=1),
                             lambda a: np.exp(a - a.max(1, keepdims=True)) / np.exp(a - a.max(1, keepdims=True)).sum(
                                 1, keepdims=True)),
        "lrn": (x, lambda: topi.nn.lrn(x, 5, 1, 1e-4, 0.75, 1.0), lambda a: _lrn_ref(a, 5, 1e-4, 0.75, 1.0)),
    }


@pytest.mark.parametrize("case", list(_reduction_cases()))
def test_reduction(case):
    x, build, ref = _reduction_cases()[case]
    a = _rand(*[int(d) for d in x.shape])
    (got,) = _run([x], [build()], [a])
    _close(got, ref(a))


def test_odd_kernels_never_raise():
    """Blocks no rule expects (multi-output argmax reduction, int outputs, a plain matmul) still schedule and run."""
    x = te.placeholder((6, 37), name="x")
    y = te.placeholder((37, 20), name="y")
    a, b = _rand(6, 37), _rand(37, 20)
    func = schedule_cpu(te.create_prim_func([x, topi.argmax(x, axis=1)]), TARGET)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    out = tvm.runtime.empty((6,), "int32", tvm.cpu())
    ex["main"](tvm.runtime.tensor(a, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), a.argmax(1))
    (got,) = _run([x, y], [topi.nn.relu(topi.matmul(x, y))], [a, b])
    _close(got, np.maximum(a @ b, 0))


# ------------------------------------------------------------------------------------------ matmul

from tensorforge.compiler.ops.nn import _matmul_lower  # noqa: E402  (the op's TE lowering, block name "matmul")

MATMUL_LOCAL = "matmul"  # with LOCAL in the IR: the register-tile rule applied (not the generic fallback)


def _gelu(y):
    return te.compute(y.shape, lambda *i: 0.5 * y(*i) * (1.0 + te.erf(y(*i) * 0.7071067811865476)), name="gelu")


def _gelu_ref(x):
    from math import erf
    return 0.5 * x * (1.0 + np.vectorize(erf)(x * 0.7071067811865476))


@pytest.mark.parametrize("a_shape,b_shape", [
    ((128, 256), (256, 512)),    # plain 2-D
    ((8, 64, 32), (8, 32, 64)),   # batched
    ((2, 3, 4, 5), (3, 5, 6)),    # broadcast batch, narrow j
    ((1, 4, 9), (3, 9, 20)),      # size-1 batch broadcast against 3
    ((37, 19), (19, 100)),        # j not a multiple of the tile: partial last tile
    ((7,), (7, 3)),               # 1-D A: row vector times matrix
    ((6, 70), (70,)),             # 1-D B: matrix-vector (left to the reduction rule)
    ((2, 5, 70), (70,)),
    ((16,), (16,)),               # dot product: a scalar
])
def test_matmul(a_shape, b_shape):
    a, b = te.placeholder(a_shape, name="a"), te.placeholder(b_shape, name="b")
    aa, ba = _rand(*a_shape), _rand(*b_shape)
    tiled = len(b_shape) > 1
    (got,) = _run([a, b], [_matmul_lower(a, b)], [aa, ba], expect_in_ir=[MATMUL_LOCAL, LOCAL] if tiled else ())
    _close(got, np.matmul(aa, ba))


def test_matmul_bias_gelu_epilogue_is_inlined():
    a, b, bias = te.placeholder((64, 48), name="a"), te.placeholder((48, 96), name="b"), te.placeholder((96,), name="c")
    out = _gelu(topi.add(topi.divide(_matmul_lower(a, b), 2.0), bias))
    aa, ba, ca = _rand(64, 48), _rand(48, 96), _rand(96)
    (got,) = _run([a, b, bias], [out], [aa, ba, ca], expect_in_ir=[LOCAL, "T.erf"])
    _close(got, _gelu_ref((aa @ ba) / 2.0 + ca))


def test_matmul_reshaped_operands():
    """Reshape prologues: index arithmetic (// and %) in the operand reads, on both sides."""
    x, w = te.placeholder((4, 6, 40), name="x"), te.placeholder((8, 120), name="w")
    xa, wa = _rand(4, 6, 40), _rand(8, 120)
    out = _matmul_lower(topi.reshape(x, (4, 12, 20)), topi.reshape(w, (20, 48)))
    (got,) = _run([x, w], [out], [xa, wa], expect_in_ir=[LOCAL])
    _close(got, xa.reshape(4, 12, 20) @ wa.reshape(20, 48))


def test_matmul_transposed_2d_operand_is_packed_once():
    """x @ transpose(w) without batch: the strided B read is packed once, at the kernel's root, in parallel."""
    x, w = te.placeholder((32, 40), name="x"), te.placeholder((80, 40), name="w")
    xa, wa = _rand(32, 40), _rand(80, 40)
    (got,) = _run([x, w], [_matmul_lower(x, topi.transpose(w, (1, 0)))], [xa, wa], expect_in_ir=[LOCAL, "T_transpose"])
    _close(got, xa @ wa.T)


# the two BERT attention kernels as the fuse pass groups them: one definition, shared with the benchmark
BERT_SCORES, BERT_CONTEXT = MATMULS["bert_attn_scores"], MATMULS["bert_attn_context"]


@pytest.mark.parametrize("text,strided", [(BERT_SCORES, True), (BERT_CONTEXT, False)], ids=["scores", "context"])
def test_matmul_bert_attention_kernels(text, strided):
    """The fused BERT attention kernels: transposes as prologues (K^T packed per head: strided along j), the
    division by sqrt(d) as an epilogue. One fused kernel each, checked against the graph interpreter."""
    from tensorforge.compiler.backend.lower import build_prim_func, partition
    from tensorforge.compiler.ir import interpret, parse_graph
    from tensorforge.compiler.passes import fuse

    g = parse_graph(text)
    feeds = {v.name: _rand(*v.type.shape) for v in g.inputs}
    want = interpret(g, feeds)[0]
    fuse(g)
    (kernel,) = [s for s in partition(g) if hasattr(s, "spec")]
    func = schedule_cpu(build_prim_func(kernel.spec), TARGET)
    script = func.script()
    assert LOCAL in script and "T.parallel" in script and "T.vectorized" in script, script
    # the packed K^T panel is a stage of its own (computed per head); V's transpose is read in place
    assert ("T_transpose[" in script) == strided, script
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    values = {**feeds, **{p.name: np.asarray(p.data, np.float32) for p in g.params}}
    args = [tvm.runtime.tensor(values[v.name], tvm.cpu()) for v in kernel.inputs]
    out = tvm.runtime.empty(want.shape, "float32", tvm.cpu())
    ex["main"](*args, out)
    _close(out.numpy(), want)


# ------------------------------------------------------------------------------------------ layout transforms

@pytest.mark.parametrize("shape, channels", [((2, 3, 9, 13, 16), 48), ((2, 2, 8, 8, 16), 24), ((1, 4, 7, 7, 16), 64)])
def test_from_blocked_transposes_lane_tiles(shape, channels):
    """NCHW[16]c -> NCHW, and with a channel slice fused after it (a padded tensor's plain view): each step moves
    [16 lanes x 8 columns], lanes unrolled, columns one vector store."""
    from tensorforge.compiler import ops

    x = te.placeholder(shape, name="x")
    y = ops.from_blocked.lower(x)
    n, _, h, w = (int(d) for d in y.shape)
    if channels != int(y.shape[1]):
        y = ops.strided_slice.lower(y, begins=(0, 0, 0, 0), ends=(n, channels, h, w), strides=(1, 1, 1, 1))
    a = _rand(*shape)
    (got,) = _run([x], [y], [a], expect_in_ir=("T.unroll(16)", "T.vectorized"))
    np.testing.assert_array_equal(got, ops.from_blocked.reference(a)[:, :channels])


def test_vector_width_comes_from_the_targets_features():
    """The register tiles follow the vector unit LLVM knows the CPU to have, not a list of CPU names (which left
    Emerald Rapids with 8-lane kernels)."""
    from tensorforge.compiler.backend.cpu.common import vector_lanes

    lanes = {cpu: vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
             for cpu in ("emeraldrapids", "graniterapids", "sapphirerapids", "znver4", "skylake-avx512", "haswell",
                         "znver3", "x86-64")}
    assert lanes == {"emeraldrapids": 16, "graniterapids": 16, "sapphirerapids": 16, "znver4": 16,
                     "skylake-avx512": 16, "haswell": 8, "znver3": 8, "x86-64": 4}


def test_avx2_host_gets_tiles_that_fit_16_registers(monkeypatch):
    """On an AVX2-only CPU (16 ymm registers) the dense tile is 4 x 24 columns and conv tiles at most 6 columns
    (4 x 64 and 16 x 16 spilled: 2-3x slower); compiled for haswell here, the kernels still compute the right thing."""
    monkeypatch.setattr(K, "host_vector_lanes", lambda: 8)
    assert K.dense_weight_layout(768, 768)["n_block"] == 24 and K.dense_weight_layout(20, 768)["n_block"] == 8
    assert K.conv_ow_tile(56) == 4 and K.conv_ow_tile(14) == 5 and K.conv_ow_tile(5) == 5
    haswell = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    m, k, n = 16, 512, 96
    layout = K.dense_weight_layout(n, k)
    w, xa, ba = _rand(n, k), _rand(m, k), _rand(n)
    wp = K.pack_dense_weight(w, layout)
    x, wpl, b = te.placeholder((m, k), name="x"), te.placeholder(wp.shape, name="w"), te.placeholder((n,), name="b")
    y = K.dense_compute(x, wpl, b, layout=layout, n=n)
    lib = tvm.compile(tvm.IRModule({"main": schedule_cpu(te.create_prim_func([x, wpl, b, y]), haswell)}),
                      target=haswell)
    asm = lib.mod.inspect_source("asm")
    assert "ymm" in asm and "zmm" not in asm
    out = tvm.runtime.empty((m, n), "float32")
    lib["main"](*(tvm.runtime.tensor(a) for a in (xa, wp, ba)), out)
    _close(out.numpy(), xa @ w.T + ba)


@pytest.mark.parametrize("blocked_input", [True, False])
def test_every_conv_knob_computes_the_same_conv(blocked_input):
    """The NCHW[16]c conv's knobs (output-channel blocks per register tile, accumulator budget) are tunable: every
    point of the space schedules and gives the numpy result, and the default tile spans two output-channel blocks."""
    from tensorforge.compiler.backend.cpu.conv import ConvKnobs
    from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
    from tensorforge.compiler.ops.nchwc import block_nchw, conv2d_nchwc_compute, repack_conv2d_weight_nchwc

    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    c, oc, hw, blk = 32, 64, 14, 16
    xa, w = _rand(1, c, hw, hw), _rand(oc, c, 3, 3)
    layout = K.conv2d_weight_layout(oc, c, 1, 3, 3)
    assert layout["oc_block"] == blk
    wp = K.pack_conv2d_weight(w, layout)
    if blocked_input:
        wp, x_in = repack_conv2d_weight_nchwc(wp, blk), block_nchw(xa, blk)
    else:
        x_in = xa
    x = te.placeholder(x_in.shape, name="x")
    wpl = te.placeholder(wp.shape, name="w")
    y = conv2d_nchwc_compute(x, wpl, None, in_block=blk if blocked_input else 0, block=blk, out_channels=oc,
                             kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))
    func = te.create_prim_func([x, wpl, y])
    want = block_nchw(conv2d_ref(xa, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1), blk)
    space = ConvKnobs.space()
    assert ConvKnobs() == ConvKnobs(oc_tile=2, accumulators=16) and len(space) == 6
    for knobs in space:
        sch, rule = schedule_cpu_traced(func, target, knobs)
        assert rule.name == "conv_nchwc" and rule.knobs == knobs
        lib = tvm.compile(sch.mod, target=target)
        out = tvm.runtime.empty(want.shape, "float32")
        lib["main"](tvm.runtime.tensor(x_in), tvm.runtime.tensor(wp), out)
        _close(out.numpy(), want)
