"""verify_model: onnx's own checker and strict shape inference, run on every model before conversion.

A model that onnx itself calls invalid (two nodes writing one value, a stride of 0, a graph output whose declared
dtype contradicts what the graph computes, an IR version from the future, ...) is refused here with a
`FrontendError` naming the node where onnx does, instead of reaching a converter that would compute something wrong
or crash. What onnx does not check (opsets newer than onnx knows, constant indices out of range, sizes) the importer
and the converters check themselves.

Known-benign differences between onnx's checks and what we accept, each handled narrowly:
  * a graph output declared without a shape (or without any type) is legal in practice (onnxruntime loads it; our
    importer infers every shape) but the checker demands one: such outputs are left out of the checked copy;
  * onnx's strict inference of some standard ops' *function bodies* fails inside onnx (MeanVarianceNormalization's
    body uses a Constant with an attribute reference, which onnx 1.23 cannot infer): an error reported only from
    inside a function body is onnx's own, not the model's, and our converters never expand those bodies;
  * IR version 3 wants every initializer listed among the graph inputs too; older exporters (and our light model
    zoo) left them out, which changes nothing for us: the checked copy lists them;
  * a model above protobuf's 2 GiB limit cannot be serialized for the checker: it is checked by its path when it
    was loaded from a file, else as a copy without the large initializers' data;
  * every other model is checked as a copy without the data of its initializers above 1 MiB (graph inputs of the
    same type instead): the checker and inference serialize the model they get, GPT-2 small's 650 MB twice (verifying
    took 10.8 of its 15.5 s compile on a Zen 4, 0.3 s without the data). The importer, which reads their data,
    refuses data that does not fit the dims (tests/frontends/test_onnx_invalid.py).
"""

from __future__ import annotations

import os
import re

import onnx
from onnx import helper

from tensorforge.runtime.errors import FrontendError

MAX_PROTO_BYTES = onnx.checker.MAXIMUM_PROTOBUF  # above it, check by path (a module constant: tests lower it)
_LARGE_INITIALIZER_BYTES = 1 << 20

# One error of strict shape inference: "(op_type:Conv, node name: c): [ShapeInferenceError] message".
_NODE_ERROR = re.compile(r"\(op_type:(?P<op>[^,)]*)(?:, node name: (?P<name>[^)]*))?\): (?P<msg>.*)")
_ELEM_TYPES = re.compile(r"elem type: \((\d+)\) vs \((\d+)\)")


def newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


