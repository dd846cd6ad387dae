"""winograd: the transforms, the op's numbers against the direct conv (numpy, PyTorch, onnxruntime), the epilogues
it fuses, and which convs the pass picks."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model

from tensorforge.compiler import ops
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.ops import winograd as W
from tensorforge.compiler.ops.nchwc import block_nchw
from tensorforge.compiler.ops.nn import _conv2d_ref
from tensorforge.compiler.passes import pipeline
from tensorforge.compiler.passes.manager import pass_name
from tensorforge.compiler.passes.cpu.winograd import WinogradPolicy, winograd_graph
from tensorforge.runtime.errors import IRError
from tests.support import assert_close, ort_run

OFF = CompileOptions(disabled_passes=frozenset({"winograd"}))


def _direct(x, w, b, pads):
    return _conv2d_ref(x, w, b, strides=(1, 1), pads=pads, dilations=(1, 1), groups=1)


@pytest.mark.parametrize("m", W.TILE_SIZES)
def test_transform_matrices_compute_a_1d_correlation(m):
    """A^T [(G g) * (B^T d)] is the valid correlation of d (m + 2 values) with g (3 taps)."""
    at, g, bt = W.matrices(m)
    rng = np.random.default_rng(m)
    d, taps = rng.standard_normal(m + 2), rng.standard_normal(3)
    want = np.array([d[i:i + 3] @ taps for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tile", W.TILE_SIZES)
@pytest.mark.parametrize("shape, pads", [((1, 32, 9, 9), (1, 1, 1, 1)), ((2, 16, 7, 10), (0, 0, 0, 0)),
                                         ((1, 16, 5, 6), (1, 0, 2, 1))])
def test_reference_matches_direct_conv(tile, shape, pads):
    """The op's numpy reference (the algorithm itself) against the direct conv: partial tiles, uneven pads."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((48, shape[1], 3, 3)) * 0.1).astype(np.float32)  # outputs of order 1
    b = rng.standard_normal(48).astype(np.float32)
    got = ops.winograd_conv2d.evaluate(block_nchw(x, 16), W.transform_weight(w, tile), b, pads=pads, tile=tile,
                                       out_channels=48)[0]
    assert_close(got, block_nchw(_direct(x, w, b, pads), 16), rtol=1e-4, atol=1e-4, what=f"F({tile}, 3)")


# conv1 makes the activations blocked (NCHW[16]c); conv2 is the 3x3 conv the pass may rewrite; EPILOGUE follows
CHAIN = """graph g(%x: f32[1,16,{h},{w}]) {{
  %w1 = param f32[{c},16,1,1]
  %w2 = param f32[{c},{c},3,3]
  %b2 = param f32[{c}]
  %c1 = conv2d(%x, %w1) {{strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1}} : f32[1,{c},{h},{w}]
  %r1 = relu(%c1) : f32[1,{c},{h},{w}]
  %c2 = conv2d(%r1, %w2{bias}) {{strides=(1, 1), pads=({p}, {p}, {p}, {p}), dilations=(1, 1), groups=1}} : f32[1,{c},{oh},{ow}]
{epilogue}
}}
"""
EPILOGUES = {
    "bias_relu": ("  %y = relu(%c2) : f32[1,{c},{oh},{ow}]\n  return %y", True),
    "residual_relu": ("  %s = add(%c2, %r1) : f32[1,{c},{oh},{ow}]\n  %y = relu(%s) : f32[1,{c},{oh},{ow}]\n"
                      "  return %y", True),
    "none": ("  return %c2", False),
}


def chain(h, w, c, pad, epilogue):
    text, bias = EPILOGUES[epilogue]
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    fmt = dict(h=h, w=w, c=c, p=pad, oh=oh, ow=ow, bias=", %b2" if bias else "")
    g = parse_graph(CHAIN.format(epilogue=text.format(**fmt), **fmt))
    rng = np.random.default_rng(1)
    params = {p.name: (rng.standard_normal(p.type.shape) * (0.25 if p.type.rank == 4 else 1)).astype(np.float32)
              for p in g.params}
    return parse_graph(CHAIN.format(epilogue=text.format(**fmt), **fmt), params), params


def _winograd_steps(model):
    return [s["op"] for s in model.plan["steps"] if s["op"].startswith("winograd_conv2d")]


@pytest.mark.parametrize("h, w, pad, epilogue", [(13, 11, 1, "bias_relu"), (10, 9, 0, "bias_relu"),
                                                 (9, 10, 1, "residual_relu"), (10, 7, 0, "none")])
