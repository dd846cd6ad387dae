"""The LSTM recurrence op (compiler/ops/rnn.py): its reference against PyTorch's LSTM, its gradient rule against
central finite differences (float64, through the reference interpreter), the per-step unrolling that the CUDA target
uses, and the compiled forward + backward kernels against the interpreter."""

import numpy as np
import pytest
import torch

from tensorforge import compile_model

from tensorforge.compiler import ops
from tensorforge.compiler.autodiff import backward
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tensorforge.compiler.ops.rnn import lstm_unit_block, pack_lstm_weight, unpack_lstm_weight, unrolled_lstm
from tensorforge.runtime.errors import IRError
from tests.support import assert_gradients_match_finite_differences

rng = np.random.default_rng(5)


def _op(g):
    return lambda opdef, inputs, **attrs: (lambda o: o[0] if len(o) == 1 else o)(g.add_node(opdef, inputs, attrs))


def _pack(r):
    hidden = r.shape[1]
    u = lstm_unit_block(hidden)
    return np.ascontiguousarray(r.reshape(4, hidden // u, u, hidden).transpose(1, 3, 0, 2))


def test_reference_matches_torch_lstm():
    steps, b, i, hidden = 7, 3, 5, 24
    lstm = torch.nn.LSTM(i, hidden).double()
    x = rng.standard_normal((steps, b, i))
    h0, c0 = rng.standard_normal((b, hidden)), rng.standard_normal((b, hidden))
    with torch.no_grad():
        want, (hn, cn) = lstm(torch.from_numpy(x), (torch.from_numpy(h0)[None], torch.from_numpy(c0)[None]))
    p = {k: v.detach().numpy() for k, v in lstm.named_parameters()}
    x_proj = x @ p["weight_ih_l0"].T + p["bias_ih_l0"] + p["bias_hh_l0"]
    y, c = ops.lstm_sequence.evaluate(x_proj, _pack(p["weight_hh_l0"]), h0, c0, reverse=False, save_gates=False)
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c[-1], cn.numpy()[0], rtol=1e-10, atol=1e-12)


def test_pack_and_unpack_are_inverse():
    g = Graph("pack")
    r = g.add_input("r", TensorType((4 * 20, 20), "float32"))
    w = pack_lstm_weight(_op(g), r, 20)
    g.outputs = [w, unpack_lstm_weight(_op(g), w)]
    a = rng.standard_normal((80, 20)).astype(np.float32)
    packed, back = interpret(g, {"r": a})
    assert packed.shape == (5, 20, 4, 4)  # U = 4 units per block for H = 20
    np.testing.assert_array_equal(packed, _pack(a))
    np.testing.assert_array_equal(back, a)


def _loss_graph(shapes, reverse, use_c, save_gates=False):
    """loss = sum(Y * w1) [+ sum(C * w2)], and d loss / d (x_proj, w_packed, h0, c0)."""
    g = Graph("lstm_grad")
    ins = [g.add_input(f"x{i}", TensorType(s, "float64")) for i, s in enumerate(shapes)]
    y, c = g.add_node(ops.lstm_sequence, ins, {"reverse": reverse, "save_gates": save_gates})[:2]
    (loss,) = g.add_node(ops.mul, [y, g.add_param("w1", rng.uniform(-1, 1, y.type.shape))])
    if use_c:
        (lc,) = g.add_node(ops.mul, [c, g.add_param("w2", rng.uniform(-1, 1, c.type.shape))])
        (loss,) = g.add_node(ops.add, [loss, lc])
    (loss,) = g.add_node(ops.reduce_sum, [loss], {"axes": (0, 1, 2), "keepdims": True})
    grads = backward(g, loss, ins)
    g.outputs = [loss] + [grads[v] for v in ins]
    g.verify()
    return g


@pytest.mark.parametrize("reverse, use_c, save_gates", [(False, True, False), (True, False, True)],
                         ids=["forward-Y-and-C", "reverse-Y-only-saved-gates"])
def test_gradient_matches_finite_differences(reverse, use_c, save_gates):
    steps, b, hidden = 3, 2, 2
    shapes = [(steps, b, 4 * hidden), (hidden // lstm_unit_block(hidden), hidden, 4, lstm_unit_block(hidden)),
              (b, hidden), (b, hidden)]
    arrays = [rng.uniform(-1, 1, s) for s in shapes]
    g = _loss_graph(shapes, reverse, use_c, save_gates)
    assert any(n.op is ops.dense for n in g.nodes) != save_gates  # saved gates: no recomputing dense
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    assert_gradients_match_finite_differences(g, feeds, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reverse", [False, True])
def test_unrolled_equals_the_op(reverse):
    steps, b, hidden = 4, 2, 8
    arrays = [rng.standard_normal((steps, b, 4 * hidden)), _pack(rng.standard_normal((4 * hidden, hidden)) * 0.3),
              rng.standard_normal((b, hidden)), rng.standard_normal((b, hidden))]
    g = Graph("unrolled")
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    g.outputs = list(unrolled_lstm(_op(g), *ins, reverse=reverse))
    assert not any(n.op is ops.lstm_sequence for n in g.nodes)
    got = interpret(g, {f"x{i}": a for i, a in enumerate(arrays)})
    want = ops.lstm_sequence.evaluate(*arrays, reverse=reverse, save_gates=False)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)


def test_compiled_backward_matches_the_interpreter(reverse=True):
    """Without saved gates: the backward recomputes them (the training graph saves them: test_training.py)."""
    steps, b, hidden = 6, 4, 32
    shapes = [(steps, b, 4 * hidden), (hidden // 16, hidden, 4, 16), (b, hidden), (b, hidden)]
    g32 = Graph("lstm_grad32")
    ins = [g32.add_input(f"x{i}", TensorType(s, "float32")) for i, s in enumerate(shapes)]
    y, c = g32.add_node(ops.lstm_sequence, ins, {"reverse": reverse})
    w1 = g32.add_param("w1", rng.uniform(-1, 1, y.type.shape).astype(np.float32))
    w2 = g32.add_param("w2", rng.uniform(-1, 1, c.type.shape).astype(np.float32))
    (ly,) = g32.add_node(ops.mul, [y, w1])
    (lc,) = g32.add_node(ops.mul, [c, w2])
    (loss,) = g32.add_node(ops.reduce_sum, [g32.add_node(ops.add, [ly, lc])[0]], {"axes": (0, 1, 2), "keepdims": True})
    grads = backward(g32, loss, ins)
    g32.outputs = [loss] + [grads[v] for v in ins]
    assert any(n.op is ops.lstm_sequence_grad for n in g32.nodes)
    feeds = {f"x{i}": (rng.uniform(-1, 1, s) * (0.3 if i == 1 else 1)).astype(np.float32) for i, s in enumerate(shapes)}
    want = interpret(g32, feeds)
    got = compile_model(g32).run(feeds)
    for k, (a, e) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-5, err_msg=f"output {k}")


def test_type_rule_names_the_bad_input():
    g = Graph("bad")
    x = g.add_input("x", TensorType((3, 2, 32), "float32"))
    w = g.add_input("w", TensorType((1, 8, 4, 4), "float32"))  # H = 8 would need U = 8: (1, 8, 4, 8)
    h = g.add_input("h", TensorType((2, 8), "float32"))
    with pytest.raises(IRError, match=r"packed recurrent weight must be \[1, 8, 4, 8\]"):
        g.add_node(ops.lstm_sequence, [x, w, h, h])
    with pytest.raises(IRError, match="x_proj must be"):
        g.add_node(ops.lstm_sequence, [g.add_input("x2", TensorType((3, 2, 31), "float32")),
                                       g.add_input("w2", TensorType((1, 8, 4, 8), "float32")), h, h])


def test_unroll_pass_keeps_the_graph_s_results():
    from tensorforge.compiler.passes import unroll_lstm

    arrays = [rng.standard_normal((3, 2, 16)), _pack(rng.standard_normal((16, 4)) * 0.5),
              rng.standard_normal((2, 4)), rng.standard_normal((2, 4))]
    g = Graph("to_unroll")
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    y, c = g.add_node(ops.lstm_sequence, ins, {"reverse": True}, out_names=["y", "c"])
    (s,) = g.add_node(ops.add, [y, c])
    g.outputs = [s, c]
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    want = interpret(g, feeds)
    unroll_lstm(g)
    g.verify()
    assert not any(n.op is ops.lstm_sequence for n in g.nodes) and g.outputs[1].name == "c"
    for a, e in zip(interpret(g, feeds), want):
        np.testing.assert_allclose(a, e, rtol=1e-12)


# -- the bf16 mode's recurrence: lstm_sequence_dp (ops/rnn_bf16.py), passes/cpu/amx.py lstm_bf16 --------------------
def _lstm_graph(steps, b, hidden, reverse, param_weight=True):
    g = Graph("lstm")
    arrays = {"x": (rng.standard_normal((steps, b, 4 * hidden)) * 0.5).astype(np.float32),
              "h0": (rng.standard_normal((b, hidden)) * 0.5).astype(np.float32),
              "c0": (rng.standard_normal((b, hidden)) * 0.5).astype(np.float32)}
    w = _pack(rng.standard_normal((4 * hidden, hidden)) * 0.1).astype(np.float32)
    x, h0, c0 = (g.add_input(k, TensorType.of(a)) for k, a in arrays.items())
    wv = g.add_param("r", w) if param_weight else g.add_input("r", TensorType.of(w))
    if not param_weight:
        arrays["r"] = w
    y, c = g.add_node(ops.lstm_sequence, [x, wv, h0, c0], {"reverse": reverse}, out_names=["y", "c"])
    g.outputs = [y, c]
    return g, arrays


@pytest.mark.parametrize("steps, b, hidden, reverse", [(9, 1, 64, False), (6, 3, 32, True), (5, 8, 256, False)])
def test_the_bf16_recurrence_pass_keeps_the_results_within_bf16_precision(steps, b, hidden, reverse):
    """lstm_bf16 (forced: it rewrites only on CPUs with AVX512-BF16) gives lstm_sequence_dp with the weight as bf16
    pairs, the outputs keeping their names; its reference (the float32 recurrence with h and R rounded to bf16) is
    within 1 % of the float32 one."""
    from tensorforge.compiler.passes.cpu.amx import LstmBf16

    g, feeds = _lstm_graph(steps, b, hidden, reverse)
    want = interpret(g, feeds)
    LstmBf16(force=True)(g)
    g.verify()
    (node,) = [n for n in g.nodes if n.op is ops.lstm_sequence_dp]
    assert [v.name for v in g.outputs] == ["y", "c"]
    assert node.inputs[1].type.dtype == "uint32" and node.attrs["reverse"] == reverse
    for got, exact in zip(interpret(g, feeds), want):
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-2 * np.abs(exact).max())


def test_the_bf16_recurrence_pass_leaves_what_it_cannot_take():
    """Not rewritten: a weight that is an input (trained), hidden sizes off 16-unit blocks, saved gates (training)."""
    from tensorforge.compiler.passes.cpu.amx import LstmBf16

    for g, _ in (_lstm_graph(3, 1, 32, False, param_weight=False), _lstm_graph(3, 1, 24, False)):
        LstmBf16(force=True)(g)
        assert [n.op.name for n in g.nodes] == ["lstm_sequence"]


def test_the_paired_weight_round_trips():
    from tensorforge.compiler.ops.amx import round_bf16
    from tensorforge.compiler.ops.rnn_bf16 import pair_lstm_weight, unpair_lstm_weight

    w = rng.standard_normal((2, 32, 4, 16)).astype(np.float32)
    pairs = pair_lstm_weight(w)
    assert pairs.shape == (2, 16, 4, 16) and pairs.dtype == np.uint32
    np.testing.assert_array_equal(unpair_lstm_weight(pairs), round_bf16(w))


@pytest.mark.parametrize("reverse", [False, True])
def test_the_bf16_recurrence_kernel_matches_its_reference(reverse):
    """Compiled for any x86 CPU with AVX512-BF16 (the assembly has vdpbf16ps); run and checked against the
    reference where this CPU has AVX512-BF16."""
    import tvm
    from tvm import te
    from tvm.target import Target

    from tensorforge.compiler.backend.build import resolve_target
    from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
    from tensorforge.compiler.ops.rnn_bf16 import pair_lstm_weight
    from tensorforge.compiler.passes.cpu.amx import bf16_units_here

    steps, b, hidden = 7, 2, 64
    arrays = [(rng.standard_normal((steps, b, 4 * hidden)) * 0.5).astype(np.float32),
              pair_lstm_weight(_pack(rng.standard_normal((4 * hidden, hidden)) * 0.1).astype(np.float32)),
              (rng.standard_normal((b, hidden)) * 0.5).astype(np.float32),
              (rng.standard_normal((b, hidden)) * 0.5).astype(np.float32)]
    ins = [te.placeholder(a.shape, str(a.dtype), name=f"x{i}") for i, a in enumerate(arrays)]
    outs = ops.lstm_sequence_dp.lower(*ins, reverse=reverse)
    func = te.create_prim_func([*ins, *outs])
    spr = Target({"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"})
    sch, _ = schedule_cpu_traced(func, spr)
    asm = tvm.compile(sch.mod if sch is not None else func, target=spr).mod.inspect_source("asm")
    assert "vdpbf16ps" in asm
    if "avx512bf16" not in bf16_units_here():
        pytest.skip("this CPU has no AVX512-BF16: compiled, not run")
    target = resolve_target("cpu")
    sch, _ = schedule_cpu_traced(func, target)
    lib = tvm.compile(sch.mod if sch is not None else func, target=target)
    got = [tvm.runtime.tensor(np.full((steps, b, hidden), np.nan, np.float32)) for _ in range(2)]
    lib["main"](*(tvm.runtime.tensor(a) for a in arrays), *got)
    want = ops.lstm_sequence_dp.reference(*arrays, reverse=reverse)
    for g_, w_ in zip(got, want):
        np.testing.assert_allclose(g_.numpy(), w_, rtol=1e-3, atol=1e-3)
