"""The bf16 mode on AVX512-BF16 without AMX (backend/cpu/bf16dot.py, passes/cpu/amx.py `bf16_unit`): which unit a
CPU gets, the `vdpbf16ps` schedules (compiled for a Zen 4 on any host), and, on a CPU with AVX512-BF16, whole
models against the interpreter and fp32 (TENSORFORGE_BF16_UNIT=avx512bf16 picks the unit on an AMX machine)."""

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.target import Target

from tensorforge import compile_model
from tensorforge.compiler import ops
from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
from tensorforge.compiler.ops import amx, amx_conv, amx_matmul
from tensorforge.compiler.passes.cpu import amx as amx_pass
from tensorforge.runtime import cpu_features
from tensorforge.runtime.errors import InputError
from tests.ops.test_amx import check_against_interpreter_and_fp32, cnn, graph, with_params
from tests.ops.test_amx_attention import attention_graph

ZEN4 = Target({"kind": "llvm", "mcpu": "znver4", "mtriple": "x86_64-linux-gnu"})
needs_dp = pytest.mark.skipif("avx512_bf16" not in cpu_features.cpu_features(),
                              reason="runs vdpbf16ps kernels: this CPU has no AVX512-BF16")


@pytest.mark.parametrize("flags, vendor, want", [
    ({"amx_tile", "amx_bf16", "avx512_bf16"}, "GenuineIntel", "amx"),
    ({"avx512_bf16", "avx512f"}, "AuthenticAMD", "avx512bf16"),   # Zen 4
    ({"avx512_bf16", "avx512f"}, "GenuineIntel", None),           # vdpbf16ps at half the FMA rate there
    ({"avx512f"}, "AuthenticAMD", None),
])
def test_each_cpu_gets_its_bf16_unit(monkeypatch, flags, vendor, want):
    monkeypatch.delenv(amx_pass.BF16_UNIT_ENV, raising=False)
    monkeypatch.setattr(amx_pass, "cpu_features", lambda: frozenset(flags))
    monkeypatch.setattr(amx_pass, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(amx_pass, "has_amx", lambda: {"amx_tile", "amx_bf16"} <= flags)
    assert amx_pass.bf16_unit() == want


def test_the_unit_can_be_chosen_among_those_the_cpu_has(monkeypatch):
    monkeypatch.setattr(amx_pass, "cpu_features", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(amx_pass, "has_amx", lambda: False)
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    assert amx_pass.bf16_unit() == "avx512bf16"
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "none")
    assert amx_pass.bf16_unit() is None
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "amx")
    with pytest.raises(InputError, match="TENSORFORGE_BF16_UNIT=amx: this CPU has no AMX"):
        amx_pass.bf16_unit()
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "tpu")
    with pytest.raises(InputError, match="'tpu' is not a bf16 unit; choose one of amx, avx512bf16, none"):
        amx_pass.bf16_unit()


def _asm(func, rule_name):
    sch, rule = schedule_cpu_traced(func, ZEN4)
    assert rule is not None and rule.name == rule_name
    return tvm.compile(sch.mod, target=ZEN4).mod.inspect_source("asm")


@pytest.mark.parametrize("m,k,n", [(197, 768, 100), (16, 8, 64)])
def test_the_dense_schedule_puts_the_product_on_vdpbf16ps(m, k, n):
    """Compiled for a Zen 4: every k pair of a 8 x 32 register tile is 16 dot products on registers, no AMX."""
    x = te.placeholder((m, k), "float32", name="x")
    wp = te.placeholder(amx.pack_amx_weight(np.zeros((n, k), np.float32)).shape, "bfloat16", name="w")
    out = amx.dense_amx_compute(x, wp, None, n=n, unit="avx512bf16")
    asm = _asm(te.create_prim_func([x, wp, out]), "dp_dense")
    assert asm.count("vdpbf16ps") >= 16 and "tdpbf16ps" not in asm and "ldtilecfg" not in asm


