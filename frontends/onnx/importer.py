"""ONNX -> TensorForge IR.

Checks the model (verify.py, and every op type has a converter), then walks its graph in order, calling one
converter per node (converters/) through a `frontends.builder.Builder`, which folds what is known at compile time.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tensorforge.compiler.ir import ConstantMemo, Graph, TensorType, Value
from tensorforge.frontends.builder import Builder, Ref, TensorSequence, check_array_dtype
from tensorforge.frontends.onnx.dtypes import onnx_dtype
from tensorforge.runtime.errors import FrontendError, UnsupportedOpError

from .converters import CONVERTERS, lookup_converter
from .verify import check_opsets, check_single_assignment, verify_model

def load_model(model: "str | os.PathLike | onnx.ModelProto | bytes") -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            proto = onnx.load_model_from_string(model)
        else:
            path = os.fspath(model)
            if not os.path.exists(path):
                raise FrontendError(f"ONNX file {path!r} does not exist")
            proto = onnx.load(path)
    except FrontendError:
        raise
    except Exception as e:  # protobuf DecodeError and friends: the message is often empty
        raise FrontendError(f"cannot read ONNX model {model if not isinstance(model, bytes) else '<bytes>'!s}: "
                            f"the file is truncated or not an ONNX model ({type(e).__name__}: {e})") from None
    if not proto.graph.node and not proto.graph.output:
        raise FrontendError("the ONNX model has an empty graph (truncated or not an ONNX model?)")
    return proto


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1 if not model.opset_import else max(i.version for i in model.opset_import)


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one error listing every unsupported (op type, opset) with its node names, not just the first."""
    opset = _opset(model)
    missing: dict[tuple[str, str, int], list[str]] = {}
    for i, node in enumerate(model.graph.node):
        domain = node.domain or ""
        if domain not in ("", "ai.onnx") or lookup_converter(node.op_type, opset) is None:
            missing.setdefault((domain, node.op_type, opset), []).append(_node_name(node, i))
    if missing:
        lines = []
        for (domain, op_type, ver), names in missing.items():
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} nodes)" if len(names) > 8 else "")
            lines.append(f"  {(domain + '.') if domain else ''}{op_type} (opset {ver}): {shown}")
        raise UnsupportedOpError(
            f"the model uses {len(missing)} unsupported op type(s):\n" + "\n".join(lines),
            [(op, ver, names) for (_, op, ver), names in missing.items()])


def _present(t: onnx.TypeProto) -> onnx.TypeProto:
    """An optional's element type (an optional graph input is compiled as present), other types as they are."""
    return _present(t.optional_type.elem_type) if t.HasField("optional_type") else t


def _kind(t: onnx.TypeProto) -> str:
    kind = (t.WhichOneof("value") or "untyped").replace("_type", "")
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _sequence_input(g: Graph, vi: onnx.ValueInfoProto, shapes: Mapping[str, Any]) -> TensorSequence:
    """A sequence graph input whose length and tensor shapes are given at compile time: one input per tensor."""
    elem = _present(vi.type).sequence_type.elem_type
    if not elem.HasField("tensor_type"):
        raise FrontendError(f"graph input {vi.name!r} is a sequence of {_kind(elem)[2:].strip()}s: only sequences "
                            f"of tensors are supported")
    given = shapes.get(vi.name)
    if not isinstance(given, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in given):
        err = FrontendError(f"graph input {vi.name!r} is a sequence of tensors: give its length and each tensor's "
                            f"shape at compile time, shapes={{{vi.name!r}: [shape, ...]}}; its tensors become the "
                            f"inputs '{vi.name}.0', '{vi.name}.1', ...")
        err.needs_shapes = vi.name  # compile_model compiles for the fed sequence instead (compiler/specialize.py)
        raise err
    dtype = onnx_dtype(elem.tensor_type.elem_type, f"graph input {vi.name!r}")
    return TensorSequence(tuple(g.add_input(f"{vi.name}.{i}", TensorType(tuple(int(d) for d in shape), dtype))
                                for i, shape in enumerate(given)))


