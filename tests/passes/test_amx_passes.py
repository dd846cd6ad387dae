"""amx_stem and merge_denses (compiler/passes/cpu/amx.py): an image's strided conv as a stride-1 AMX conv over its
space-to-depth; denses reading one input as one dense.
The rewrite runs for the AMX unit on any CPU (the graph only); the compiled kernels run where the CPU has AMX."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler import ops
from tensorforge.compiler.driver import import_model
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.ops.amx import round_bf16
from tensorforge.compiler.passes.cpu.amx import AmxStem
from tensorforge.compiler.passes.cpu.layout import alter_layout
from tensorforge.compiler.passes.cpu.pack_weights import pack_weights
from tensorforge.runtime import cpu_features
from tests.support import assert_close

# the stem and a conv after it (alone, the stem would stay in NCHW: alter_layout's isolated convs)
STEM = """graph g(%x: f32[1,3,{h},{w}]) {{
  %w = param f32[{oc},3,{k},{k}]
  %b = param f32[{oc}]
  %w2 = param f32[16,{oc},3,3]
  %c = conv2d(%x, %w, %b) {{strides=({s}, {s}), pads=({p}, {p}, {p}, {p}), dilations=(1, 1), groups=1}} : f32[1,{oc},{oh},{ow}]
  %y = relu(%c) : f32[1,{oc},{oh},{ow}]
  %z = conv2d(%y, %w2) {{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1}} : f32[1,16,{oh},{ow}]
  return %z
}}
"""

# ResNet-50's stem (7x7/2, pad 3), MobileNetV2's (3x3/2, pad 1) on odd sizes, ConvNeXt's (4x4/4, no pad: 48 channels)
CASES = [(64, 7, 2, 3, 32, 32), (32, 3, 2, 1, 17, 15), (96, 4, 4, 0, 16, 20)]


def stem(oc, k, s, p, h, w):
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    text = STEM.format(oc=oc, k=k, s=s, p=p, h=h, w=w, oh=oh, ow=ow)
    rng = np.random.default_rng(oc)
    params = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) * 0.2 for v in parse_graph(text).params}
    return parse_graph(text, params), params


@pytest.mark.parametrize("oc, k, s, p, h, w", CASES)
def test_the_stem_becomes_a_stride_1_amx_conv_on_the_space_to_depth(oc, k, s, p, h, w):
    g, params = stem(oc, k, s, p, h, w)
    rewritten = AmxStem(unit="amx")(alter_layout(pack_weights(import_model(g))))
    conv = [n for n in rewritten.nodes if n.op.name.startswith("conv2d")][0]
    assert conv.op is ops.conv2d_amx and conv.attrs["strides"] == (1, 1)
    assert conv.attrs["kernel"] == (-(-k // s),) * 2 and conv.attrs["in_channels"] == -(-3 * s * s // 16) * 16
    x = np.random.default_rng(1).standard_normal((1, 3, h, w)).astype(np.float32)
    got = interpret(rewritten, {"x": x})[0]
    # the same conv on the operands rounded to bf16 (the AMX conv's reference rounds them): only summation order
    rounded = {**params, "w": round_bf16(params["w"])}
    want = interpret(parse_graph(STEM.format(oc=oc, k=k, s=s, p=p, h=h, w=w, oh=got.shape[2], ow=got.shape[3]),
                                 rounded), {"x": round_bf16(x)})[0]
    assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("oc, k, s, p, h, w", CASES)
def test_on_avx512bf16_only_stems_whose_padded_products_are_mostly_real_are_rewritten(oc, k, s, p, h, w):
    """3 channels as 12 of a 32-channel block (ResNet-50's 7x7/2: 147 of 512 products real, MobileNetV2's 3x3/2: 27
    of 128) stay float32 on vdpbf16ps; ConvNeXt's 4x4/4 (48 of 64) goes to it."""
    g, _ = stem(oc, k, s, p, h, w)
    rewritten = AmxStem(unit="avx512bf16")(alter_layout(pack_weights(import_model(g))))
    first = [n.op for n in rewritten.nodes if n.op.name.startswith("conv2d")][0]
    assert first is (ops.conv2d_amx if k == s == 4 else ops.conv2d_nchwc)


