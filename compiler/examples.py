"""Small real models built in code (no files, no downloads), for the demo, the docs and the tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def small_cnn_onnx(seed: int = 0, batch: int = 1, image: int = 32, classes: int = 10) -> onnx.ModelProto:
    """A CIFAR-sized CNN: 3 conv blocks (conv, batch norm, ReLU, max pool), global pooling, a classifier, softmax."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def param(name, shape, scale=None, positive=False):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if positive:
            data = rng.uniform(0.5, 1.5, shape)
        else:
            data = rng.normal(0.0, scale if scale is not None else np.sqrt(2.0 / fan_in), shape)
        inits.append(numpy_helper.from_array(data.astype(np.float32), name))
        return name

    x, channels = "image", 3
    for i, out in enumerate((16, 32, 64)):
        w = param(f"conv{i}.weight", (out, channels, 3, 3))
        b = param(f"conv{i}.bias", (out,), scale=0.1)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        bn = [param(f"bn{i}.{k}", (out,), positive=k in ("scale", "var"), scale=0.1)
              for k in ("scale", "bias", "mean", "var")]
        nodes.append(helper.make_node("BatchNormalization", [f"conv{i}"] + bn, [f"bn{i}"], name=f"bn{i}"))
        nodes.append(helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"))
        if i < 2:
            nodes.append(helper.make_node("MaxPool", [f"relu{i}"], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
        else:
            x = f"relu{i}"
        channels = out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    fc_w = param("fc.weight", (classes, channels), scale=np.sqrt(1.0 / channels))
    fc_b = param("fc.bias", (classes,), scale=0.1)
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], name="fc", transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, image, image])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tensorforge")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