def test_products_are_padded_to_the_units_register_tile_rows():
    """197 rows (ViT's tokens) are 200 on vdpbf16ps's 8-row tiles and 224 on AMX's 32; a 7x7 1x1 conv's 49 pixels 56
    and 64."""
    x = te.placeholder((197, 64), "float32", name="x")
    wp = te.placeholder(amx.pack_amx_weight(np.zeros((32, 64), np.float32)).shape, "bfloat16", name="w")
    a = te.placeholder((2, 197, 64), "float32", name="a")
    xc = te.placeholder((1, 4, 7, 7, 16), "float32", name="xc")
    wc = te.placeholder(amx_conv.pack_amx_conv_weight(np.zeros((64, 64, 1, 1), np.float32)).shape, "bfloat16",
                        name="wc")
    for unit, rows, pixels in (("avx512bf16", 200, 56), ("amx", 224, 64)):
        assert int(amx.dense_amx_compute(x, wp, None, n=32, unit=unit).op.input_tensors[0].shape[0]) == rows
        mm = amx_matmul.matmul_amx_compute(a, a, unit=unit, transpose_b=True)
        assert int(mm.op.input_tensors[0].shape[1]) == rows
        conv = amx_conv.conv2d_amx_compute(xc, wc, None, out_channels=64, in_channels=64, kernel=(1, 1),
                                           strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), unit=unit)
        assert int(conv.op.input_tensors[0].shape[2]) == pixels


def test_the_conv_and_matmul_schedules_put_their_products_on_vdpbf16ps():
    x = te.placeholder((1, 4, 9, 9, 16), "float32", name="x")
    wp = te.placeholder(amx_conv.pack_amx_conv_weight(np.zeros((64, 64, 3, 3), np.float32)).shape, "bfloat16",
                        name="w")
    out = amx_conv.conv2d_amx_compute(x, wp, None, out_channels=64, in_channels=64, kernel=(3, 3), strides=(1, 1),
                                      pads=(1, 1, 1, 1), dilations=(1, 1), unit="avx512bf16")
    assert _asm(te.create_prim_func([x, wp, out]), "dp_conv").count("vdpbf16ps") >= 16
    a = te.placeholder((2, 40, 64), "float32", name="a")
    b = te.placeholder((2, 64, 48), "float32", name="b")
    out = amx_matmul.matmul_amx_compute(a, b, unit="avx512bf16")
    assert _asm(te.create_prim_func([a, b, out]), "dp_matmul").count("vdpbf16ps") >= 16


@needs_dp
@pytest.mark.parametrize("m,k,n", [(197, 72, 100), (16, 768, 96), (64, 8, 32)])
def test_bf16_dense_on_vdpbf16ps_matches_the_interpreter_and_fp32(monkeypatch, m, k, n):
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    g = graph(m, k, n)
    model = compile_model(g, precision="bf16")
    assert [s["op"].split("+")[0] for s in model.plan["steps"]].count("dense_amx") == 2
    assert "avx512_bf16" in model.plan["cpu_features"] and "amx_tile" not in model.plan["cpu_features"]
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    check_against_interpreter_and_fp32(g, model, {"x": x})


@needs_dp
@pytest.mark.parametrize("h, w", [(9, 11), (16, 16)])
def test_bf16_cnn_on_vdpbf16ps_matches_the_interpreter_and_fp32(monkeypatch, h, w):
    """The AMX test's CNN: a 3x3 conv with a residual epilogue and a strided 3x3 conv, 48 channels padded to 64; the
    activations between them stored as bfloat16. rtol 1e-2: a sum that differs from the interpreter's in its last
    fp32 bit (summation order) can round to the neighbouring bf16 (2^-8 relative), and the next conv carries it on."""
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    g = cnn(h, w)
    model = compile_model(g, precision="bf16")
    steps = [s["op"] for s in model.plan["steps"]]
    assert "conv2d_amx+cast+add+relu+cast" in steps and "conv2d_amx" in steps, steps
    x = np.random.default_rng(9).standard_normal((1, 16, h, w)).astype(np.float32)
    check_against_interpreter_and_fp32(g, model, {"x": x}, rtol=1e-2)


