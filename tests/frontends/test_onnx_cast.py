"""ONNX Cast to and from the storage-only types (float8, float4, int4/int2: frontends/onnx/converters/cast.py),
compiled and run, checked byte for byte against ml_dtypes (onnx's saturate_cast / to_float8e8m0 where onnx's
semantics differ), and how such tensors travel through the runtime (inputs, outputs, params, artifacts)."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model, runtime
from tensorforge.runtime.errors import FrontendError, InputError

F8 = {"float8_e4m3fn": TensorProto.FLOAT8E4M3FN, "float8_e4m3fnuz": TensorProto.FLOAT8E4M3FNUZ,
      "float8_e5m2": TensorProto.FLOAT8E5M2, "float8_e5m2fnuz": TensorProto.FLOAT8E5M2FNUZ}
SMALL = {"float4_e2m1fn": TensorProto.FLOAT4E2M1, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4,
         "int2": TensorProto.INT2, "uint2": TensorProto.UINT2}
ONNX_TYPE = {**F8, **SMALL, "float8_e8m0fnu": TensorProto.FLOAT8E8M0, "float32": TensorProto.FLOAT,
             "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE, "int32": TensorProto.INT32,
             "int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def _cast_model(src, dst, shape, **attrs):
    node = helper.make_node("Cast", ["x"], ["y"], to=ONNX_TYPE[dst], **attrs)
    graph = helper.make_graph([node], "cast", [helper.make_tensor_value_info("x", ONNX_TYPE[src], shape)],
                              [helper.make_tensor_value_info("y", ONNX_TYPE[dst], shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])


def _hard_values(dtype):
    """Every kind of edge: ties between neighbours (round half to even), subnormals, the overflow boundary, signed
    zeros, infinities and NaN, plus a dense random spread over the float8 range."""
    rng = np.random.default_rng(0)
    every = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e5m2).astype(np.float64)  # a wide value grid
    grid = np.unique(every[np.isfinite(every)])
    mids = (grid[1:] + grid[:-1]) / 2
    e4 = np.unique(np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64))
    e4 = e4[np.isfinite(e4)]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 448, 464, 464.0001, 480, 240, 248, 57344, 61440, 61439, 1e6,
               -1e6, 1e-7, -1e-7, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -11, 6.0, 7.0, 5.0, 0.25, 0.75]
    values = np.concatenate([grid, mids, (e4[1:] + e4[:-1]) / 2, e4, special, rng.uniform(-600, 600, 500),
                             rng.standard_normal(500) * 2.0 ** rng.integers(-16, 4, 500)])
    values = values.astype(dtype)
    return np.concatenate([values, -values])


def _reference(x, fmt, saturate):
    t = getattr(ml_dtypes, fmt)
    if saturate and fmt in F8:
        return numpy_helper.saturate_cast(x, t)
    return x.astype(t)


def _same_bytes(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    nan = np.isnan(got.astype(np.float32)) & np.isnan(expected.astype(np.float32))
    bad = (got.view(np.uint8) != expected.view(np.uint8)) & ~nan
    assert not bad.any(), f"{int(bad.sum())} values differ, e.g. at {np.flatnonzero(bad)[:5]}"


@pytest.mark.parametrize("src", ["float32", "float16", "float64"])
@pytest.mark.parametrize("fmt, saturate", [(f, s) for f in F8 for s in (1, 0)] + [("float4_e2m1fn", 1)])
def test_encode_float_formats_matches_ml_dtypes(fmt, saturate, src):
    with np.errstate(all="ignore"):
        x = _hard_values(src)
    (y,) = compile_model(_cast_model(src, fmt, x.shape, saturate=saturate)).run({"x": x})
    with np.errstate(all="ignore"):
        _same_bytes(y, _reference(x, fmt, saturate))


@pytest.mark.parametrize("fmt", [*F8, *SMALL, "float8_e8m0fnu"])
@pytest.mark.parametrize("dst", ["float32", "float16"])
def test_decode_every_byte_matches_ml_dtypes(fmt, dst):
    t = getattr(ml_dtypes, fmt)
    legal = np.unique(np.arange(256, dtype=np.uint8).view(t).astype(np.float32).astype(t).view(np.uint8))
    x = legal.view(t)  # every byte pattern the format uses
    (y,) = compile_model(_cast_model(fmt, dst, x.shape)).run({"x": x})
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(y, x.astype(dst))  # equal_nan: NaN == NaN here
    assert y.dtype == np.dtype(dst)


@pytest.mark.parametrize("fmt", list(SMALL)[1:])
@pytest.mark.parametrize("src", ["float32", "int32", "int8"])
def test_integer_formats_truncate_and_wrap(fmt, src):
    x = np.concatenate([np.arange(-40, 40), [-3.7, -2.5, -0.5, 0.5, 2.5, 3.7]]).astype(src)
    (y,) = compile_model(_cast_model(src, fmt, x.shape)).run({"x": x})
    _same_bytes(y, _wrapped(x, fmt))


def _wrapped(x, fmt):
    """ONNX's semantics for a cast to a 2- or 4-bit integer, written out (not ml_dtypes', which changed in 0.7.0 to
    give 0 out of range): truncate toward zero, keep the low bits, read them as two's complement (signed formats)."""
    bits = 4 if "4" in fmt else 2
    low = np.trunc(x.astype(np.float64)).astype(np.int64) & ((1 << bits) - 1)
    values = np.where(low >= 1 << (bits - 1), low - (1 << bits), low) if not fmt.startswith("u") else low
    return values.astype(np.int8 if not fmt.startswith("u") else np.uint8).astype(getattr(ml_dtypes, fmt))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_float8e8m0_follows_onnx_reference(round_mode, saturate):
    rng = np.random.default_rng(1)
    x = np.concatenate([[0.0, -0.0, 0.124, 0.25, 1.1, 3.0, np.inf, -np.inf, np.nan, 3e38, 1.7e38, 1e-45, 1e-39],
                        rng.standard_normal(300) * 2.0 ** rng.integers(-130, 127, 300)]).astype(np.float32)
    (y,) = compile_model(_cast_model("float32", "float8_e8m0fnu", x.shape, saturate=saturate,
                                     round_mode=round_mode)).run({"x": x})
    _same_bytes(y, numpy_helper.to_float8e8m0(x, bool(saturate), round_mode))


