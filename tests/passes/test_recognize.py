"""recognize: decomposed GELU chains, in the orders exporters write them, become one gelu op."""

import numpy as np
import pytest

from compiler.ir import interpret, parse_graph, print_graph
from compiler.passes import dce, recognize

ERF_TORCHSCRIPT = """graph g(%x: f32[4,8]) {
  %s2 = param f32[] = [1.4142135381698608]
  %one = param f32[] = [1.0]
  %half = param f32[] = [0.5]
  %d = div(%x, %s2) : f32[4,8]
  %e = erf(%d) : f32[4,8]
  %a = add(%e, %one) : f32[4,8]
  %m = mul(%x, %a) : f32[4,8]
  %y = mul(%m, %half) : f32[4,8]
  return %y
}"""

ERF_HALF_FIRST = """graph g(%x: f32[4,8]) {
  %r2 = param f32[] = [0.7071067690849304]
  %one = param f32[] = [1.0]
  %half = param f32[] = [0.5]
  %h = mul(%half, %x) : f32[4,8]
  %d = mul(%x, %r2) : f32[4,8]
  %e = erf(%d) : f32[4,8]
  %a = add(%one, %e) : f32[4,8]
  %y = mul(%h, %a) : f32[4,8]
  return %y
}"""

TANH = """graph g(%x: f32[4,8]) {
  %c = param f32[] = [0.044714998453855515]
  %k = param f32[] = [0.7978845834732056]
  %one = param f32[] = [1.0]
  %half = param f32[] = [0.5]
  %x2 = mul(%x, %x) : f32[4,8]
  %x3 = mul(%x, %x2) : f32[4,8]
  %t = mul(%c, %x3) : f32[4,8]
  %i = add(%x, %t) : f32[4,8]
  %s = mul(%k, %i) : f32[4,8]
  %th = tanh(%s) : f32[4,8]
  %a = add(%one, %th) : f32[4,8]
  %m = mul(%x, %a) : f32[4,8]
  %y = mul(%half, %m) : f32[4,8]
  return %y
}"""


@pytest.mark.parametrize("text, approximate", [(ERF_TORCHSCRIPT, "none"), (ERF_HALF_FIRST, "none"), (TANH, "tanh")])
def test_gelu_chains_become_one_op(text, approximate):
    g = parse_graph(text)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    want = interpret(g, {"x": x})[0]
    out = dce(recognize(g))
    out.verify()
    assert [n.op.name for n in out.nodes] == ["gelu"] and out.nodes[0].attrs["approximate"] == approximate
    np.testing.assert_allclose(interpret(out, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_near_misses_stay():
    text = ERF_TORCHSCRIPT.replace("[0.5]", "[0.25]")
    g = dce(recognize(parse_graph(text)))
    assert "gelu" not in print_graph(g)
