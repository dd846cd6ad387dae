"""Package: turn a lowered graph plus its built kernels into the runtime's execution plan and parameter list."""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Value
from runtime import artifact

from .lower import KernelSpec

SPLAT_MIN = 64  # params at least this large whose elements are all equal are stored as one number


def make_plan(g: Graph, kernel_names: dict[str, str], target, cpu_features: list[str]) -> tuple[dict, list]:
    buffers: list[dict] = []
    ids: dict[Value, int] = {}

    def buffer(v: Value, view_of: int | None = None) -> int:
        if v not in ids:
            entry = {"shape": list(v.type.shape), "dtype": v.type.dtype, "name": v.name}
            if view_of is not None:
                entry["view_of"] = view_of
            ids[v] = len(buffers)
            buffers.append(entry)
        return ids[v]

    for v in g.inputs:
        buffer(v)
    params, param_data = [], []
    for p in g.params:
        entry = {"buffer": buffer(p)}
        flat = p.data.reshape(-1)
        if flat.size >= SPLAT_MIN and flat.dtype.kind in "fiu" and (flat == flat[0]).all():
            entry["splat"] = flat[0].item()
        else:
            entry["file"] = f"params/{len(params)}.npy"
        params.append(entry)
        param_data.append(p.data)
    steps = []
    for n in g.nodes:
        if n.op.is_view:
            base = ids[n.inputs[0]]
            root = buffers[base].get("view_of", base)
            buffer(n.outputs[0], view_of=root)
            continue
        args = [ids[v] for v in n.inputs] + [buffer(o) for o in n.outputs]
        steps.append({"kernel": kernel_names[KernelSpec.of(n).key()], "args": args, "node": n.name,
                      "op": n.op.name})
    plan = {
        "format": artifact.FORMAT,
        "version": artifact.VERSION,
        "name": g.name,
        "target": str(target),
        "cpu_features": cpu_features,
        "buffers": buffers,
        "inputs": [{"name": v.name, "buffer": ids[v]} for v in g.inputs],
        "outputs": [{"name": v.name, "buffer": ids[v]} for v in g.outputs],
        "params": params,
        "steps": steps,
    }
    return plan, [np.asarray(d, order="C") for d in param_data]
