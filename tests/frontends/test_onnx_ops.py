"""Each ONNX converter: a one-node ONNX model compiled by us against onnxruntime, on random inputs."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.ir import interpret
from tensorforge.frontends.onnx import from_onnx, supported_ops
from tests.support import assert_close, ort_run, single_op_model

rng = np.random.default_rng(1)


def r(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def i64(*values):
    return np.array(values, np.int64)


# (op type, graph inputs, constant inputs, attrs, opset)
CASES = [
    *[(op, {"x": r(2, 3, 5)}, {}, {}, 17) for op in ("Relu", "Sigmoid", "Tanh", "Exp", "Abs", "Neg", "Erf", "Floor",
                                                     "Ceil", "Sin", "Cos")],
    *[(op, {"x": r(2, 7, lo=0.1)}, {}, {}, 17) for op in ("Log", "Sqrt", "Reciprocal")],
    *[(op, {"a": r(2, 3, 4), "b": r(3, 1)}, {}, {}, 17) for op in ("Add", "Sub", "Mul")],
    ("Div", {"a": r(2, 3), "b": r(3, lo=0.5)}, {}, {}, 17),
    ("Pow", {"a": r(2, 3, lo=0.1), "b": r(3)}, {}, {}, 17),
    ("Sum", {"a": r(2, 3), "b": r(3), "c": r(2, 1)}, {}, {}, 17),
    ("Max", {"a": r(2, 3), "b": r(3)}, {}, {}, 17),
    ("Min", {"a": r(2, 3), "b": r(2, 3), "c": r(1)}, {}, {}, 17),
    ("Clip", {"x": r(4, 5)}, {"lo": np.float32(-0.5), "hi": np.float32(0.5)}, {}, 17),
    ("Clip", {"x": r(4, 5)}, {}, {"min": -0.3, "max": 1.0}, 6),
    ("LeakyRelu", {"x": r(4, 5)}, {}, {"alpha": 0.1}, 17),
    ("Identity", {"x": r(3)}, {}, {}, 17),
    ("Dropout", {"x": r(3, 4)}, {}, {}, 17),
    ("Cast", {"x": r(3, 4, lo=-9, hi=9)}, {}, {"to": 6}, 17),
    ("Conv", {"x": r(1, 3, 12, 12)}, {"w": r(8, 3, 3, 3), "b": r(8)}, {"pads": [1, 1, 1, 1]}, 17),
    ("Conv", {"x": r(1, 4, 11, 13)}, {"w": r(6, 2, 3, 3)}, {"group": 2, "strides": [2, 2], "auto_pad": "SAME_UPPER"},
     17),
    ("Conv", {"x": r(1, 8, 9, 9)}, {"w": r(8, 1, 3, 3)}, {"group": 8, "pads": [2, 1, 2, 3], "dilations": [2, 2]},
     17),
    ("Conv", {"x": r(1, 3, 23, 23)}, {"w": r(16, 3, 11, 11), "b": r(16)}, {"strides": [4, 4], "pads": [2, 2, 2, 2]},
     17),
    ("Gemm", {"a": r(3, 5)}, {"b": r(4, 5), "c": r(4)}, {"transB": 1, "alpha": 0.5, "beta": 2.0}, 17),
    ("Gemm", {"a": r(5, 3)}, {"b": r(5, 4), "c": r(3, 4)}, {"transA": 1}, 17),
    ("Gemm", {"a": r(3, 5), "b": r(5, 4)}, {}, {}, 17),
    ("MatMul", {"a": r(2, 3, 5)}, {"b": r(5, 4)}, {}, 17),
    ("MatMul", {"a": r(2, 3, 5), "b": r(2, 5, 4)}, {}, {}, 17),
    ("BatchNormalization", {"x": r(2, 3, 4, 4)}, {"s": r(3), "b": r(3), "m": r(3), "v": r(3, lo=0.5)},
     {"epsilon": 1e-3}, 15),
    ("MaxPool", {"x": r(1, 3, 12, 12)}, {}, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, 17),
    ("MaxPool", {"x": r(1, 3, 12, 12)}, {}, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 17),
    ("AveragePool", {"x": r(1, 3, 10, 10)}, {}, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, 17),
    ("AveragePool", {"x": r(1, 3, 10, 10)}, {}, {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 0, 0],
                                                  "count_include_pad": 1}, 17),
    ("GlobalAveragePool", {"x": r(2, 3, 5, 6)}, {}, {}, 17),
    ("Conv", {"x": r(1, 4, 6, 7, 5)}, {"w": r(6, 2, 3, 3, 2), "b": r(6)},
     {"group": 2, "strides": [1, 2, 1], "pads": [1, 0, 1, 1, 1, 0]}, 17),
    ("ConvTranspose", {"x": r(1, 3, 4, 5, 3)}, {"w": r(3, 2, 3, 2, 3)},
     {"strides": [2, 1, 2], "pads": [1, 0, 0, 0, 1, 1]}, 17),
    ("ConvTranspose", {"x": r(1, 4, 9)}, {"w": r(4, 3, 3), "b": r(3)}, {"strides": [2], "output_padding": [1]}, 17),
    ("MaxPool", {"x": r(1, 2, 6, 7, 5)}, {},
     {"kernel_shape": [3, 3, 2], "strides": [2, 2, 1], "pads": [1, 1, 0, 1, 0, 1]}, 17),
    ("AveragePool", {"x": r(1, 2, 6, 7, 5)}, {}, {"kernel_shape": [2, 3, 2], "strides": [2, 2, 2], "ceil_mode": 1},
     17),
    ("AveragePool", {"x": r(2, 3, 11)}, {}, {"kernel_shape": [3], "pads": [1, 1], "count_include_pad": 1}, 17),
    ("LRN", {"x": r(1, 6, 5, 5)}, {}, {"size": 3, "alpha": 0.01, "beta": 0.75, "bias": 1.5}, 17),
    ("Softmax", {"x": r(2, 3, 4)}, {}, {"axis": 1}, 11),  # legacy: flattens at axis
    ("Softmax", {"x": r(2, 3, 4)}, {}, {"axis": 1}, 13),
    ("Softmax", {"x": r(2, 10)}, {}, {}, 17),
    ("Reshape", {"x": r(2, 3, 4)}, {"s": i64(0, -1)}, {}, 17),
    ("Flatten", {"x": r(2, 3, 4)}, {}, {"axis": 2}, 17),
    ("Transpose", {"x": r(2, 3, 4)}, {}, {"perm": [1, 2, 0]}, 17),
    ("Transpose", {"x": r(2, 3, 4)}, {}, {}, 17),
    ("Concat", {"a": r(2, 3), "b": r(2, 2)}, {}, {"axis": -1}, 17),
    ("Unsqueeze", {"x": r(2, 3)}, {"axes": i64(0, -1)}, {}, 17),
    ("Unsqueeze", {"x": r(2, 3)}, {}, {"axes": [1]}, 11),
    ("Squeeze", {"x": r(2, 1, 3, 1)}, {"axes": i64(1)}, {}, 17),
    ("Squeeze", {"x": r(2, 1, 3, 1)}, {}, {}, 11),
    ("Pad", {"x": r(2, 3, 4)}, {"p": i64(0, 1, 2, 1, 0, 1), "v": np.float32(0.25)}, {}, 17),
    ("Pad", {"x": r(2, 3)}, {}, {"pads": [1, 0, 0, 2], "value": 1.0}, 9),
    ("Gather", {"x": r(5, 4)}, {"i": i64(4, 0, -1)}, {"axis": 0}, 17),
    ("Gather", {"x": r(3, 5)}, {"i": i64(1, 3)}, {"axis": 1}, 17),
    ("Gelu", {"x": r(3, 7)}, {}, {}, 20),
    ("Gelu", {"x": r(3, 7)}, {}, {"approximate": "tanh"}, 20),
    ("Equal", {"a": r(4, 5).round(), "b": r(5).round()}, {}, {}, 17),
    ("Where", {"c": rng.random((2, 1, 4)) > 0.5, "a": r(3, 4), "b": r(2, 3, 1)}, {}, {}, 17),
    ("Expand", {"x": r(3, 1)}, {"s": i64(2, 1, 4)}, {}, 17),
    ("Slice", {"x": r(5, 6, 7)}, {"st": i64(1, -1), "en": i64(100, -8), "ax": i64(0, 2), "sp": i64(2, -2)}, {}, 17),
    ("Slice", {"x": r(5, 6)}, {"st": i64(0), "en": i64(-2)}, {}, 17),
    ("Slice", {"x": r(5, 6)}, {}, {"starts": [1], "ends": [3], "axes": [1]}, 9),
    ("ReduceMean", {"x": r(2, 3, 4)}, {"ax": i64(-1)}, {}, 18),
    ("ReduceMean", {"x": r(2, 3, 4)}, {}, {"axes": [0, 2], "keepdims": 0}, 17),
    ("ReduceMean", {"x": r(2, 3, 4)}, {}, {}, 17),
    ("ReduceSum", {"x": r(2, 3, 4)}, {"ax": i64(1)}, {"keepdims": 0}, 17),
    ("LayerNormalization", {"x": r(2, 5, 32)}, {"s": r(32), "b": r(32)}, {}, 17),
    ("LayerNormalization", {"x": r(3, 4, 6)}, {"s": r(4, 6)}, {"axis": 1, "epsilon": 1e-3}, 17),
    ("LayerNormalization", {"x": r(3, 4, 6), "s": r(6)}, {}, {"axis": -1}, 17),  # scale at run time, no bias
]


@pytest.mark.parametrize("op_type, inputs, consts, attrs, opset", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_converter_matches_onnxruntime(op_type, inputs, consts, attrs, opset):
    model = single_op_model(op_type, inputs, const_inputs=consts, opset=opset, **attrs)
    expected = ort_run(model, inputs)[0]
    assert_close(interpret(from_onnx(model), inputs)[0], expected, rtol=1e-4, atol=1e-5, what="reference")
    assert_close(compile_model(model).run(inputs)[0], expected, rtol=1e-4, atol=1e-5, what="compiled")


@pytest.mark.parametrize("opset, consts, attrs", [(13, {"split": i64(2, 5)}, {}), (18, {}, {"num_outputs": 2}),
                                                   (11, {}, {"split": [3, 4]})])
def test_split_every_output(opset, consts, attrs):
    x = r(2, 7, 3)
    model = single_op_model("Split", {"x": x}, 2, const_inputs=consts, opset=opset, axis=1, **attrs)
    for got, want in zip(compile_model(model).run({"x": x}), ort_run(model, {"x": x}), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("shape, attrs", [
    ((2, 3, 7, 6), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 6), {"kernel_shape": [2, 3], "storage_order": 1}),
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2]}),
])
def test_maxpool_indices_output(shape, attrs):
    x = r(*shape)
    model = single_op_model("MaxPool", {"x": x}, 2, **attrs)
    got = compile_model(model).run({"x": x})
    want = ort_run(model, {"x": x})
    assert_close(got[0], want[0])
    assert got[1].dtype == np.int64 and np.array_equal(got[1], want[1])


def test_batchnorm_training_mode_uses_batch_statistics():
    """Outputs: y from the batch's statistics, then the running mean and variance moved towards them."""
    from onnx.reference import ReferenceEvaluator

    x, consts = r(4, 3, 5, 2), {"s": r(3), "b": r(3), "m": r(3), "v": r(3, lo=0.5)}
    model = single_op_model("BatchNormalization", {"x": x}, 3, const_inputs=consts, opset=15,
                            training_mode=1, momentum=0.8, epsilon=1e-3)
    want = ReferenceEvaluator(model).run(None, {"x": x})
    got = compile_model(model).run({"x": x})
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_uint64_across_the_sign_bit(largest):
    """TVM sorts no uint64: keys u - 2**63 in int64 keep the order of values on both sides of 2**63."""
    x = np.array([[0, 2**64 - 1, 2**63, 2**63 - 1, 5, 2**63 + 7]], np.uint64)
    model = single_op_model("TopK", {"x": x}, 2, const_inputs={"k": i64(4)}, largest=largest)
    values, indices = compile_model(model).run({"x": x})
    order = np.argsort(x[0], kind="stable")[::-1][:4] if largest else np.argsort(x[0], kind="stable")[:4]
    assert values.dtype == np.uint64 and values[0].tolist() == x[0][order].tolist()
    assert indices[0].tolist() == order.tolist()


