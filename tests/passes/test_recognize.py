"""recognize: decomposed GELU and LayerNorm chains, in the orders exporters write them, become one op."""

import numpy as np
import pytest

from tensorforge.compiler.ir import interpret, parse_graph, print_graph
from tensorforge.compiler.passes import dce, recognize

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


# -- layer norm: as the TorchScript exporter writes torch.nn.LayerNorm before opset 17 --------------------------------
LN_TORCHSCRIPT = """graph g(%x: f32[2,3,4]) {
  %two = param f32[] = [2.0]
  %eps = param f32[] = [1e-05]
  %w = param f32[4] = [1.0, 2.0, 3.0, 4.0]
  %b = param f32[4] = [0.5, 0.0, -0.5, 1.0]
  %m = reduce_mean(%x) {axes=(2,), keepdims=true} : f32[2,3,1]
  %d = sub(%x, %m) : f32[2,3,4]
  %p = pow(%d, %two) : f32[2,3,4]
  %v = reduce_mean(%p) {axes=(2,), keepdims=true} : f32[2,3,1]
  %ve = add(%v, %eps) : f32[2,3,1]
  %s = sqrt(%ve) : f32[2,3,1]
  %n = div(%d, %s) : f32[2,3,4]
  %y0 = mul(%n, %w) : f32[2,3,4]
  %y = add(%y0, %b) : f32[2,3,4]
  return %y
}"""
LN_TORCHSCRIPT_AFTER = """graph g(%x: f32[2,3,4]) {
  %w = param f32[4] = [1.0, 2.0, 3.0, 4.0]
  %b = param f32[4] = [0.5, 0.0, -0.5, 1.0]
  %2 = layer_norm(%x, %w, %b) {axis=2, epsilon=9.999999747378752e-06} : f32[2,3,4]
  return %2 as "y"
}"""

# two trailing axes, d*d for the square, eps and the weight on the left, a weight with a leading unit axis
LN_TWO_AXES = """graph g(%x: f32[2,3,4]) {
  %eps = param f32[] = [0.001]
  %w = param f32[1,3,4] = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]
  %m = reduce_mean(%x) {axes=(1, 2), keepdims=true} : f32[2,1,1]
  %d = sub(%x, %m) : f32[2,3,4]
  %p = mul(%d, %d) : f32[2,3,4]
  %v = reduce_mean(%p) {axes=(1, 2), keepdims=true} : f32[2,1,1]
  %ve = add(%eps, %v) : f32[2,1,1]
  %s = sqrt(%ve) : f32[2,1,1]
  %n = div(%d, %s) : f32[2,3,4]
  %y = mul(%w, %n) : f32[2,3,4]
  return %y
}"""
LN_TWO_AXES_AFTER = """graph g(%x: f32[2,3,4]) {
  %y.scale = param f32[3,4] = [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0]
  %1 = layer_norm(%x, %y.scale) {axis=1, epsilon=0.0010000000474974513} : f32[2,3,4]
  return %1 as "y"
}"""

# no affine part (elementwise_affine=False): the scale is ones
LN_PLAIN = """graph g(%x: f32[2,3,4]) {
  %two = param f32[] = [2.0]
  %eps = param f32[] = [1e-05]
  %m = reduce_mean(%x) {axes=(2,), keepdims=true} : f32[2,3,1]
  %d = sub(%x, %m) : f32[2,3,4]
  %p = pow(%d, %two) : f32[2,3,4]
  %v = reduce_mean(%p) {axes=(2,), keepdims=true} : f32[2,3,1]
  %ve = add(%v, %eps) : f32[2,3,1]
  %s = sqrt(%ve) : f32[2,3,1]
  %y = div(%d, %s) : f32[2,3,4]
  return %y
}"""
LN_PLAIN_AFTER = """graph g(%x: f32[2,3,4]) {
  %y.scale = param f32[4] = [1.0, 1.0, 1.0, 1.0]
  %0 = layer_norm(%x, %y.scale) {axis=2, epsilon=9.999999747378752e-06} : f32[2,3,4]
  return %0 as "y"
}"""


