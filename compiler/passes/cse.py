"""cse: common subexpression elimination. Equal params (same dtype, shape and bytes) become one param; nodes
applying the same op with the same attributes to the same inputs become one node."""

from __future__ import annotations

from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ir.constants import content_digest


def _attr_key(attrs: dict) -> tuple:
    return tuple((k, repr(v)) for k, v in attrs.items())  # repr tells 0.0 from -0.0 and keeps nan equal to nan


def cse(g: Graph) -> Graph:
    seen_params: dict[tuple, object] = {}
    for p in list(g.params):
        if p.data is None:
            continue
        key = (p.type, g.memo.digest(p.data) if g.memo is not None else content_digest(p.data))
        if key in seen_params:
            g.replace_uses(p, seen_params[key])
        else:
            seen_params[key] = p
    seen_nodes: dict[tuple, object] = {}
    for n in list(g.nodes):
        key = (n.op, tuple(id(v) for v in n.inputs), _attr_key(n.attrs))
        if key in seen_nodes:
            for old, new in zip(n.outputs, seen_nodes[key].outputs):
                g.replace_uses(old, new)
            g.remove_node(n)
        else:
            seen_nodes[key] = n
    g.remove_unused()
    return g