def _input_type(vi: onnx.ValueInfoProto, shapes: Mapping[str, Sequence[int]]) -> TensorType:
    t = _present(vi.type)
    tt = t.tensor_type
    if not t.HasField("tensor_type"):
        raise FrontendError(f"graph input {vi.name!r} is {_kind(vi.type)}, not a tensor: compiled models take "
                            f"tensors, and sequences of tensors whose length is given at compile time")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if vi.name in shapes:
        given = tuple(int(d) for d in shapes[vi.name])
        if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
            shown = ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                              for d in tt.shape.dim)
            raise FrontendError(f"shape {given} given for input {vi.name!r} does not match its declared shape "
                                f"[{shown}]")
        dims = list(given)
    elif tt.elem_type == onnx.TensorProto.STRING:
        pass  # refused below, asking for a constant
    elif any(d is None for d in dims):
        sym = [d.dim_param or "?" for d in tt.shape.dim if not d.HasField("dim_value")]
        warnings.warn(f"input {vi.name!r} has symbolic dimension(s) {sym}; binding them to 1. Pass "
                      f"shapes={{{vi.name!r}: (...)}} (CLI: --shape {vi.name}=AxBxC) to choose, or "
                      f"dynamic={{{vi.name!r}: {{axis: (low, high)}}}} (CLI: --dynamic {vi.name}=1..8xB) for a range.",
                      stacklevel=3)
        dims = [1 if d is None else d for d in dims]
    if tt.elem_type == onnx.TensorProto.STRING:
        err = FrontendError(f"graph input {vi.name!r} is a string tensor: strings are supported only as "
                            f"compile-time constants, where the ops on them are folded; make it an initializer")
        err.needs_constant = vi.name  # compile_model compiles for the fed value (compiler/specialize.py)
        raise err
    return TensorType(dims, onnx_dtype(tt.elem_type, f"graph input {vi.name!r}"))


