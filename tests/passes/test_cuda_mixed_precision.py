"""The mixed-precision pass (compiler/passes/mixed_precision.py): half-precision operands for matmul/dense/conv,
fp32 accumulation, checked through the reference interpreter, and its accuracy against fp32 (inference and
training, on the CPU: the same graph runs on the GPU)."""

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.driver import import_model, optimize, passes_for
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.examples import small_cnn_onnx
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tensorforge.compiler.passes import pass_name
from tensorforge.compiler.passes.mixed_precision import MixedPrecision
from tensorforge.runtime.errors import CompileError, PassError


def dense_graph():
    rng = np.random.default_rng(0)
    g = Graph("dense2")
    x = g.add_input("x", TensorType((4, 8), "float32"))
    w = g.add_param("w", rng.standard_normal((6, 8)).astype(np.float32))
    b = g.add_param("b", rng.standard_normal(6).astype(np.float32))
    w2 = g.add_param("w2", rng.standard_normal((3, 8)).astype(np.float32))
    (y,) = g.add_node(ops.dense, [x, w, b], name="fc")
    (z,) = g.add_node(ops.dense, [x, w2], name="fc2")  # reads the same x
    g.outputs = [y, z]
    return g, rng.standard_normal((4, 8)).astype(np.float32)


def test_operands_rounded_accumulation_fp32():
    g, x = dense_graph()
    w, b, w2 = (p.data for p in g.params)
    g = MixedPrecision("float16")(g)
    g.verify()
    assert sorted((p.name, p.type.dtype) for p in g.params) == [("b", "float32"), ("w.f16", "float16"),
                                                                  ("w2.f16", "float16")]
    casts = [n for n in g.nodes if n.op is ops.cast]
    assert [n.attrs["to"] for n in casts].count("float16") == 1  # x rounded once for both readers
    assert all(v.type.dtype == "float32" for n in g.nodes if n.op is ops.dense for v in n.inputs + n.outputs)
    y, z = interpret(g, {"x": x})
    r = lambda a: a.astype(np.float16).astype(np.float32)  # noqa: E731
    np.testing.assert_allclose(y, r(x) @ r(w).T + b, rtol=1e-6, atol=1e-6)  # the bias is added in fp32
    np.testing.assert_allclose(z, r(x) @ r(w2).T, rtol=1e-6, atol=1e-6)
    assert not np.allclose(y, x @ w.T + b, rtol=1e-7, atol=0)  # the rounding is really there


def test_bf16_and_untouched_ops():
    g = Graph("ints")
    a = g.add_input("a", TensorType((2, 3), "int32"))
    c = g.add_input("c", TensorType((3, 2), "int32"))
    (m,) = g.add_node(ops.matmul, [a, c])
    g.outputs = [m]
    before = str(g)
    assert str(MixedPrecision("bfloat16")(g)) == before  # integer products stay as they are
    g, x = dense_graph()
    g = MixedPrecision("bfloat16")(g)
    assert {p.type.dtype for p in g.params} == {"float32", "bfloat16"}
    y, _ = interpret(g, {"x": x})
    exact = x @ dense_graph()[0].params[0].data.T + dense_graph()[0].params[1].data
    err = np.abs(y - exact).max() / np.abs(exact).max()
    assert 1e-4 < err < 3e-2  # bf16 keeps 8 bits of mantissa


def test_pipeline_placement_and_errors():
    cpu = [pass_name(p) for p in passes_for(CompileOptions(target="cpu", precision="fp16"))]
    cuda = [pass_name(p) for p in passes_for(CompileOptions(target="cuda", precision="bf16"))]
    assert cpu.index("mixed_precision") == cpu.index("pack_weights") - 1
    assert cuda[-2:] == ["mixed_precision", "fuse_cuda"]
    assert "mixed_precision" not in [pass_name(p) for p in passes_for(CompileOptions())]
    with pytest.raises(CompileError, match="unknown precision 'fp8'; supported: fp32, fp16, bf16"):
        passes_for(CompileOptions(precision="fp8"))


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_cnn_accuracy_vs_fp32():
    """The small CNN's logits through the reference interpreter: fp16 and bf16 operands vs fp32."""
    model = small_cnn_onnx()
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    out = {p: interpret(optimize(import_model(model), CompileOptions(target="cuda", precision=p)), {"image": x})[0]
           for p in ("fp32", "fp16", "bf16")}
    e16, ebf = relative_error(out["fp16"], out["fp32"]), relative_error(out["bf16"], out["fp32"])
    assert 0 < e16 < 2e-3 and e16 < ebf < 2e-2, (e16, ebf)
    assert out["fp16"].argmax() == out["fp32"].argmax() == out["bf16"].argmax()


def test_training_losses_vs_fp32():
    """Twenty SGD steps of an MLP compiled for the CPU: mixed precision follows the fp32 losses closely."""
    from tensorforge import compile_training
    from tensorforge.frontends import nn

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 12)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    losses = {}
    for precision in ("fp32", "fp16"):
        s = compile_training(net, "cross_entropy", {"name": "sgd", "lr": 0.2, "momentum": 0.9},
                             shapes={"x": (16, 12)}, params=net.init(seed=0), precision=precision)
        losses[precision] = np.array([s.step({"x": x}, y) for _ in range(20)])
    assert losses["fp32"][-1] < 0.5 * losses["fp32"][0]  # it learns
    assert not np.array_equal(losses["fp16"], losses["fp32"])
    np.testing.assert_allclose(losses["fp16"], losses["fp32"], rtol=2e-2, atol=2e-3)


def test_cuda_fusion_takes_widening_casts_as_prologues():
    """On CUDA each matmul's kernel loads its half-precision operands itself (one widening cast per reader, in the
    reader's group); a producer's kernel writes the float16 copy; the CPU fusion leaves the casts alone."""
    from tensorforge.compiler.passes.fuse import fuse, fuse_cuda

    def mixed():
        g, _ = dense_graph()
        (h,) = g.add_node(ops.relu, [g.outputs[0]], name="act")
        w3 = g.add_param("w3", np.ones((5, 6), np.float32))
        (o,) = g.add_node(ops.dense, [h, w3], name="fc3")
        g.outputs = [g.outputs[1], o]
        return MixedPrecision("float16")(g)

    g = fuse_cuda(mixed())
    g.verify()
    widening = [n for n in g.nodes if n.op is ops.cast and n.attrs["to"] == "float32"]
    assert len(widening) == 6  # x for fc and fc2, the three weights, relu's output for fc3
    for n in widening:
        (reader,) = [r for r in g.nodes if n.outputs[0] in r.inputs]
        assert reader.op is ops.dense and n.group is not None and n.group == reader.group
    act = next(n for n in g.nodes if n.name == "act")
    narrowing = next(n for n in g.nodes if n.op is ops.cast and n.inputs[0] is act.outputs[0])
    assert narrowing.group == act.group  # fc's kernel writes relu's output as float16
    cpu = fuse(mixed())
    assert all(r.group is None or r.group != n.group for n in cpu.nodes if n.op is ops.cast and n.attrs["to"] ==
               "float32" for r in cpu.nodes if n.outputs[0] in r.inputs and r.op is ops.dense)
