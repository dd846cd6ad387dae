"""Invalid ONNX models are refused at import with a `FrontendError` naming the node, value or attribute at fault.

One case per kind of bad model, each built with onnx.helper (no checks on construction). Where onnxruntime can load
the model, it refuses the same models: `test_onnxruntime_refuses_them_too` keeps our list honest.
Also here: Pad's edge/reflect/wrap modes against onnxruntime, and chained Pads (which once compiled for minutes).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model
from tensorforge.frontends.onnx import from_onnx
from tensorforge.runtime.errors import FrontendError

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17, ir_version=8, opsets=None):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    imports = opsets if opsets is not None else [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=imports, ir_version=ir_version)


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def _unary(op, attrs, x_shape=(1, 1, 4, 4), y_shape=None, inits=(), extra_inputs=(), opset=17, name="n"):
    """One node `op` reading x (and `extra_inputs`, initializers), writing y."""
    node = helper.make_node(op, ["x", *extra_inputs], ["y"], name=name, **attrs)
    return _model([node], [_vi("x", list(x_shape))], [_vi("y", y_shape)], inits, opset=opset)


def _conv(name="conv", **attrs):
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    return _unary("Conv", attrs, inits=[w], extra_inputs=["w"], name=name)


def _dup_output():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="first"), helper.make_node("Neg", ["x"], ["y"], name="second")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])])


def _shadow_input():
    nodes = [helper.make_node("Relu", ["x"], ["x"], name="shadow")]
    return _model(nodes, [_vi("x", [2])], [_vi("x", [2])])


def _shadow_initializer():
    c = numpy_helper.from_array(np.ones(2, np.float32), "c")
    nodes = [helper.make_node("Relu", ["x"], ["c"], name="shadow"), helper.make_node("Add", ["x", "c"], ["y"], name="a")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2])], [c])


def _dup_graph_input():
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="a")]
    return _model(nodes, [_vi("x", [2]), _vi("x", [2])], [_vi("y", [2])])


def _relu(**kw):
    return _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", [2])], [_vi("y", [2])], **kw)


def _output_dtype():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", [2], TensorProto.INT64)])


def _negative_dim_initializer():
    t = onnx.TensorProto(name="w", data_type=F, dims=[2, -1])
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="a")]
    return _model(nodes, [_vi("x", [2])], [_vi("y", None)], [t])


def _large_initializer(n=300_000, raw_bytes=None):
    """A 1.2 MB weight (onnx's checker gets the model without its data: frontends/onnx/verify.py), its raw data cut
    to `raw_bytes`."""
    t = numpy_helper.from_array(np.ones(n, np.float32), "w")
    if raw_bytes is not None:
        t.raw_data = t.raw_data[:raw_bytes]
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="a")]
    return _model(nodes, [_vi("x", [n])], [_vi("y", [n])], [t])


def _gather_const(op, idx):
    """data is a run-time input, the indices a constant (the case that once wrapped around silently)."""
    ind = numpy_helper.from_array(np.asarray(idx, np.int64), "ind")
    node = helper.make_node(op, ["x", "ind"], ["y"], name="g", axis=1)
    return _model([node], [_vi("x", [2, 3])], [_vi("y", None)], [ind])


def _gather_folded(op, idx):
    """data and indices both constant: the gather folds at compile time."""
    data = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "data")
    ind = numpy_helper.from_array(np.asarray(idx, np.int64), "ind")
    nodes = [helper.make_node(op, ["data", "ind"], ["c"], name="g", axis=1),
             helper.make_node("Add", ["x", "c"], ["y"], name="a")]
    return _model(nodes, [_vi("x", [2, len(idx[0]) if op == "GatherElements" else len(idx)])], [_vi("y", None)],
                  [data, ind])


def _undefined_attr():
    m = _conv(pads=[1, 1, 1, 1])
    attr = m.graph.node[0].attribute[0]
    attr.type = onnx.AttributeProto.UNDEFINED
    return m


def _matmul_zero():
    w = numpy_helper.from_array(np.ones((0, 3), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    return _model([node], [_vi("x", [2, 0])], [_vi("y", [2, 3])], [w])


def _huge(op):
    if op == "ConstantOfShape":
        shape = numpy_helper.from_array(np.asarray([1000000, 1000000], np.int64), "s")
        nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"], name="big")]
        inits = [shape]
    else:
        inits = [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in (("a", 0), ("b", 10 ** 12), ("d", 1))]
        nodes = [helper.make_node("Range", ["a", "b", "d"], ["c"], name="big")]
    nodes.append(helper.make_node("Shape", ["c"], ["s2"], name="sh"))
    nodes.append(helper.make_node("Identity", ["x"], ["y"], name="i"))
    return _model(nodes, [_vi("x", [1])], [_vi("y", [1]), _vi("s2", None, TensorProto.INT64)], inits)


# (id, model builder, regex the FrontendError's message must match)
CASES = [
    ("duplicate_output", _dup_output, r"node 'second' \(Neg\): its output 'y' is already defined by ONNX node 'first'"),
    ("output_shadows_input", _shadow_input, r"node 'shadow' \(Relu\): its output 'x' is already defined by graph input"),
    ("output_shadows_initializer", _shadow_initializer,
     r"node 'shadow' \(Relu\): its output 'c' is already defined by initializer 'c'"),
    ("duplicate_graph_input", _dup_graph_input, r"declares the input 'x' twice"),
    ("opset_99", lambda: _relu(opset=99), r"opset.*99"),
    ("opset_1000", lambda: _relu(opset=1000), r"opset.*1000"),
    ("ir_version_99", lambda: _relu(ir_version=99), r"ir_version 99 is higher"),
    ("no_opset_import", lambda: _relu(opsets=[]), r"imports no opset for the default domain"),
    ("output_dtype_contradicts", _output_dtype, r"'r' \(Relu, inputs 'x' \(2,\) float32, outputs 'y'\).*float32 \(inferred\) vs int64"),
    ("conv_kernel_shape_0", lambda: _conv(kernel_shape=[0, 3]), r"'conv'.*kernel_shape"),
    ("conv_kernel_shape_negative", lambda: _conv(kernel_shape=[-3, 3]), r"'conv'.*kernel_shape"),
    ("conv_dilations_0", lambda: _conv(dilations=[0, 1]), r"'conv'.*dilations"),
    ("conv_strides_0", lambda: _conv(strides=[1, 0]), r"'conv'.*strides"),
    ("conv_strides_negative", lambda: _conv(strides=[-1, 1]), r"'conv'.*strides"),
    ("convtranspose_strides_0", lambda: _unary(
        "ConvTranspose", {"strides": [0, 1]}, inits=[numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")],
        extra_inputs=["w"], name="ct"), r"'ct'.*strides"),
    ("maxpool_kernel_0", lambda: _unary("MaxPool", {"kernel_shape": [0, 0]}, name="mp"), r"'mp'.*kernel_shape"),
    ("maxpool_strides_0", lambda: _unary("MaxPool", {"kernel_shape": [2, 2], "strides": [0, 0]}, name="mp"),
     r"'mp'.*strides"),
    ("maxpool_dilations_negative", lambda: _unary("MaxPool", {"kernel_shape": [2, 2], "dilations": [-1, 1]},
                                                  name="mp"), r"'mp'.*dilations"),
    ("averagepool_kernel_negative", lambda: _unary("AveragePool", {"kernel_shape": [-2, 2]}, name="ap"),
     r"'ap'.*kernel_shape"),
    ("averagepool_strides_0", lambda: _unary("AveragePool", {"kernel_shape": [2, 2], "strides": [1, 0]}, name="ap"),
     r"'ap'.*strides"),
    ("lppool_kernel_0", lambda: _unary("LpPool", {"kernel_shape": [0, 2]}, name="lp"), r"'lp'.*kernel_shape"),
    ("lppool_strides_0", lambda: _unary("LpPool", {"kernel_shape": [2, 2], "strides": [0, 1]}, name="lp"),
     r"'lp'.*strides"),
    ("initializer_negative_dim", _negative_dim_initializer, r"Negative dimension value \(tensor name: w\)"),
    ("large_initializer_short_data", lambda: _large_initializer(raw_bytes=1_000_000),
     r"initializer 'w' cannot be read \(cannot reshape array of size 250000 into shape \(300000,\)\)"),
    ("gather_constant_index_out_of_range", lambda: _gather_const("Gather", [0, 3]), r"'g'.*3"),
    ("gather_constant_index_below_range", lambda: _gather_const("Gather", [-4]), r"'g'.*-4"),
    ("gatherelements_constant_index_out_of_range", lambda: _gather_const("GatherElements", [[0, 5, 1], [0, 0, 0]]),
     r"'g'.*5"),
    ("gather_folded_index_out_of_range", lambda: _gather_folded("Gather", [0, 3]), r"'g'.*3"),
    ("gatherelements_folded_index_out_of_range", lambda: _gather_folded("GatherElements", [[0, -4, 1], [0, 0, 0]]),
     r"'g'.*-4"),
    ("attribute_type_undefined", _undefined_attr, r"(?s)attribute pads.*Name: conv OpType: Conv"),
    ("matmul_zero_size_input", _matmul_zero, r"'mm' \(MatMul\): input 'A' \(value 'x'\) has the zero-size shape \[2, 0\]"),
    ("constant_of_shape_huge", lambda: _huge("ConstantOfShape"), r"'big'.*elements"),
    ("range_huge", lambda: _huge("Range"), r"'big'.*elements"),
]


@pytest.mark.parametrize("build, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_model_is_refused(build, match):
    with pytest.raises(FrontendError, match=match):
        from_onnx(build())


# Cases onnxruntime accepts: opsets it does not know are its own business, a constant index is checked only when the
# node runs on it, zero-size MatMuls are legal there, and a huge constant feeding only a Shape is never allocated.
_ORT_ACCEPTS = {"opset_99", "opset_1000", "matmul_zero_size_input", "gather_constant_index_out_of_range",
                "gather_constant_index_below_range", "gatherelements_constant_index_out_of_range",
                "constant_of_shape_huge", "range_huge"}


@pytest.mark.parametrize("build", [c[1] for c in CASES if c[0] not in _ORT_ACCEPTS],
                         ids=[c[0] for c in CASES if c[0] not in _ORT_ACCEPTS])
def test_onnxruntime_refuses_them_too(build):
    ort = pytest.importorskip("onnxruntime")
    model = build()
    inits = {t.name for t in model.graph.initializer}
    feeds = {vi.name: np.ones([d.dim_value for d in vi.type.tensor_type.shape.dim], np.float32)
             for vi in model.graph.input if vi.name not in inits}
    with pytest.raises(Exception):  # noqa: B017 - any of onnxruntime's errors: it refuses to load or to run it
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_valid_large_initializer_passes_the_check():
    g = from_onnx(_large_initializer())
    assert [p.type.shape for p in g.params] == [(300_000,)]


def test_output_dtype_onnx_cannot_infer_is_checked_by_us():
    """An output declared without a shape is left out of onnx's check (see frontends/onnx/verify.py): the
    importer compares its declared dtype with the computed one itself."""
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    out = helper.make_value_info("y", helper.make_tensor_type_proto(TensorProto.INT32, None))
    out.type.tensor_type.ClearField("shape")
    model = _model([node], [_vi("x", [2])], [out])
    with pytest.raises(FrontendError, match=r"graph output 'y' is declared int32, but the graph computes float32"):
        from_onnx(model)


# -- Pad: edge / reflect / wrap against onnxruntime -------------------------------------------------------------------
def _pad_model(shape, pads, mode, n=1):
    nodes, x = [], "x"
    inits = []
    for k in range(n):
        inits.append(numpy_helper.from_array(np.asarray(pads, np.int64), f"pads{k}"))
        y = "y" if k == n - 1 else f"t{k}"
        nodes.append(helper.make_node("Pad", [x, f"pads{k}"], [y], name=f"pad{k}", mode=mode))
        x = y
    return _model(nodes, [_vi("x", list(shape))], [_vi("y", None)], inits, opset=18)


PAD_CASES = [
    ((3,), [0, 2], "reflect"),  # an end pad of size-1: [0, 1, 2] -> [0, 1, 2, 1, 0]
    ((3,), [2, 0], "reflect"),
    ((3,), [2, 2], "reflect"),
    ((4, 5), [1, 4, 3, 2], "reflect"),
    ((3,), [0, 2], "edge"),
    ((2, 3, 4), [2, 0, 1, 3, 1, 5], "edge"),
    ((3, 4), [1, 3, 2, 4], "wrap"),
    ((1, 1), [2, 3, 1, 0], "edge"),
]


@pytest.mark.parametrize("shape, pads, mode", PAD_CASES, ids=[f"{m}-{s}-{p}" for s, p, m in PAD_CASES])
def test_pad_modes_match_onnxruntime(shape, pads, mode):
    ort = pytest.importorskip("onnxruntime")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    model = _pad_model(shape, pads, mode)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = compile_model(model).run({"x": x})[0]
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_reflect_end_pad_of_size_minus_one():
    got = compile_model(_pad_model((3,), [0, 2], "reflect")).run({"x": np.arange(3, dtype=np.float32)})[0]
    np.testing.assert_array_equal(np.asarray(got), [0, 1, 2, 1, 0])


@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_chained_pads_compile(mode):
    """Four chained pads once took minutes to compile (nested selects inlined into each other); now one kernel of
    index arithmetic. No timing is asserted: the test only has to finish."""
    pads = [1, 1, 1, 1, 1, 1]
    model = _pad_model((4, 4, 4), pads, mode, n=4)
    x = np.random.default_rng(0).standard_normal((4, 4, 4)).astype(np.float32)
    expected = x
    for _ in range(4):
        expected = np.pad(expected, [(1, 1)] * 3, mode=mode)
    np.testing.assert_array_equal(np.asarray(compile_model(model).run({"x": x})[0]), expected)