def test_range_is_folded():
    """Range on constants (position ids) is computed by the frontend; a run-time Add consumes it."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["pos"]),
             helper.make_node("Cast", ["pos"], ["posf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "posf"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("start", 2), ("limit", 11), ("delta", 3))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert [n.op.name for n in from_onnx(model).nodes] == ["add"]
    x = r(2, 3)
    assert_close(compile_model(model).run({"x": x})[0], ort_run(model, {"x": x})[0])


def test_legacy_broadcast_add():
    """Opset 6 Add with broadcast=1, axis=1 (onnxruntime no longer runs it): B aligns with A's axis 1."""
    a, b = r(2, 3, 4, 5), r(3, 4)
    model = single_op_model("Add", {"a": a}, const_inputs={"b": b}, opset=6, broadcast=1, axis=1)
    assert_close(compile_model(model).run({"a": a})[0], a + b.reshape(1, 3, 4, 1))


def test_same_lower_auto_pad():
    x, w = r(1, 3, 8, 8), r(4, 3, 2, 2)
    lower = single_op_model("Conv", {"x": x}, const_inputs={"w": w}, auto_pad="SAME_LOWER")
    explicit = single_op_model("Conv", {"x": x}, const_inputs={"w": w}, pads=[1, 1, 0, 0])
    assert_close(compile_model(lower).run({"x": x})[0], ort_run(explicit, {"x": x})[0], rtol=1e-4)


