"""Graph analyses used by reports and benchmarks."""

from __future__ import annotations

from .graph import Graph, Node


def node_flops(n: Node) -> int:
    """Floating-point operations of one node: 2 per multiply-add for conv/dense/matmul, one per output element
    for everything else (views: none)."""
    name = n.op.name
    out = n.outputs[0].type
    if name in ("conv2d", "conv2d_packed"):
        batch, oc, oh, ow = out.shape
        cin, (kh, kw) = n.inputs[0].type.shape[1], _kernel(n)
        return 2 * batch * oc * oh * ow * (cin // n.attrs["groups"]) * kh * kw
    if name == "conv2d_nchwc":  # output (N, OC/b, OH, OW, b); weight (OC/b, IC/ib, KH, KW, ib, b) or (OC/b, IC, ...)
        x, w = n.inputs[0].type, n.inputs[1].type
        cin = x.shape[1] * (x.shape[4] if x.rank == 5 else 1)
        return 2 * out.numel * cin * w.shape[2] * w.shape[3]
    if name == "winograd_conv2d":  # counted as the direct 3x3 conv it replaces; input (N, IC/b, H, W, b)
        x = n.inputs[0].type
        return 2 * out.numel * x.shape[1] * x.shape[4] * 9
    if name == "depthwise_conv2d_nchwc":  # weight (C/b, KH, KW, b)
        w = n.inputs[1].type
        return 2 * out.numel * w.shape[1] * w.shape[2]
    if name in ("dense", "dense_packed"):
        return 2 * out.numel * n.inputs[0].type.shape[-1]
    if name == "matmul":
        return 2 * out.numel * n.inputs[0].type.shape[-1]
    if n.op.is_view:
        return 0
    return out.numel


def _kernel(n: Node) -> tuple[int, int]:
    w = n.inputs[1].type.shape  # OIHW, or packed (OC/b, IC/g, KH, KW, b): KH, KW are dims 2 and 3 either way
    return w[2], w[3]


def graph_flops(g: Graph) -> int:
    return sum(node_flops(n) for n in g.nodes)

