"""ONNX sequence (and optional) graph inputs whose length is given at compile time (frontends/builder.py
`TensorSequence`): each tensor of the sequence is an input of its own, `name.0`, `name.1`, ..., and a sequence
output likewise; only Identity passes a sequence through."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from tensorforge import compile_model
from tensorforge.runtime.errors import FrontendError


def _model(op, x_type, y_type):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n")], "g",
                              [helper.make_value_info("x", x_type)], [helper.make_value_info("y", y_type)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


SEQ = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))


@pytest.mark.parametrize("x_type", [SEQ, helper.make_optional_type_proto(SEQ)], ids=["sequence", "optional"])
def test_identity_passes_a_sequence_of_given_length_through(x_type):
    m = compile_model(_model("Identity", x_type, x_type), shapes={"x": [(2, 3), (4,), ()]})
    assert m.input_names == ["x.0", "x.1", "x.2"]
    assert m.output_names == ["y.0", "y.1", "y.2"]
    xs = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2, 3, 4], np.float32), np.float32(7)]
    for got, x in zip(m.run({f"x.{i}": np.asarray(x) for i, x in enumerate(xs)}), xs):
        np.testing.assert_array_equal(got, x)


def test_optional_tensor_input_is_compiled_as_present():
    t = helper.make_tensor_type_proto(TensorProto.FLOAT, (2, 2))
    m = compile_model(_model("Identity", helper.make_optional_type_proto(t), helper.make_optional_type_proto(t)))
    x = np.array([[1, 2], [3, 4]], np.float32)
    np.testing.assert_array_equal(m.run({"x": x})[0], x)


def test_sequence_without_its_length_says_how_to_give_it():
    from tensorforge.frontends.onnx import from_onnx

    with pytest.raises(FrontendError, match=r"graph input 'x' is a sequence of tensors: give its length and each "
                                            r"tensor's shape at compile time, shapes=\{'x': \[shape, \.\.\.\]\}"):
        from_onnx(_model("Identity", SEQ, SEQ))
    # compile_model instead compiles for the sequence it is fed (compiler/specialize.py)
    m = compile_model(_model("Identity", SEQ, SEQ))
    xs = [np.ones((2, 3), np.float32), np.zeros(4, np.float32)]
    (ys,) = m.run({"x": xs})
    assert len(ys) == 2 and all(np.array_equal(a, b) for a, b in zip(ys, xs))


def test_ops_other_than_identity_refuse_a_sequence():
    t = helper.make_tensor_type_proto(TensorProto.FLOAT, (2,))
    # onnx's type inference refuses it first (Relu takes tensors), naming the node
    with pytest.raises(FrontendError, match=r"'n' \(Relu, inputs 'x', outputs 'y'\): .*unsupported type: "
                                            r"seq\(tensor\(float\)\)"):
        compile_model(_model("Relu", SEQ, t), shapes={"x": [(2,)]})