def _fake_quant_model():
    """x -> float8 -> transpose -> float32 + 1, with a float8 initializer cast at compile time and a float8 output:
    the float8 value is moved (a kernel on its uint8 bytes) between the two casts."""
    w = np.array([[0.3, -2.0], [500.0, 1e-3], [0.0, -0.0]], np.float32).astype(ml_dtypes.float8_e4m3fn)
    nodes = [helper.make_node("Cast", ["x"], ["q"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Transpose", ["q"], ["qt"], perm=[1, 0]),
             helper.make_node("Cast", ["qt"], ["d"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["d", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "fake_quant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 3))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (3, 2)),
                               helper.make_tensor_value_info("qt", TensorProto.FLOAT8E4M3FN, (3, 2)),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT8E4M3FN, (3, 2))],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), w


def test_float8_inside_a_graph_params_outputs_and_artifact(tmp_path):
    model, w = _fake_quant_model()
    m = compile_model(model)
    x = np.array([[0.1, 3.3, -17.0], [1000.0, 0.0626, -0.0]], np.float32)
    q = numpy_helper.saturate_cast(x, ml_dtypes.float8_e4m3fn).T
    for run in (m.run, runtime.load(_saved(m, tmp_path)).run):  # the float8 param survives the .npy round trip
        y, qt, w_out = run({"x": x})
        _same_bytes(qt, q)
        _same_bytes(w_out, w)
        np.testing.assert_array_equal(y, q.astype(np.float32) + w.astype(np.float32))


def _saved(m, tmp_path):
    path = str(tmp_path / "f8.tfa")
    m.save(path)
    return path


def test_float8_input_as_bytes_and_wrong_dtype_message():
    m = compile_model(_cast_model("float8_e5m2", "float32", (4,)))
    x = np.array([1.0, -2.0, 0.5, np.inf], np.float32).astype(ml_dtypes.float8_e5m2)
    np.testing.assert_array_equal(m.run({"x": x.view(np.uint8)})[0], x.astype(np.float32))
    with pytest.raises(InputError, match=r"float8_e5m2.*astype\(ml_dtypes.float8_e5m2\), or pass its bit patterns "
                                         r"as uint8"):
        m.run({"x": x.astype(np.float32)})


def test_computing_on_float8_is_refused_naming_node_and_type():
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add_f8")
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT8E4M3FN, (2,)) for n in "ab"]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, (2,))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    # onnx's type inference refuses it first (Add takes no float8), naming the node and the type
    with pytest.raises(FrontendError, match=r"'add_f8' \(Add, inputs 'a' \(2,\) float8_e4m3fn.*unsupported type: "
                                            r"tensor\(float8e4m3fn\)"):
        compile_model(model)


def test_cast_of_a_constant_folds_at_compile_time():
    x = np.array([0.3, 480.0, -1e-9, np.nan], np.float32)
    node = helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT8E5M2FNUZ, saturate=0)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT8E5M2FNUZ, (4,))],
                              [numpy_helper.from_array(x, "c")])
    m = compile_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert m.num_kernels == 0
    _same_bytes(m.run({})[0], x.astype(ml_dtypes.float8_e5m2fnuz))


def test_unknown_round_mode_is_refused():
    with pytest.raises(FrontendError, match=r"\(Cast\): unknown round_mode 'sideways'"):
        compile_model(_cast_model("float32", "float8_e8m0fnu", (2,), round_mode="sideways"))


def test_other_converters_refuse_float8_inputs_clearly():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT8E4M3FN, (2,))
    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="dq")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2,))],
                              [numpy_helper.from_array(np.array(0.5, np.float32), "s")])
    with pytest.raises(FrontendError, match=r"'dq' \(DequantizeLinear\): cast would compute on float8_e4m3fn values"):
        compile_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
