"""frontends/builder.py: the Builder every frontend emits IR through, with no frontend node of its own."""

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType
from tensorforge.frontends.builder import Builder, check_array_dtype, is_string_array
from tensorforge.runtime.errors import FrontendError


def test_known_inputs_fold_and_keep_their_name():
    g = Graph("g")
    b = Builder(g, "test")
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b.names[id(w)] = "w"
    b.at("t", "Transpose")
    wt = b.emit(ops.transpose, [w], perm=(1, 0))
    assert isinstance(wt, np.ndarray) and wt.shape == (3, 2)
    x = g.add_input("x", TensorType((4, 3), "float32"))
    b.at("mm", "MatMul")
    (y,) = [b.emit(ops.matmul, [x, wt])]
    assert y.type == TensorType((4, 2), "float32")
    assert [p.name for p in g.params] == ["w"]  # the folded transpose is a param named after its source
    assert b.value(wt) is g.params[0]  # one array, one param


def test_unnamed_constant_is_named_after_its_node():
    g = Graph("g")
    b = Builder(g, "test")
    x = g.add_input("x", TensorType((2,), "float32"))
    b.at("add1", "Add")
    b.emit(ops.add, [x, np.ones(2, np.float32)])
    assert [p.name for p in g.params] == ["add1.const"]


def test_errors_name_the_source_and_node():
    g = Graph("g")
    b = Builder(g, "test")
    x = g.add_input("x", TensorType((2, 3), "float32"))
    b.at("r", "Reshape")
    with pytest.raises(FrontendError, match=r"^test node 'r' \(Reshape\): input 'shape' must be known at compile "
                                            r"time") as e:
        b.const(x, "shape")
    assert e.value.needs_constant == "x"
    with pytest.raises(FrontendError, match=r"^test node 'r' \(Reshape\): string tensors exist only at compile"):
        b.value(np.array(["a"], dtype=object))
    with pytest.raises(FrontendError, match=r"^test node 'r' \(Reshape\): .*"):
        b.emit(ops.add, [x, g.add_input("y", TensorType((4,), "float32"))])  # the IR's own error, located


def test_storage_types_are_only_moved():
    g = Graph("g")
    b = Builder(g, "test")
    x = g.add_input("x", TensorType((2,), "float8_e4m3fn"))
    b.at("n", "Relu")
    with pytest.raises(FrontendError, match=r"relu would compute on float8_e4m3fn values"):
        b.emit(ops.relu, [x])


def test_dtype_helpers():
    assert is_string_array(np.array(["a"])) and is_string_array(np.array(["a"], dtype=object))
    assert not is_string_array(np.zeros(2)) and not is_string_array("a")
    with pytest.raises(FrontendError, match=r"^w has the unsupported element type complex64; supported: "
                                            r"bfloat16, bool, "):
        check_array_dtype(np.zeros(2, np.complex64), "w")
