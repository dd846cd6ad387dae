"""Golden tests of the cleanup passes: IR text in, expected IR text out (both through the parser)."""

import numpy as np
import pytest

from tensorforge.compiler.ir import interpret, parse_graph, print_graph
from tensorforge.compiler.passes import cse, dce, fold_constants, fold_scale_shift, simplify


def run_pass(p, before: str, expected: str):
    g = parse_graph(before)
    feeds = {v.name: np.random.default_rng(0).uniform(-2, 2, v.type.shape).astype(v.type.dtype) for v in g.inputs}
    want = interpret(g, feeds)
    out = p(g)
    out.verify()
    assert print_graph(out) == print_graph(parse_graph(expected))
    for a, b in zip(interpret(out, feeds), want):  # and it computes the same
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("before, expected", [
    # reshape(x, shape(x)) -> x ; reshape(reshape(x)) -> reshape(x)
    ("""graph g(%x: f32[2,6]) {
      %a = reshape(%x) {shape=(2, 6)} : f32[2,6]
      %b = reshape(%a) {shape=(3, 4)} : f32[3,4]
      %c = reshape(%b) {shape=(12,)} : f32[12]
      return %c
    }""", """graph g(%x: f32[2,6]) {
      %0 = reshape(%x) {shape=(12,)} : f32[12]
      return %0 as "c"
    }"""),
    # transpose chains compose; the identity permutation disappears
    ("""graph g(%x: f32[2,3,4]) {
      %a = transpose(%x) {perm=(1, 2, 0)} : f32[3,4,2]
      %b = transpose(%a) {perm=(2, 0, 1)} : f32[2,3,4]
      %c = relu(%b) : f32[2,3,4]
      return %c
    }""", """graph g(%x: f32[2,3,4]) {
      %c = relu(%x) : f32[2,3,4]
      return %c
    }"""),
    # x * 1, 0 + x, x - 0, x / 1, -(-x), relu(relu(x))
    ("""graph g(%x: f32[4]) {
      %one = param f32[4] = [1.0, 1.0, 1.0, 1.0]
      %zero = param f32[1] = [0.0]
      %a = mul(%x, %one) : f32[4]
      %b = add(%zero, %a) : f32[4]
      %c = sub(%b, %zero) : f32[4]
      %d = div(%c, %one) : f32[4]
      %e = neg(%d) : f32[4]
      %f = neg(%e) : f32[4]
      %h = relu(%f) : f32[4]
      %i = relu(%h) : f32[4]
      return %i
    }""", """graph g(%x: f32[4]) {
      %h = relu(%x) : f32[4]
      return %h as "i"
    }"""),
    # a neutral operand that broadcasts the shape is not neutral
    ("""graph g(%x: f32[1]) {
      %one = param f32[4] = [1.0, 1.0, 1.0, 1.0]
      %a = mul(%x, %one) : f32[4]
      return %a
    }""", """graph g(%x: f32[1]) {
      %one = param f32[4] = [1.0, 1.0, 1.0, 1.0]
      %a = mul(%x, %one) : f32[4]
      return %a
    }"""),
    # cast round trips through a wider type vanish; a narrowing one stays
    ("""graph g(%x: f32[3]) {
      %a = cast(%x) {to="float64"} : f64[3]
      %b = cast(%a) {to="float32"} : f32[3]
      %c = cast(%b) {to="int32"} : i32[3]
      %d = cast(%c) {to="float32"} : f32[3]
      %e = cast(%d) {to="float32"} : f32[3]
      return %e
    }""", """graph g(%x: f32[3]) {
      %c = cast(%x) {to="int32"} : i32[3]
      %d = cast(%c) {to="float32"} : f32[3]
      return %d as "e"
    }"""),
])
def test_simplify(before, expected):
    run_pass(simplify, before, expected)


def test_fold_constants():
    run_pass(fold_constants, """graph g(%x: f32[2,2]) {
      %w = param f32[2,2] = [1.0, 2.0, 3.0, 4.0]
      %t = transpose(%w) {perm=(1, 0)} : f32[2,2]
      %s = mul(%t, %t) : f32[2,2]
      %y = add(%x, %s) : f32[2,2]
      return %y
    }""", """graph g(%x: f32[2,2]) {
      %s.folded = param f32[2,2] = [1.0, 9.0, 4.0, 16.0]
      %y = add(%x, %s.folded) : f32[2,2]
      return %y
    }""")


