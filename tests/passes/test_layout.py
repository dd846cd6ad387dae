"""alter_layout: which ops move to NCHW[16]c, where the layout transforms go, and the same numbers after."""

import numpy as np
import pytest

from tensorforge import compile_model

from tensorforge.compiler import ops
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.ir import interpret, parse_graph, print_graph
from tensorforge.compiler.passes import alter_layout, pack_weights
from tensorforge.compiler.passes.cpu.layout import ConvPolicy, alter_layout_graph
from tests.support import assert_close

# conv on the image (3 channels: reads NCHW) -> blocked chain -> per-channel scale (a param: re-blocked at compile
# time) -> residual add with a graph input (gets a to_blocked) -> 1x1 conv, channel concat, conv, average pool,
# tanh -> reshape (needs NCHW: from_blocked) ; %a is also a graph output (from_blocked).
CHAIN = """graph g(%x: f32[1,3,20,20], %y: f32[1,32,10,10]) {
  %w1 = param f32[32,3,3,3]
  %b1 = param f32[32]
  %w2 = param f32[32,32,3,3]
  %w3 = param f32[16,32,1,1]
  %w4 = param f32[32,48,3,3]
  %s = param f32[1,32,1,1]
  %c1 = conv2d(%x, %w1, %b1) {strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,10,10]
  %r1 = relu(%c1) : f32[1,32,10,10]
  %c2 = conv2d(%r1, %w2) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,10,10]
  %m = mul(%c2, %s) : f32[1,32,10,10]
  %a = add(%m, %y) : f32[1,32,10,10]
  %c3 = conv2d(%a, %w3) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,16,10,10]
  %k = concat(%a, %c3) {axis=1} : f32[1,48,10,10]
  %c4 = conv2d(%k, %w4) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,10,10]
  %p = avg_pool2d(%c4) {kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=false, count_include_pad=false} : f32[1,32,5,5]
  %t = tanh(%p) : f32[1,32,5,5]
  %f = reshape(%t) {shape=(1, 800)} : f32[1,800]
  return %f, %a
}
"""

# the nodes after pack_weights + alter_layout (param lines left out: their data is random)
CHAIN_EXPECTED = """\
  %4 = conv2d_nchwc(%x, %w1.packed, %b1) {strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), in_block=0, block=16, out_channels=32} : f32[1,2,10,10,16]
  %6 = relu(%4) : f32[1,2,10,10,16]
  %8 = conv2d_nchwc(%6, %w2.packed.nchwc) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), in_block=16, block=16, out_channels=32} : f32[1,2,10,10,16]
  %10 = mul(%8, %s.nchwc) : f32[1,2,10,10,16]
  %12 = to_blocked(%y) {block=16} : f32[1,2,10,10,16]
  %13 = add(%10, %12) : f32[1,2,10,10,16]
  %a = from_blocked(%13) : f32[1,32,10,10]
  %15 = conv2d_nchwc(%13, %w3.packed.nchwc) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), in_block=16, block=16, out_channels=16} : f32[1,1,10,10,16]
  %17 = concat(%13, %15) {axis=1} : f32[1,3,10,10,16]
  %19 = conv2d_nchwc(%17, %w4.packed.nchwc) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), in_block=16, block=16, out_channels=32} : f32[1,2,10,10,16]
  %21 = avg_pool2d_nchwc(%19) {kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=false, count_include_pad=false} : f32[1,2,5,5,16]
  %23 = tanh(%21) : f32[1,2,5,5,16]
  %t = from_blocked(%23) : f32[1,32,5,5]
  %f = reshape(%t) {shape=(1, 800)} : f32[1,800]
"""


def setup(text=CHAIN):
    g = parse_graph(text)
    rng = np.random.default_rng(0)
    params = {p.name: rng.uniform(-1, 1, p.type.shape).astype(np.float32) for p in g.params}
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs}
    return params, feeds


def node_lines(g) -> str:
    return "".join(ln + "\n" for ln in print_graph(g).splitlines()
                   if ln.startswith("  %") and " = param " not in ln)


