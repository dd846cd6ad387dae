"""Attention's products on AMX tiles in the CPU's bf16 mode: matmul_amx (ops/amx_matmul.py), the split form, and
attention_amx, attention as one kernel (ops/amx_attention.py, backend/cpu/amx_attention.py); the helpers are
tests/ops/test_amx.py's."""

import numpy as np
import pytest
import tvm
from tvm import te

from tensorforge import compile_model
from tensorforge.compiler import ops
from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
from tensorforge.compiler.driver import import_model
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tensorforge.compiler.ops import amx, amx_matmul
from tensorforge.compiler.passes.cpu.amx import AmxAttention
from tests.ops.test_amx import AMX_CPU, _run_kernel, _use_unit, check_against_interpreter_and_fp32, needs_amx
from tests.support import assert_close


def test_the_matmul_schedule_puts_both_products_on_amx_tiles():
    a = te.placeholder((2, 3, 40, 72), "float32", name="a")
    b = te.placeholder((2, 3, 72, 24), "float32", name="b")
    out = amx_matmul.matmul_amx_compute(a, b)
    sch, rule = schedule_cpu_traced(te.create_prim_func([a, b, out]), AMX_CPU)
    assert rule is not None and rule.name == "amx_matmul"
    asm = tvm.compile(sch.mod, target=AMX_CPU).mod.inspect_source("asm")
    for instruction in ("ldtilecfg", "tilezero", "tileloadd", "tdpbf16ps", "tilestored"):
        assert instruction in asm, instruction


@pytest.mark.parametrize("unit", ["amx", "avx512bf16"])
def test_matmul_amx_reads_b_transposed(unit):
    """transpose_b: b is (..., N, K), read transposed by the conversion (the attention split's keys), against the
    reference, N and K off the tile sizes."""
    _use_unit(unit)
    rng = np.random.default_rng(13)
    av, bv = rng.standard_normal((2, 40, 72)).astype(np.float32), rng.standard_normal((2, 50, 72)).astype(np.float32)
    a, b = te.placeholder(av.shape, "float32", name="a"), te.placeholder(bv.shape, "float32", name="b")
    y = amx_matmul.matmul_amx_compute(a, b, unit=unit, transpose_b=True)
    assert [int(d) for d in y.shape] == [2, 40, 50]
    got = _run_kernel([a, b, y], [av, bv], {"amx": "amx_matmul", "avx512bf16": "dp_matmul"}[unit])
    want = ops.matmul_amx.reference(av, bv, transpose_b=True)
    assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert_close(want, amx.round_bf16(av) @ amx.round_bf16(bv).transpose(0, 2, 1), rtol=1e-5, atol=1e-4)
    with pytest.raises(Exception, match="do not chain"):
        ops.matmul_amx.infer([TensorType((2, 40, 72), "float32"), TensorType((2, 72, 50), "float32")],
                             transpose_b=True)


def attention_graph(sq, skv, causal, mask):
    g = Graph("attn")
    rng = np.random.default_rng(10)
    arrays = [rng.standard_normal((1, 2, n, 64)).astype(np.float32) for n in (sq, skv, skv)]
    if mask:
        arrays.append(rng.standard_normal((1, 1, 1, skv)).astype(np.float32))
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    g.outputs = g.add_node(ops.attention, ins, {"scale": 0.125, "causal": causal})
    return g, {f"x{i}": a for i, a in enumerate(arrays)}


@pytest.mark.parametrize("sq, skv, causal, mask, split", [(128, 128, False, True, True), (128, 128, True, False, True),
                                                          (20, 144, False, False, True), (64, 64, True, False, False),
                                                          (197, 197, False, True, True), (130, 131, True, False, True)])