def test_cse_merges_equal_nodes_and_params():
    run_pass(cse, """graph g(%x: f32[3]) {
      %p = param f32[3] = [1.0, 2.0, 3.0]
      %q = param f32[3] = [1.0, 2.0, 3.0]
      %a = add(%x, %p) : f32[3]
      %b = add(%x, %q) : f32[3]
      %c = mul(%a, %b) : f32[3]
      return %c
    }""", """graph g(%x: f32[3]) {
      %p = param f32[3] = [1.0, 2.0, 3.0]
      %a = add(%x, %p) : f32[3]
      %c = mul(%a, %a) : f32[3]
      return %c
    }""")


def test_dce():
    run_pass(dce, """graph g(%x: f32[3]) {
      %p = param f32[3] = [1.0, 2.0, 3.0]
      %dead = add(%x, %p) : f32[3]
      %y = relu(%x) : f32[3]
      return %y
    }""", """graph g(%x: f32[3]) {
      %y = relu(%x) : f32[3]
      return %y
    }""")


def test_batch_norm_folds_into_conv():
    before = """graph g(%x: f32[1,2,4,4]) {
      %w = param f32[2,2,1,1] = [1.0, 2.0, 3.0, 4.0]
      %b = param f32[2] = [0.5, -0.5]
      %s = param f32[2] = [2.0, 0.5]
      %beta = param f32[2] = [1.0, 0.0]
      %m = param f32[2] = [0.25, 1.0]
      %v = param f32[2] = [3.0, 0.0]
      %c = conv2d(%x, %w, %b) : f32[1,2,4,4]
      %y = batch_norm(%c, %s, %beta, %m, %v) {epsilon=1.0} : f32[1,2,4,4]
      %r = relu(%y) : f32[1,2,4,4]
      return %r
    }"""
    # k = s / sqrt(v + eps) = [1, 0.5]; W' = W * k; b' = (b - m) * k + beta = [1.25, -0.75]
    expected = """graph g(%x: f32[1,2,4,4]) {
      %w.scaled = param f32[2,2,1,1] = [1.0, 2.0, 1.5, 2.0]
      %b.scaled.shifted = param f32[2] = [1.25, -0.75]
      %3 = conv2d(%x, %w.scaled, %b.scaled.shifted) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,2,4,4]
      %r = relu(%3) : f32[1,2,4,4]
      return %r
    }"""
    run_pass(lambda g: dce(fold_scale_shift(g)), before, expected)


def test_scale_does_not_fold_when_the_conv_output_has_other_readers():
    text = """graph g(%x: f32[3,4]) {
      %w = param f32[2,4] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
      %k = param f32[2] = [2.0, 3.0]
      %d = dense(%x, %w) : f32[3,2]
      %y = mul(%d, %k) : f32[3,2]
      %z = add(%y, %d) : f32[3,2]
      return %z
    }"""
    run_pass(fold_scale_shift, text, text)


def test_residual_adds_move_into_the_dense_kernels_and_stay_there():
    """A pre-norm transformer's residual stream: h = concat-like (not a kernel's epilogue) + pos, then
    h + reshape(dense(...)) twice. The reshape sinks below each add so the add can join the dense's kernel, and the
    rule does not move it back (it flipped every round between the 2-D and the 3-D form before)."""
    from tensorforge.compiler import ops

    text = """graph g(%x: f32[1,4,8], %p: f32[1,4,8]) {
      %w1 = param f32[8,8]
      %w2 = param f32[8,8]
      %t = transpose(%x) {perm=(0, 1, 2)} : f32[1,4,8]
      %h = add(%t, %p) : f32[1,4,8]
      %f = reshape(%h) {shape=(4, 8)} : f32[4,8]
      %d1 = dense(%f, %w1) : f32[4,8]
      %r1 = reshape(%d1) {shape=(1, 4, 8)} : f32[1,4,8]
      %h1 = add(%h, %r1) : f32[1,4,8]
      %f1 = reshape(%h1) {shape=(4, 8)} : f32[4,8]
      %d2 = dense(%f1, %w2) : f32[4,8]
      %r2 = reshape(%d2) {shape=(1, 4, 8)} : f32[1,4,8]
      %h2 = add(%h1, %r2) : f32[1,4,8]
      return %h2
    }"""
    rng = np.random.default_rng(3)
    params = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in parse_graph(text).params}
    g = parse_graph(text, params)
    feeds = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs}
    want = interpret(g, feeds)[0]
    out = simplify(parse_graph(text, params))
    residual = [n for n in out.nodes if n.op is ops.add and any(v.producer is not None and v.producer.op is ops.dense
                                                                for v in n.inputs)]
    assert len(residual) == 2 and all(n.outputs[0].type.shape == (4, 8) for n in residual)
    np.testing.assert_allclose(interpret(out, feeds)[0], want, rtol=1e-5, atol=1e-5)
