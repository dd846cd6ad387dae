"""ONNX models with ops whose output shapes depend on the data (compiler/segments.py): compiled segments around
host steps, against onnxruntime and numpy."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tensorforge import compile_model
from tensorforge.compiler.segments import SegmentedModel
from tensorforge.runtime.errors import CompileError, InputError, UnsupportedOpError


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers)),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def positives_squared():
    """y = x[relu(x) != 0] ** 2: NonZero in the middle, a compiled segment before and after it."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("NonZero", ["r"], ["nz"]),
             helper.make_node("Transpose", ["nz"], ["t"]), helper.make_node("GatherND", ["x", "t"], ["g"]),
             helper.make_node("Mul", ["g", "g"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_data_dependent_op_runs_on_the_host_between_compiled_segments():
    model = positives_squared()
    m = compile_model(model)
    assert isinstance(m, SegmentedModel) and len(m.segments) == 2
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32)
        (y,) = m.run({"x": x})
        np.testing.assert_allclose(y, _ort(model, {"x": x})[0], rtol=1e-6)
        np.testing.assert_allclose(y, x[x > 0] ** 2, rtol=1e-6)
    # the segment after NonZero is compiled once per count of positives it met
    assert m.segments[0].specializations == 1 and m.segments[1].specializations >= 2


def test_non_max_suppression_at_the_end_of_a_model():
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 6, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 6])
    out = helper.make_tensor_value_info("selected", TensorProto.INT64, None)
    consts = [helper.make_tensor("max_out", TensorProto.INT64, [1], [3]),
              helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5]),
              helper.make_tensor("thr", TensorProto.FLOAT, [1], [0.0])]
    nodes = [helper.make_node("Sigmoid", ["scores"], ["p"]),
             helper.make_node("NonMaxSuppression", ["boxes", "p", "max_out", "iou", "thr"], ["selected"])]
    model = _model(nodes, [boxes, scores], [out], consts)
    m = compile_model(model)
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 10, (1, 6, 2)).astype(np.float32)
    feeds = {"boxes": np.concatenate([corner, corner + rng.uniform(1, 5, (1, 6, 2)).astype(np.float32)], -1),
             "scores": rng.standard_normal((1, 1, 6)).astype(np.float32)}
    (got,) = m.run(feeds)
    np.testing.assert_array_equal(got, _ort(model, feeds)[0])


def test_unique_gives_all_its_outputs():
    names = ["u", "idx", "inv", "cnt"]
    model = _model([helper.make_node("Unique", ["x"], names, sorted=1)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                   [helper.make_tensor_value_info(n, TensorProto.FLOAT if n == "u" else TensorProto.INT64, None)
                    for n in names], opset=17)
    m = compile_model(model)
    x = np.array([2, 1, 1, 3, 4, 3, 2, 2], np.float32)
    for got, want in zip(m.run({"x": x}), _ort(model, {"x": x})):
        np.testing.assert_array_equal(got, want)


def test_what_a_segmented_model_refuses():
    m = compile_model(positives_squared())
    with pytest.raises(InputError, match="missing input"):
        m.run({})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['z'\]"):
        m.run({"x": np.zeros((3, 4), np.float32), "z": 1})
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 4\), but the model declares \[3, 4\]"):
        m.run({"x": np.zeros((2, 4), np.float32)})
    with pytest.raises(InputError, match="input 'x' has dtype float64, but the model declares float32"):
        m.run({"x": np.zeros((3, 4))})
    with pytest.raises(CompileError, match="data-dependent ops \\(NonZero\\) run on the host"):
        m.save("m.tfa")
    # another unsupported op beside a host op: refused as before, naming it
    model = positives_squared()
    model.graph.node.append(helper.make_node("NoSuchOp", ["y"], ["z"]))
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        compile_model(model)


def test_a_segmented_model_benchmarks_and_profiles_like_a_compiled_one():
    m = compile_model(positives_squared())
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    assert len(m.benchmark({"x": x}, repeat=3, warmup=1)) == 3
    rows = m.profile({"x": x}, repeat=2)
    assert [r["op"] for r in rows if r["kernel"] == "host"] == ["NonZero"]
    assert all(r["ms"] >= 0 for r in rows) and len(rows) >= 3
