"""A tiny rewrite engine: a table of (op, rule) pairs applied to every node until nothing changes.

A rule gets a `Rewrite` context and a node of its op; it returns the value that should replace the node's (single)
output, or None to leave it. New nodes are emitted in place, just before the node being rewritten.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tensorforge.compiler.ir import Graph, Node, Value
from tensorforge.compiler.ops import OpDef

Rule = Callable[["Rewrite", Node], "Value | None"]


class Rewrite:
    def __init__(self, g: Graph):
        self.g = g
        self.node: Node | None = None

    def emit(self, op: OpDef, inputs: Sequence[Value], **attrs) -> Value:
        (out,) = self.g.add_node(op, list(inputs), attrs, name=self.node.name, index=self.g.nodes.index(self.node))
        return out

    def param(self, data: np.ndarray, hint: str = "c") -> Value:
        return self.g.add_param(f"{self.node.outputs[0].name}.{hint}", data)

    @staticmethod
    def const(v: Value) -> np.ndarray | None:
        """The data of a param, else None."""
        return v.data if v.is_param else None

    @staticmethod
    def producer(v: Value, op: OpDef) -> Node | None:
        """v's defining node if it applies `op`, else None."""
        return v.producer if v.producer is not None and v.producer.op is op else None


def apply_rules(g: Graph, rules: Sequence[tuple[OpDef, Rule]], max_rounds: int = 8) -> Graph:
    by_op: dict[OpDef, list[Rule]] = {}
    for op, rule in rules:
        by_op.setdefault(op, []).append(rule)
    r = Rewrite(g)
    for _ in range(max_rounds):
        changed = False
        for n in list(g.nodes):
            if n not in g.nodes or len(n.outputs) != 1:
                continue
            for rule in by_op.get(n.op, ()):
                r.node = n
                new = rule(r, n)
                if new is not None and new is not n.outputs[0]:
                    assert new.type == n.outputs[0].type, f"rule {rule} changed the type of {n}"
                    g.replace_uses(n.outputs[0], new)
                    changed = True
                    break
        g.remove_unused()
        if not changed:
            break
    return g
