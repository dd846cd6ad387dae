"""The attention op (compiler/ops/attention.py): its gradient rule against central finite differences (float64,
through the reference interpreter), its reference against the decomposition it replaces, and its type rule."""

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.autodiff import backward
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tensorforge.compiler.ops.attention import causal_bias
from tensorforge.runtime.errors import IRError
from tests.support import assert_gradients_match_finite_differences

rng = np.random.default_rng(3)


def _loss_graph(arrays, attrs):
    """loss = sum(attention(...) * w), and d loss / d every input."""
    g = Graph("attn_grad")
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    (y,) = g.add_node(ops.attention, ins, attrs)
    w = g.add_param("w", rng.uniform(-1, 1, y.type.shape))
    (prod,) = g.add_node(ops.mul, [y, w])
    (loss,) = g.add_node(ops.reduce_sum, [prod], {"axes": tuple(range(y.type.rank)), "keepdims": True})
    grads = backward(g, loss, ins)
    g.outputs = [loss] + [grads[v] for v in ins]
    g.verify()
    return g


@pytest.mark.parametrize("shapes, attrs", [
    ([(2, 3, 4), (2, 5, 4), (2, 5, 3)], {"scale": 0.7}),
    ([(1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 2), (3, 3)], {"scale": 0.5}),  # additive mask, broadcast over heads
    ([(1, 2, 4, 3), (1, 2, 4, 3), (1, 2, 4, 3)], {"scale": 0.6, "causal": True}),
], ids=["plain", "mask", "causal"])
def test_gradient_matches_finite_differences(shapes, attrs):
    arrays = [rng.uniform(-1, 1, s) for s in shapes]
    g = _loss_graph(arrays, attrs)
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    assert_gradients_match_finite_differences(g, feeds, rtol=1e-5, atol=1e-7)


def test_reference_is_the_decomposition():
    q, k, v = (rng.standard_normal((2, 3, 6, 5)) for _ in range(3))
    mask = rng.standard_normal((6, 6))
    s = q @ np.swapaxes(k, -1, -2) * 0.4 + mask + causal_bias(6, 6, np.float64)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    got = ops.attention.evaluate(q, k, v, mask, scale=0.4, causal=True)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert causal_bias(2, 3, np.float32).tolist() == [[0, -np.inf, -np.inf], [0, 0, -np.inf]]


@pytest.mark.parametrize("types, message", [
    ([(2, 4, 8), (2, 6, 8), (2, 5, 8)], r"shapes do not chain"),
    ([(2, 4, 8), (3, 6, 8), (3, 6, 8)], r"same leading \(batch, head\) dims"),
    ([(2, 4, 8), (2, 6, 8), (2, 6, 8), (4, 5)], r"must be float32 and broadcast to the scores' shape \[2, 4, 6\]"),
])
def test_type_rule_names_the_problem(types, message):
    with pytest.raises(IRError, match=message):
        ops.attention.infer_types([TensorType(t) for t in types], {"scale": 1.0, "causal": False}, where="attn")


@pytest.mark.parametrize("sq, skv, mask, causal", [(197, 197, False, False), (13, 19, True, False),
                                                    (7, 33, False, True), (12, 197, True, False)])
def test_cpu_kernel_is_one_tiled_kernel_for_an_odd_sequence_length(sq, skv, mask, causal):
    """ViT's 197 tokens, and lengths that are no multiple of the row tile or the vector width: the kernel pads them
    (masked keys, dropped rows), is scheduled by the attention rule, and matches the reference."""
    from tvm import te

    from tensorforge import compile_model
    from tensorforge.compiler.backend.build import resolve_target
    from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced

    g = Graph("vit_attention")
    arrays = [rng.standard_normal((1, 2, n, 16)).astype(np.float32) for n in (sq, skv, skv)]
    if mask:
        arrays.append(rng.standard_normal((1, 1, sq, skv)).astype(np.float32))
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    g.outputs = g.add_node(ops.attention, ins, {"scale": 0.25, "causal": causal})
    m = compile_model(g)
    assert [s["op"] for s in m.plan["steps"]] == ["attention"]
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    np.testing.assert_allclose(m.run(feeds)[0], interpret(g, feeds)[0], rtol=1e-4, atol=1e-5)
    placeholders = [te.placeholder(a.shape, "float32", name=f"x{i}") for i, a in enumerate(arrays)]
    out = ops.attention.lower(*placeholders, scale=0.25, causal=causal)
    _, rule = schedule_cpu_traced(te.create_prim_func([*placeholders, out]), resolve_target("cpu"))
    assert rule.name == "attention"
