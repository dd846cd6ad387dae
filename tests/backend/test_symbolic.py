"""Kernels over symbolic sizes (compiler/backend/symbolic.py): a dynamic model's builds find kernels that differ only
in a size, build each once with the size a run-time variable, and link it into every later build."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model, runtime
from tensorforge.compiler import ops
from tensorforge.compiler.backend.lower import KernelSpec, OpSpec
from tensorforge.compiler.backend.symbolic import SymbolicKernels, generalize
from tensorforge.compiler.ir import TensorType as T


def dense_spec(rows: int, k: int = 64, n: int = 64) -> KernelSpec:
    return KernelSpec((OpSpec(ops.dense_packed, (("block", 16), ("n", n)), (("in", 0), ("in", 1), ("in", 2))),),
                      (T((rows, k)), T((n // 16, k, 16)), T((n,))), (("op", 0, 0),), (T((rows, n)),))


def reshape_spec(rows: int) -> KernelSpec:
    return KernelSpec((OpSpec(ops.reshape, (("shape", (rows, 2, 8)),), (("in", 0),)),
                       OpSpec(ops.relu, (), (("op", 0, 0),))),
                      (T((rows, 16)),), (("op", 1, 0),), (T((rows, 2, 8)),))


def test_a_template_is_the_pair_with_each_differing_size_a_variable():
    t = generalize(dense_spec(1), dense_spec(16))
    assert t.n_vars == 1
    assert t.bind(dense_spec(5)) == [5] and t.bind(dense_spec(384)) == [384]
    assert t.bind(dense_spec(1)) is None  # a size of 1 broadcasts: such kernels are built exactly
    assert t.bind(dense_spec(5, n=128)) is None  # another weight: not this kernel
    assert generalize(dense_spec(4), dense_spec(4)) is None  # nothing differs
    assert generalize(dense_spec(4), reshape_spec(4)) is None  # another structure
    r = generalize(reshape_spec(3), reshape_spec(7))  # a size inside a tuple attribute is the same variable
    assert r.n_vars == 1 and r.bind(reshape_spec(11)) == [11]
    bad = KernelSpec(reshape_spec(5).ops, (T((6, 16)),), reshape_spec(5).outputs, (T((5, 2, 8)),))
    assert r.bind(bad) is None  # one variable, two values: not reproduced
    assert t.symbol() != r.symbol() and "_dyn_" in t.symbol()


def test_the_closest_kin_is_generalized_and_a_refused_template_is_not_offered_again():
    kernels = SymbolicKernels()
    kernels.remember([dense_spec(1), dense_spec(1, k=128)])
    t = kernels.candidate(dense_spec(16))
    assert t.n_vars == 1  # paired with the same weight, not with the other (two variables)
    kernels.refuse(t)
    assert kernels.candidate(dense_spec(16)).n_vars == 2
    assert kernels.find(dense_spec(16)) is None


def _encoder(seed=0):
    """x [batch, seq, 32] -> layer_norm(relu(x @ w1 + b1) @ w2 + x): a Transformer's feed-forward block."""
    rng = np.random.default_rng(seed)
    w1, b1, w2 = (rng.standard_normal(s).astype(np.float32) * 0.2 for s in ((32, 64), (64,), (64, 32)))
    scale, bias = (rng.standard_normal(32).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Add", ["o", "x"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "scale", "bias"], ["y"], axis=-1)]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (scale, "scale"),
                                                    (bias, "bias"))]), opset_imports=[helper.make_opsetid("", 17)])

    def reference(x):
        res = np.maximum(x @ w1 + b1, 0) @ w2 + x
        mean, var = res.mean(-1, keepdims=True), res.var(-1, keepdims=True)
        return (res - mean) / np.sqrt(var + 1e-5) * scale + bias

    return model, reference