def test_compiled_matches_reference_and_pytorch(h, w, pad, epilogue):
    """Odd and uneven spatial sizes (partial tiles), padding 1 and 0; the epilogue fuses into the Winograd kernel."""
    import torch

    g, p = chain(h, w, 32, pad, epilogue)
    x = np.random.default_rng(2).standard_normal((1, 16, h, w)).astype(np.float32)
    model = compile_model(g)
    steps = _winograd_steps(model)
    assert len(steps) == 1
    if epilogue != "none":
        assert steps[0] == {"bias_relu": "winograd_conv2d+relu", "residual_relu": "winograd_conv2d+add+relu"}[
            epilogue]
    got = model.run({"x": x})[0]
    assert_close(got, interpret(g, {"x": x})[0], rtol=1e-4, atol=1e-4, what="vs the interpreter")
    with torch.no_grad():
        r1 = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(p["w1"])))
        c2 = torch.nn.functional.conv2d(r1, torch.from_numpy(p["w2"]),
                                        torch.from_numpy(p["b2"]) if EPILOGUES[epilogue][1] else None, padding=pad)
        want = {"bias_relu": lambda: torch.relu(c2), "residual_relu": lambda: torch.relu(c2 + r1),
                "none": lambda: c2}[epilogue]().numpy()
    assert_close(got, want, rtol=1e-4, atol=1e-4, what="vs PyTorch")


