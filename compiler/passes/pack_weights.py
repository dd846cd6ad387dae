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
    users = g.users()
    packed_cache: dict[tuple, object] = {}
    for i, n in enumerate(g.nodes):
        w = n.inputs[1] if len(n.inputs) > 1 else None
        if w is None or not w.is_param or w.type.dtype != "float32":
            continue
        if n.op is ops.conv2d:
            o, icg, kh, kw = w.type.shape
            layout = cpu_kernels.conv2d_weight_layout(o, icg, n.attrs["groups"], kh, kw)
            new_op = ops.conv2d_packed
            attrs = {**n.attrs, "wlayout": layout["kind"], "block": layout.get("oc_block", 0), "out_channels": o}
            pack = lambda data, layout=layout: cpu_kernels.pack_conv2d_weight(data, layout)  # noqa: E731
        elif n.op is ops.dense:
            nn_, k = w.type.shape
            layout = cpu_kernels.dense_weight_layout(nn_, k)
            new_op = ops.dense_packed
            attrs = {"block": layout["n_block"], "n": nn_}
            pack = lambda data, layout=layout: cpu_kernels.pack_dense_weight(data, layout)  # noqa: E731
        else:
            continue
        key = (id(w), tuple(sorted(layout.items())))
        if key not in packed_cache:
            packed_cache[key] = g.add_param(w.name + ".packed", pack(w.data))
        wp = packed_cache[key]
        old_out = n.outputs[0]
        g.nodes.pop(i)
        (new_out,) = g.add_node(new_op, [n.inputs[0], wp] + n.inputs[2:], attrs, name=n.name)
        g.nodes.insert(i, g.nodes.pop())  # keep the execution order
        g.replace_uses(old_out, new_out)
        g._names.discard(old_out.name)
        g.rename(new_out, old_out.name)
    del users
    g.remove_unused()
    return g