def check_opsets(model: onnx.ModelProto) -> None:
    """The default domain's opset must be imported, once, and be one onnx knows (our converters follow onnx's)."""
    default = [imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")]
    uses_default = any(n.domain in ("", "ai.onnx") for n in model.graph.node)
    if not default and uses_default:
        raise FrontendError("the ONNX model imports no opset for the default domain ('' / ai.onnx), so its ops "
                            "have no defined meaning; add an opset_import entry (e.g. helper.make_opsetid('', 17))")
    if len(default) > 1:
        raise FrontendError(f"the ONNX model imports the default domain more than once (opsets {default})")
    if default and not 1 <= default[0] <= newest_opset():
        raise FrontendError(f"the ONNX model imports opset {default[0]} of the default domain, but onnx "
                            f"{onnx.__version__} (and so this importer) knows opsets 1 to {newest_opset()}")


def check_single_assignment(graph: onnx.GraphProto) -> None:
    """Every value is defined once: by one graph input, one initializer or one node output (onnx's checker says the
    same, naming only the value; this names the nodes too)."""
    defined: dict[str, str] = {}
    for vi in graph.input:
        if vi.name in defined:
            raise FrontendError(f"the ONNX graph declares the input {vi.name!r} twice")
        defined[vi.name] = f"graph input {vi.name!r}"
    inputs = set(defined)
    for t in graph.initializer:
        if t.name in defined and t.name not in inputs:  # an input with a default (an initializer) is legal
            raise FrontendError(f"the ONNX graph has two initializers named {t.name!r}")
        defined[t.name] = f"initializer {t.name!r}"
    for i, node in enumerate(graph.node):
        here = f"ONNX node {node.name or f'{node.op_type}_{i}'!r} ({node.op_type})"
        for out in node.output:
            if out == "":
                continue
            if out in defined:
                raise FrontendError(f"{here}: its output {out!r} is already defined by {defined[out]}: each value "
                                    f"must be written once")
            defined[out] = here


def _elem_name(code: str) -> str:
    try:
        return helper.tensor_dtype_to_np_dtype(int(code)).name
    except Exception:  # noqa: BLE001 - an unknown code is shown as it is
        return f"type {code}"


def _known_types(model: onnx.ModelProto) -> dict[str, str]:
    """' (2, 3) float32' for each value whose type onnx's lenient inference knows: for error messages only."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - no types then; the error is reported anyway
        return {}
    out = {}
    g = inferred.graph
    for t in g.initializer:
        out[t.name] = f" {tuple(t.dims)} {_elem_name(str(t.data_type))}"
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
            out[vi.name] = f" {dims} {_elem_name(str(tt.elem_type))}"
    return out


def _inference_error(model: onnx.ModelProto, e: Exception) -> FrontendError | None:
    """A FrontendError naming each failing node of onnx's strict shape inference; None when every error comes
    from inside a standard op's function body (onnx's own, see the module docstring)."""
    nodes = {n.name: n for n in model.graph.node if n.name}
    known = _known_types(model)
    lines, benign = [], 0
    for line in str(e).replace("[ShapeInferenceError] Inference error(s): ", "", 1).splitlines():
        m = _NODE_ERROR.search(line)  # some lines start with "[ShapeInferenceError] " before the node
        if not m:
            if line.strip():
                lines.append(line.strip())
            continue
        if "Inference error(s): (op_type:" in m["msg"]:  # reported from inside the op's function body
            benign += 1
            continue
        msg = _ELEM_TYPES.sub(lambda t: f"elem type: {_elem_name(t[1])} (inferred) vs {_elem_name(t[2])} "
                                        f"(declared)", m["msg"])
        node = nodes.get(m["name"] or "")
        outs = ""
        if node is not None:
            ins = ", ".join(f"{i!r}{known.get(i, '')}" for i in node.input if i)
            outs = (f", inputs {ins}" if ins else "") + f", outputs {', '.join(repr(o) for o in node.output)}"
        lines.append(f"ONNX node {m['name'] or '?'!r} ({m['op']}{outs}): {msg}")
    if not lines and benign:
        return None
    return FrontendError("the ONNX model is invalid (onnx shape inference):\n  " + "\n  ".join(lines or [str(e)]))


def _declares_shape(vi: onnx.ValueInfoProto) -> bool:
    if not vi.HasField("type"):
        return False
    if vi.type.HasField("tensor_type"):
        return vi.type.tensor_type.HasField("elem_type") and vi.type.tensor_type.HasField("shape")
    return True  # sequences, optionals: as declared


def _copy_fields(dst, src, skip: str) -> None:
    """Every set field of the message `src` but `skip` into the empty message `dst`."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _initializer_bytes(t: onnx.TensorProto) -> int:
    """The initializer's data size from its dims and type alone: reading `raw_data` (or `ByteSize()`) copies or
    serializes the bytes to count them (0.13-0.8 s for BERT-base's or GPT-2's weights)."""
    if t.data_type in (0, onnx.TensorProto.STRING):
        return t.ByteSize()
    count = 1
    for d in t.dims:
        count *= d
    try:
        return count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # a type numpy has no dtype for: measured the slow way
        return t.ByteSize()


def _checked_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model as the checker sees it, and the bytes of initializer data left out: graph outputs without a shape
    left out (see the module docstring), initializers above _LARGE_INITIALIZER_BYTES turned into graph inputs of the
    same type (the importer reads their data, and refuses data that does not fit the dims)."""
    probe = onnx.ModelProto()
    large = [t for t in model.graph.initializer if _initializer_bytes(t) > _LARGE_INITIALIZER_BYTES]
    # copied field by field, never the large initializers (a whole copy of GPT-2 small took 0.4 s)
    _copy_fields(probe, model, skip="graph")
    _copy_fields(probe.graph, model.graph, skip="initializer")
    names = {t.name for t in large}
    probe.graph.initializer.extend(t for t in model.graph.initializer if t.name not in names)
    g = probe.graph
    keep = [vi for vi in g.output if _declares_shape(vi)]
    if len(keep) != len(g.output):
        del g.output[:]
        g.output.extend(keep)
    if probe.ir_version < 4:  # IR 3 wants every initializer listed as a graph input; exporters often forgot
        listed = {vi.name for vi in g.input}
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
                       if t.name not in listed)
    inputs = {vi.name for vi in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large
                   if t.name not in inputs)
    return probe, sum(_initializer_bytes(t) for t in large)


def verify_model(model: onnx.ModelProto, path: str | os.PathLike | None = None) -> None:
    """Refuse, with a FrontendError, a model that onnx's checker (full check: strict shape and type inference, with
    data propagation) finds invalid. `path`: the file it was loaded from (checked by path when it is too large)."""
    check_opsets(model)
    check_single_assignment(model.graph)
    try:
        probe, left_out = _checked_copy(model)
        if left_out + probe.ByteSize() > MAX_PROTO_BYTES and path is not None:
            onnx.checker.check_model(os.fspath(path), full_check=True)
            return
        onnx.checker.check_model(probe)
        onnx.shape_inference.infer_shapes(probe, check_type=True, strict_mode=True, data_prop=True)
    except onnx.checker.ValidationError as e:
        raise FrontendError(f"the ONNX model is invalid (onnx checker): {str(e).strip()}") from None
    except onnx.shape_inference.InferenceError as e:
        err = _inference_error(model, e)
        if err is not None:
            raise err from None
