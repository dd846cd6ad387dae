"""bfloat16 from ONNX through the CPU runtime: numpy's DLPack has no bfloat16, so the runtime carries bf16 buffers as
ml_dtypes.bfloat16 arrays (or uint16 bit patterns without ml_dtypes) and re-types them for TVM in place."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model, runtime
from tensorforge.runtime.errors import FrontendError, InputError
from tensorforge.runtime.tvm_loader import numpy_dtype

BF16 = ml_dtypes.bfloat16


def _bf16_model():
    """y = cast(x, bf16) * w + x_bf16, z = cast(y, f32): bf16 graph input, bf16 initializer, bf16 and f32 outputs."""
    w = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7 - 0.5).astype(BF16)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("Mul", ["xb", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"]),
             helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (3, 4)),
         helper.make_tensor_value_info("b", TensorProto.BFLOAT16, (3, 4))],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, (3, 4)),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, (3, 4))],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def _expected(x, b, w):
    return x.astype(BF16).astype(np.float32) * w.astype(np.float32) + b.astype(np.float32)


def _assert_bf16_close(y, expected):
    """Within one bfloat16 rounding (8 significant bits): a fused kernel rounds once, numpy after each op."""
    assert y.dtype == np.dtype(BF16)
    np.testing.assert_allclose(y.astype(np.float32), expected, rtol=2 ** -8, atol=1e-6)


@pytest.fixture(scope="module")
def compiled():
    model, w = _bf16_model()
    return compile_model(model), w


def test_bfloat16_inputs_params_and_outputs(compiled):
    m, w = compiled
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (3, 4)).astype(np.float32)
    b = rng.uniform(-1, 1, (3, 4)).astype(BF16)
    y, z = m.run({"x": x, "b": b})
    _assert_bf16_close(y, _expected(x, b, w))
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z, y.astype(np.float32))  # bf16 -> f32 is exact
    # the same input as its uint16 bit patterns
    y2, _ = m.run({"x": x, "b": b.view(np.uint16)})
    np.testing.assert_array_equal(y2.view(np.uint16), y.view(np.uint16))


def test_bfloat16_artifact_round_trip(compiled, tmp_path):
    m, w = compiled
    path = tmp_path / "bf16.tfa"
    m.save(path)
    loaded = runtime.load(path)  # the bf16 param is stored in .npy as raw 2-byte records
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    b = np.full((3, 4), 0.25, BF16)
    y, _ = loaded.run({"x": x, "b": b})
    _assert_bf16_close(y, _expected(x, b, w))
    np.testing.assert_array_equal(y.view(np.uint16), m.run({"x": x, "b": b})[0].view(np.uint16))


def test_bfloat16_wrong_dtype_says_how_to_convert(compiled):
    m, _ = compiled
    with pytest.raises(InputError, match=r"input 'b' has dtype float32, the model expects bfloat16; convert it "
                                         r"with \.astype\(ml_dtypes\.bfloat16\)"):
        m.run({"x": np.zeros((3, 4), np.float32), "b": np.zeros((3, 4), np.float32)})


def test_bfloat16_storage_without_ml_dtypes(monkeypatch):
    assert numpy_dtype("bfloat16") == np.dtype(BF16)
    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)  # `import ml_dtypes` now fails
    assert numpy_dtype("bfloat16") == np.dtype(np.uint16)
    assert numpy_dtype("float32") == np.dtype(np.float32)


def test_onnx_bfloat16_einsum_is_refused_as_invalid_onnx():
    """Einsum's type constraint (every opset up to 25) has no bfloat16: onnx's full check and onnxruntime refuse
    such a model, and so do we, naming the node and the type (we used to compile it)."""
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (2, 3, 4)).astype(BF16)
    bb = rng.uniform(-1, 1, (2, 4, 5)).astype(BF16)
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    graph = helper.make_graph([node], "einsum",
                              [helper.make_tensor_value_info("a", TensorProto.BFLOAT16, a.shape),
                               helper.make_tensor_value_info("b", TensorProto.BFLOAT16, bb.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, (2, 3, 5))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(FrontendError, match=r"Einsum.*bfloat16"):
        compile_model(model)