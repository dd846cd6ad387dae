"""CompiledModel.run_dlpack: kernels read the caller's input tensors where they lie and write outputs the caller
allocated (the torch.compile backend's calls), with the same results as run() in every corner of the plan: outputs
that are inputs, views of inputs, parameters or one buffer twice; inputs that are misaligned or strided."""

import threading

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model
from tensorforge.runtime.errors import InputError

from .test_artifact_damage import X, tiny_onnx


def _corners():
    """x -> y = relu(x) @ w (a kernel result), i = x (an input as output), r = reshape(x) (a view of an input),
    s = reshape(y) (a view of another output's memory), k = a constant."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6), "w"),
             numpy_helper.from_array(np.array([2, 8], np.int64), "s28"),
             numpy_helper.from_array(np.array([3, 8], np.int64), "s38"),
             numpy_helper.from_array(np.arange(3, dtype=np.float32), "k0")]
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"]),
             helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Reshape", ["x", "s28"], ["r"]),
             helper.make_node("Reshape", ["y", "s38"], ["s"]), helper.make_node("Identity", ["k0"], ["k"])]
    outs = [helper.make_tensor_value_info("y", f, [4, 6]), helper.make_tensor_value_info("i", f, [4, 4]),
            helper.make_tensor_value_info("r", f, [2, 8]), helper.make_tensor_value_info("s", f, [3, 8]),
            helper.make_tensor_value_info("k", f, [3])]
    g = helper.make_graph(nodes, "corners", [helper.make_tensor_value_info("x", f, [4, 4])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _empty(made):
    def empty(shape, dtype):
        made.append(torch.empty(shape, dtype=getattr(torch, dtype)))
        return made[-1]
    return empty


@pytest.fixture(scope="module")
def corners():
    return compile_model(_corners())


@pytest.mark.parametrize("layout", ["aligned", "misaligned", "strided"])
def test_every_output_corner_equals_run(corners, layout):
    x = torch.from_numpy(X.copy())
    if layout == "misaligned":  # 4 bytes past a 64-byte boundary: copied in, not read in place
        x = torch.cat([torch.zeros(1), torch.from_numpy(X).reshape(-1)])[1:].reshape(4, 4)
    elif layout == "strided":
        x = torch.from_numpy(np.ascontiguousarray(X.T)).t()
    made = []
    got = corners.run_dlpack([x], _empty(made))
    want = corners.run({"x": X})
    assert [g is m for g, m in zip(got, made)] == [True] * 5
    for g, w, name in zip(got, want, corners.output_names):
        np.testing.assert_array_equal(g.numpy(), w, err_msg=name)
    got[1].fill_(7)  # an output is the caller's own: writing it changes neither the input nor a later run
    assert torch.equal(x, torch.from_numpy(X))
    np.testing.assert_array_equal(corners.run_dlpack([x], _empty([]))[1].numpy(), X)


def test_the_first_output_is_written_where_the_caller_put_it(corners):
    made = []
    y = corners.run_dlpack([torch.from_numpy(X.copy())], _empty(made))[0]
    assert y.data_ptr() == made[0].data_ptr()


def test_a_wrong_input_is_named(corners):
    with pytest.raises(InputError, match=r"input 'x' is float32\[4, 5\], the model expects float32\[4, 4\]"):
        corners.run_dlpack([torch.zeros(4, 5)], _empty([]))
    with pytest.raises(InputError, match="2 inputs given, the model takes 1"):
        corners.run_dlpack([torch.zeros(4, 4)] * 2, _empty([]))


def test_concurrent_calls_keep_their_own_inputs():
    model = compile_model(tiny_onnx())
    xs = [torch.from_numpy(X * (i + 1)) for i in range(8)]
    want = [model.run({"x": x.numpy()})[0] for x in xs]
    errors = []

    def worker(i):
        for _ in range(20):
            y = model.run_dlpack([xs[i]], _empty([]))[0]
            if not np.array_equal(y.numpy(), want[i]):
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_one_buffer_given_as_two_outputs_is_one_object_written_in_place():
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Identity", ["a"], ["a2"])]
    g = helper.make_graph(nodes, "dup", [helper.make_tensor_value_info("x", f, [4, 4])],
                          [helper.make_tensor_value_info(n, f, [4, 4]) for n in ("a", "a2")])
    model = compile_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    made = []
    a, a2 = model.run_dlpack([torch.from_numpy(X)], _empty(made))
    assert a is a2 and len(made) == 1
    np.testing.assert_array_equal(a.numpy(), X + X)
