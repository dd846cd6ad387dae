"""MatMul weights are kept as the transposed view of the ONNX initializer (Fortran order) until they are packed:
no transposed copy at import (0.6 s of BERT-base's). Packing, digests and the plan treat them as the arrays they are."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge.compiler import compile_model
from tensorforge.compiler.driver import import_model
from tensorforge.compiler.ops import packed as K


@pytest.mark.parametrize("n, k, block", [(96, 40, 16), (100, 24, 48), (48, 7, 48), (5, 3, 16), (100, 300, 48)])
def test_packing_a_transposed_view_equals_packing_its_copy(n, k, block):
    b = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)  # a MatMul's (K, N) weight
    view = b.T
    assert view.flags.f_contiguous and not view.flags.c_contiguous
    layout = {"kind": "packed", "n_block": block}
    got = K.pack_dense_weight(view, layout)
    want = K.pack_dense_weight(np.ascontiguousarray(view), layout)
    assert got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_cse_merges_equal_params_only():
    from tensorforge.compiler.ir import Graph, TensorType
    from tensorforge.compiler.passes.cse import cse
    from tensorforge.compiler import ops

    rng = np.random.default_rng(3)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    near = a.copy()
    near[17, 5] += 1.0  # off the sample cse groups params by: only the whole comparison tells it apart
    nan = np.full((4,), np.nan, np.float32)
    g = Graph("g")
    x = g.add_input("x", TensorType((64, 64), "float32"))
    params = [g.add_param("a", a), g.add_param("a_copy", a.copy()), g.add_param("near", near),
              g.add_param("a_t", a.T), g.add_param("a_t_copy", np.asfortranarray(a.T)),
              g.add_param("z", np.zeros(4, np.float32)), g.add_param("mz", -np.zeros(4, np.float32)),
              g.add_param("nan", nan), g.add_param("nan2", nan.copy())]
    outs = [g.add_node(ops.add, [x, p])[0] if p.type.shape == (64, 64) else g.add_node(ops.neg, [p])[0]
            for p in params]
    g.outputs = outs
    cse(g)
    read = [o.producer.inputs[-1].name for o in g.outputs]
    # a == a_copy; a.T (Fortran order) == its Fortran copy; near, 0.0 against -0.0 and the NaNs as their bytes say
    assert read == ["a", "a", "near", "a_t", "a_t", "z", "mz", "nan", "nan"], read


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


def test_packed_weights_made_by_the_compile_run_in_place_and_the_callers_arrays_are_copied():
    """The compile's own packed weights (Graph.owned) become the model's buffers where they lie; an array the caller
    gave stays the caller's: changing it afterwards changes nothing in the model."""
    from tensorforge.compiler import ops
    from tensorforge.compiler.driver import compile_graph, optimize
    from tensorforge.compiler.ir import Graph, TensorType
    from tensorforge.compiler.options import CompileOptions
    from tensorforge.runtime.plan import ALIGNMENT, aligned_empty

    rng = np.random.default_rng(4)
    w, bias = aligned_empty((64, 32), "float32"), aligned_empty((3, 64), "float32")  # aligned: adoptable, if owned
    w[...] = rng.standard_normal((64, 32))
    bias[...] = rng.standard_normal((3, 64))
    g = Graph("g")
    x = g.add_input("x", TensorType((3, 32), "float32"))
    (h,) = g.add_node(ops.dense, [x, g.add_param("w", w)])
    (y,) = g.add_node(ops.add, [h, g.add_param("bias", bias)])
    g.outputs = [y]
    options = CompileOptions()
    g = optimize(import_model(g), options)
    packed = list(g.owned.values())
    assert packed and all(a.ctypes.data % ALIGNMENT == 0 and a.flags.writeable for a in packed)
    m = compile_graph(g, options)
    assert all(any(b is a for b in m._shared if b is not None) for a in packed)
    xa = rng.standard_normal((3, 32)).astype(np.float32)
    want = xa @ w.T + bias
    w[...] = 0
    bias[...] = 7
    (got,) = m.run({"x": xa})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