def test_golden_chain_and_edges():
    params, feeds = setup()
    g = alter_layout(pack_weights(parse_graph(CHAIN, params)))
    g.verify()
    assert node_lines(g) == CHAIN_EXPECTED
    # the text parses back to the same graph
    again = parse_graph(print_graph(g), {p.name: p.data for p in g.params})
    assert print_graph(again) == print_graph(g)
    # the reference interpreter gives the same numbers before and after (blocking is exact re-indexing)
    before = interpret(parse_graph(CHAIN, params), feeds)
    for got, want in zip(interpret(g, feeds), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_blocked_chain_matches_the_reference():
    params, feeds = setup()
    ref = interpret(parse_graph(CHAIN, params), feeds)
    # Winograd off: its F(4, 3) rounding (tests/passes/test_winograd.py) exceeds this chain's tight tolerance
    model = compile_model(parse_graph(CHAIN, params), options=CompileOptions(disabled_passes=frozenset({"winograd"})))
    assert {s["op"].split("+")[0] for s in model.plan["steps"]} >= {"conv2d_nchwc", "avg_pool2d_nchwc"}
    for got, want in zip(model.run(feeds), ref):
        assert_close(got, want, rtol=1e-4, atol=1e-4)  # float32 sums of ~400 products of magnitude ~30


def test_disabled_pass_keeps_nchw():
    params, _ = setup()
    model = compile_model(parse_graph(CHAIN, params),
                          options=CompileOptions(disabled_passes=frozenset({"alter_layout"})))
    assert not any("nchwc" in s["op"] or "blocked" in s["op"] for s in model.plan["steps"])


def test_policy_decides_per_conv():
    """A policy that refuses every conv leaves the graph as pack_weights made it; channel counts that would need too
    much padding to split into blocks (8 -> 16) stay NCHW."""
    params, _ = setup()
    g = pack_weights(parse_graph(CHAIN, params))
    before = print_graph(g)

    class Never(ConvPolicy):
        def wants(self, node):
            return False

    assert alter_layout_graph(g, Never()) == 0
    assert print_graph(g) == before
    params, feeds = setup(ODD8)
    g = pack_weights(parse_graph(ODD8, params))
    assert alter_layout_graph(g) == 2  # 8 output channels would be padded to 16: that conv stays NCHW
    assert [n.op.name for n in g.nodes] == ["conv2d_packed", "relu", "conv2d_nchwc", "relu", "conv2d_nchwc",
                                            "from_blocked"]
    assert g.nodes[2].attrs["in_block"] == 0 and g.nodes[4].attrs["in_block"] == 16  # the first reads NCHW
    for got, want in zip(interpret(g, feeds), interpret(parse_graph(ODD8, params), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_isolated_conv_stays_nchw():
    """A conv on a plain input whose output reaches no other blocked conv or pool would only add a transform back."""
    lone = ODD8.replace("  %c3 = conv2d(%r2, %w3) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} "
                       ": f32[1,32,8,8]\n", "").replace("return %c3", "return %r2").replace(
        "  %w3 = param f32[32,32,3,3]\n", "")
    params, _ = setup(lone)
    g = pack_weights(parse_graph(lone, params))
    before = print_graph(g)
    assert alter_layout_graph(g) == 0 and print_graph(g) == before


ODD = """graph g(%x: f32[1,3,8,8]) {
  %w1 = param f32[24,3,3,3]
  %w2 = param f32[32,24,3,3]
  %w3 = param f32[32,32,3,3]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,24,8,8]
  %r1 = relu(%c1) : f32[1,24,8,8]
  %c2 = conv2d(%r1, %w2) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,8,8]
  %r2 = relu(%c2) : f32[1,32,8,8]
  %c3 = conv2d(%r2, %w3) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,8,8]
  return %c3
}
"""
ODD8 = ODD.replace("24", "8")


def test_channels_padded_to_whole_blocks():
    """24 output channels run blocked as 32 (zero weights and bias for the padding): the chain stays NCHW[16]c,
    and the next conv reads the padded lanes with zero weights."""
    params, feeds = setup(ODD)
    g = pack_weights(parse_graph(ODD, params))
    assert alter_layout_graph(g) == 3
    assert [n.op.name for n in g.nodes] == ["conv2d_nchwc", "relu", "conv2d_nchwc", "relu", "conv2d_nchwc",
                                            "from_blocked"]
    assert g.nodes[0].attrs["out_channels"] == 32 and g.nodes[0].outputs[0].type.shape == (1, 2, 8, 8, 16)
    assert g.nodes[2].inputs[1].type.shape[:2] == (2, 2)  # (OC/16, IC/16 = 32/16, ...): input lanes padded
    want = interpret(parse_graph(ODD, params), feeds)
    for got, w in zip(interpret(g, feeds), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    model = compile_model(parse_graph(ODD, params), options=CompileOptions(disabled_passes=frozenset({"winograd"})))
    assert_close(model.run(feeds)[0], want[0], rtol=1e-4, atol=1e-4)


# padded (24-channel) tensors through a residual add, a per-channel scale (param padded with zeros), a shift by a
# non-zero constant (it would make the padded lanes non-zero: stays plain), a max pool, a global average pool
# (its result sliced to 24 channels) and a graph output (from_blocked, then the slice)
PADDED = """graph g(%x: f32[2,16,8,8]) {
  %w1 = param f32[24,16,1,1]
  %b1 = param f32[24]
  %w2 = param f32[24,24,3,3]
  %s = param f32[1,24,1,1]
  %one = param f32[] = [1.0]
  %w3 = param f32[32,24,1,1]
  %c1 = conv2d(%x, %w1, %b1) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[2,24,8,8]
  %c2 = conv2d(%c1, %w2) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[2,24,8,8]
  %a = add(%c1, %c2) : f32[2,24,8,8]
  %m = mul(%a, %s) : f32[2,24,8,8]
  %p = max_pool2d(%m) {kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=false} : f32[2,24,4,4]
  %c3 = conv2d(%p, %w3) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[2,32,4,4]
  %e = add(%p, %one) : f32[2,24,4,4]
  %gap = global_avg_pool(%p) : f32[2,24,1,1]
  return %c3, %e, %gap, %m
}
"""


def test_padded_channels_through_elementwise_pools_and_outputs():
    params, feeds = setup(PADDED)
    params["one"] = np.float32(1.0).reshape(())
    g = alter_layout(pack_weights(parse_graph(PADDED, params)))
    g.verify()
    ops_of = {n.outputs[0].name: n.op.name for n in g.nodes}
    assert ops_of["m"] == ops_of["p"] == "strided_slice"  # plain views of padded tensors
    assert ops_of["e"] == "add"  # 0 + 1 != 0: the padded lanes would not stay zero, so the add stays plain
    assert ops_of["gap"] == "strided_slice"
    assert {"global_avg_pool_nchwc", "max_pool2d_nchwc", "mul"} <= set(ops_of.values())
    assert [n.op.name for n in g.nodes].count("conv2d_nchwc") == 3
    want = interpret(parse_graph(PADDED, params), feeds)
    for got, w in zip(interpret(g, feeds), want):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5)
    model = compile_model(parse_graph(PADDED, params), options=CompileOptions(disabled_passes=frozenset({"winograd"})))
    for got, w in zip(model.run(feeds), want):
        assert_close(got, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_blocked_pool_matches_plain(kind):
    text = f"""graph g(%x: f32[2,32,9,9]) {{
  %p = {kind}_pool2d(%x) {{kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=true{', count_include_pad=true' if kind == 'avg' else ''}}} : f32[2,32,5,5]
  return %p
}}
"""
    _, feeds = setup(text)
    g = parse_graph(text)
    x = g.inputs[0]
    (xb,) = g.add_node(ops.to_blocked, [x], {"block": 16}, index=0)
    pool = g.nodes[1]
    (pb,) = g.add_node(getattr(ops, f"{kind}_pool2d_nchwc"), [xb], dict(pool.attrs))
    (back,) = g.add_node(ops.from_blocked, [pb], {})
    g.outputs = [g.outputs[0], back]
    g.verify()
    model = compile_model(g)
    plain, blocked = model.run(feeds)
    want = interpret(parse_graph(text), feeds)[0]
    assert_close(plain, want, rtol=1e-5, atol=1e-6)
    assert_close(blocked, want, rtol=1e-5, atol=1e-6)


DEPTHWISE = """graph g(%x: f32[1,3,16,16]) {
  %w1 = param f32[32,3,3,3]
  %wd = param f32[32,1,3,3]
  %bd = param f32[32]
  %w2 = param f32[16,32,1,1]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,16,16]
  %r1 = relu(%c1) : f32[1,32,16,16]
  %d = conv2d(%r1, %wd, %bd) {strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=32} : f32[1,32,8,8]
  %r2 = clip(%d) {min=0.0, max=6.0} : f32[1,32,8,8]
  %c2 = conv2d(%r2, %w2) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,16,8,8]
  return %c2
}
"""


def test_depthwise_conv_runs_blocked_between_blocked_convs():
    params, feeds = setup(DEPTHWISE)
    g = alter_layout(pack_weights(parse_graph(DEPTHWISE, params)))
    assert [n.op.name for n in g.nodes] == ["conv2d_nchwc", "relu", "depthwise_conv2d_nchwc", "clip", "conv2d_nchwc",
                                            "from_blocked"]
    ref = interpret(parse_graph(DEPTHWISE, params), feeds)[0]
    np.testing.assert_allclose(interpret(g, feeds)[0], ref, rtol=1e-5, atol=1e-5)
    model = compile_model(parse_graph(DEPTHWISE, params))
    assert any("depthwise_conv2d_nchwc" in s["op"] for s in model.plan["steps"])
    assert_close(model.run(feeds)[0], ref, rtol=1e-4, atol=1e-4)


def test_flop_count_is_unchanged_by_the_layout():
    """Reports and benchmarks divide by the graph's FLOPs: blocked convs count the same multiply-adds."""
    from tensorforge.compiler.ir.analysis import node_flops

    for text in (CHAIN, DEPTHWISE):
        params, _ = setup(text)
        plain = pack_weights(parse_graph(text, params))
        blocked = alter_layout(pack_weights(parse_graph(text, params)))
        conv_flops = lambda g: sum(node_flops(n) for n in g.nodes if n.op.name.startswith("conv2d")  # noqa: E731
                                   or n.op.name.startswith("depthwise"))
        assert conv_flops(blocked) == conv_flops(plain) > 0


GAP = """graph g(%x: f32[2,16,9,9]) {
  %w1 = param f32[32,16,3,3]
  %w2 = param f32[32,32,3,3]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[2,32,9,9]
  %c2 = conv2d(%c1, %w2) {strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[2,32,5,5]
  %p = global_avg_pool(%c2) : f32[2,32,1,1]
  %f = reshape(%p) {shape=(2, 32)} : f32[2,32]
  return %f
}
"""


def test_global_average_pool_reads_the_blocked_tensor():
    params, feeds = setup(GAP)
    g = alter_layout(pack_weights(parse_graph(GAP, params)))
    assert [n.op.name for n in g.nodes] == ["conv2d_nchwc", "conv2d_nchwc", "global_avg_pool_nchwc", "reshape"]
    ref = interpret(parse_graph(GAP, params), feeds)[0]
    np.testing.assert_allclose(interpret(g, feeds)[0], ref, rtol=1e-5, atol=1e-5)
    model = compile_model(parse_graph(GAP, params))
    assert model.num_kernels == 3
    assert_close(model.run(feeds)[0], ref, rtol=1e-4, atol=1e-4)


LONE_DEPTHWISE = """graph g(%x: f32[1,32,14,14]) {
  %w = param f32[32,1,7,7]
  %c = conv2d(%x, %w) {strides=(1, 1), pads=(3, 3, 3, 3), dilations=(1, 1), groups=32} : f32[1,32,14,14]
  return %c
}
"""


def test_a_lone_depthwise_conv_runs_blocked():
    """Unlike a dense conv, a depthwise conv gains from NCHW[16]c even alone (the row-wise NCHW kernel of a 7x7 was
    8x slower than the blocked one): it gets a to_blocked before and a from_blocked after, same numbers."""
    params, feeds = setup(LONE_DEPTHWISE)
    g = pack_weights(parse_graph(LONE_DEPTHWISE, params))
    assert alter_layout_graph(g) == 1
    assert [n.op.name for n in g.nodes] == ["to_blocked", "depthwise_conv2d_nchwc", "from_blocked"]
    for got, want in zip(interpret(g, feeds), interpret(parse_graph(LONE_DEPTHWISE, params), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
