"""Defined behaviour on every input: integer division by zero, INT_MIN / -1, NaN and +-inf, run-time indices out of
range. Each case is a one-node ONNX model, compiled, against the reference interpreter and (where it answers)
onnxruntime, NaN equal to NaN."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.ir import interpret
from tensorforge.frontends.onnx import from_onnx
from tests.support import ort_run, single_op_model

nan, inf = np.nan, np.inf
X = np.array([[1.0, nan, 3.0, nan, -inf, 0.5], [inf, -inf, 0.0, -1.0, 2.0, nan], [-inf, -inf, nan, -inf, 7, 7]],
             np.float32)
Y = np.array([[nan, 0.0, nan, 5, 1, 2], [1, 2, nan, -2, 3, -inf], [0, 0, 0, 0, 0, 0]], np.float32)
AX = {"ax": np.array([1], np.int64)}


def _int_operands(dt):
    mn, mx = np.iinfo(dt).min, np.iinfo(dt).max
    a = np.array([7, -7, 0, mn, mn, mx, mn + 1, -7, 7, 6], dt)
    b = np.array([0, 0, 0, -1, 0, -1, -1, 2, -2, 4], dt)
    return {"a": a, "b": b}


# (op type, inputs, consts, attrs, opset, compare with onnxruntime): onnxruntime 1.31 refuses integer division by
# zero ("Integer division by zero") and dies of SIGFPE on INT_MIN / -1 (Div, and Mod with fmod=0), so those cases
# compare with numpy (the reference interpreter) only. Its ReduceMax/ReduceMin drop NaN; we follow numpy there.
CASES = [
    *[(op, _int_operands(dt), {}, attrs, 17, False) for dt in (np.int32, np.int64)
      for op, attrs in (("Div", {}), ("Mod", {"fmod": 0}), ("Mod", {"fmod": 1}))],
    ("Relu", {"x": X}, {}, {}, 17, True),
    ("Max", {"a": X, "b": Y}, {}, {}, 17, True),
    ("Max", {"a": Y, "b": X, "c": Y[1]}, {}, {}, 17, True),
    ("Min", {"a": X, "b": Y}, {}, {}, 17, True),
    ("Clip", {"x": X}, {"lo": np.float32(-0.5), "hi": np.float32(0.5)}, {}, 17, True),
    ("HardSigmoid", {"x": X}, {}, {}, 17, True),
    ("HardSwish", {"x": X}, {}, {}, 17, True),
    ("ReduceMax", {"x": X}, AX, {"keepdims": 0}, 18, False),
    ("ReduceMin", {"x": X}, AX, {"keepdims": 0}, 18, False),
    *[(op, {"x": np.tile(X, (1, 5))}, {}, {"axis": 1, "select_last_index": last}, 17, True)
      for op in ("ArgMax", "ArgMin") for last in (0, 1)],
]


def _same(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if got.dtype.kind == "f":
        assert np.allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True), (what, got, want)
    else:
        assert np.array_equal(got, want), (what, got, want)


@pytest.mark.parametrize("op_type, inputs, consts, attrs, opset, with_ort", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_defined_on_edge_values(op_type, inputs, consts, attrs, opset, with_ort):
    model = single_op_model(op_type, inputs, const_inputs=consts, opset=opset, **attrs)
    want = interpret(from_onnx(model), inputs)[0]
    _same(compile_model(model).run(inputs)[0], want, "compiled vs reference")
    if with_ort:
        _same(want, ort_run(model, inputs)[0], "reference vs onnxruntime")


def test_integer_division_edges_by_hand():
    """Truncated division (ONNX, C), x / 0 = x % 0 = 0 (numpy), INT_MIN / -1 wraps to INT_MIN."""
    i = _int_operands(np.int32)
    model = single_op_model("Div", i)
    mn, mx = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    assert compile_model(model).run(i)[0].tolist() == [0, 0, 0, mn, 0, -mx, mx, -3, -3, 1]


D = np.arange(20, dtype=np.float32).reshape(5, 4)
# (op type, data, good indices, bad indices, extra inputs, attrs)
GATHERS = [
    ("Gather", np.array([0, -5, 4, 2], np.int64), np.array([0, 5, 1, 1], np.int64), {}, {"axis": 0}),
    ("Gather", np.array([[0, -4], [3, 1]], np.int32), np.array([[0, -5], [3, 1]], np.int32), {}, {"axis": 1}),
    ("GatherElements", np.array([[0, -1, 2, 4]] * 5, np.int64), np.array([[0, -6, 2, 4]] * 5, np.int64), {},
     {"axis": 0}),
    ("GatherND", np.array([[0, 1], [-5, -4]], np.int64), np.array([[0, 1], [4, 4]], np.int64), {}, {}),
    ("ScatterElements", np.array([[1, -2, 0, 3]], np.int64), np.array([[1, -6, 0, 3]], np.int64),
     {"u": np.ones((1, 4), np.float32)}, {"axis": 0}),
    ("ScatterND", np.array([[1, -2], [0, 3]], np.int64), np.array([[1, -2], [0, 4]], np.int64),
     {"u": np.ones(2, np.float32)}, {}),
]


@pytest.mark.parametrize("op_type, good, bad, extra, attrs", GATHERS, ids=[g[0] for g in GATHERS])
def test_runtime_index_out_of_range_raises(op_type, good, bad, extra, attrs):
    inputs = {"d": D, "i": good, **extra}
    model = single_op_model(op_type, inputs, **attrs)
    compiled = compile_model(model)
    _same(compiled.run(inputs)[0], ort_run(model, inputs)[0], "in range")
    with pytest.raises(Exception, match="index out of range"):
        compiled.run({**inputs, "i": bad})
    with pytest.raises(IndexError, match="index out of range"):
        interpret(from_onnx(model), {**inputs, "i": bad})
