"""The IR's textual form: printer and parser round-trip exactly; parse errors name line and column."""

import math

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, interpret, parse_graph, print_graph
from tensorforge.frontends.onnx import from_onnx
from tensorforge.runtime.errors import ParseError
from tests.support import LIGHT_MODELS, light_input, light_path


def small_graph() -> Graph:
    g = Graph("net")
    x = g.add_input("x", TensorType((1, 3, 8, 8)))
    w = g.add_param("w", np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = g.add_param("b", np.array([0.5, 0.0, -1.0, 2.0], np.float32))
    (y,) = g.add_node(ops.conv2d, [x, w, b], {"pads": (1, 1, 1, 1)})
    (z,) = g.add_node(ops.relu, [y])
    (s,) = g.add_node(ops.reshape, [z], {"shape": (1, 256)})
    g.outputs = [s]
    return g


def test_print_shows_types_attrs_and_inline_small_params():
    text = print_graph(small_graph())
    assert "graph net(%x: f32[1,3,8,8]) {" in text
    assert "%b = param f32[4] = [0.5, 0.0, -1.0, 2.0]" in text
    assert "%w = param f32[4,3,3,3]\n" in text  # large params: type only
    assert "conv2d(%x, %w, %b) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,4,8,8]" in text


def test_round_trip_small_graph():
    g = small_graph()
    text = print_graph(g)
    g2 = parse_graph(text, {"w": g.params[0].data})
    assert print_graph(g2) == text
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(interpret(g, feeds)[0], interpret(g2, feeds)[0])


def test_round_trip_ml_dtypes_params():
    """bfloat16 and the storage-only types (float8, float4, int4, int2) print their values, not their bytes."""
    import ml_dtypes

    g = Graph("g")
    values = {"float8_e4m3fn": [0.3125, -2.0, np.nan], "bfloat16": [1.5, -0.0078125, np.inf], "int4": [-8, 7, 3],
              "uint2": [0, 3, 1], "float4_e2m1fn": [-6.0, 0.5, -0.0], "float8_e8m0fnu": [2.0 ** -127, 1.0, 4.0]}
    g.outputs = [g.add_param(f"p_{dt}", np.array(v).astype(getattr(ml_dtypes, dt))) for dt, v in values.items()]
    text = print_graph(g)
    assert "param f8e4m3fn[3] = [0.3125, -2.0, nan]" in text and "param i4[3] = [-8, 7, 3]" in text
    back = parse_graph(text)
    assert print_graph(back) == text
    for a, b in zip(g.params, back.params):
        assert a.data.dtype == b.data.dtype
        np.testing.assert_array_equal(a.data.view(np.uint8 if a.data.itemsize == 1 else np.uint16),
                                      b.data.view(np.uint8 if b.data.itemsize == 1 else np.uint16))


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_round_trip_light_models(name):
    g = from_onnx(light_path(name))
    text = print_graph(g)
    g2 = parse_graph(text, {p.name: p.data for p in g.params})
    g2.verify()
    assert print_graph(g2) == text
    feeds = light_input(onnx.load(light_path(name)))
    np.testing.assert_array_equal(interpret(g, feeds)[0], interpret(g2, feeds)[0])


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)
_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None)
@given(name=_names, alpha=_floats, lo=_floats, data=st.lists(st.floats(width=32, allow_nan=False), min_size=1,
                                                                max_size=8))
def test_round_trip_names_floats_and_data(name, alpha, lo, data):
    g = Graph()
    x = g.add_input(name, TensorType((len(data),)))
    p = g.add_param(name + "p", np.array(data, np.float32))
    (y,) = g.add_node(ops.leaky_relu, [x], {"alpha": alpha})
    (z,) = g.add_node(ops.clip, [y], {"min": lo})
    (s,) = g.add_node(ops.add, [z, p])
    g.outputs = [s]
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert g2.inputs[0].name == name
    a2 = g2.nodes[0].attrs["alpha"]
    assert (math.isnan(alpha) and math.isnan(a2)) or a2 == alpha
    np.testing.assert_array_equal(g2.params[0].data, np.array(data, np.float32))


@pytest.mark.parametrize("text, message", [
    ("graph g(%x: f32[2]) {\n  %y = nosuchop(%x) : f32[2]\n  return %y\n}", "line 2, column 8: unknown op 'nosuchop'"),
    ("graph g(%x: f32[2]) {\n  %y = relu(%z) : f32[2]\n  return %y\n}", "line 2, column 13: value %z is used before"),
    ("graph g(%x: f32[2]) {\n  %y = relu(%x) : f32[3]\n  return %y\n}", "relu gives f32[2], but the text declares f32[3]"),
    ("graph g(%x: f32[2]) {\n  %y = relu(%x) {alpha=1} : f32[2]\n  return %y\n}", "unknown attribute(s) ['alpha']"),
    ("graph g(%x: f32[2]) {\n  %y = add(%x, %x, %x) : f32[2]\n  return %y\n}", "takes 2 inputs, got 3"),
    ("graph g(%x: f32[2]) {\n  %y = relu(%x) : f32[2]\n  return %y\n", "expected '}', found end of text"),
    ("graph g(%x: f32[2]) {\n  %y = relu(%x) : f32[2] $\n}", "line 2, column 26: unexpected character '$'"),
    ("graph g(%x: f32[2]) {\n  %p = param f32[2] = [1.0]\n  return %p\n}", "has 1 values"),
    ("graph g(%x: f32[2]) {\n  %x = relu(%x) : f32[2]\n  return %x\n}", "defined twice"),
])
def test_parse_errors_name_the_place(text, message):
    with pytest.raises(ParseError, match=None) as e:
        parse_graph(text)
    assert message in str(e.value)