@needs_dp
def test_bf16_attention_on_vdpbf16ps_matches_the_interpreter_and_fp32(monkeypatch):
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    g, feeds = attention_graph(128, 128, False, True)
    model = compile_model(g, precision="bf16")
    assert [s["op"].split("+")[0] for s in model.plan["steps"]].count("matmul_amx") == 2
    check_against_interpreter_and_fp32(g, model, feeds, rtol=1e-3)


# Winograd F(2x2, 3x3) in bf16 on AVX512-BF16 (ops/winograd.py unit avx512bf16): two 3x3 convs on multiples of 32
# channels (the first conv, on the plain input, stays a conv), the second's output read by a residual add
WINO = """graph g(%x: f32[1,32,{h},{w}]) {{
  %w1 = param f32[32,32,1,1]
  %w2 = param f32[64,32,3,3]
  %b2 = param f32[64]
  %w3 = param f32[32,64,3,3]
  %c1 = conv2d(%x, %w1) {{strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1}} : f32[1,32,{h},{w}]
  %r1 = relu(%c1) : f32[1,32,{h},{w}]
  %c2 = conv2d(%r1, %w2, %b2) {{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1}} : f32[1,64,{h},{w}]
  %r2 = relu(%c2) : f32[1,64,{h},{w}]
  %c3 = conv2d(%r2, %w3) {{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1}} : f32[1,32,{h},{w}]
  %y = add(%c3, %r1) : f32[1,32,{h},{w}]
  return %y
}}
"""


def wino_graph(h, w):
    return with_params(WINO.format(h=h, w=w), 11, 0.15)


def test_3x3_convs_on_32_channel_multiples_become_bf16_winograd():
    from tensorforge.compiler.driver import import_model
    from tensorforge.compiler.passes.cpu.layout import alter_layout
    from tensorforge.compiler.passes.cpu.pack_weights import pack_weights

    g = amx_pass.AmxConv(unit="avx512bf16")(alter_layout(pack_weights(import_model(wino_graph(9, 7)))))
    wino = [n for n in g.nodes if n.op is ops.winograd_conv2d]
    assert len(wino) == 2 and all(n.attrs["unit"] == "avx512bf16" and n.attrs["tile"] == 2 for n in wino)
    assert [n.inputs[1].type.dtype for n in wino] == ["bfloat16"] * 2
    # on AMX the same convs are AMX convs
    g = amx_pass.AmxConv(unit="amx")(alter_layout(pack_weights(import_model(wino_graph(9, 7)))))
    assert not any(n.op is ops.winograd_conv2d for n in g.nodes)


def test_the_bf16_winograd_reference_is_within_bf16_of_the_conv():
    from tensorforge.compiler.ops import winograd
    from tensorforge.compiler.ops.nchwc import block_nchw
    from tensorforge.compiler.ops.nn import _conv2d_ref

    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((1, 64, 11, 10)), 0).astype(np.float32)
    w = (rng.standard_normal((32, 64, 3, 3)) / 24).astype(np.float32)
    u = winograd.transform_weight_dp(w)
    got = winograd.reference(block_nchw(x, 16), u, None, pads=(1, 1, 1, 1), tile=2, out_channels=32,
                             unit="avx512bf16")
    want = block_nchw(_conv2d_ref(x, w, None, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1), 16)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-4 < err < 1e-2, err


def test_the_bf16_winograd_schedule_puts_its_products_on_vdpbf16ps():
    from tensorforge.compiler.ops import winograd

    x = te.placeholder((1, 4, 14, 14, 16), "float32", name="x")
    u = te.placeholder(winograd.transform_weight_dp(np.zeros((64, 64, 3, 3), np.float32)).shape, "bfloat16",
                       name="u")
    out = winograd.conv2d_winograd_compute(x, u, None, pads=(1, 1, 1, 1), tile=2, out_channels=64,
                                           unit="avx512bf16")
    asm = _asm(te.create_prim_func([x, u, out]), "dp_winograd")
    assert asm.count("vdpbf16ps") >= 16 and "tdpbf16ps" not in asm


