"""Every registered op, compiled through the backend, against its numpy reference on random inputs.

The table below is the single list of test cases; a test checks that every op in the registry appears in it, so a
new op cannot go untested. conv2d and dense take their weights as params, which the CPU pipeline packs, so the
packed variants are exercised as well.
"""

import numpy as np
import pytest

from tensorforge import compile_model

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tensorforge.compiler.ops import NO_RULE_YET, OPS, FusionKind, OpDef, defop, missing_facts
from tests.support import assert_close

rng = np.random.default_rng(0)


def rand(*shape, lo=-2.0, hi=2.0, dtype=np.float32):
    return rng.uniform(lo, hi, shape).astype(dtype)


def pos(*shape):
    return rand(*shape, lo=0.1, hi=3.0)


# (op, inputs: list of arrays; those listed in `params` are graph params, the rest graph inputs, attrs, params)
CASES = [
    *[(op, [rand(2, 3, 17)], {}, ()) for op in ("relu", "sigmoid", "tanh", "exp", "abs", "neg", "erf", "floor",
                                                 "ceil", "sin", "cos")],
    *[(op, [pos(4, 33)], {}, ()) for op in ("log", "sqrt", "reciprocal")],
    ("add", [rand(2, 3, 4), rand(3, 1)], {}, ()),
    ("sub", [rand(2, 1, 4), rand(3, 4)], {}, ()),
    ("mul", [rand(5, 1), rand(1, 7)], {}, ()),
    ("div", [rand(2, 8), pos(8)], {}, ()),
    ("maximum", [rand(4, 4), rand(4)], {}, ()),
    ("minimum", [rand(1, 4), rand(3, 1)], {}, ()),
    ("pow", [pos(3, 5), rand(5)], {}, ()),
    ("clip", [rand(3, 9)], {"min": -0.5, "max": 0.7}, ()),
    ("leaky_relu", [rand(3, 9)], {"alpha": 0.2}, ()),
    ("gelu", [rand(3, 9)], {}, ()),
    ("reduce_max", [np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0]], np.float32)], {"axes": (1,)}, ()),
    ("reduce_min", [np.array([[np.inf, np.inf], [1.0, 3.0]], np.float32)], {"axes": (1,), "keepdims": False}, ()),
    ("gelu", [rand(3, 9)], {"approximate": "tanh"}, ()),
    ("cast", [rand(3, 9, lo=-50, hi=50)], {"to": "int32"}, ()),
    ("conv2d", [rand(1, 8, 13, 11), rand(16, 8, 3, 3), rand(16)], {"pads": (1, 1, 1, 1)}, (1, 2)),
    ("conv2d", [rand(2, 3, 20, 20), rand(20, 3, 5, 5)], {"strides": (2, 2), "pads": (2, 1, 1, 2)}, (1,)),
    ("conv2d", [rand(1, 6, 9, 9), rand(12, 2, 3, 3), rand(12)], {"groups": 3, "dilations": (2, 2)}, (1, 2)),
    ("conv2d", [rand(1, 32, 14, 14), rand(32, 1, 3, 3)], {"groups": 32, "pads": (1, 1, 1, 1)}, (1,)),
    ("conv2d", [rand(1, 4, 7, 7), rand(5, 4, 1, 1)], {}, ()),  # weight as an input: the plain (unpacked) kernel
    ("dense", [rand(3, 40), rand(24, 40), rand(24)], {}, (1, 2)),
    ("dense", [rand(1, 300), rand(130, 300)], {}, (1,)),
    ("dense", [rand(2, 5), rand(3, 5)], {}, ()),
    ("matmul", [rand(2, 3, 4, 5), rand(3, 5, 6)], {}, ()),
    ("matmul", [rand(7), rand(7, 3)], {}, ()),
    ("batch_norm", [rand(2, 4, 5, 5), pos(4), rand(4), rand(4), pos(4)], {"epsilon": 1e-3}, (1, 2, 3, 4)),
    ("max_pool2d", [rand(1, 3, 11, 11)], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}, ()),
    ("max_pool2d", [rand(1, 2, 10, 10)], {"kernel": (3, 3), "strides": (2, 2), "ceil_mode": True}, ()),
    ("avg_pool2d", [rand(1, 3, 9, 9)], {"kernel": (3, 3), "pads": (1, 1, 1, 1)}, ()),
    ("avg_pool2d", [rand(1, 3, 9, 9)], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
                                        "count_include_pad": True}, ()),
    ("global_avg_pool", [rand(2, 5, 6, 7)], {}, ()),
    ("lrn", [rand(1, 10, 5, 5)], {"size": 5, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, ()),
    ("softmax", [rand(3, 10, 4)], {"axis": 1}, ()),
    ("softmax", [rand(3, 1000)], {"axis": 1}, ()),
    ("layer_norm", [rand(8, 64), pos(64), rand(64)], {"axis": 1, "epsilon": 1e-5}, (1, 2)),
    ("layer_norm", [rand(2, 5, 48, lo=1.0, hi=3.0), pos(48)], {"axis": 2, "epsilon": 1e-3}, (1,)),
    ("layer_norm", [rand(3, 4, 6), pos(4, 6), rand(4, 6)], {"axis": 1}, ()),  # two normalized axes, scale as input
    ("layer_norm", [rand(7, 33), pos(33)], {"axis": 1}, ()),  # odd row length: no vector split
    ("reshape", [rand(2, 3, 4)], {"shape": (6, 4)}, ()),
    ("transpose", [rand(2, 3, 4)], {"perm": (2, 0, 1)}, ()),
    ("concat", [rand(2, 3, 4), rand(2, 5, 4), rand(2, 1, 4)], {"axis": 1}, ()),
    ("pad", [rand(2, 3, 4)], {"pads": (0, 1, 2, 0, 2, 1), "value": 0.5}, ()),
    ("strided_slice", [rand(5, 6, 7)], {"begins": (1, 0, 6), "ends": (4, 6, -1), "strides": (2, 1, -3)}, ()),
    ("broadcast_to", [rand(3, 1)], {"shape": (2, 3, 5)}, ()),
    ("reduce_sum", [rand(4, 5, 6)], {"axes": (0, 2), "keepdims": False}, ()),
    ("reduce_mean", [rand(2, 3, 64)], {"axes": (2,)}, ()),
    ("reduce_mean", [rand(2, 3, 4, 5)], {"axes": (1, 3)}, ()),
    ("equal", [rng.integers(0, 3, (4, 6)).astype(np.float32), rng.integers(0, 3, (6,)).astype(np.float32)], {}, ()),
    ("where", [rng.random((3, 1, 5)) > 0.5, rand(4, 5), rand(3, 4, 1)], {}, ()),
    ("take", [rand(5, 6), np.array([[0, 4], [2, 2]], np.int64)], {"axis": 0}, (1,)),
    ("take", [rand(5, 6), np.array([5, -1, 0], np.int64)], {"axis": 1}, ()),
    *[(op, [rand(3, 17)], {}, ()) for op in ("sign", "round", "tan", "atan", "sinh", "cosh", "asinh")],
    *[(op, [rand(3, 17, lo=-0.9, hi=0.9)], {}, ()) for op in ("asin", "acos", "atanh")],
    ("acosh", [rand(3, 17, lo=1.0, hi=4.0)], {}, ()),
    ("isnan", [np.array([1.0, np.nan, -np.inf, 0.0], np.float32)], {}, ()),
    ("isinf", [np.array([1.0, np.nan, -np.inf, np.inf], np.float32)], {}, ()),
    ("logical_not", [rng.random((3, 5)) > 0.5], {}, ()),
    *[(op, [rng.random((3, 5)) > 0.5, rng.random((5,)) > 0.5], {}, ())
      for op in ("logical_and", "logical_or", "logical_xor")],
    ("bitwise_not", [rng.integers(-50, 50, (3, 5)).astype(np.int32)], {}, ()),
    *[(op, [rng.integers(-50, 50, (3, 5)).astype(np.int32), rng.integers(-50, 50, (5,)).astype(np.int32)], {}, ())
      for op in ("bitwise_and", "bitwise_or", "bitwise_xor")],
    *[(op, [rng.integers(0, 1000, (3, 5)).astype(np.uint32), rng.integers(0, 8, (5,)).astype(np.uint32)], {}, ())
      for op in ("left_shift", "right_shift")],
    *[(op, [rand(4, 5).round(), rand(5).round()], {}, ())
      for op in ("less", "greater", "less_equal", "greater_equal")],
    ("mod", [rng.integers(-20, 20, (4, 5)).astype(np.int64), np.array([3, -3, 7, -2, 5], np.int64)], {}, ()),
    ("conv3d", [rand(1, 4, 5, 6, 7), rand(6, 2, 3, 3, 2), rand(6)], {"groups": 2, "strides": (1, 2, 1),
                                                                     "pads": (1, 0, 1, 0, 1, 1)}, ()),
    ("max_pool3d", [rand(1, 2, 5, 6, 7)], {"kernel": (3, 2, 3), "strides": (2, 1, 2), "pads": (1, 0, 1, 1, 1, 0),
                                           "ceil_mode": True}, ()),
    ("avg_pool3d", [rand(1, 2, 5, 6, 7)], {"kernel": (2, 2, 2), "pads": (1, 1, 1, 1, 1, 1), "dilations": (2, 1, 2)},
     ()),
    ("avg_pool3d", [rand(1, 2, 5, 6, 7)], {"kernel": (3, 2, 3), "strides": (2, 1, 2), "pads": (1, 0, 1, 1, 1, 0),
                                           "count_include_pad": True}, ()),
    # ties (rounded values) must pick the first maximum in window order; padding never wins
    ("max_pool_indices", [np.round(rand(2, 3, 7, 6))], {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1),
                                                        "dilations": (1, 1), "storage_order": 1}, ()),
    ("max_pool_indices", [np.round(rand(2, 3, 5, 6, 4))], {"kernel": (2, 3, 2), "strides": (1, 2, 2),
                                                           "pads": (0, 1, 1, 1, 1, 0), "dilations": (1, 1, 1)}, ()),
    ("mod", [rand(4, 5, lo=-9, hi=9), np.array([3, -3, 7, -2, 5], np.float32)], {"fmod": True}, ()),
    ("mod", [rand(4, 5, lo=-9, hi=9), np.array([3, -3, 7, -2, 5], np.float32)], {"fmod": False}, ()),
    ("reduce_max", [rand(4, 5, 6)], {"axes": (1,), "keepdims": True}, ()),
    ("reduce_min", [rand(4, 5, 6)], {"axes": (0, 2), "keepdims": False}, ()),
    ("reduce_prod", [rand(4, 5, 3, lo=0.5, hi=1.5)], {"axes": (2,)}, ()),
    ("argmax", [rand(4, 7)], {"axis": 1}, ()),
    ("argmin", [np.array([[1, 0, 0, 1], [2, 2, 1, 1]], np.float32)], {"axis": 1, "keepdims": False,
                                                                        "select_last_index": True}, ()),
    ("cumsum", [rand(3, 6)], {"axis": 1}, ()),
    ("cumsum", [rand(3, 6)], {"axis": 0, "exclusive": True, "reverse": True}, ()),
    ("log_softmax", [rand(3, 10, 4)], {"axis": 1}, ()),
    # attention: the tiled CPU schedule (rows by 4, 16-lane row partials), odd sizes (its fallbacks), masks
    ("attention", [rand(1, 3, 32, 16), rand(1, 3, 32, 16), rand(1, 3, 32, 8)], {"scale": 0.25}, ()),
    ("attention", [rand(2, 2, 8, 16), rand(2, 2, 48, 16), rand(2, 2, 48, 16), rand(8, 48)], {"scale": 0.3}, (3,)),
    ("attention", [rand(2, 5, 6), rand(2, 7, 6), rand(2, 7, 3), rand(2, 1, 7)], {"scale": 0.5}, ()),
    ("attention", [rand(1, 2, 16, 8), rand(1, 2, 16, 8), rand(1, 2, 16, 8)], {"scale": 0.35, "causal": True}, ()),
    # the LSTM recurrence (weights packed (H/U, H, 4, U)): 4-row tiles and 16-unit blocks, odd sizes, reverse, one step
    ("lstm_sequence", [rand(6, 4, 128), rand(2, 32, 4, 16, lo=-0.3, hi=0.3), rand(4, 32), rand(4, 32)], {}, (1,)),
    ("lstm_sequence", [rand(5, 3, 12), rand(3, 3, 4, 1), rand(3, 3), rand(3, 3)], {"reverse": True,
                                                                                    "save_gates": True}, ()),
    ("lstm_sequence", [rand(1, 2, 40), rand(5, 10, 4, 2, lo=-0.5, hi=0.5), rand(2, 10), rand(2, 10)], {}, ()),
    ("lstm_sequence_grad", [rand(5, 4, 256), rand(5, 4, 64), rand(5, 4, 64), rand(256, 64, lo=-0.2, hi=0.2),
                            rand(5, 4, 64), rand(5, 4, 64)], {}, ()),
    ("lstm_sequence_grad", [rand(3, 3, 12), rand(3, 3, 3), rand(3, 3, 3), rand(12, 3), rand(3, 3, 3), rand(3, 3, 3)],
     {"reverse": True}, ()),
    ("einsum", [rand(2, 3, 4), rand(2, 4, 5)], {"equation": "bij,bjk->bik"}, ()),
    ("einsum", [rand(3, 3)], {"equation": "ii->i"}, ()),
    ("topk", [rand(3, 9)], {"k": 4, "axis": 1}, ()),
    ("topk", [rand(6, 2)], {"k": 2, "axis": 0, "largest": False}, ()),
    ("gather_elements", [rand(3, 4), np.array([[0, 2, -1, 1], [2, 2, 0, 0]], np.int64)], {"axis": 0}, ()),
    ("gather_nd", [rand(3, 4, 5), np.array([[0, 1], [2, -1]], np.int64)], {}, ()),
    ("gather_nd", [rand(2, 3, 4), np.array([[1], [0]], np.int64)], {"batch_dims": 1}, ()),
    ("cumprod", [rand(3, 6, lo=0.5, hi=1.5)], {"axis": 1}, ()),
    ("cumprod", [rand(3, 6, lo=0.5, hi=1.5)], {"axis": 0, "exclusive": True, "reverse": True}, ()),
    ("scatter_elements", [rand(3, 4), np.array([[0, 2, -1, 1], [2, 1, 0, 0]], np.int64), rand(2, 4)], {"axis": 0},
     ()),
    ("scatter_elements", [rand(2, 5), np.array([[1, 1], [4, 0]], np.int64), rand(2, 2)], {"axis": 1,
                                                                                        "reduction": "add"}, ()),
    ("scatter_nd", [rand(4, 3, 2), np.array([[0, 1], [-1, 2]], np.int64), rand(2, 2)], {}, ()),
    ("scatter_nd", [rand(4, 3), np.array([[1], [1], [3]], np.int64), rand(3, 3)], {"reduction": "max"}, ()),
    ("bitcast", [rng.integers(0, 256, (3, 5)).astype(np.uint8)], {"to": "int8"}, ()),  # float8 etc.: test_onnx_cast
    # attention over a cache: row i (the token at position 5 + i) reads keys 0 .. 5 + i of 10 (decoding)
    ("cached_attention", [rand(2, 3, 1, 16), rand(2, 3, 10, 16), rand(2, 3, 10, 8), np.array([5], np.int64)],
     {"scale": 0.25}, ()),
    ("cached_attention", [rand(2, 2, 3, 4), rand(2, 2, 9, 4), rand(2, 2, 9, 4), np.array([2], np.int64),
                          rand(2, 1, 1, 9)], {"scale": 0.5}, ()),
    # nan_guard: a row whose every key is masked with -inf gives zeros (transformers' where(isnan(p), 0, p))
    ("cached_attention", [rand(1, 2, 2, 4), rand(1, 2, 6, 4), rand(1, 2, 6, 4), np.array([3], np.int64),
                          np.array([[[[-np.inf] * 6, [0.0] * 6]]], np.float32)], {"scale": 0.5, "nan_guard": True}, ()),
    ("all_reduce_mean", [rand(3, 4)], {}, ()),  # one process: x itself (two: tests/test_distributed.py)
    ("attention", [rand(1, 2, 3, 8), rand(1, 2, 5, 8), rand(1, 2, 5, 8),
                   np.array([[[[-np.inf] * 5, [0.0] * 5, [0.0, -np.inf, 0.0, 0.0, 0.0]]]], np.float32)],
     {"scale": 0.5, "nan_guard": True}, ()),
]