def test_convs_that_are_no_stem_stay():
    """A stride-1 conv and a strided conv on many channels are not rewritten (the first conv reads the plain input in
    both, `in_block` 0)."""
    for text in (STEM.format(oc=16, k=3, s=1, p=1, h=8, w=8, oh=8, ow=8),
                 STEM.format(oc=16, k=3, s=2, p=1, h=8, w=8, oh=4, ow=4).replace("f32[1,3,", "f32[1,32,")
                 .replace("f32[16,3,", "f32[16,32,")):
        assert "conv2d_amx" not in text
        g = parse_graph(text, {v.name: np.ones(v.type.shape, np.float32) for v in parse_graph(text).params})
        before = [n.op.name for n in alter_layout(pack_weights(import_model(g))).nodes]
        after = [n.op.name for n in AmxStem(unit="amx")(alter_layout(pack_weights(import_model(g)))).nodes]
        assert after == before


@pytest.mark.skipif(not cpu_features.has_amx(), reason="runs AMX kernels: this CPU has no AMX-BF16")
@pytest.mark.parametrize("oc, k, s, p, h, w", CASES[:2])
def test_the_compiled_stem_matches_the_interpreter_and_fp32(oc, k, s, p, h, w):
    from tests.ops.test_amx import check_against_interpreter_and_fp32

    g, _ = stem(oc, k, s, p, h, w)
    model = compile_model(g, precision="bf16")
    assert any(st["op"].startswith("conv2d_amx") for st in model.plan["steps"]), model.plan["steps"]
    x = np.random.default_rng(2).standard_normal((1, 3, h, w)).astype(np.float32)
    check_against_interpreter_and_fp32(g, model, {"x": x})


# ---------------------------------------------------------------------------------------------- merge_denses

QKV = """graph g(%x: f32[20,48]) {
  %wq = param f32[32,48]
  %bq = param f32[32]
  %wk = param f32[32,48]
  %bk = param f32[32]
  %wv = param f32[16,48]
  %bv = param f32[16]
  %wo = param f32[8,48]
  %q = dense(%x, %wq, %bq) : f32[20,32]
  %k = dense(%x, %wk, %bk) : f32[20,32]
  %v = dense(%x, %wv, %bv) : f32[20,16]
  %o = dense(%x, %wo) : f32[20,8]
  %s = add(%q, %k) : f32[20,32]
  %r = relu(%v) : f32[20,16]
  return %s, %r, %o
}
"""


def test_denses_reading_one_input_become_one():
    """q, k and v (with biases) become one dense of 80 columns read through column slices; the dense without a
    bias stays alone; the results are the same."""
    from tensorforge.compiler.passes.cpu.amx import MergeSiblingDenses

    rng = np.random.default_rng(4)
    params = {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in parse_graph(QKV).params}
    g = parse_graph(QKV, params)
    merged = MergeSiblingDenses(unit="amx")(import_model(g))
    merged.verify()
    denses = [n for n in merged.nodes if n.op is ops.dense]
    assert sorted(n.outputs[0].type.shape for n in denses) == [(20, 8), (20, 80)]
    slices = [n for n in merged.nodes if n.op is ops.strided_slice]
    assert [(n.attrs["begins"][1], n.attrs["ends"][1]) for n in slices] == [(0, 32), (32, 64), (64, 80)]
    x = rng.standard_normal((20, 48)).astype(np.float32)
    for got, want in zip(interpret(merged, {"x": x}), interpret(g, {"x": x})):
        assert_close(got, want, rtol=1e-5, atol=1e-5)
