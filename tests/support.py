"""Shared helpers for the tests: the onnx package's light models, randomized weights, onnxruntime as a baseline."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

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


def ort_run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def single_op_model(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int = 1, *, opset: int = 17,
                    const_inputs: dict[str, np.ndarray] | None = None, **attrs) -> onnx.ModelProto:
    """An ONNX model of one node; `inputs` are graph inputs, `const_inputs` initializers (in that order)."""
    const_inputs = const_inputs or {}
    names = list(inputs) + list(const_inputs)
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, name=f"{op_type.lower()}_node", **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
        [numpy_helper.from_array(v, k) for k, v in const_inputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills in the output types


def assert_close(actual, expected, rtol=1e-3, atol=1e-5, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if not np.allclose(actual, expected, rtol=rtol, atol=atol):
        err = np.abs(actual - expected)
        i = np.unravel_index(np.argmax(err - rtol * np.abs(expected)), err.shape)
        raise AssertionError(f"{what}: max abs error {err.max():.3g}; worst at {i}: {actual[i]} vs {expected[i]}")