def from_onnx(model, shapes: Mapping[str, Sequence[int]] | None = None, keep_params: bool = False,
              memo: ConstantMemo | None = None) -> Graph:
    """Convert an ONNX model (path, bytes or ModelProto) to a verified IR graph with static shapes. `shapes` binds
    symbolic input dimensions, and gives a sequence input its length and tensor shapes ({name: [shape, ...]}).
    keep_params (training): float initializers stay graph params under their own names and layouts, read by
    run-time ops rather than folded into new constants. memo: the compile-time constants of earlier imports of this
    same model (compiler/ir/constants.py): its initializers read, its constant folds made, once for them all."""
    proto = load_model(model)
    shapes = dict(shapes or {})
    check_opsets(proto)
    check_single_assignment(proto.graph)
    check_supported(proto)  # first: one error listing every unsupported op, before onnx's checker finds the first
    opset = _opset(proto)
    g = Graph(proto.graph.name.replace(" ", "_") or "main")
    g.memo = memo
    b = Builder(g, "ONNX")
    env: dict[str, Ref] = {}
    for init in proto.graph.initializer:
        try:
            def read(init=init):
                return np.asarray(numpy_helper.to_array(init), order="C")

            env[init.name] = read() if memo is None else memo.constant(("initializer", init.name), read)
            check_array_dtype(env[init.name], f"initializer {init.name!r}")
            b.names[id(env[init.name])] = init.name
            if keep_params and env[init.name].dtype.kind == "f":
                b.keep_at_run_time(env[init.name])
        except FrontendError:
            raise
        except Exception as e:
            raise FrontendError(f"initializer {init.name!r} cannot be read ({e})") from None
    graph_inputs = [vi for vi in proto.graph.input if vi.name not in env]
    unknown = set(shapes) - {vi.name for vi in graph_inputs}
    if unknown:
        raise FrontendError(f"shapes given for unknown input(s) {sorted(unknown)}; the model's inputs are "
                            f"{[vi.name for vi in graph_inputs]}")
    for vi in graph_inputs:
        if _present(vi.type).HasField("sequence_type"):
            env[vi.name] = _sequence_input(g, vi, shapes)
        else:
            env[vi.name] = g.add_input(vi.name, _input_type(vi, shapes))
    # after the inputs (whose unsupported types and missing shapes we name more precisely), before any converter
    if memo is None or not memo.checked.get("onnx checker"):
        verify_model(proto, model if isinstance(model, (str, os.PathLike)) else None)
        if memo is not None:
            memo.checked["onnx checker"] = True

    for index, node in enumerate(proto.graph.node):
        b.at(_node_name(node, index), node.op_type, node)
        args = []
        for name in node.input:
            if name == "":
                args.append(None)
            elif name not in env:
                raise b.error(f"input {name!r} is not produced by any earlier node, initializer or graph input")
            elif env[name] is None:
                raise b.error(f"input {name!r} is an output we do not compute (e.g. a training-only output)")
            else:
                args.append(env[name])
        for a in node.attribute:
            if a.type == onnx.AttributeProto.UNDEFINED:  # helper would read it as empty: a Conv would lose its pads
                raise b.error(f"attribute {a.name!r} has the type UNDEFINED (a corrupt or hand-edited model)")
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        conv = lookup_converter(node.op_type, opset)
        if any(isinstance(a, TensorSequence) for a in args) and not getattr(conv, "takes_sequences", False):
            raise b.error("an input is a sequence of tensors, which we only pass through (Identity)")
        try:
            result = conv(b, *args, **attrs)
        except TypeError as e:
            if "argument" not in str(e):
                raise
            raise b.error(f"unexpected inputs or attributes ({e})") from None
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        for r in results:
            if isinstance(r, np.ndarray):
                check_array_dtype(r, f"ONNX node {b.node_name!r} ({node.op_type}): the value")
        for i, name in enumerate(node.output):
            if name == "":
                continue
            out = results[i] if i < len(results) else None
            env[name] = out
            if isinstance(out, np.ndarray):
                b.names.setdefault(id(out), name)
            elif isinstance(out, Value) and out.producer is not None and out.producer.name == b.node_name \
                    and g.is_free(name):
                g.rename(out, name)  # name the value after its ONNX tensor: readable IR and error messages
    outputs, output_names = [], []
    for vi in proto.graph.output:
        if vi.name not in env or env[vi.name] is None:
            raise FrontendError(f"graph output {vi.name!r} is never computed")
        b.node_name = vi.name
        seq = env[vi.name]  # a sequence output is its tensors, named like a sequence input's
        named = ([(x, f"{vi.name}.{i}") for i, x in enumerate(seq.items)] if isinstance(seq, TensorSequence)
                 else [(seq, vi.name)])
        declared = _declared_dtype(vi)
        for x, name in named:
            v = b.value(x)
            if declared is not None and not isinstance(seq, TensorSequence) and declared != v.type.dtype:
                raise FrontendError(f"graph output {vi.name!r} is declared {declared}, but the graph computes "
                                    f"{v.type.dtype} for it")
            if v.producer is not None and v.name != name and g.is_free(name):
                g.rename(v, name)
            outputs.append(v)
            output_names.append(name)
    g.outputs = outputs
    g.output_names = output_names
    g.remove_unused()
    g.verify()
    return g


def _declared_dtype(vi: onnx.ValueInfoProto) -> str | None:
    """The dtype a graph output declares, if it declares a tensor of a type we know."""
    t = _present(vi.type)
    if not t.HasField("tensor_type") or not t.tensor_type.elem_type:
        return None
    try:
        return onnx_dtype(t.tensor_type.elem_type)
    except FrontendError:
        return None


def _attr_value(a: onnx.AttributeProto):
    if a.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t)
    v = helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


def supported_ops() -> dict[str, list[int]]:
    """ONNX op type -> the opset versions at which its converters start (for docs)."""
    return {name: sorted(versions) for name, versions in sorted(CONVERTERS.items())}
