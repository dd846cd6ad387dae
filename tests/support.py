"""Shared helpers for the tests: onnxruntime as a baseline, one-node ONNX models, closeness checks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tensorforge.compiler.examples import (LIGHT_DIR, LIGHT_MODELS, light_expected, light_input, light_path,  # noqa: F401
                               randomize_weights)

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


def assert_gradients_match_finite_differences(g, feeds: dict[str, np.ndarray], *, rtol: float, atol: float,
                                              h: float = 1e-6) -> None:
    """`g` outputs [loss, d loss / d feeds in order]: each gradient against central differences of the loss's sum,
    through the reference interpreter (float64 feeds)."""
    from tensorforge.compiler.ir import interpret

    outs = interpret(g, feeds)
    for i, (name, a) in enumerate(feeds.items()):
        numeric = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus, minus = dict(feeds), dict(feeds)
            plus[name], minus[name] = a.copy(), a.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            numeric[idx] = (interpret(g, plus)[0].sum() - interpret(g, minus)[0].sum()) / (2 * h)
        np.testing.assert_allclose(outs[1 + i], numeric, rtol=rtol, atol=atol, err_msg=f"input {name}")
