"""dense and conv2d on AMX tiles (ops/amx.py, ops/amx_conv.py, backend/cpu/amx.py, passes/cpu/amx.py): the weight
layouts, the bf16 rounding in TIR, the references, the schedules (compiled for an AMX CPU on any host), and, on a
CPU with AMX, whole models against the interpreter and fp32. Attention: tests/ops/test_amx_attention.py."""

import ml_dtypes
import numpy as np
import pytest
import tvm
from tvm import te
from tvm.target import Target

from tensorforge import compile_model
from tensorforge.compiler import ops
from tensorforge.compiler.backend.cpu.amx import tile_config_bytes
from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
from tensorforge.compiler.driver import import_model, optimize
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.ops import amx, amx_conv
from tensorforge.compiler.ops.nchwc import block_nchw
from tensorforge.compiler.ops.nn import _conv2d_ref
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.passes.cpu.amx import AmxDense, bf16_units_here
from tensorforge.runtime import cpu_features
from tensorforge.runtime.errors import ArtifactError
from tests.support import assert_close

AMX_CPU = Target({"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"})
needs_amx = pytest.mark.skipif(not cpu_features.has_amx(), reason="runs AMX kernels: this CPU has no AMX-BF16")

GRAPH = """graph g(%x: f32[{m},{k}]) {{
  %w1 = param f32[{n},{k}]
  %b1 = param f32[{n}]
  %w2 = param f32[24,{n}]
  %h = dense(%x, %w1, %b1) : f32[{m},{n}]
  %r = gelu(%h) : f32[{m},{n}]
  %y = dense(%r, %w2) : f32[{m},24]
  return %y
}}
"""


def with_params(text: str, seed: int, scale: float):
    """The graph of `text` with normal random params of standard deviation `scale`."""
    rng = np.random.default_rng(seed)
    params = {p.name: (rng.standard_normal(p.type.shape) * scale).astype(np.float32) for p in parse_graph(text).params}
    return parse_graph(text, params)


def graph(m, k, n):
    return with_params(GRAPH.format(m=m, k=k, n=n), 0, 0.3)


@pytest.mark.parametrize("n,k", [(32, 32), (100, 72), (17, 5)])
def test_weight_packing_round_trips(n, k):
    w = np.random.default_rng(1).standard_normal((n, k)).astype(np.float32)
    wp = amx.pack_amx_weight(w)
    assert wp.dtype == ml_dtypes.bfloat16
    assert wp.shape == (-(-n // 32) * 2, max(2, -(-k // 32)), 16, 16, 2)
    np.testing.assert_array_equal(amx.unpack_amx_weight(wp, n, k), amx.round_bf16(w))
    # the padding is zeros, so padded columns of k add nothing and padded rows of n are dropped
    full = wp.astype(np.float32).transpose(0, 3, 1, 2, 4).reshape(wp.shape[0] * 16, -1)
    assert not full[n:].any() and not full[:, k:].any()


def test_tile_configuration():
    cfg = tile_config_bytes()
    assert len(cfg) == 64 and cfg[0] == 1
    assert [cfg[16 + 2 * t] | cfg[17 + 2 * t] << 8 for t in range(8)] == [64] * 8
    assert cfg[48:56] == [16] * 8 and not any(cfg[56:])


@needs_amx
@pytest.mark.parametrize("before", ["released", "other", "ours"])
def test_the_tile_configuration_is_loaded_where_the_thread_lacks_it(before):
    """configure_tiles after no configuration, another one (8-row tiles: oneDNN's in the same thread), or ours:
    the thread ends with ours every time."""
    from tvm.script import tirx as T

    from tensorforge.compiler.backend.cpu.amx import configure_tiles
    from tensorforge.runtime.cpu_features import request_amx

    request_amx()
    other = tile_config_bytes()
    other[48:56] = [8] * 8

    @T.prim_func
    def probe(first: T.Buffer((64,), "uint8"), got: T.Buffer((64,), "uint8")):
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))
        if before != "released":
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(first[0])))
        configure_tiles()
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sttilecfg", T.address_of(got[0])))
        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilerelease"))

    lib = tvm.compile(tvm.IRModule({"main": probe}), target=AMX_CPU)
    got = tvm.runtime.tensor(np.zeros(64, np.uint8))
    lib["main"](tvm.runtime.tensor(np.array(other if before == "other" else tile_config_bytes(), np.uint8)), got)
    assert got.numpy().tolist() == tile_config_bytes()


