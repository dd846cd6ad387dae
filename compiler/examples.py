"""Models for the demo, the tests and the benchmarks: a small CNN built in code, and the nine light models that
ship inside the onnx package (no downloads)."""

from __future__ import annotations

import os

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


LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512"]


def light_path(name: str) -> str:
    return os.path.join(LIGHT_DIR, f"light_{name}.onnx")


def light_expected(name: str) -> np.ndarray:
    return numpy_helper.to_array(onnx.load_tensor(os.path.join(LIGHT_DIR, f"light_{name}_output_0.pb")))


def light_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The input onnx's own backend test feeds the light models: arange(n) / n."""
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = tuple(d.dim_value or 1 for d in vi.type.tensor_type.shape.dim)
        n = int(np.prod(shape))
        feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light models fill every weight with one constant (ConstantOfShape), which makes every output equal.
    Replace those by random initializers (fan-in scaled; 1-D ones in [0.5, 1.5] so batch-norm variances stay
    positive) so that a comparison can tell a right answer from a wrong one."""
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            if len(shape) >= 2:
                data = rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[1:])), shape)
            else:
                data = rng.uniform(0.5, 1.5, shape)
            model.graph.initializer.append(numpy_helper.from_array(data.astype(np.float32), node.output[0]))
        else:
            keep.append(node)
    used = {i for n in keep for i in n.input}
    kept_inits = [i for i in model.graph.initializer if i.name in used or i.name in {vi.name for vi in model.graph.input}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept_inits)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model