def test_a_dynamic_model_builds_its_row_kernels_once_and_reuses_them_at_every_length(tmp_path):
    model, reference = _encoder()
    m = compile_model(model, dynamic={"x": {0: (1, 1), 1: (1, 64)}})  # compiles seq 1
    rng = np.random.default_rng(1)
    for seq in (5, 17, 64, 3):  # rows not a multiple of the register tile, and one above it
        x = rng.standard_normal((1, seq, 32)).astype(np.float32)
        (got,) = m.run({"x": x})
        np.testing.assert_allclose(got, reference(x), rtol=1e-4, atol=1e-4)
        (static,) = compile_model(model, shapes={"x": (1, seq, 32)}).run({"x": x})
        np.testing.assert_allclose(got, static, rtol=1e-6, atol=1e-6)
        kernels = [s["kernel"] for s in m.specialize({"x": x}).plan["steps"]]
        assert any("_dyn_" in k for k in kernels), kernels
    assert m._kernels.reused >= 2  # seq 17, 64 and 3 compiled none of the kernels seq 5 made symbolic
    # a specialization is a library of its own (the symbolic kernels linked in): saved, it runs alone
    x = rng.standard_normal((1, 17, 32)).astype(np.float32)
    path = tmp_path / "seq17.tfa"
    m.specialize({"x": x}).save(path)
    np.testing.assert_allclose(runtime.load(path).run({"x": x})[0], reference(x), rtol=1e-4, atol=1e-4)


def test_a_symbolic_dense_checks_the_sizes_it_is_called_with(tmp_path):
    """The kernel reads its rows from the buffers it gets; buffers that disagree are refused by its checks."""
    import tvm

    from tensorforge.compiler.backend.build import build_kernels, resolve_target
    from tensorforge.compiler.ops import packed

    target = resolve_target("cpu")
    kernels = SymbolicKernels()
    build_kernels([dense_spec(1)], target, str(tmp_path))
    kernels.remember([dense_spec(1)])
    (tmp_path / "b").mkdir()
    result = build_kernels([dense_spec(16)], target, str(tmp_path / "b"), symbolic=kernels)
    symbol = result.symbols[dense_spec(16).name()]
    lib = tvm.runtime.load_module(result.library_path)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    wp = tvm.runtime.tensor(packed.pack_dense_weight(w, {"kind": "packed", "n_block": 16}))
    for rows in (1, 6, 33):
        x = rng.standard_normal((rows, 64)).astype(np.float32)
        y = tvm.runtime.empty((rows, 64), "float32")
        lib[symbol](tvm.runtime.tensor(x), wp, tvm.runtime.tensor(b), y)
        np.testing.assert_allclose(y.numpy(), x @ w.T + b, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="n0|shape"):
        lib[symbol](tvm.runtime.tensor(np.zeros((6, 64), np.float32)), wp, tvm.runtime.tensor(b),
                    tvm.runtime.empty((7, 64), "float32"))
    (tmp_path / "c").mkdir()
    again = build_kernels([dense_spec(40)], target, str(tmp_path / "c"), symbolic=kernels)
    assert again.symbols == {dense_spec(40).name(): symbol} and kernels.reused == 1


def attention_spec(seq: int, causal: bool) -> KernelSpec:
    t = T((2, 3, seq, 16))
    return KernelSpec((OpSpec(ops.attention, (("scale", 0.25), ("causal", causal), ("nan_guard", False)),
                              (("in", 0), ("in", 1), ("in", 2))),), (t, t, t), (("op", 0, 0),), (t,))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_over_a_run_time_length_masks_the_padded_keys(tmp_path, causal):
    """One attention kernel for every sequence length: keys padded to a tile and masked, rows padded and dropped;
    the answers those of the reference at lengths on and off the tiles."""
    import tvm

    from tensorforge.compiler.backend.build import build_kernels, resolve_target
    from tensorforge.compiler.ops.attention import _attention_ref

    kernels = SymbolicKernels()
    kernels.remember([attention_spec(1, causal)])
    result = build_kernels([attention_spec(8, causal)], resolve_target("cpu"), str(tmp_path), symbolic=kernels)
    symbol = result.symbols[attention_spec(8, causal).name()]
    assert "_dyn_" in symbol
    lib = tvm.runtime.load_module(result.library_path)
    rng = np.random.default_rng(3)
    for seq in (1, 5, 32, 70):
        q, k, v = (rng.standard_normal((2, 3, seq, 16)).astype(np.float32) for _ in range(3))
        out = tvm.runtime.empty((2, 3, seq, 16), "float32")
        lib[symbol](*(tvm.runtime.tensor(a) for a in (q, k, v)), out)
        np.testing.assert_allclose(out.numpy(), _attention_ref(q, k, v, scale=0.25, causal=causal),
                                   rtol=1e-4, atol=1e-5)
