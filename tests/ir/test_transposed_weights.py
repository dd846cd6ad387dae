"""MatMul weights are kept as the transposed view of the ONNX initializer (Fortran order) until they are packed:
no transposed copy at import (0.6 s of BERT-base's). Packing, digests and the plan treat them as the arrays they are."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge.compiler import compile_model
from tensorforge.compiler.driver import import_model
from tensorforge.compiler.ir.constants import content_digest
from tensorforge.compiler.ops import packed as K


@pytest.mark.parametrize("n, k, block", [(96, 40, 16), (100, 24, 48), (48, 7, 48), (5, 3, 16)])
def test_packing_a_transposed_view_equals_packing_its_copy(n, k, block):
    b = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)  # a MatMul's (K, N) weight
    view = b.T
    assert view.flags.f_contiguous and not view.flags.c_contiguous
    layout = {"kind": "packed", "n_block": block}
    got = K.pack_dense_weight(view, layout)
    want = K.pack_dense_weight(np.ascontiguousarray(view), layout)
    assert got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_digest_tells_a_transposed_view_from_the_array_with_its_bytes():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    # a.T lies in memory exactly as a does: the same bytes, other contents
    assert content_digest(a.T) != content_digest(a)
    assert content_digest(a.T) == content_digest(a.T.copy(order="F"))
    assert content_digest(np.ascontiguousarray(a.T)) == content_digest(np.ascontiguousarray(a.T))
    assert content_digest(a[:, ::2]) == content_digest(np.ascontiguousarray(a[:, ::2]))  # strided: copied


def _two_matmuls(k=12, n=16):
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((k, n)).astype(np.float32)
    w2 = rng.standard_normal((n, n)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def test_import_keeps_the_transposed_view_and_the_model_computes_x_at_w():
    model, w1, w2 = _two_matmuls()
    g = import_model(model, {"x": (3, 12)})
    dense_weights = [n.inputs[1] for n in g.nodes if n.op.name == "dense"]
    assert len(dense_weights) == 2
    for v, w in zip(dense_weights, (w1, w2)):
        assert v.is_param and v.data.flags.f_contiguous and not v.data.flags.c_contiguous
        np.testing.assert_array_equal(v.data, w.T)
    x = np.random.default_rng(2).standard_normal((3, 12)).astype(np.float32)
    want = np.maximum(x @ w1, 0) @ w2
    for opt_level in (0, 2):  # unpacked (the plan stores it in C order) and packed
        (got,) = compile_model(model, shapes={"x": (3, 12)}, opt_level=opt_level).run({"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
