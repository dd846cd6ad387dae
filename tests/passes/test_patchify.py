"""patchify (compiler/passes/patchify.py): a conv with kernel = stride and no padding (a ViT's patch embedding)
becomes a dense over the patches, and the ViT's flattening back to tokens a reshape; other convs stay."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler import ops
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.passes import patchify

VIT = """graph g(%x: f32[2,3,32,48], %w: f32[8,3,16,16], %b: f32[8]) {
  %y = conv2d(%x, %w, %b) {strides=(16, 16)} : f32[2,8,2,3]
  %f = reshape(%y) {shape=(2, 8, 6)} : f32[2,8,6]
  %t = transpose(%f) {perm=(0, 2, 1)} : f32[2,6,8]
  return %t
}"""


def test_patch_embedding_becomes_a_dense_and_the_tokens_a_reshape():
    rng = np.random.default_rng(0)
    g = parse_graph(VIT)
    x = rng.standard_normal((2, 3, 32, 48)).astype(np.float32)
    feeds = {"x": x, "w": rng.standard_normal((8, 3, 16, 16)).astype(np.float32),
             "b": rng.standard_normal(8).astype(np.float32)}
    want = interpret(g, feeds)[0]
    params = parse_graph(VIT.replace("%x: f32[2,3,32,48], %w: f32[8,3,16,16], %b: f32[8]", "%x: f32[2,3,32,48]")
                         .replace("  %y =", "  %w = param f32[8,3,16,16]\n  %b = param f32[8]\n  %y ="),
                         {"w": feeds["w"], "b": feeds["b"]})
    out = patchify(params)
    names = [n.op.name for n in out.nodes]
    assert "conv2d" not in names and names.count("dense") == 1 and "transpose" in names, names
    assert [n.op.name for n in out.nodes][-1] == "reshape"  # the tokens: the dense's rows, no transposes back
    np.testing.assert_allclose(interpret(out, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    got = compile_model(params).run({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs", ['{strides=(16, 16), pads=(1, 1, 1, 1)}', '{strides=(8, 8)}'])
def test_other_convs_stay(attrs):
    text = f"""graph g(%x: f32[1,3,32,32]) {{
      %w = param f32[4,3,16,16]
      %y = conv2d(%x, %w) {attrs} : f32[1,4,{'2,2' if 'pads' in attrs else '3,3'}]
      return %y
    }}"""
    out = patchify(parse_graph(text, {"w": np.ones((4, 3, 16, 16), np.float32)}))
    assert [n.op for n in out.nodes] == [ops.conv2d]