@pytest.mark.parametrize("before, after", [(LN_TORCHSCRIPT, LN_TORCHSCRIPT_AFTER), (LN_TWO_AXES, LN_TWO_AXES_AFTER),
                                           (LN_PLAIN, LN_PLAIN_AFTER)])
def test_layer_norm_chains_become_one_op(before, after):
    g = parse_graph(before)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    want = interpret(g, {"x": x})[0]
    out = dce(recognize(g))
    out.verify()
    assert print_graph(out) == print_graph(parse_graph(after))
    np.testing.assert_allclose(interpret(out, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edits, kept", [
    ([("%v = reduce_mean(%p) {axes=(2,), keepdims=true} : f32[2,3,1]",  # the means over different axes
       "%v = reduce_mean(%p) {axes=(1, 2), keepdims=true} : f32[2,1,1]"),
      ("%ve = add(%v, %eps) : f32[2,3,1]", "%ve = add(%v, %eps) : f32[2,1,1]"),
      ("%s = sqrt(%ve) : f32[2,3,1]", "%s = sqrt(%ve) : f32[2,1,1]")], None),
    ([("%p = pow(%d, %two)", "%p = pow(%x, %two)")], None),  # the second moment of x, not of x - mean
    ([("%m = reduce_mean(%x) {axes=(2,), keepdims=true} : f32[2,3,1]",  # the mean over a leading axis
       "%m = reduce_mean(%x) {axes=(1,), keepdims=true} : f32[2,1,4]")], None),
    ([("%eps = param f32[] = [1e-05]", "%eps = param f32[] = [0.0]")], None),  # no epsilon: not LayerNorm's
    # a weight varying along the batch axis is not a layer norm's scale: the norm stays, the mul and add too
    ([("%w = param f32[4] = [1.0, 2.0, 3.0, 4.0]", "%w = param f32[2,1,1] = [1.0, 2.0]")], "layer_norm"),
])
def test_layer_norm_near_misses_stay(edits, kept):
    text = LN_TORCHSCRIPT
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    g = parse_graph(text)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    want = interpret(g, {"x": x})[0]
    out = dce(recognize(g))
    ops_after = [n.op.name for n in out.nodes]
    assert ("layer_norm" in ops_after) == (kept == "layer_norm")
    if kept:
        assert "mul" in ops_after and "add" in ops_after
    np.testing.assert_allclose(interpret(out, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_layer_norm_used_twice_keeps_its_scale_apart():
    """A normalized value that feeds something else as well is not folded into the mul (that would compute the
    norm twice)."""
    text = LN_TORCHSCRIPT.replace("  return %y", "  %z = add(%y, %n) : f32[2,3,4]\n  return %z")
    out = dce(recognize(parse_graph(text)))
    assert [n.op.name for n in out.nodes].count("layer_norm") == 1
    assert "mul" in [n.op.name for n in out.nodes]


def test_torch_layernorm_export_opset14_compiles_to_one_layer_norm():
    """The real thing: torch.nn.LayerNorm through the TorchScript exporter at opset 14, then the pipeline."""
    torch = pytest.importorskip("torch")
    import io
    import warnings

    from tensorforge import compile_model
    from tensorforge.compiler.passes import cse, fold_constants, simplify
    from tensorforge.frontends.onnx import from_onnx

    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    x = torch.randn(2, 5, 16)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ln, (x,), f, opset_version=14, dynamo=False, input_names=["x"])
    g = from_onnx(f.getvalue())
    assert "reduce_mean" in print_graph(g)  # the exporter decomposed it
    out = dce(recognize(cse(simplify(fold_constants(g)))))
    assert [n.op.name for n in out.nodes] == ["layer_norm"]
    with torch.no_grad():
        want = ln(x).numpy()
    got = compile_model(f.getvalue()).run({"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- attention: the forms torch.onnx writes (TorchScript opset 17: Div after MatMul, k transposed out of the head
# split; dynamo opset 18: the same with the mask added first; F.scaled_dot_product_attention: sqrt(scale) on q and on
# k^T, a causal -inf mask) ------------------------------------------------------------------------------------------
ATTN_TORCHSCRIPT = ("""graph g(%q: f32[1,2,4,8], %kh: f32[1,4,2,8], %v: f32[1,2,4,8]) {
  %c = param f32[] = [2.8284270763397217]
  %kt = transpose(%kh) {perm=(0, 2, 3, 1)} : f32[1,2,8,4]
  %s = matmul(%q, %kt) : f32[1,2,4,4]
  %d = div(%s, %c) : f32[1,2,4,4]
  %p = softmax(%d) {axis=3} : f32[1,2,4,4]
  %o = matmul(%p, %v) : f32[1,2,4,8]
  return %o
}""", """graph g(%q: f32[1,2,4,8], %kh: f32[1,4,2,8], %v: f32[1,2,4,8]) {
  %0 = transpose(%kh) {perm=(0, 2, 1, 3)} : f32[1,2,4,8]
  %1 = attention(%q, %0, %v) {scale=0.3535533966440824, causal=false} : f32[1,2,4,8]
  return %1 as "o"
}""")

ATTN_DYNAMO_MASK = ("""graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8], %m: f32[1,1,4,4]) {
  %c = param f32[] = [2.8284270763397217]
  %kt = transpose(%k) {perm=(0, 1, 3, 2)} : f32[1,2,8,4]
  %s = matmul(%q, %kt) : f32[1,2,4,4]
  %d = div(%s, %c) : f32[1,2,4,4]
  %a = add(%m, %d) : f32[1,2,4,4]
  %p = softmax(%a) {axis=3} : f32[1,2,4,4]
  %o = matmul(%p, %v) : f32[1,2,4,8]
  return %o
}""", """graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8], %m: f32[1,1,4,4]) {
  %0 = attention(%q, %k, %v, %m) {scale=0.3535533966440824, causal=false} : f32[1,2,4,8]
  return %0 as "o"
}""")

ATTN_SDPA_CAUSAL = ("""graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {
  %r = param f32[] = [0.5946035385131836]
  %mask = param f32[4,4] = [0.0, -inf, -inf, -inf, 0.0, 0.0, -inf, -inf, 0.0, 0.0, 0.0, -inf, 0.0, 0.0, 0.0, 0.0]
  %qs = mul(%q, %r) : f32[1,2,4,8]
  %kt = transpose(%k) {perm=(0, 1, 3, 2)} : f32[1,2,8,4]
  %ks = mul(%kt, %r) : f32[1,2,8,4]
  %s = matmul(%qs, %ks) : f32[1,2,4,4]
  %a = add(%s, %mask) : f32[1,2,4,4]
  %p = softmax(%a) {axis=3} : f32[1,2,4,4]
  %o = matmul(%p, %v) : f32[1,2,4,8]
  return %o
}""", """graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {
  %0 = attention(%q, %k, %v) {scale=0.353553368012399, causal=true} : f32[1,2,4,8]
  return %0 as "o"
}""")


# torch.export of a 4-D q @ k^T (ViT's attention through compile_model(module)): a bmm between reshapes to 3-D and
# back, with the division moved before the reshape by simplify, and the probabilities reshaped again for p @ v
ATTN_EXPORT_BMM = ("""graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {
  %c = param f32[] = [2.8284270763397217]
  %kt = transpose(%k) {perm=(0, 1, 3, 2)} : f32[1,2,8,4]
  %q3 = reshape(%q) {shape=(2, 4, 8)} : f32[2,4,8]
  %k3 = reshape(%kt) {shape=(2, 8, 4)} : f32[2,8,4]
  %s = matmul(%q3, %k3) : f32[2,4,4]
  %d = div(%s, %c) : f32[2,4,4]
  %d4 = reshape(%d) {shape=(1, 2, 4, 4)} : f32[1,2,4,4]
  %p = softmax(%d4) {axis=3} : f32[1,2,4,4]
  %p3 = reshape(%p) {shape=(2, 4, 4)} : f32[2,4,4]
  %v3 = reshape(%v) {shape=(2, 4, 8)} : f32[2,4,8]
  %o = matmul(%p3, %v3) : f32[2,4,8]
  return %o
}""", """graph g(%q: f32[1,2,4,8], %k: f32[1,2,4,8], %v: f32[1,2,4,8]) {
  %0 = attention(%q, %k, %v) {scale=0.3535533966440824, causal=false} : f32[1,2,4,8]
  %1 = reshape(%0) {shape=(2, 4, 8)} : f32[2,4,8]
  return %1 as "o"
}""")


def _attention_feeds(g):
    r = np.random.default_rng(0)
    return {v.name: r.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs}


@pytest.mark.parametrize("before, after", [ATTN_TORCHSCRIPT, ATTN_DYNAMO_MASK, ATTN_SDPA_CAUSAL, ATTN_EXPORT_BMM],
                         ids=["torchscript", "dynamo-mask", "sdpa-causal", "export-bmm"])
def test_attention_chains_become_one_op(before, after):
    g = parse_graph(before)
    feeds = _attention_feeds(g)
    want = interpret(g, feeds)[0]
    out = dce(recognize(g))
    out.verify()
    assert print_graph(out) == print_graph(parse_graph(after))
    np.testing.assert_allclose(interpret(out, feeds)[0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("edit", [
    ("%p = softmax(%a) {axis=3}", "%p = softmax(%a) {axis=2}"),  # not over the keys
    ("return %o", "return %o, %p"),  # the probabilities are an output too: kept, not computed twice
    ("%a = add(%m, %d)", "%a = sub(%m, %d)"),  # not an additive mask
])
def test_attention_near_misses_stay(edit):
    g = parse_graph(ATTN_DYNAMO_MASK[0].replace(*edit))
    assert "attention" not in [n.op.name for n in dce(recognize(g)).nodes]


@pytest.mark.parametrize("edit", [
    ("return %o", "return %o, %p3"),  # the reshaped probabilities are read elsewhere too
    # a reshape that regroups the last two axes (keys into the rows) is no batch view
    ("%p3 = reshape(%p) {shape=(2, 4, 4)} : f32[2,4,4]\n  %v3 = reshape(%v) {shape=(2, 4, 8)} : f32[2,4,8]\n"
     "  %o = matmul(%p3, %v3) : f32[2,4,8]",
     "%p3 = reshape(%p) {shape=(2, 2, 8)} : f32[2,2,8]\n  %v3 = reshape(%v) {shape=(2, 8, 4)} : f32[2,8,4]\n"
     "  %o = matmul(%p3, %v3) : f32[2,2,4]"),
])
def test_attention_through_batch_reshapes_near_misses_stay(edit):
    text = ATTN_EXPORT_BMM[0].replace(*edit)
    assert text != ATTN_EXPORT_BMM[0]
    assert "attention" not in [n.op.name for n in dce(recognize(parse_graph(text))).nodes]


def test_additive_mask_that_is_not_the_causal_triangle_stays_an_input():
    """GPT-2's -1e4 triangle (not -inf) is kept as the mask: causal=true would change scores of order 1e4."""
    text = ATTN_SDPA_CAUSAL[0].replace("-inf", "-10000.0")
    g = parse_graph(text)
    out = dce(recognize(g))
    (node,) = out.nodes
    assert node.op.name == "attention" and not node.attrs["causal"] and node.inputs[3].name == "mask"
    feeds = _attention_feeds(g)
    np.testing.assert_allclose(interpret(out, feeds)[0], interpret(parse_graph(text), feeds)[0], rtol=1e-5, atol=1e-6)
