"""Package: the runtime's execution plan (JSON) and parameter list, from the partitioned graph and its kernels.

Buffers: graph inputs and params get their own memory; every tensor a kernel writes lives in one arena at an offset
chosen by the memory planner (compiler/passes/memory.py); a reshape is a view of its base buffer.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Value
from compiler.ir.analysis import graph_flops
from compiler.ops import FusionKind
from compiler.passes.memory import Tensor, assign_offsets, check_plan
from runtime import artifact

from .lower import Kernel, View, partition

SPLAT_MIN = 64  # params at least this large whose elements are all equal are stored as one number


def _inplace_candidates(k: Kernel) -> list[tuple[Value, Value]]:
    """(output, input) pairs where the kernel may write its output over its input: elementwise kernels only."""
    if any(n.op.kind > FusionKind.BROADCAST for n in k.nodes):
        return []
    return [(o, i) for o in k.outputs for i in k.inputs if i.type.shape == o.type.shape and
            i.type.itemsize == o.type.itemsize]


def make_plan(g: Graph, target, cpu_features: list[str], steps: list | None = None) -> tuple[dict, list]:
    """The execution plan and the parameter arrays (in the plan's order) for a graph after the passes."""
    steps = steps if steps is not None else partition(g)
    buffers: list[dict] = []
    ids: dict[Value, int] = {}
    root: dict[int, int] = {}  # buffer id -> the buffer whose memory it uses (itself unless a view)

    def buffer(v: Value, view_of: int | None = None) -> int:
        if v not in ids:
            entry = {"shape": list(v.type.shape), "dtype": v.type.dtype, "name": v.name}
            ids[v] = len(buffers)
            root[ids[v]] = ids[v] if view_of is None else root[view_of]
            if view_of is not None:
                entry["view_of"] = root[view_of]
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
    fixed = set(ids.values())  # inputs and params: not in the arena

    plan_steps, first, last, inplace = [], {}, {}, []
    for s in steps:
        if isinstance(s, View):
            buffer(s.node.outputs[0], view_of=ids[s.node.inputs[0]])
            continue
        index = len(plan_steps)
        args = [ids[v] for v in s.inputs] + [buffer(o) for o in s.outputs]
        for v in s.inputs:
            last[root[ids[v]]] = index
        for o in s.outputs:
            first.setdefault(ids[o], index)
            last.setdefault(ids[o], index)
        inplace += [(ids[o], root[ids[i]]) for o, i in _inplace_candidates(s)]
        plan_steps.append({"kernel": s.spec.name(), "args": args, "op": "+".join(n.op.name for n in s.nodes),
                           "node": s.nodes[-1].name})
    end = len(plan_steps)
    for v in g.outputs:
        last[root[ids[v]]] = end  # outputs are read after the last step
    tensors = [Tensor(b, _nbytes(buffers[b]), first[b], last.get(b, first[b])) for b in first if b not in fixed]
    memory = assign_offsets(tensors, [(o, i) for o, i in inplace if i not in fixed])
    check_plan(tensors, memory)
    for t in tensors:
        buffers[t.id]["arena_offset"] = memory.offsets[t.id]
    plan = {
        "format": artifact.FORMAT,
        "version": artifact.VERSION,
        "name": g.name,
        "target": str(target),
        "cpu_features": cpu_features,
        "arena_bytes": memory.arena_bytes,
        "buffers": buffers,
        "inputs": [{"name": v.name, "buffer": ids[v]} for v in g.inputs],
        "outputs": [{"name": name, "buffer": ids[v]} for v, name in zip(g.outputs, g.output_names)],
        "params": params,
        "steps": plan_steps,
        "stats": {
            "ops": len(g.nodes),
            "kernels": len(plan_steps),
            "distinct_kernels": len({s["kernel"] for s in plan_steps}),
            "arena_bytes": memory.arena_bytes,
            "live_lower_bound_bytes": memory.live_lower_bound_bytes,
            "unplanned_bytes": memory.unplanned_bytes,
            "params_bytes": int(sum(p.type.nbytes for p in g.params)),
            "flops": graph_flops(g),
        },
        "memory": {"tensors": [[t.id, t.nbytes, t.first, t.last] for t in tensors],
                   "classes": {str(k): v for k, v in memory.classes.items()}},
    }
    return plan, [np.asarray(d, order="C") for d in param_data]


def _nbytes(buf: dict) -> int:
    return int(np.prod(buf["shape"], dtype=np.int64)) * np.dtype(buf["dtype"]).itemsize
