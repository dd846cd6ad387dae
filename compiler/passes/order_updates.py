"""Order a training graph's kernels so that the ones writing persistent state come last."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from tensorforge.compiler.ir import Graph


@dataclass(frozen=True)
class OrderUpdatesLast:
    """order_updates_last as a pass of the training pipeline: `state_outputs` are the output names that carry each
    persistent state's next value (a kernel writes them in place over the state's buffer)."""

    state_outputs: frozenset[str]
    name: str = "order_updates_last"

    def __call__(self, g: Graph) -> Graph:
        return order_updates_last(g, {v for v, name in zip(g.outputs, g.output_names) if name in self.state_outputs})


def order_updates_last(g: Graph, state_outputs: set) -> Graph:
    """Run the kernels that write state after every other kernel (ties by position): a kernel that overwrites a
    parameter in place must come after every reader of the old value. Groups stay adjacent."""
    key = {}
    for i, n in enumerate(g.nodes):
        k = n.group or id(n)
        tail = any(o in state_outputs for o in n.outputs)
        key[k] = (max(key.get(k, (0, i))[0], int(tail)), min(key.get(k, (0, i))[1], i))
    Q = nx.DiGraph()
    members: dict = {}
    for n in g.nodes:
        k = n.group or id(n)
        members.setdefault(k, []).append(n)
        Q.add_node(k)
        for v in n.inputs:
            if v.producer is not None and (v.producer.group or id(v.producer)) != k:
                Q.add_edge(v.producer.group or id(v.producer), k)
    g.nodes = [n for k in nx.lexicographical_topological_sort(Q, key=key.get) for n in members[k]]
    return g


