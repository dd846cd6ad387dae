"""pack_weights: store the weights of conv2d and dense in the layouts the CPU kernels want.

A weight that is a param is packed once, at compile time. A weight that is computed or fed at run time (a training
graph's parameters are graph inputs, updated in place every step) is packed by a kernel of its own each run
(`conv2d_weight_pack` / `dense_weight_pack`, compiler/ops/train_pack.py): one pass over the weight, so that the
conv or dense itself runs on the register-tiled packed kernel instead of the generic schedule.

`bf16_weights` (the CPU's bf16 mode, bf16_weights.py) then stores the packed weights as bfloat16.
"""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ops import packed as layouts  # the compile-time weight layouts and packers


def pack_weights(g: Graph) -> Graph:
    """conv2d(x, W) -> conv2d_packed(x, pack(W)); dense(x, W) -> dense_packed(x, pack(W)).

    Only float32 weights are packed. A param weight becomes a packed param; any other weight gets a packing node
    (for a grouped conv only when the layout is the blocked one, and never for depthwise or plain layouts, which
    keep OIHW). The old node is replaced in place so the execution order is kept; unused original weights are
    dropped.
    """
    packed: dict[tuple, object] = {}  # one packed weight per (weight, layout), shared by its readers
    for n in list(g.nodes):
        w = n.inputs[1] if len(n.inputs) > 1 else None
        if w is None or w.type.dtype != "float32":
            continue
        if n.op is ops.conv2d:
            o, icg, kh, kw = w.type.shape
            layout = layouts.conv2d_weight_layout(o, icg, n.attrs["groups"], kh, kw)
            if not w.is_param and (layout["kind"] != "packed" or n.attrs["groups"] != 1):
                continue  # run-time packing: the blocked layout of ungrouped convs only
            new_op, pack = ops.conv2d_packed, layouts.pack_conv2d_weight
            run_pack, block = ops.conv2d_weight_pack, layout.get("oc_block", 0)
            attrs = {**n.attrs, "wlayout": layout["kind"], "block": block, "out_channels": o}
        elif n.op is ops.dense:
            rows, k = w.type.shape
            layout = layouts.dense_weight_layout(rows, k)
            new_op, pack = ops.dense_packed, layouts.pack_dense_weight
            run_pack, block = ops.dense_weight_pack, layout["n_block"]
            attrs = {"block": block, "n": rows}
        else:
            continue
        key = (w, tuple(sorted(layout.items())))
        index = g.nodes.index(n)
        if key not in packed:
            if w.is_param:
                if g.memo is None:  # made here, held by no one else: the model may run on it where it lies
                    packed[key] = g.add_param(w.name + ".packed", pack(w.data, layout, aligned=True), owned=True)
                else:  # shared by the specializations of a dynamic model (read-only; the runtime's buffer: lent)
                    data = g.memo.derived(("pack", repr(key[1])), (w.data,),
                                          lambda: pack(w.data, layout, aligned=True), lend=True)
                    packed[key] = g.add_param(w.name + ".packed", data)
            else:
                (packed[key],) = g.add_node(run_pack, [w], {"block": block}, name=(n.name or w.name) + ".pack",
                                            index=index)
                index += 1
        (new_out,) = g.add_node(new_op, [n.inputs[0], packed[key]] + n.inputs[2:], attrs, name=n.name,
                                index=index)
        g.take_over(n, new_out)
    g.remove_unused()
    return g
