"""The fuse pass: golden groupings, the reasons ops stay alone, and fused kernels computing the same."""

import numpy as np
import onnx
import pytest

import tvm
from tvm.target import Target

from tensorforge import compile_model
from tensorforge.compiler.backend.cpu.rules import schedule_cpu
from tensorforge.compiler.backend.lower import Kernel, build_prim_func, partition
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.report import analyze
from tensorforge.compiler.ir import interpret, parse_graph, print_graph
from tensorforge.compiler.passes import fuse
from tests.support import LIGHT_MODELS, assert_close, light_input, light_path, randomize_weights

CONV_BLOCK = """graph g(%x: f32[1,8,6,6], %skip: f32[1,16,6,6]) {
  %w = param f32[16,8,3,3]
  %b = param f32[16]
  %s = param f32[16,1,1]
  %c = conv2d(%x, %w, %b) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,16,6,6]
  %m = mul(%c, %s) : f32[1,16,6,6]
  %a = add(%m, %skip) : f32[1,16,6,6]
  %r = relu(%a) : f32[1,16,6,6]
  %p = max_pool2d(%r) {kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=false} : f32[1,16,3,3]
  %e = exp(%p) : f32[1,16,3,3]
  %f = reshape(%e) {shape=(1, 144)} : f32[1,144]
  %sm = softmax(%f) {axis=1} : f32[1,144]
  return %sm
}
"""


def params_for(text):
    rng = np.random.default_rng(0)
    g = parse_graph(text)
    return {p.name: rng.uniform(-1, 1, p.type.shape).astype(np.float32) for p in g.params}


def test_conv_epilogue_and_reduction_fusion():
    params = params_for(CONV_BLOCK)
    g = fuse(parse_graph(CONV_BLOCK, params))
    g.verify()
    text = print_graph(g)
    # the anchor takes its scale, residual add and ReLU; exp and reshape fuse into the softmax that follows
    for line in ("conv2d(%x, %w, %b)", "mul(%c, %s)", "add(%m, %skip)", "relu(%a)"):
        assert [ln for ln in text.splitlines() if line in ln][0].endswith("@k0")
    for line in ("exp(%p)", "reshape(%e)", "softmax(%f)"):
        assert [ln for ln in text.splitlines() if line in ln][0].endswith("@k1")
    pool = [n for n in g.nodes if n.op.name == "max_pool2d"][0]
    assert pool.group is None and "reduction ends its kernel" in g.fusion_reasons[pool]
    # round trip with the group marks
    assert print_graph(parse_graph(text, params)) == text


def test_fused_kernels_compute_the_same():
    params = params_for(CONV_BLOCK)
    g = parse_graph(CONV_BLOCK, params)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32),
             "skip": rng.standard_normal((1, 16, 6, 6)).astype(np.float32)}
    model = compile_model(g, options=CompileOptions(disabled_passes=frozenset({"alter_layout"})))
    assert model.num_kernels == 3  # conv+mul+add+relu, max_pool, exp+reshape+softmax
    assert_close(model.run(feeds)[0], interpret(g, feeds)[0], rtol=1e-4, atol=1e-6)


def test_output_read_by_two_branches_fuses_and_is_still_written():
    """A graph output that other ops read joins their kernel, which writes it on the way (an optimizer update:
    new moment, then the parameter from it)."""
    text = """graph g(%x: f32[4,4]) {
      %a = exp(%x) : f32[4,4]
      %b = relu(%a) : f32[4,4]
      %c = neg(%a) : f32[4,4]
      %d = add(%b, %c) : f32[4,4]
      return %d, %a
    }"""
    g = fuse(parse_graph(text))
    g.verify()
    assert {n.group for n in g.nodes} == {"k0"}
    assert compile_model(parse_graph(text)).num_kernels == 1
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}
    for got, want in zip(compile_model(parse_graph(text)).run(feeds), interpret(parse_graph(text), feeds)):
        assert_close(got, want, rtol=1e-5)


def test_two_anchors_never_share_a_kernel():
    text = """graph g(%x: f32[2,8]) {
      %w = param f32[8,8]
      %v = param f32[8,8]
      %a = dense(%x, %w) : f32[2,8]
      %b = dense(%x, %v) : f32[2,8]
      %c = add(%a, %b) : f32[2,8]
      return %c
    }"""
    g = fuse(parse_graph(text, params_for(text)))
    anchors = [n for n in g.nodes if n.op.name == "dense"]
    assert anchors[0].group != anchors[1].group
    assert any("already belongs to another anchor's kernel" in r for r in g.fusion_reasons.values())


