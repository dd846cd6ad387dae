"""Graph analyses used by reports and benchmarks."""

from __future__ import annotations

from .graph import Graph, Node


def node_flops(n: Node) -> int:
    """Floating-point operations of one node, as its op declares them (`OpDef.flops`): 2 per multiply-add for
    conv/dense/matmul, one per output element for everything else (views: none)."""
    return n.op.flops(n)


def graph_flops(g: Graph) -> int:
    return sum(node_flops(n) for n in g.nodes)

