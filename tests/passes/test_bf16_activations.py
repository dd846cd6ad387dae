"""bf16_activations (compiler/passes/cpu/bf16_activations.py): in the CPU's bf16 mode, activations read by bf16
products are stored as bfloat16 by their producers' kernels. These tests rewrite the graph for the AMX unit on any
CPU (the graph only, nothing runs); tests/ops/test_amx.py runs such graphs where the CPU has the unit."""

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.driver import import_model
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.passes.cpu.amx import AmxConv
from tensorforge.compiler.passes.cpu.bf16_activations import bf16_activations
from tensorforge.compiler.passes.cpu.layout import alter_layout
from tensorforge.compiler.passes.cpu.pack_weights import pack_weights
from tensorforge.compiler.passes.fuse import fuse
from tests.support import assert_close

# conv -> relu, read by a conv and by the residual add; a downsampling conv read by the add only; the block's output
# read by a max pool (not elementwise) and returned
BLOCK = """graph g(%x: f32[1,64,8,8]) {
  %w1 = param f32[64,64,1,1]
  %w2 = param f32[64,64,3,3]
  %w3 = param f32[128,64,1,1]
  %w4 = param f32[128,64,1,1]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,64,8,8]
  %r1 = relu(%c1) : f32[1,64,8,8]
  %c2 = conv2d(%r1, %w2) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,64,8,8]
  %s = add(%c2, %r1) : f32[1,64,8,8]
  %r2 = relu(%s) : f32[1,64,8,8]
  %c3 = conv2d(%r2, %w3) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,128,8,8]
  %d = conv2d(%r2, %w4) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,128,8,8]
  %t = add(%c3, %d) : f32[1,128,8,8]
  %y = relu(%t) : f32[1,128,8,8]
  %p = max_pool2d(%y) {kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0)} : f32[1,128,4,4]
  return %p, %y
}
"""


def block_graph():
    rng = np.random.default_rng(0)
    params = {p.name: (rng.standard_normal(p.type.shape) * 0.1).astype(np.float32)
              for p in parse_graph(BLOCK).params}
    return parse_graph(BLOCK, params)


def lowered(g):
    """The graph as the bf16 pipeline has it before the pass: blocked layout, the convs on AMX."""
    return AmxConv(unit="amx")(alter_layout(pack_weights(import_model(g))))


def _readers(g, v):
    return [n for n in g.nodes if v in n.inputs]


def test_activations_read_by_bf16_products_are_stored_as_bfloat16():
    g = lowered(block_graph())
    assert all(n.inputs[0].type.dtype == "float32" for n in g.nodes if n.op is ops.conv2d_amx)
    bf16_activations(g)
    g.verify()
    # the first conv reads the plain-layout image and stays float32 (conv2d_packed), its relu is stored for the
    # second; the third and the fourth read the block's relu
    convs = [n for n in g.nodes if n.op is ops.conv2d_amx]
    assert [c.inputs[0].type.dtype for c in convs] == ["bfloat16"] * 3
    assert convs[0].inputs[0].producer.inputs[0].producer.op is ops.relu
    for c in convs:
        cast = c.inputs[0].producer
        assert cast.op is ops.cast and cast.inputs[0].type.dtype == "float32"
    # the residual add reads the stored relu through a widening cast
    add1 = next(n for n in g.nodes if n.op is ops.add and convs[0].outputs[0] in n.inputs)
    widened = [v for v in add1.inputs if v is not convs[0].outputs[0]][0]
    assert widened.producer.op is ops.cast and widened.type.dtype == "float32"
    assert widened.producer.inputs[0] is convs[0].inputs[0]
    # of the two convs the second add reads, the later one's output (read by the add only, in the other conv's
    # kernel) is stored as bfloat16; the graph outputs (the block's relu) stay float32
    add2 = next(n for n in g.nodes if n.op is ops.add and n is not add1)
    assert sorted(v.producer.op.name for v in add2.inputs) == ["cast", "conv2d_amx"]
    assert all(v.type.dtype == "float32" for v in g.outputs)


def test_the_stored_graph_computes_what_the_rounding_says():
    """The pass only rounds stored values to bf16: the interpreter on the rewritten graph equals the interpreter on
    the graph before it with those values rounded; it stays within bf16's accuracy of the float32 graph."""
    g = block_graph()
    x = np.random.default_rng(1).standard_normal((1, 64, 8, 8)).astype(np.float32)
    before = lowered(g)
    want = interpret(before, {"x": x})
    after = bf16_activations(lowered(g))
    got = interpret(after, {"x": x})
    exact = interpret(g, {"x": x})
    for a, b, e in zip(got, want, exact):
        assert not np.array_equal(a, b)  # the stored activations were rounded
        assert_close(a, b, rtol=2e-2, atol=2e-2 * np.abs(b).max())
        assert np.abs(a - e).max() / np.abs(e).max() < 1.5e-2


