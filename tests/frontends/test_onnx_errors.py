"""Bad ONNX input gets one clear error of our own type, naming what was wrong."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorforge import compile_model
from tensorforge.frontends.onnx import from_onnx
from tensorforge.runtime.errors import FrontendError, TensorForgeError, UnsupportedOpError
from tests.support import light_path, single_op_model


def test_missing_file(tmp_path):
    with pytest.raises(FrontendError, match="does not exist"):
        compile_model(str(tmp_path / "nope.onnx"))


def test_truncated_file(tmp_path):
    data = open(light_path("squeezenet"), "rb").read()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError, match="truncated or not an ONNX model"):
        compile_model(str(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(FrontendError):
        compile_model(str(path))


def test_every_unsupported_op_is_listed_at_once():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FooBar", ["a"], ["b"], name="fb1"),
             helper.make_node("FooBar", ["b"], ["c"], name="fb2"),
             helper.make_node("Det", ["c"], ["y"], name="det")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(model)
    msg = str(e.value)
    assert "2 unsupported op type(s)" in msg
    assert "FooBar (opset 17): fb1, fb2" in msg
    assert "Det (opset 17): det" in msg
    assert {(op, names[0]) for op, _, names in e.value.unsupported} == {("FooBar", "fb1"), ("Det", "det")}


def test_custom_domain_op_is_unsupported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    node = helper.make_node("Relu", ["x"], ["y"], name="custom", domain="com.example")
    model = helper.make_model(helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", 1, [2])]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError, match=r"com.example.Relu \(opset 17\): custom"):
        from_onnx(model)


def test_bad_shapes_name_the_node():
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])
    node = helper.make_node("Add", ["a", "b"], ["c"], name="the_add")
    model = helper.make_model(helper.make_graph([node], "g", [a, b], [helper.make_tensor_value_info("c", 1, None)]),
                              opset_imports=[helper.make_opsetid("", 17)])
    # onnx's strict shape inference finds it first; the message names the node and its inputs' shapes
    with pytest.raises(FrontendError, match=r"ONNX node 'the_add' \(Add, inputs 'a' \(2, 3\) float32, 'b' \(4,\) "
                                            r"float32, outputs 'c'\): .*Incompatible dimensions"):
        from_onnx(model)


def test_runtime_value_where_a_constant_is_needed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    node = helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape_by_input")
    model = helper.make_model(helper.make_graph([node], "g", [x, s], [helper.make_tensor_value_info("y", 1, None)]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(FrontendError, match=r"'reshape_by_input' \(Reshape\): input 'shape' must be known at compile"):
        from_onnx(model)


def _dynamic_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_dims_bound_by_user_or_defaulted_with_warning():
    g = from_onnx(_dynamic_model(), shapes={"x": (8, 4)})
    assert g.inputs[0].type.shape == (8, 4)
    with pytest.warns(UserWarning, match=r"input 'x' has symbolic dimension\(s\) \['batch'\]; binding them to 1"):
        g = from_onnx(_dynamic_model())
    assert g.inputs[0].type.shape == (1, 4)


def test_bad_shape_bindings():
    with pytest.raises(FrontendError, match=r"shapes given for unknown input\(s\) \['z'\]"):
        from_onnx(_dynamic_model(), shapes={"z": (1, 4)})
    with pytest.raises(FrontendError, match=r"shape \(8, 5\) given for input 'x' does not match its declared shape \[batch, 4\]"):
        from_onnx(_dynamic_model(), shapes={"x": (8, 5)})


def test_errors_share_one_base_class():
    for cls in (FrontendError, UnsupportedOpError):
        assert issubclass(cls, TensorForgeError)


def test_only_1d_2d_and_3d_conv():
    x = np.zeros((1, 2, 3, 3, 3, 3), np.float32)
    model = single_op_model("Conv", {"x": x}, const_inputs={"w": np.zeros((3, 2, 2, 2, 2, 2), np.float32)})
    with pytest.raises(FrontendError, match=r"'conv_node' \(Conv\): only 1-D, 2-D and 3-D \(NCW, NCHW, NCDHW\) "
                                            r"input is supported, got f32\[1,2,3,3,3,3\]"):
        from_onnx(model)


def test_unsupported_element_types_name_the_type_and_where():
    x = helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                                                "g", [x], [y]), opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(FrontendError, match=r"graph input 'x': unsupported ONNX element type TensorProto.COMPLEX64"):
        from_onnx(model)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, [2])
    node = helper.make_node("Cast", ["x"], ["y"], name="to_str", to=TensorProto.STRING)
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(FrontendError, match=r"'to_str' \(Cast\): to: unsupported ONNX element type "
                                            r"TensorProto.STRING"):
        from_onnx(model)


def _string_equal_model(initializers):
    s = [helper.make_tensor_value_info(n, TensorProto.STRING, [2]) for n in ("a", "b") if n not in initializers]
    z = helper.make_tensor_value_info("z", TensorProto.BOOL, [2])
    graph = helper.make_graph([helper.make_node("Equal", ["a", "b"], ["z"], name="eq")], "g", s, [z],
                              [onnx.numpy_helper.from_array(np.array(v, object), n) for n, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_strings_are_compile_time_constants_only():
    with pytest.raises(FrontendError, match=r"graph input 'a' is a string tensor: strings are supported only as "
                                            r"compile-time constants.*make it an initializer") as info:
        from_onnx(_string_equal_model({"b": ["x", "y"]}))
    assert info.value.needs_constant == "a"
    # constant strings: Equal folds at compile time
    (z,) = compile_model(_string_equal_model({"a": ["x", "y"], "b": ["x", "z"]})).run({})
    np.testing.assert_array_equal(z, [True, False])
    # a string a kernel would have to read (here: a graph output) is refused
    graph = helper.make_graph([helper.make_node("Identity", ["a"], ["z"], name="id")], "g", [],
                              [helper.make_tensor_value_info("z", TensorProto.STRING, [2])],
                              [onnx.numpy_helper.from_array(np.array(["p", "q"], object), "a")])
    with pytest.raises(FrontendError, match="string tensors exist only at compile time"):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))


def test_map_graph_input_is_refused_clearly():  # sequences of given length work: test_onnx_sequences.py
    m = helper.make_value_info("x", helper.make_map_type_proto(TensorProto.INT64,
                                                               helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [m],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(FrontendError, match=r"graph input 'x' is a map, not a tensor: compiled models take tensors, "
                                            r"and sequences of tensors whose length is given at compile time"):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _training_dropout(**attrs):
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    return x, single_op_model("Dropout", {"x": x}, 2, const_inputs={"r": np.array(0.75, np.float32),
                                                                  "t": np.array(True)}, **attrs)


def test_seeded_training_dropout_draws_onnx_reference_mask():
    """onnx's reference: np.random.seed(seed); mask = uniform(0, 1, shape) >= ratio; y = mask * x / (1 - ratio)."""
    x, model = _training_dropout(seed=3)
    np.random.seed(3)
    mask = np.random.uniform(0, 1.0, x.shape) >= 0.75
    y, m = compile_model(model).run({"x": x})
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_allclose(y, mask * x * 4.0, rtol=0, atol=0)
    assert 0 < mask.sum() < mask.size


def test_unseeded_training_dropout_is_refused():
    _, model = _training_dropout()
    with pytest.raises(FrontendError, match=r"'dropout_node' \(Dropout\): training_mode=True with a non-zero ratio "
                                            r"and no seed attribute.*compile_training"):
        from_onnx(model)
