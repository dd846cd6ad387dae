"""frontends/trainable.py: which params train by default, for each kind of model."""

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from tensorforge.compiler.ir import Graph
from tensorforge.frontends import nn
from tensorforge.frontends.onnx import from_onnx
from tensorforge.frontends.torch import from_torch
from tensorforge.frontends.trainable import default_trainable


def test_builder_module_trains_its_trainable_specs():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    g = net.to_graph({"x": (2, 4)})
    assert {"1.running_mean", "1.running_var"} <= {p.name for p in g.params}
    assert default_trainable(net, g) == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_onnx_model_trains_its_float_initializers():
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([3], np.int64), "shape")
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(3, np.float32))),
             helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "c"], ["s"]),
             helper.make_node("Reshape", ["s", "shape"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [w, shape]),
        opset_imports=[helper.make_opsetid("", 17)])
    g = from_onnx(model)
    assert "c" in {p.name for p in g.params}  # a float param, but a constant of the graph, not an initializer
    assert default_trainable(model, g) == {"w"}


def test_torch_module_trains_its_parameters_not_its_buffers():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).eval()
    g = from_torch(module, (torch.randn(2, 4),))
    assert {"1.running_mean", "1.running_var"} <= {p.name for p in g.params}
    assert default_trainable(module, g) == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_graph_trains_every_float_param():
    g = Graph("g")
    g.add_param("w", np.ones((2, 2), np.float32))
    g.add_param("h", np.ones(2, np.float16))
    g.add_param("idx", np.zeros(2, np.int64))
    assert default_trainable(g, g) == {"w", "h"}