def test_the_widening_casts_join_their_readers_kernels():
    """fuse: the read side of a stored activation goes with its reader (the residual add, in the next conv's
    kernel), never with the producer (which would write float32 again)."""
    g = bf16_activations(lowered(block_graph()))
    fuse(g)
    groups = {}
    for n in g.nodes:
        groups.setdefault(n.group or id(n), []).append(n)
    for n in g.nodes:
        if n.op is ops.cast and n.attrs["to"] == "float32":
            members = groups[n.group or id(n)]
            assert any(m.op is ops.add for m in members), [m.op.name for m in members]
            assert n.inputs[0].producer.group != n.group
    # every bf16 conv writes its stored copy in its own kernel
    for n in g.nodes:
        if n.op is ops.cast and n.attrs["to"] == "bfloat16":
            assert n.group is not None and n.inputs[0].producer.group == n.group


def test_no_product_reads_it_nothing_changes():
    """Without a bf16 product (the float32 convs), nothing is stored."""
    g = alter_layout(pack_weights(import_model(block_graph())))
    bf16_activations(g)
    assert not any(n.op is ops.cast for n in g.nodes)


# MobileNetV2's inverted residual: a 1x1 expansion (bf16 product), a depthwise conv (float32), a 1x1 projection
INVERTED = """graph g(%x: f32[1,32,10,10]) {
  %w0 = param f32[32,32,1,1]
  %we = param f32[64,32,1,1]
  %wd = param f32[64,1,3,3]
  %wp = param f32[32,64,1,1]
  %c0 = conv2d(%x, %w0) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,32,10,10]
  %r0 = relu(%c0) : f32[1,32,10,10]
  %e = conv2d(%r0, %we) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,64,10,10]
  %re = clip(%e) {min=0.0, max=6.0} : f32[1,64,10,10]
  %d = conv2d(%re, %wd) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=64} : f32[1,64,10,10]
  %rd = clip(%d) {min=0.0, max=6.0} : f32[1,64,10,10]
  %p = conv2d(%rd, %wp) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,32,10,10]
  %y = add(%p, %r0) : f32[1,32,10,10]
  return %y
}
"""


def inverted_graph():
    rng = np.random.default_rng(2)
    params = {p.name: (rng.standard_normal(p.type.shape) * 0.2).astype(np.float32)
              for p in parse_graph(INVERTED).params}
    return parse_graph(INVERTED, params)


def test_a_depthwise_conv_reads_the_expansion_as_bfloat16_in_its_own_kernel():
    """The expansion's output, read only by the depthwise conv (`widens_input`), is stored as bfloat16; the
    widening cast is the depthwise kernel's prologue; the depthwise output, read by the AMX projection, is stored
    too."""
    g = bf16_activations(lowered(inverted_graph()))
    g.verify()
    dw = next(n for n in g.nodes if n.op is ops.depthwise_conv2d_nchwc)
    widen = dw.inputs[0].producer
    assert widen.op is ops.cast and widen.inputs[0].type.dtype == "bfloat16"
    proj = [n for n in g.nodes if n.op is ops.conv2d_amx][-1]
    assert proj.inputs[0].type.dtype == "bfloat16"
    fuse(g)
    assert widen.group is not None and widen.group == dw.group
    x = np.random.default_rng(3).standard_normal((1, 32, 10, 10)).astype(np.float32)
    got, exact = interpret(g, {"x": x})[0], interpret(inverted_graph(), {"x": x})[0]
    assert 0 < np.abs(got - exact).max() / np.abs(exact).max() < 1.5e-2


def test_the_bf16_winograd_reads_a_bfloat16_input_and_the_float32_one_does_not():
    """On AVX512-BF16 the block's 3x3 conv is the bf16 Winograd conv, a bf16 product that takes a bfloat16 input
    (its type rule with unit avx512bf16); the float32 Winograd conv (unit "") keeps reading float32."""
    from tensorforge.compiler.passes.cpu.winograd import winograd

    g = bf16_activations(AmxConv(unit="avx512bf16")(alter_layout(pack_weights(import_model(block_graph())))))
    g.verify()
    (wino,) = [n for n in g.nodes if n.op is ops.winograd_conv2d]
    assert wino.attrs["unit"] == "avx512bf16" and wino.inputs[0].type.dtype == "bfloat16"
    assert wino.inputs[0].producer.op is ops.cast
    g = bf16_activations(winograd(alter_layout(pack_weights(import_model(block_graph())))))
    wino = [n for n in g.nodes if n.op is ops.winograd_conv2d]
    assert wino and all(n.attrs["unit"] == "" and n.inputs[0].type.dtype == "float32" for n in wino)
