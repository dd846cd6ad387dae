"""pack_weights: store the weights of conv2d and dense in the layouts the CPU kernels want, at compile time."""

from __future__ import annotations

from compiler import ops
from compiler.backend import cpu_kernels
from compiler.ir import Graph


def pack_weights(g: Graph) -> Graph:
    """conv2d(x, W:param) -> conv2d_packed(x, pack(W)); dense(x, W:param) -> dense_packed(x, pack(W)).

    Only float32 weights that are params are packed; the plain op stays otherwise. The old node is replaced in
    place so the execution order is kept; unused original weights are dropped.
    """
    packed: dict[tuple, object] = {}  # one packed param per (weight, layout), shared by its readers
    for n in list(g.nodes):
        w = n.inputs[1] if len(n.inputs) > 1 else None
        if w is None or not w.is_param or w.type.dtype != "float32":
            continue
        if n.op is ops.conv2d:
            o, icg, kh, kw = w.type.shape
            layout = cpu_kernels.conv2d_weight_layout(o, icg, n.attrs["groups"], kh, kw)
            new_op, pack = ops.conv2d_packed, cpu_kernels.pack_conv2d_weight
            attrs = {**n.attrs, "wlayout": layout["kind"], "block": layout.get("oc_block", 0), "out_channels": o}
        elif n.op is ops.dense:
            rows, k = w.type.shape
            layout = cpu_kernels.dense_weight_layout(rows, k)
            new_op, pack = ops.dense_packed, cpu_kernels.pack_dense_weight
            attrs = {"block": layout["n_block"], "n": rows}
        else:
            continue
        key = (w, tuple(sorted(layout.items())))
        if key not in packed:
            packed[key] = g.add_param(w.name + ".packed", pack(w.data, layout))
        (new_out,) = g.add_node(new_op, [n.inputs[0], packed[key]] + n.inputs[2:], attrs, name=n.name,
                                index=g.nodes.index(n))
        old_out = n.outputs[0]
        g.replace_uses(old_out, new_out)
        g.remove_node(n)
        g.rename(new_out, old_out.name)
    g.remove_unused()
    return g