def _winograd_func(channels, hw, out_channels):
    from tensorforge.compiler.ops import winograd

    x = te.placeholder((1, channels // 16, hw, hw, 16), "float32", name="x")
    u = te.placeholder(winograd.transform_weight_dp(np.zeros((out_channels, channels, 3, 3), np.float32)).shape,
                       "bfloat16", name="u")
    out = winograd.conv2d_winograd_compute(x, u, None, pads=(1, 1, 1, 1), tile=2, out_channels=out_channels,
                                           unit="avx512bf16")
    return te.create_prim_func([x, u, out])


@pytest.mark.parametrize("channels, hw, group", [
    (64, 56, 56),     # 784 tiles in 14 groups
    (128, 28, 40),    # 196 tiles (200 padded) in 5 groups, the last one's output 36 tiles
    (32, 32, 64),     # 256 tiles: 128 would leave 2 groups
    (256, 14, None),  # 49 tiles: no 4 groups of 32
    (64, 7, None),    # 7x7: the output is not whole tiles
    (512, 56, None),  # 56 tiles' V and M would not fit
])
def test_bf16_winograd_groups_of_tiles(channels, hw, group):
    from tvm import s_tir

    from tensorforge.compiler.backend.cpu import bf16dot, winograd as wino_schedule
    from tensorforge.compiler.ops.winograd import WINO_GEMM_DP

    sch = s_tir.Schedule(_winograd_func(channels, hw, channels))
    assert wino_schedule.tile_group(sch, WINO_GEMM_DP, bf16dot.ROWS) == group


def test_the_grouped_bf16_winograd_computes_each_group_in_turn():
    asm = _asm(_winograd_func(64, 56, 64), "dp_winograd")
    assert asm.count("vdpbf16ps") >= 16 and "tdpbf16ps" not in asm


@needs_dp
@pytest.mark.parametrize("h, w", [(9, 7), (16, 16), (28, 28)])
def test_bf16_winograd_on_vdpbf16ps_matches_the_interpreter_and_fp32(monkeypatch, h, w):
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    check_bf16_winograd(wino_graph(h, w), np.random.default_rng(4).standard_normal((1, 32, h, w)))


def check_bf16_winograd(g, x):
    """Both 3x3 convs of `g` compile to the bf16 Winograd kernel, and the model matches the interpreter and fp32."""
    model = compile_model(g, precision="bf16")
    steps = [s["op"].split("+")[0] for s in model.plan["steps"]]
    assert steps.count("winograd_conv2d") == 2, steps
    check_against_interpreter_and_fp32(g, model, {"x": x.astype(np.float32)}, rtol=1e-2)


# two images, a valid conv and one with uneven pads (tiles cross the images; the last tile row and column partial)
WINO_EDGES = """graph g(%x: f32[2,32,10,9]) {
  %w1 = param f32[32,32,1,1]
  %w2 = param f32[64,32,3,3]
  %w3 = param f32[32,64,3,3]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[2,32,10,9]
  %r1 = relu(%c1) : f32[2,32,10,9]
  %c2 = conv2d(%r1, %w2) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[2,64,8,7]
  %r2 = relu(%c2) : f32[2,64,8,7]
  %y = conv2d(%r2, %w3) {strides=(1, 1), pads=(0, 1, 2, 1), dilations=(1, 1), groups=1} : f32[2,32,8,7]
  return %y
}
"""


@needs_dp
def test_bf16_winograd_on_two_images_with_uneven_pads(monkeypatch):
    monkeypatch.setenv(amx_pass.BF16_UNIT_ENV, "avx512bf16")
    check_bf16_winograd(with_params(WINO_EDGES, 12, 0.15), np.random.default_rng(13).standard_normal((2, 32, 10, 9)))