def test_compiled_matches_onnxruntime():
    """An ONNX chain conv -> relu -> 3x3 conv (pad 1, 64 channels) -> + residual -> relu, odd size 15x15."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((64, 16, 1, 1)) * 0.25).astype(np.float32)
    w2 = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    b2 = rng.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Add", ["c2", "r1"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 15, 15])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 15, 15])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"))])
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = rng.standard_normal((1, 16, 15, 15)).astype(np.float32)
    model = compile_model(onnx_model)
    assert _winograd_steps(model) == ["winograd_conv2d+add+relu"]
    assert_close(model.run({"x": x})[0], ort_run(onnx_model, {"x": x})[0], rtol=1e-4, atol=1e-4, what="vs ORT")


def _optimized(g, disabled=frozenset()):
    from tensorforge.compiler.driver import optimize

    return optimize(g.copy(), CompileOptions(disabled_passes=frozenset({"fuse"}) | disabled))


CHOICE = """graph g(%x: f32[1,16,14,14]) {
  %w0 = param f32[64,16,1,1]
  %wa = param f32[64,64,3,3]
  %wb = param f32[16,64,3,3]
  %wc = param f32[64,16,3,3]
  %wd = param f32[64,64,3,3]
  %we = param f32[64,64,1,1]
  %wf = param f32[64,64,3,3]
  %c0 = conv2d(%x, %w0) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,64,14,14]
  %ca = conv2d(%c0, %wa) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,64,14,14]
  %cb = conv2d(%ca, %wb) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,16,14,14]
  %cc = conv2d(%cb, %wc) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,64,14,14]
  %cd = conv2d(%cc, %wd) {strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,64,7,7]
  %ce = conv2d(%cd, %we) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,64,7,7]
  %cf = conv2d(%ce, %wf) {strides=(1, 1), pads=(2, 2, 2, 2), dilations=(2, 2), groups=1} : f32[1,64,7,7]
  return %cf
}
"""


def test_the_pass_picks_what_the_rule_says():
    """3x3 stride-1 blocked convs with enough channels run as Winograd; a strided, 1x1, dilated or too narrow conv
    (by the policy's channel thresholds) stays direct; --disable-pass winograd leaves them all direct."""
    g = parse_graph(CHOICE)
    rng = np.random.default_rng(0)
    g = parse_graph(CHOICE, {p.name: rng.standard_normal(p.type.shape).astype(np.float32) * 0.1 for p in g.params})
    policy = WinogradPolicy()
    out = _optimized(g)
    convs = [n for n in out.nodes if "conv" in n.op.name]  # in order: c0, ca, cb, cc, cd, ce, cf
    want = ["conv2d_nchwc", "winograd_conv2d",
            "winograd_conv2d" if 16 >= policy.min_out_channels else "conv2d_nchwc",  # cb: 64 -> 16
            "winograd_conv2d" if 16 >= policy.min_in_channels else "conv2d_nchwc",  # cc: 16 -> 64
            "conv2d_nchwc", "conv2d_nchwc", "conv2d_nchwc"]  # strided, 1x1, dilated
    assert [n.op.name for n in convs] == want
    # the transformed weight replaces the blocked one
    wa = convs[1].inputs[1]
    assert wa.name.endswith(".winograd") and wa.type.shape == (6, 6, 1, 64, 64)
    assert wa.name.split(".")[0] == "wa" and not any(p.name.startswith("wa.") and p is not wa for p in out.params)
    off = _optimized(g, frozenset({"winograd"}))
    assert not any(n.op is ops.winograd_conv2d for n in off.nodes)
    x = rng.standard_normal((1, 16, 14, 14)).astype(np.float32)
    assert_close(interpret(out, {"x": x})[0], interpret(off, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_rule_thresholds_and_pipeline_position():
    names = [pass_name(p) for p in pipeline(2, "cpu")]
    assert names.index("alter_layout") < names.index("winograd") < names.index("fuse")
    assert "winograd" not in [pass_name(p) for p in pipeline(1, "cpu")] + [pass_name(p) for p in pipeline(2, "cuda")]
    g = parse_graph(CHOICE)
    rng = np.random.default_rng(0)
    g = parse_graph(CHOICE, {p.name: rng.standard_normal(p.type.shape).astype(np.float32) for p in g.params})
    h = _optimized(g, frozenset({"winograd"}))
    assert winograd_graph(h.copy(), WinogradPolicy(min_in_channels=16, min_out_channels=16)) == 3
    assert winograd_graph(h.copy(), WinogradPolicy(min_in_channels=64, min_out_channels=64)) == 1  # ca only
    assert winograd_graph(h.copy(), WinogradPolicy(min_in_channels=65, min_out_channels=1)) == 0
    assert winograd_graph(h.copy(), WinogradPolicy(min_tiles=17)) == 0  # 14x14: 4 x 4 = 16 tiles of 4x4


def test_a_single_output_tile_stays_direct():
    """A 3x3 conv with a 4x4 output is one Winograd tile, which the 4-tile GEMM rows would pad 4x: direct."""
    text = CHOICE.replace("14,14", "4,4").replace("7,7", "2,2")
    g = parse_graph(text)
    rng = np.random.default_rng(0)
    g = parse_graph(text, {p.name: rng.standard_normal(p.type.shape).astype(np.float32) for p in g.params})
    assert not any(n.op is ops.winograd_conv2d for n in _optimized(g).nodes)
    assert WinogradPolicy().min_tiles == 4


def test_type_errors_name_the_problem():
    g = parse_graph("""graph g(%x: f32[1,2,8,8,16]) {
  %u = param f32[6,6,1,32,64]
  %y = winograd_conv2d(%x, %u) {pads=(1, 1, 1, 1), tile=4, out_channels=64} : f32[1,4,8,8,16]
  return %y
}""")
    assert g.nodes[0].outputs[0].type.shape == (1, 4, 8, 8, 16)
    with pytest.raises(IRError, match="tile 3 is not one of"):
        parse_graph(g.__str__().replace("tile=4", "tile=3"))
    with pytest.raises(IRError, match=r"is not \(6, 6, OC/nb, 32, nb\) for 48 output channels"):
        parse_graph(g.__str__().replace("out_channels=64", "out_channels=48"))


@pytest.mark.parametrize("m", W.TILE_SIZES)
@pytest.mark.parametrize("oc, ic", [(16, 3), (64, 64), (48, 40)])
def test_the_weight_transform_is_g_g_gt_in_its_layout(m, oc, ic):
    """U = G g G^T of every kernel (float64, rounded once), at (eps, nu, oc // nb, ic, oc % nb); aligned or not."""
    from tensorforge.runtime.plan import ALIGNMENT

    w = np.random.default_rng(oc + ic + m).standard_normal((oc, ic, 3, 3)).astype(np.float32)
    _, g, _ = W.matrices(m)
    want = np.einsum("ak,oikl,bl->abio", g, w.astype(np.float64), g).astype(np.float32)  # (eps, nu, ic, oc)
    nb = W.gemm_oc_tile(oc)
    for aligned in (False, True):
        u = W.transform_weight(w, m, aligned=aligned)
        assert u.dtype == np.float32 and u.flags.c_contiguous and u.shape == (m + 2, m + 2, oc // nb, ic, nb)
        assert not aligned or u.ctypes.data % ALIGNMENT == 0
        got = u.transpose(0, 1, 3, 2, 4).reshape(m + 2, m + 2, ic, oc)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
