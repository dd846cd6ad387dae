"""The CPU's bf16 mode (compile_model(..., precision="bf16") on the cpu target): packed dense/conv weights stored as
bfloat16 and widened to fp32 in the kernels (compiler/passes/cpu/bf16_weights.py, ops/packed.py `widen`), where the
product does not go to AMX tiles (dense with fewer than 16 rows here; the AMX dense: tests/ops/test_amx.py)."""

import ml_dtypes
import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.driver import import_model, optimize, passes_for
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.passes.manager import pass_name
from tensorforge.runtime.errors import CompileError, PassError
from tests.passes.test_winograd import chain
from tests.support import assert_close

MLP = """graph g(%x: f32[{m},96]) {{
  %w1 = param f32[200,96]
  %b1 = param f32[200]
  %w2 = param f32[10,200]
  %h = dense(%x, %w1, %b1) : f32[{m},200]
  %r = relu(%h) : f32[{m},200]
  %y = dense(%r, %w2) : f32[{m},10]
  return %y
}}
"""


def mlp(m=1):
    g = parse_graph(MLP.format(m=m))
    rng = np.random.default_rng(0)
    params = {p.name: (rng.standard_normal(p.type.shape) * 0.1).astype(np.float32) for p in g.params}
    return parse_graph(MLP.format(m=m), params), params


def _bf16(a):
    return a.astype(ml_dtypes.bfloat16).astype(np.float32)


def _weight_params(g):
    return {p.name: p.type.dtype for p in g.params}


@pytest.mark.parametrize("m", [1, 5])
def test_dense_weights_are_bf16_and_the_sums_fp32(m):
    """GEMV and a small GEMM: the kernel equals fp32 arithmetic on the bf16-rounded weights (tight), and fp32 within
    a bf16 tolerance; the weights are bfloat16 params, the bias fp32."""
    g, p = mlp(m)
    x = np.random.default_rng(1).standard_normal((m, 96)).astype(np.float32)
    bf16 = compile_model(g, precision="bf16")
    fp32 = compile_model(g)
    opt = optimize(import_model(g), CompileOptions(precision="bf16"))
    dtypes = _weight_params(opt)
    assert sorted(dtypes.values()) == ["bfloat16", "bfloat16", "float32"], dtypes
    got = bf16.run({"x": x})[0]
    want = np.maximum(x @ _bf16(p["w1"]).T + p["b1"], 0) @ _bf16(p["w2"]).T  # fp32 sums of rounded weights
    assert_close(got, want, rtol=1e-5, atol=1e-5, what="vs fp32 on rounded weights")
    assert_close(got, interpret(opt, {"x": x})[0], rtol=1e-5, atol=1e-5, what="vs the interpreter")
    exact = fp32.run({"x": x})[0]
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 0 < err < 1e-2, err  # rounded (not fp32), but within what 8 significant bits allow
    assert bf16.plan["stats"]["params_bytes"] < 0.51 * fp32.plan["stats"]["params_bytes"] + 1000


@pytest.mark.parametrize("winograd", [True, False])
def test_blocked_convs_read_bf16_weights(winograd):
    """conv2d_nchwc (1x1, and 3x3 unless Winograd takes it) with bf16 weights against the graph in fp32; a
    Winograd conv keeps its transformed weight in fp32 (rounding it costs far more accuracy)."""
    g, _ = chain(10, 9, 32, 1, "residual_relu")
    x = np.random.default_rng(2).standard_normal((1, 16, 10, 9)).astype(np.float32)
    # amx_conv off: on a CPU with AMX it would take these convs (tests/ops/test_amx.py)
    options = CompileOptions(precision="bf16", disabled_passes=frozenset({"amx_conv"} if winograd
                                                                        else {"winograd", "amx_conv"}))
    model = compile_model(g, options=options)
    ops = [s["op"] for s in model.plan["steps"]]
    assert any(o.startswith("winograd_conv2d") for o in ops) == winograd, ops
    opt = optimize(import_model(g), CompileOptions(precision="bf16",
                                                   disabled_passes=options.disabled_passes))
    weights = {n.op.name: n.inputs[1].type.dtype for n in opt.nodes
               if n.op.name in ("conv2d_nchwc", "winograd_conv2d")}
    assert weights == ({"conv2d_nchwc": "bfloat16", "winograd_conv2d": "float32"} if winograd
                       else {"conv2d_nchwc": "bfloat16"}), weights
    assert len([n for n in opt.nodes if n.op.name == "conv2d_nchwc"]) == (1 if winograd else 2)
    got = model.run({"x": x})[0]
    assert_close(got, interpret(opt, {"x": x})[0], rtol=1e-4, atol=1e-4, what="vs the interpreter")
    exact = interpret(g, {"x": x})[0]
    assert_close(got, exact, rtol=0, atol=2e-2 * np.abs(exact).max(), what="vs fp32")