def test_bf16_rounding_in_tir_matches_ml_dtypes():
    """x -> bf16 bits in the kernel (ties to even, NaN, +-inf, denormals, overflow to inf) as ml_dtypes rounds."""
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38,
                        1e-40, -1e-40, 1.17549435e-38, 65504.0], np.float32)
    values = np.concatenate([special, np.random.default_rng(2).standard_normal(1000).astype(np.float32) * 100,
                             np.frombuffer(np.random.default_rng(3).bytes(4000), np.float32)])
    x = te.placeholder((values.size,), "float32", name="x")
    y = te.compute(x.shape, lambda i: amx.bf16_bits(x[i]), name="y")
    lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, y])}), target="llvm")
    out = tvm.runtime.tensor(np.zeros(values.size, np.uint16))
    lib["main"](tvm.runtime.tensor(values), out)
    got = out.numpy().view(ml_dtypes.bfloat16).astype(np.float32)
    with np.errstate(invalid="ignore"):  # NaN payloads
        want = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), values[~same][:5]


@pytest.mark.parametrize("m,k,n,epilogue", [(197, 768, 100, True), (16, 8, 64, False)])
def test_the_schedule_puts_the_product_on_amx_tiles(m, k, n, epilogue):
    """Compiled for an AMX CPU (no AMX needed here): the amx_dense rule schedules it and the code has tile
    products, the configuration and the stores."""
    x = te.placeholder((m, k), "float32", name="x")
    wp = te.placeholder(amx.pack_amx_weight(np.zeros((n, k), np.float32)).shape, "bfloat16", name="w")
    b = te.placeholder((n,), "float32", name="b")
    out = amx.dense_amx_compute(x, wp, b if epilogue else None, n=n)
    if epilogue:
        out = te.compute(out.shape, lambda i, j: te.max(out[i, j], 0.0), name="relu")
    func = te.create_prim_func([x, wp, b, out] if epilogue else [x, wp, out])
    sch, rule = schedule_cpu_traced(func, AMX_CPU)
    assert rule is not None and rule.name == "amx_dense"
    asm = tvm.compile(sch.mod, target=AMX_CPU).mod.inspect_source("asm")
    for instruction in ("ldtilecfg", "tileloadd", "tdpbf16ps", "tilestored"):
        assert instruction in asm, instruction


def test_the_pass_rewrites_only_dense_with_enough_rows_and_param_weights():
    g = import_model(graph(20, 72, 100))
    AmxDense(unit="amx")(g)
    assert [n.op.name for n in g.nodes if n.op.name.startswith("dense")] == ["dense_amx", "dense_amx"]
    small = import_model(graph(amx.MIN_ROWS - 1, 72, 100))
    AmxDense(unit="amx")(small)
    assert [n.op.name for n in small.nodes if n.op.name.startswith("dense")] == ["dense", "dense"]


def test_the_reference_rounds_both_operands():
    """The interpreter's dense_amx is fp32 arithmetic on bf16-rounded x and w (what the tiles multiply)."""
    g = graph(32, 40, 48)
    opt = import_model(g)
    AmxDense(unit="amx")(opt)
    x = np.random.default_rng(4).standard_normal((32, 40)).astype(np.float32)
    w1, b1 = (p.data for p in g.params[:2])
    first = next(n for n in opt.nodes if n.op is ops.dense_amx)
    got = ops.dense_amx.reference(x, first.inputs[1].data, first.inputs[2].data, **first.attrs)
    assert_close(got, amx.round_bf16(x) @ amx.round_bf16(w1).T + b1, rtol=1e-6, atol=1e-5)


@needs_amx
@pytest.mark.parametrize("m,k,n,rtol", [(197, 72, 100, 1e-4), (16, 768, 96, 1e-4), (64, 8, 32, 1e-4),
                                         (100, 300, 64, 2e-3), (197, 416, 40, 2e-3)])
