"""ONNX Attention on float16/bfloat16 inputs computes in float32 and rounds once, at the outputs
(frontends/onnx/converters/attention.py): over many keys its result stays within one rounding of the exact value,
where sums kept in half precision drift by several units in the last place."""

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

from tensorforge import compile_model

HALF = {"float16": (np.float16, TensorProto.FLOAT16, 2.0 ** -11), "bfloat16": (ml_dtypes.bfloat16,
                                                                                TensorProto.BFLOAT16, 2.0 ** -8)}


@pytest.mark.parametrize("half", list(HALF))
def test_half_attention_is_rounded_once(half):
    dtype, onnx_type, unit = HALF[half]  # unit: half of one ulp, relative
    b, h, sq, skv, d = 1, 2, 4, 512, 16
    rng = np.random.default_rng(0)
    q, k, v = (rng.uniform(-1, 1, shape).astype(dtype) for shape in ((b, h, sq, d), (b, h, skv, d), (b, h, skv, d)))
    v = (np.abs(v.astype(np.float32)) + 1).astype(dtype)  # outputs away from zero: a relative bound means something
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=1)
    inputs = [helper.make_tensor_value_info(n, onnx_type, x.shape) for n, x in zip("QKV", (q, k, v))]
    graph = helper.make_graph([node], "attention", inputs, [helper.make_tensor_value_info("Y", onnx_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    (y,) = compile_model(model).run({"Q": q, "K": k, "V": v})
    assert y.dtype == np.dtype(dtype) and y.shape == (b, h, sq, d)

    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    scores = q64 @ k64.transpose(0, 1, 3, 2) / np.sqrt(d)
    scores = np.where(np.arange(skv)[None, :] <= np.arange(sq)[:, None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    exact = (p / p.sum(-1, keepdims=True)) @ v64
    rel = np.abs(y.astype(np.float64) - exact) / np.abs(exact)
    assert rel.max() <= 1.01 * unit, f"{rel.max():.3g} > one rounding ({unit:.3g})"