@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "densenet121"])
def test_kernel_counts(name):
    g, plan = analyze(light_path(name))
    convs = sum(1 for n in g.nodes if n.op.name in ("conv2d_packed", "conv2d_nchwc", "winograd_conv2d"))
    kernels = plan["stats"]["kernels"]
    if name == "resnet50":  # one kernel per conv (bias, batch norm, ReLU and residual add fused in) + a handful
        assert convs == 53 and kernels <= convs + 5
    assert kernels < plan["stats"]["ops"]


def test_fusion_report_lists_groups_and_reasons():
    g, plan = analyze(light_path("resnet50"))
    fused = [e for e in plan["fusion"] if len(e["nodes"]) > 1]
    alone = [e for e in plan["fusion"] if len(e["nodes"]) == 1]
    assert any([op for op, _ in e["nodes"]] == ["conv2d_nchwc", "add", "relu"] for e in fused)
    assert all(e["reason"] for e in alone)


def test_anchor_kernel_writes_one_output():
    """The anchor schedules have one epilogue: a conv's output that is also a graph output keeps its ReLU out."""
    text = """graph g(%x: f32[1,8,6,6]) {
      %w = param f32[16,8,3,3]
      %c = conv2d(%x, %w) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,16,6,6]
      %r = relu(%c) : f32[1,16,6,6]
      return %r, %c
    }"""
    g = fuse(parse_graph(text, params_for(text)))
    conv = next(n for n in g.nodes if n.op.name == "conv2d")
    assert conv.group is None and "writes one output" in g.fusion_reasons[conv]


ADAM_LIKE = """graph g(%g: f32[6,40], %m: f32[6,40], %v: f32[6,40], %p: f32[6,40]) {
  %b1 = param f32[1]
  %b2 = param f32[1]
  %lr = param f32[1]
  %m1 = mul(%m, %b1) : f32[6,40]
  %m2 = add(%m1, %g) : f32[6,40]
  %gg = mul(%g, %g) : f32[6,40]
  %v1 = mul(%v, %b2) : f32[6,40]
  %v2 = add(%v1, %gg) : f32[6,40]
  %s = sqrt(%v2) : f32[6,40]
  %q = div(%m2, %s) : f32[6,40]
  %u = mul(%q, %lr) : f32[6,40]
  %p2 = sub(%p, %u) : f32[6,40]
  return %p2, %m2, %v2
}
"""


@pytest.mark.parametrize("transposed", [False, True])
def test_update_with_several_outputs_is_one_kernel(transposed):
    """An optimizer update (new moments, then the parameter from them) is one kernel with one merged loop nest;
    an output read at another point (a transpose) keeps separate loop nests, and both compute the same."""
    text = ADAM_LIKE
    if transposed:  # the parameter update reads the new moment transposed: no merged loop nest possible
        text = text.replace("f32[6,40]", "f32[8,8]").replace("%q = div(%m2, %s)", "%mt = transpose(%m2) "
                            "{perm=(1, 0)} : f32[8,8]\n  %q = div(%mt, %s)")
    params = {"b1": np.array([0.9], np.float32), "b2": np.array([0.99], np.float32), "lr": np.array([0.1], np.float32)}
    g = parse_graph(text, params)
    shape = g.inputs[0].type.shape
    rng = np.random.default_rng(0)
    feeds = {v.name: rng.uniform(0.1, 1, shape).astype(np.float32) for v in g.inputs}
    model = compile_model(parse_graph(text, params))
    assert model.num_kernels == 1
    for got, want in zip(model.run(feeds), interpret(g, feeds)):
        assert_close(got, want, rtol=1e-5)
    (kernel,) = [s for s in partition(fuse(parse_graph(text, params))) if isinstance(s, Kernel)]
    script = schedule_cpu(build_prim_func(kernel.spec), Target.from_device(tvm.cpu())).script()
    top_level_loops = [ln for ln in script.splitlines() if ln.startswith("    for ")]
    assert len(top_level_loops) == (3 if transposed else 1)
