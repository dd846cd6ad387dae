"""The textual form of the IR. `parse_graph(print_graph(g))` rebuilds `g`, and printing it again gives the same
text (tested). Example:

    graph main(%x: f32[1,3,8,8]) {
      %w = param f32[4,3,3,3]
      %b = param f32[4] = [0.5, 0.0, -1.0, 2.0]
      %y = conv2d(%x, %w, %b) {strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1} : f32[1,4,8,8]
      %z = relu(%y) : f32[1,4,8,8]
      return %z
    }

A trailing `@name` marks the fused kernel a node belongs to (after the fuse pass).
Parameters with at most INLINE_LIMIT elements print their data; larger ones print only their type (their data
travels beside the text, e.g. in the artifact's parameter file).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .graph import Graph, Value

_IDENT = re.compile(r"[A-Za-z0-9_.]+\Z")


def is_plain_identifier(name: str) -> bool:
    return bool(_IDENT.match(name))


INLINE_LIMIT = 16


def format_name(v: Value) -> str:
    return "%" + (v.name if is_plain_identifier(v.name) else '"' + v.name.replace("\\", "\\\\").replace('"', '\\"') + '"')


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def format_attr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "(" + ", ".join(format_attr(x) for x in value) + ("," if len(value) == 1 else "") + ")"
    raise TypeError(f"cannot print attribute value {value!r}")


def format_data(data: np.ndarray) -> str:
    flat = data.reshape(-1)
    if data.dtype.kind == "f" or data.dtype.name.startswith(("float", "bfloat")):  # ml_dtypes' floats too
        items = [format_float(float(x)) for x in flat]
    else:
        items = [str(int(x)) for x in flat]
    return "[" + ", ".join(items) + "]"


def print_graph(g: Graph) -> str:
    ins = ", ".join(f"{format_name(v)}: {v.type}" for v in g.inputs)
    lines = [f"graph {g.name}({ins}) {{"]
    for p in g.params:
        line = f"  {format_name(p)} = param {p.type}"
        if p.data is not None and p.type.numel <= INLINE_LIMIT:
            line += " = " + format_data(p.data)
        lines.append(line)
    for n in g.nodes:
        outs = ", ".join(format_name(v) for v in n.outputs)
        args = ", ".join(format_name(v) for v in n.inputs)
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
        types = ", ".join(str(v.type) for v in n.outputs)
        group = f" @{n.group}" if n.group else ""
        lines.append(f"  {outs} = {n.op.name}({args}){attrs} : {types}{group}")
    rets = []
    for v, name in zip(g.outputs, g.output_names):
        rets.append(format_name(v) + ("" if name == v.name else " as " + format_attr(name)))
    lines.append("  return " + ", ".join(rets))
    lines.append("}")
    return "\n".join(lines) + "\n"
