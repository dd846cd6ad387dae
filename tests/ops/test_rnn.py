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