def test_bf16_models_on_amx_match_the_interpreter_and_fp32(m, k, n, rtol):
    """(100, 300, 64): K in two groups of 5 blocks over 4 row blocks (backend/cpu/amx.py schedule_gemm_k_groups);
    (197, 416, 40): 13 K blocks, no group size: whole-K tiles. Their rtol: the second dense rounds the first's
    output to bf16, and with K = 300 a sum that differs from the interpreter's in its last fp32 bits (summation
    order) rounds to the neighbouring bf16 about once per 3000 outputs (0.024 off at one output of ~20)."""
    g = graph(m, k, n)
    model = compile_model(g, precision="bf16")
    assert {"amx_tile", "amx_bf16"} <= set(model.plan["cpu_features"])
    assert [s["op"].split("+")[0] for s in model.plan["steps"]].count("dense_amx") == 2
    x = np.random.default_rng(5).standard_normal((m, k)).astype(np.float32)
    check_against_interpreter_and_fp32(g, model, {"x": x}, rtol=rtol)


def _use_unit(unit: str) -> None:
    """Skip where this CPU lacks the bf16 `unit`; ask Linux for AMX state where it is AMX."""
    from tensorforge.runtime.cpu_features import request_amx

    if unit not in bf16_units_here():
        pytest.skip(f"this CPU has no {unit}")
    if unit == "amx":
        request_amx()


def _run_kernel(tensors, arrays, rule: str) -> np.ndarray:
    """Schedule the TE kernel `tensors` (inputs, then the output) for this CPU, check the rule that took it, and
    run it on `arrays` (the inputs) into a NaN-filled output."""
    from tensorforge.compiler.backend.build import resolve_target

    target = resolve_target("cpu")
    sch, got = schedule_cpu_traced(te.create_prim_func(list(tensors)), target)
    assert got.name == rule
    out = tvm.runtime.tensor(np.full([int(d) for d in tensors[-1].shape], np.nan, np.float32))
    tvm.compile(sch.mod, target=target)["main"](*(tvm.runtime.tensor(a) for a in arrays), out)
    return out.numpy()