from tests.ops.grad_cases import GRAD_CASES  # noqa: E402  (compiler/ops/training.py, compiler/ops/backward.py)

CASES += GRAD_CASES


def single_op_graph(opname, arrays, attrs, params):
    g = Graph(opname)
    vals = []
    for i, a in enumerate(arrays):
        vals.append(g.add_param(f"p{i}", a) if i in params else g.add_input(f"x{i}", TensorType.of(a)))
    g.outputs = g.add_node(OPS[opname], vals, attrs, name=f"{opname}_node")
    return g


@pytest.mark.parametrize("opname, arrays, attrs, params", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op_compiled_matches_reference(opname, arrays, attrs, params):
    g = single_op_graph(opname, arrays, attrs, params)
    feeds = {f"x{i}": a for i, a in enumerate(arrays) if i not in params}
    expected = interpret(g, feeds)
    got = compile_model(g).run(feeds)
    for e, a in zip(expected, got):
        assert a.dtype == e.dtype
        assert_close(a, e, rtol=1e-4, atol=1e-5, what=opname)


def test_every_op_is_tested():
    tested = {c[0] for c in CASES} | {"conv2d_packed", "dense_packed"}  # packed: via conv2d/dense with params
    tested |= {"to_blocked", "from_blocked", "conv2d_nchwc", "depthwise_conv2d_nchwc", "max_pool2d_nchwc",
               "global_avg_pool_nchwc",
               "avg_pool2d_nchwc"}  # tests/passes/test_layout.py
    tested |= {"winograd_conv2d"}  # tests/passes/test_winograd.py
    tested |= {"dense_amx", "conv2d_amx", "matmul_amx", "attention_amx"}  # tests/ops/test_amx.py
    tested |= {"cache_write"}  # tests/test_decoding.py (planned only as a cache's in-place update)
    tested |= {"lstm_sequence_dp"}  # tests/ops/test_rnn.py (the kernel needs AVX512-BF16 to run) (the kernels need a CPU with AMX to run)
    assert set(OPS) - tested == set(), "ops without a test case"


def test_every_op_is_declared_fully():
    """Every fact a pass or autodiff reads is on the op: a type rule, a reference, a kernel, a FLOP count, and a
    gradient rule or an explicit NOT_DIFFERENTIABLE / NO_RULE_YET (never a silent None)."""
    incomplete = {op.name: missing_facts(op) for op in OPS.values() if missing_facts(op)}
    assert not incomplete, f"incomplete op declarations: {incomplete}"
    for op in OPS.values():
        assert callable(op.lower), f"{op.name}: no kernel"


def test_every_op_is_imported_by_name_into_the_package():
    """compiler/ops/__init__.py lists the ops by name (so editors resolve `ops.conv2d`): exactly the registry."""
    listed = {name for name, value in vars(ops).items() if isinstance(value, OpDef)}
    assert listed == set(OPS), f"missing: {sorted(set(OPS) - listed)}, extra: {sorted(listed - set(OPS))}"
    assert all(getattr(ops, name) is op for name, op in OPS.items())


def _identity_op(**facts):
    return OpDef("incomplete", FusionKind.ELEMWISE, infer=lambda types: types[0], reference=lambda x: x,
                 **{"lower": lambda x: x, **facts})


@pytest.mark.parametrize("facts, missing", [
    ({}, "grad is None: give a rule, NOT_DIFFERENTIABLE or NO_RULE_YET"),
    ({"grad": NO_RULE_YET, "flops": None}, "flops is not callable"),
    ({"grad": NO_RULE_YET, "lower": None}, "lower is not callable"),
    ({"grad": NO_RULE_YET, "half_operands": (1,)}, "half_operands (1,) are not operand slots"),
    ({"grad": NO_RULE_YET, "channel_axis_agnostic": None}, "channel_axis_agnostic is None, not a bool"),
    ({"grad": NO_RULE_YET, "bf16_weight": True}, "bf16_weight is True: a bool, and true only for an op with a weight"),
])
def test_completeness_check_catches_an_incomplete_op(facts, missing):
    found = missing_facts(_identity_op(**facts))
    assert len(found) == 1 and found[0].startswith(missing), found
    assert missing_facts(_identity_op(grad=NO_RULE_YET)) == []


def test_an_op_declared_without_a_gradient_statement_is_refused():
    with pytest.raises(TypeError, match="grad"):
        defop("no_grad_stated", FusionKind.ELEMWISE, infer=lambda types: types[0], reference=lambda x: x,
              lower=lambda x: x)
    with pytest.raises(ValueError, match=r"op no_grad_stated: incomplete declaration: grad is None"):
        defop("no_grad_stated", FusionKind.ELEMWISE, infer=lambda types: types[0], reference=lambda x: x,
              lower=lambda x: x, grad=None)
    assert "no_grad_stated" not in OPS


def test_max_pool_indices_reference_by_hand():
    """Window maxima 5 (first of two), 7 and 9 of a 1x1x2x4 map, 2x2 windows at stride 2: flat indices into the
    input, row-major and column-major."""
    x = np.array([[[[1, 5, 7, 0], [5, 2, 3, 7]]]], np.float32)
    attrs = dict(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=False)
    assert ops.max_pool_indices.evaluate(x, storage_order=0, **attrs)[0].tolist() == [[[[1, 2]]]]
    assert ops.max_pool_indices.evaluate(x, storage_order=1, **attrs)[0].tolist() == [[[[2, 4]]]]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("fmod", [False, True])
def test_mod_matches_numpy_at_the_edges(dtype, fmod):
    """numpy.mod / numpy.fmod exactly: signed zeros, +-inf and nan operands, division by zero."""
    x = np.array([0, -0.0, 0, -0.0, -3, 3, -1, 1, np.inf, -np.inf, 1, 1, np.nan, 1, -4, 4, -7.5, 5.25], dtype)
    y = np.array([-2, 2, 2, -2, np.inf, np.inf, -np.inf, -np.inf, 2, 2, 0, -0.0, 2, np.nan, 2, -2, 2, -0.5], dtype)
    feeds = {"x0": x, "x1": y}
    g = single_op_graph("mod", [x, y], {"fmod": fmod}, ())
    with np.errstate(all="ignore"):
        want = np.fmod(x, y) if fmod else np.mod(x, y)
    for got in (interpret(g, feeds)[0], compile_model(g).run(feeds)[0]):
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), (got, want)
        finite = ~np.isnan(want)
        assert np.array_equal(np.signbit(got[finite]), np.signbit(want[finite]))


def test_packed_ops_are_used_for_param_weights():
    g = single_op_graph("conv2d", [rand(1, 8, 6, 6), rand(16, 8, 3, 3)], {}, (1,))
    from tensorforge.compiler.passes import pack_weights

    out = pack_weights(g.copy())
    assert [n.op for n in out.nodes] == [ops.conv2d_packed]
    assert out.params[0].type.shape == (1, 8, 3, 3, 16)
    feeds = {"x0": rand(1, 8, 6, 6)}
    assert_close(interpret(out, feeds)[0], interpret(g, feeds)[0], rtol=1e-4, atol=1e-5)