def test_the_attention_split_keeps_the_reference(sq, skv, causal, mask, split):
    """amx_attention's chain on AVX512-BF16 (matmul_amx, scale, mask, causal bias, softmax, matmul_amx) against
    attention's own reference on bf16-rounded inputs; key lengths off a multiple of 16 are padded and masked (ViT's
    197), fewer than 128 keys keep the fused float32 kernel."""
    g, feeds = attention_graph(sq, skv, causal, mask)
    opt = import_model(g)
    AmxAttention(unit="avx512bf16")(opt)
    names = [n.op.name for n in opt.nodes]
    assert (names.count("matmul_amx") == 2 and "attention" not in names) == split, names
    if split:
        rounded = {k: amx.round_bf16(v) if k in ("x0", "x1", "x2") else v for k, v in feeds.items()}
        want = interpret(g, rounded)[0]
        assert_close(interpret(opt, feeds)[0], want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("sq, skv, fused", [(128, 128, True), (64, 64, True), (16, 32, True), (16, 16, False),
                                            (8, 128, False), (64, 4096, False)])
def test_on_amx_the_attention_becomes_one_kernel(sq, skv, fused):
    """With AMX, attention from 16 query rows and 32 to MAX_FUSED_KEYS keys becomes attention_amx (longer rows are
    split; fewer rows or keys keep the float32 kernel), its reference within bf16's precision of attention's on
    bf16-rounded inputs."""
    g, feeds = attention_graph(sq, skv, False, True)
    opt = import_model(g)
    AmxAttention(unit="amx")(opt)
    names = [n.op.name for n in opt.nodes]
    assert ("attention_amx" in names) == fused, names
    if fused:
        rounded = {k: amx.round_bf16(v) if k in ("x0", "x1", "x2") else v for k, v in feeds.items()}
        want = interpret(g, rounded)[0]
        assert_close(interpret(opt, feeds)[0], want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


@needs_amx
@pytest.mark.parametrize("batch, sq, skv, d, causal, mask", [
    ((1, 3), 128, 128, 64, False, False), ((2, 2), 197, 197, 64, False, True), ((1, 2), 64, 64, 64, True, False),
    ((3,), 40, 72, 48, True, True), ((1, 1), 33, 200, 100, False, False)])
def test_the_fused_attention_kernel_matches_its_reference(batch, sq, skv, d, causal, mask):
    """The attention_amx kernel alone against its reference (rounding q, k, v and the exponentials to bf16 as the
    kernel does): padded query rows and keys (197, 33, 200), D and Dv off the tile (48, 100), a mask broadcast over
    rows and heads, causal; and within bf16's precision of exact attention."""
    from tensorforge.compiler.ops import amx_attention

    _use_unit("amx")
    rng = np.random.default_rng(21)
    arrays = [rng.standard_normal((*batch, n, d)).astype(np.float32) for n in (sq, skv, skv)]
    if mask:
        arrays.append(np.where(rng.random((*batch[:-1], 1, 1, skv)) < 0.3, -1e4, 0.0).astype(np.float32))
    ins = [te.placeholder(a.shape, "float32", name=f"x{i}") for i, a in enumerate(arrays)]
    out = amx_attention.attention_amx_compute(*ins, scale=d ** -0.5, causal=causal)
    got = _run_kernel([*ins, out], arrays, "amx_attention")
    want = ops.attention_amx.reference(*arrays, scale=d ** -0.5, causal=causal)
    assert np.isfinite(got).all()
    assert_close(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    exact = ops.attention.reference(*arrays, scale=d ** -0.5, causal=causal)
    assert_close(got, exact, rtol=3e-2, atol=3e-2 * np.abs(exact).max())


@needs_amx
def test_bf16_attention_on_amx_matches_the_interpreter_and_fp32():
    g, feeds = attention_graph(128, 128, False, True)
    model = compile_model(g, precision="bf16")
    assert [s["op"].split("+")[0] for s in model.plan["steps"]].count("attention_amx") == 1
    # a plan whose only AMX kernel is attention_amx asks for AMX state too (it ran into SIGILL in a fresh process)
    assert {"amx_tile", "amx_bf16"} <= set(model.plan["cpu_features"])
    check_against_interpreter_and_fp32(g, model, feeds, rtol=1e-3)