@needs_amx
@pytest.mark.parametrize("m,k,n", [(100, 300, 64), (197, 768, 96), (32, 2048, 32), (288, 200, 64), (100, 4096, 32)])
def test_the_dense_kernel_sums_every_k_block(m, k, n):
    """The kernel alone (one rounding of its inputs, as the reference): whole-K row tiles with 1 to 7 row blocks to
    a task, every row in one task (prefetching the next panel: past the weight's end for the last task) or 9 row
    blocks in tasks of 3; past K = 3072, K in groups of blocks, the sums loaded and stored between groups."""
    _use_unit("amx")
    rng = np.random.default_rng(11)
    xv, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    wp = amx.pack_amx_weight(w)
    x = te.placeholder((m, k), "float32", name="x")
    wt = te.placeholder(wp.shape, "bfloat16", name="w")
    got = _run_kernel([x, wt, amx.dense_amx_compute(x, wt, None, n=n)], [xv, wp], "amx_dense")
    assert_close(got, ops.dense_amx.reference(xv, wp, n=n, k=k), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("m, prefetches", [(128, True), (288, False)])
def test_a_dense_task_with_every_row_prefetches_the_next_weight_panel(m, prefetches):
    """Compiled for any x86 CPU with AMX (no AMX needed to compile): one task per panel with all the rows
    prefetches the next panel into L2; tasks that share a panel do not (the next task's panel is this one)."""
    target = AMX_CPU
    x = te.placeholder((m, 256), "float32", name="x")
    wt = te.placeholder((6, 8, 16, 16, 2), "bfloat16", name="w")
    sch, rule = schedule_cpu_traced(te.create_prim_func([x, wt, amx.dense_amx_compute(x, wt, None, n=96)]), target)
    assert rule.name == "amx_dense"
    asm = tvm.compile(sch.mod, target=target).mod.inspect_source("asm")
    assert asm.count("tdpbf16ps") > 0
    assert ("prefetcht1" in asm) == prefetches


@pytest.mark.parametrize("unit", ["amx", "avx512bf16"])
@pytest.mark.parametrize("ic, oc, h, w, stride", [(64, 128, 9, 10, 2), (256, 64, 14, 14, 2), (32, 32, 7, 7, 3),
                                                  (64, 48, 12, 12, 1), (64, 32, 8, 8, 1), (96, 64, 23, 20, 2)])
def test_1x1_convs_against_the_reference(unit, ic, oc, h, w, stride):
    """1x1 convs, against the reference (the conv on rounded operands), on each bf16 unit this CPU has: with stride
    s and no padding they run at stride 1 over the pixels they read (ops/amx_conv.py); on AMX their tasks are whole
    output rows with a write-back of their own (ANN_TASK_PIXELS: 8 rows of 12, the last task half padding; 4 rows
    of 8; 4 rows of 10 after a stride 2), on odd and even sizes."""
    _use_unit(unit)
    rng = np.random.default_rng(12)
    xv = block_nchw(rng.standard_normal((1, ic, h, w)).astype(np.float32), 16)
    wp = amx_conv.pack_amx_conv_weight(rng.standard_normal((oc, ic, 1, 1)).astype(np.float32))
    attrs = dict(out_channels=oc, in_channels=ic, kernel=(1, 1), strides=(stride, stride), pads=(0, 0, 0, 0),
                 dilations=(1, 1))
    x = te.placeholder(xv.shape, "float32", name="x")
    wt = te.placeholder(wp.shape, "bfloat16", name="w")
    y = amx_conv.conv2d_amx_compute(x, wt, None, unit=unit, **attrs)
    got = _run_kernel([x, wt, y], [xv, wp], {"amx": "amx_conv", "avx512bf16": "dp_conv"}[unit])
    assert_close(got, ops.conv2d_amx.reference(xv, wp, **attrs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("unit", ["amx", "avx512bf16"])
@pytest.mark.parametrize("ic, oc, hw, k, stride", [(64, 48, 12, 1, 1), (48, 64, 9, 3, 2), (64, 128, 10, 1, 2)])
def test_convs_read_a_bfloat16_input(unit, ic, oc, hw, k, stride):
    """An input stored as bfloat16 (passes/cpu/bf16_activations.py) is the operand as it is: the same result as
    the reference on its float32 value; 48 channels leave half a block of zero padding, 3x3 pads the borders."""
    _use_unit(unit)
    rng = np.random.default_rng(14)
    xv = block_nchw(rng.standard_normal((1, ic, hw, hw)).astype(np.float32), 16).astype(ml_dtypes.bfloat16)
    wp = amx_conv.pack_amx_conv_weight(rng.standard_normal((oc, ic, k, k)).astype(np.float32))
    attrs = dict(out_channels=oc, in_channels=ic, kernel=(k, k), strides=(stride, stride), pads=(k // 2,) * 4,
                 dilations=(1, 1))
    x = te.placeholder(xv.shape, "bfloat16", name="x")
    wt = te.placeholder(wp.shape, "bfloat16", name="w")
    y = amx_conv.conv2d_amx_compute(x, wt, None, unit=unit, **attrs)
    got = _run_kernel([x, wt, y], [xv, wp], {"amx": "amx_conv", "avx512bf16": "dp_conv"}[unit])
    assert_close(got, ops.conv2d_amx.reference(xv.astype(np.float32), wp, **attrs), rtol=1e-5, atol=1e-4)


def check_against_interpreter_and_fp32(g, model, feeds, rtol=1e-4):
    """The bf16 build against the interpreter on the optimized graph (the same roundings; only summation order
    differs) and within bf16's accuracy of the fp32 graph (but not equal to it)."""
    got = model.run(feeds)[0]
    opt = optimize(import_model(g), CompileOptions(precision="bf16"))
    assert_close(got, interpret(opt, feeds)[0], rtol=rtol, atol=rtol * np.abs(got).max(), what="vs the interpreter")
    exact = interpret(g, feeds)[0]
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 0 < err < 1.5e-2, err


@needs_amx
def test_a_model_with_amx_kernels_is_refused_where_linux_gives_no_amx(monkeypatch, tmp_path):
    model = compile_model(graph(32, 32, 32), precision="bf16")
    path = tmp_path / "m.tfa"
    model.save(path)
    from tensorforge import load

    monkeypatch.setattr(cpu_features, "_amx_granted", False)
    with pytest.raises(ArtifactError, match="AMX tiles.*Linux refused AMX state"):
        load(path)


# ---------------------------------------------------------------------------------------------- conv2d_amx

CNN = """graph g(%x: f32[1,16,{h},{w}]) {{
  %w1 = param f32[48,16,1,1]
  %b1 = param f32[48]
  %w2 = param f32[48,48,3,3]
  %b2 = param f32[48]
  %w3 = param f32[64,48,3,3]
  %c1 = conv2d(%x, %w1, %b1) {{strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1}} : f32[1,48,{h},{w}]
  %r1 = relu(%c1) : f32[1,48,{h},{w}]
  %c2 = conv2d(%r1, %w2, %b2) {{strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1}} : f32[1,48,{h},{w}]
  %s = add(%c2, %r1) : f32[1,48,{h},{w}]
  %r2 = relu(%s) : f32[1,48,{h},{w}]
  %y = conv2d(%r2, %w3) {{strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1}} : f32[1,64,{oh},{ow}]
  return %y
}}
"""


def cnn(h, w):
    return with_params(CNN.format(h=h, w=w, oh=(h - 1) // 2 + 1, ow=(w - 1) // 2 + 1), 6, 0.2)


@pytest.mark.parametrize("oc, ic, k", [(64, 64, 3), (48, 16, 1), (40, 100, 5)])
def test_conv_weight_packing_round_trips(oc, ic, k):
    w = np.random.default_rng(7).standard_normal((oc, ic, k, k)).astype(np.float32)
    wp = amx_conv.pack_amx_conv_weight(w)
    assert wp.shape == (-(-oc // 32) * 2, amx_conv.conv_channel_blocks(ic, k, k) * k * k, 16, 16, 2)
    np.testing.assert_array_equal(amx_conv.unpack_amx_conv_weight(wp, oc, ic, k, k), amx.round_bf16(w))


@pytest.mark.parametrize("ic, oc, hw, k, stride, pad", [(64, 64, 9, 3, 1, 1), (256, 64, 7, 1, 1, 0),
                                                        (64, 128, 10, 1, 2, 0), (48, 48, 6, 3, 2, 1)])
def test_the_conv_schedule_puts_the_product_on_amx_tiles(ic, oc, hw, k, stride, pad):
    x = te.placeholder((1, ic // 16, hw, hw, 16), "float32", name="x")
    wp = te.placeholder(amx_conv.pack_amx_conv_weight(np.zeros((oc, ic, k, k), np.float32)).shape, "bfloat16",
                        name="w")
    out = amx_conv.conv2d_amx_compute(x, wp, None, out_channels=oc, in_channels=ic, kernel=(k, k),
                                      strides=(stride, stride), pads=(pad,) * 4, dilations=(1, 1))
    sch, rule = schedule_cpu_traced(te.create_prim_func([x, wp, out]), AMX_CPU)
    assert rule is not None and rule.name == "amx_conv"
    asm = tvm.compile(sch.mod, target=AMX_CPU).mod.inspect_source("asm")
    for instruction in ("ldtilecfg", "tilezero", "tileloadd", "tdpbf16ps", "tilestored"):
        assert instruction in asm, instruction


@needs_amx
def test_an_inverted_residual_with_stored_activations_matches_the_interpreter_and_fp32():
    """MobileNetV2's block in bf16 on AMX: the expansion's output stored as bfloat16 and widened by the depthwise
    kernel, the depthwise output stored for the projection (passes/cpu/bf16_activations.py)."""
    from tests.passes.test_bf16_activations import inverted_graph

    g = inverted_graph()
    model = compile_model(g, precision="bf16")
    steps = [s["op"] for s in model.plan["steps"]]
    assert "cast+depthwise_conv2d_nchwc+clip+cast" in steps, steps
    x = np.random.default_rng(15).standard_normal((1, 32, 10, 10)).astype(np.float32)
    check_against_interpreter_and_fp32(g, model, {"x": x}, rtol=1e-2)


def test_the_conv_reference_is_the_conv_on_rounded_operands():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 48, 6, 5)).astype(np.float32)
    w = rng.standard_normal((32, 48, 3, 3)).astype(np.float32)
    got = ops.conv2d_amx.reference(block_nchw(x, 16), amx_conv.pack_amx_conv_weight(w), out_channels=32,
                                   in_channels=48, kernel=(3, 3), strides=(2, 2), pads=(1, 0, 1, 2),
                                   dilations=(1, 1))
    want = _conv2d_ref(amx.round_bf16(x), amx.round_bf16(w), None, strides=(2, 2), pads=(1, 0, 1, 2),
                       dilations=(1, 1), groups=1)
    assert_close(got, block_nchw(want, 16), rtol=1e-5, atol=1e-4)


@needs_amx
@pytest.mark.parametrize("h, w", [(9, 11), (16, 16)])
def test_bf16_cnn_on_amx_matches_the_interpreter_and_fp32(h, w):
    """A 3x3 conv with a residual epilogue and a strided 3x3 conv on AMX (48 channels: padded to 64 in the
    reduction, to 64 output channels in the product); the first conv reads the plain image and stays float32.
    (On AVX512-BF16: tests/ops/test_bf16dot.py.)"""
    g = cnn(h, w)
    model = compile_model(g, precision="bf16")
    steps = [s["op"] for s in model.plan["steps"]]
    # the first conv's output, read by the AMX conv and the residual add, stored as bfloat16; the add widens it
    assert "conv2d_amx+cast+add+relu+cast" in steps and "conv2d_amx" in steps, steps
    x = np.random.default_rng(9).standard_normal((1, 16, h, w)).astype(np.float32)
    # the stored activations are rounded to bf16: a sum that differs from the interpreter's in its last bits
    # (summation order) may round to the neighbouring bf16 (2^-8 relative), and the next conv carries that on
    check_against_interpreter_and_fp32(g, model, {"x": x}, rtol=1e-2)


POINTWISE = """graph g(%x: f32[1,16,12,12]) {
  %w1 = param f32[80,16,3,3]
  %w2 = param f32[16,80,1,1]
  %w3 = param f32[32,16,3,3]
  %c1 = conv2d(%x, %w1) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,80,12,12]
  %r1 = relu(%c1) : f32[1,80,12,12]
  %c2 = conv2d(%r1, %w2) {strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1} : f32[1,16,12,12]
  %r2 = relu(%c2) : f32[1,16,12,12]
  %c3 = conv2d(%r2, %w3) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,32,12,12]
  return %c3
}
"""


@needs_amx
def test_an_amx_conv_reads_nothing_past_its_input(monkeypatch):
    """A conv's reduction runs over whole 32-channel blocks (conv_channel_blocks); on 80 input channels the third
    is half padding and must read zeros. The padding once read the memory past the input instead (a 1x1 conv on 32
    channels, whose second block was all padding): with an arena of NaN bytes (as memory reused from earlier work
    can be) the whole output was NaN (MobileNetV2 in bf16, in the suite)."""
    from tensorforge.runtime import plan

    real = plan.aligned_empty

    def poisoned(shape, dtype, align=plan.ALIGNMENT):
        a = real(shape, dtype, align)
        a.view(np.uint8)[...] = 0xFF  # every float a NaN
        return a

    monkeypatch.setattr(plan, "aligned_empty", poisoned)
    g = with_params(POINTWISE, 11, 0.2)
    model = compile_model(g, precision="bf16")
    # the activations between the convs stored as bfloat16 (passes/cpu/bf16_activations.py)
    assert [s["op"] for s in model.plan["steps"]] == ["conv2d_nchwc+relu+cast", "conv2d_amx+relu+cast", "conv2d_amx",
                                                      "from_blocked"]
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    assert not np.isnan(model.run({"x": x})[0]).any()
    check_against_interpreter_and_fp32(g, model, {"x": x})


@pytest.mark.parametrize("channels, want", [(96, "conv2d_amx"), (32, "conv2d_nchwc")])
def test_a_conv_on_an_nchw_input_goes_to_amx_behind_a_layout_copy(channels, want):
    """ConvNeXt's 2x2/2 downsampling after its channels-first norm: conv2d_nchwc on a plain NCHW input becomes
    to_blocked + conv2d_amx from MIN_PLAIN_CONV_REDUCTION values per output (96 x 4 here; 32 x 4 stays float32),
    within bf16's precision of the float32 conv (interpreter)."""
    from tensorforge.compiler.ir import Graph, TensorType
    from tensorforge.compiler.passes.cpu.amx import AmxConv

    rng = np.random.default_rng(17)
    g = Graph("downsample")
    xv = rng.standard_normal((1, channels, 8, 8)).astype(np.float32)
    x = g.add_input("x", TensorType.of(xv))
    w = g.add_param("w", (rng.standard_normal((2, channels, 2, 2, 16)) * 0.1).astype(np.float32))
    (y,) = g.add_node(ops.conv2d_nchwc, [x, w], {"in_block": 0, "block": 16, "out_channels": 32,
                                                  "strides": (2, 2), "pads": (0, 0, 0, 0), "dilations": (1, 1)})
    g.outputs = [y]
    exact = interpret(g, {"x": xv})[0]
    AmxConv(unit="amx")(g)
    g.verify()
    names = [n.op.name for n in g.nodes]
    assert names == (["to_blocked", "conv2d_amx"] if want == "conv2d_amx" else ["conv2d_nchwc"]), names
    assert_close(interpret(g, {"x": xv})[0], exact, rtol=0, atol=1e-2 * np.abs(exact).max())


@pytest.mark.parametrize("mid, want", [(16, "conv2d_nchwc"), (32, "conv2d_amx")])
def test_convs_reducing_over_few_values_keep_the_float32_kernel(mid, want):
    """passes/cpu/amx.py MIN_CONV_REDUCTION: a 1x1 conv on 16 channels (padded to 64 on AMX; MobileNetV2's
    expansion at 112x112 ran 1.6x slower there) stays float32, one on 32 channels goes to AMX, and so does a 3x3 conv
    on 16 channels (144 values). (The pass rewrites on any CPU; this compiles the graph only up to the pass.)"""
    from tensorforge.compiler.passes.cpu.amx import AmxConv
    from tensorforge.compiler.passes.cpu.layout import alter_layout
    from tensorforge.compiler.passes.pipeline import pack_weights

    text = POINTWISE.replace("f32[80,16,3,3]", f"f32[{mid},16,3,3]").replace("f32[16,80,1,1]", f"f32[16,{mid},1,1]") \
        .replace("f32[1,80,12,12]", f"f32[1,{mid},12,12]")
    params = {p.name: np.ones(p.type.shape, np.float32) for p in parse_graph(text).params}
    g = alter_layout(pack_weights(import_model(parse_graph(text, params))))
    AmxConv(unit="amx")(g)
    convs = [n.op.name for n in g.nodes if n.op.name.startswith("conv2d")]
    assert convs[1:] == [want, "conv2d_amx"], convs


def test_every_amx_op_makes_the_plan_ask_for_amx():
    """The CPU flags a plan requires (the runtime asks Linux for AMX state by them) name AMX for every *_amx op."""
    from types import SimpleNamespace

    from tensorforge.compiler.backend.build import host_isa_flags

    amx_ops = [o for name, o in ops.OPS.items() if name.endswith("_amx")]
    assert len(amx_ops) == 4 and set(ops.BF16_UNIT_OPS) == set(amx_ops)
    def flags(op, **attrs):
        return set(host_isa_flags(SimpleNamespace(nodes=[SimpleNamespace(op=op, attrs=attrs)])))

    for op in amx_ops:
        assert {"amx_tile", "amx_bf16"} <= flags(op, unit="amx"), op
        assert not {"amx_tile", "amx_bf16"} & flags(op, unit="avx512bf16"), op  # vdpbf16ps needs no tile state
    assert not {"amx_tile", "amx_bf16"} & flags(ops.dense)