def test_fp32_is_the_default_and_unchanged():
    g, _ = mlp()
    names = [pass_name(p) for p in passes_for(CompileOptions())]
    assert "bf16_weights" not in names and "mixed_precision" not in names
    assert set(_weight_params(optimize(import_model(g), CompileOptions())).values()) == {"float32"}
    bf16 = [pass_name(p) for p in passes_for(CompileOptions(precision="bf16"))]
    pack, wino = names.index("pack_weights"), names.index("winograd")
    # the merged and AMX denses right before packing, the AMX stem and convs after the layout pass and before
    # Winograd; the bf16 weights after
    # packing and layout, then the bf16 GELU and the bf16 activations, right before fusion
    assert bf16 == (names[:pack] + ["merge_denses", "amx_dense", "amx_attention", "lstm_bf16"] + names[pack:wino]
                    + ["amx_stem", "amx_conv"] + names[wino:-1] + ["bf16_weights", "bf16_fast_math", "bf16_activations", "fuse"])


def test_other_precisions_and_targets_keep_mixed_precision():
    """CUDA bf16, CPU fp16 and CPU training round operands with the mixed-precision pass, as before."""
    for options, training in ((CompileOptions(target="cuda", precision="bf16"), False),
                              (CompileOptions(precision="fp16"), False), (CompileOptions(precision="bf16"), True)):
        names = [pass_name(p) for p in passes_for(options, training)]
        assert "mixed_precision" in names and "bf16_weights" not in names, options


def test_unsupported_combinations_fail_clearly():
    g, _ = mlp()
    with pytest.raises(CompileError, match="unknown precision 'bf8'; supported: fp32, fp16, bf16"):
        compile_model(g, precision="bf8")
    with pytest.raises(CompileError, match="--arch sm_90 applies to the cuda target only"):
        compile_model(g, precision="bf16", arch="sm_90")


def test_bf16_mode_computes_gelus_erf_with_the_fast_rational():
    """bf16_fast_math: the bf16 mode's GELU (erf form) uses topi.fast_erf (3e-7 absolute, under bf16's 4e-3 step);
    fp32 keeps vecmath's erf (within 2 ulp). Both stay within 1e-6 of the float64 GELU."""
    import math

    text = """graph g(%x: f32[4,256]) {
      %y = gelu(%x) {approximate="none"} : f32[4,256]
      return %y
    }"""
    x = np.linspace(-8, 8, 1024, dtype=np.float32).reshape(4, 256)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / math.sqrt(2)))
    for precision, fast in (("bf16", True), ("fp32", False)):
        g = optimize(parse_graph(text), CompileOptions(precision=precision))
        (n,) = [n for n in g.nodes if n.op.name == "gelu"]
        assert n.attrs.get("fast_erf", False) is fast
        out = compile_model(parse_graph(text), options=CompileOptions(precision=precision)).run({"x": x})[0]
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_bf16_mode_computes_softmaxs_exponent_with_exp_fast():
    """bf16_fast_math: the bf16 mode's softmax uses vecmath.exp_fast; fp32 keeps vecmath.exp. Both match the
    float64 softmax (the fast one within 1e-5 relative, under bf16's step)."""
    text = """graph g(%x: f32[2,4,64]) {
      %y = softmax(%x) {axis=2} : f32[2,4,64]
      return %y
    }"""
    x = np.random.default_rng(0).uniform(-30, 30, (2, 4, 64)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(axis=2, keepdims=True))
    want = e / e.sum(axis=2, keepdims=True)
    for precision, fast, tol in (("bf16", True, 1e-5), ("fp32", False, 1e-6)):
        g = optimize(parse_graph(text), CompileOptions(precision=precision))
        (n,) = [n for n in g.nodes if n.op.name == "softmax"]
        assert n.attrs.get("fast_exp", False) is fast
        out = compile_model(parse_graph(text), options=CompileOptions(precision=precision)).run({"x": x})[0]
        np.testing.assert_allclose(out, want, rtol=tol, atol=1e-9)