def test_shape_subgraph_is_folded_at_compile_time():
    """Shape -> Gather -> Concat -> Reshape and ConstantOfShape are evaluated by the frontend: no nodes remain."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("ConstantOfShape", ["shape2"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Add", ["flat", "ones"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
             numpy_helper.from_array(np.array([2, 12], np.int64), "shape2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = from_onnx(model)
    assert [n.op.name for n in g.nodes] == ["reshape", "add"]
    x = r(2, 3, 4)
    assert_close(compile_model(model).run({"x": x})[0], ort_run(model, {"x": x})[0])


def test_supported_ops_table_is_complete_for_the_light_models():
    table = supported_ops()
    for op in ("Conv", "Relu", "LRN", "MaxPool", "Reshape", "Gemm", "Dropout", "Softmax", "ConstantOfShape",
               "BatchNormalization", "Unsqueeze", "Mul", "Add", "Concat", "AveragePool", "GlobalAveragePool", "Sum",
               "Transpose"):
        assert op in table
    assert table["Softmax"] == [1, 13]


def test_dropout_is_kept_for_training_and_removed_for_inference():
    """ONNX Dropout becomes a `dropout` node (compile_training draws its mask); in inference it is a zero-copy view."""
    from tensorforge.compiler.driver import import_model
    from tests.support import single_op_model

    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    model = single_op_model("Dropout", {"x": x}, const_inputs={"ratio": np.array(0.25, np.float32)})
    g = import_model(model)
    (node,) = [n for n in g.nodes if n.op.name == "dropout"]
    assert node.attrs["p"] == 0.25
    compiled = compile_model(model)
    assert compiled.num_kernels == 0
    np.testing.assert_array_equal(compiled.run({"x": x})[0], x)
