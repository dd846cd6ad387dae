"""The runtime's execution plan (JSON) and parameter list, from the partitioned graph and its kernels.

Buffers: graph inputs and params get their own memory; every tensor a kernel writes lives in one arena at an offset
chosen by the memory planner (compiler/backend/memory.py); a reshape is a view of its base buffer.

Persistent state (a training graph's parameters, optimizer moments, running statistics; `state` maps the output
carrying a state's next value to the input holding it): the state input gets its own buffer, filled once at load
like a param and listed under "state"; the kernel computing the next value writes it into that same buffer, in
place, so nothing is copied per step and the arena never covers it. `_check_state` proves that no kernel reads
the old value after the update has overwritten it.
"""

from __future__ import annotations

from typing import Collection, Mapping

import numpy as np

from tensorforge.compiler.ir import Graph, Value, print_graph
from tensorforge.compiler.ir.analysis import graph_flops, node_flops
from tensorforge.compiler.ops import FusionKind
from tensorforge.compiler.backend.memory import Tensor, assign_offsets, check_plan
from tensorforge.runtime import artifact
from tensorforge.runtime.errors import CompileError

from .lower import Kernel, View, partition

SPLAT_MIN = 64  # params at least this large whose elements are all equal are stored as one number


def _inplace_candidates(k: Kernel) -> list[tuple[Value, Value]]:
    """(output, input) pairs where the kernel may write its output over its input.

    Elementwise kernels: any input of the output's shape and element size. Other kernels (a dense or conv with an
    epilogue, a transpose feeding an add): an input read only where the output's element at the same index is
    computed, i.e. every node that depends on the input is elementwise with the output's shape, and the output is
    the only kernel output that depends on it (ConvNeXt's and BERT's residual adds). An anchor's intermediate
    lives in a buffer of its own (its epilogue is never inlined into a reduction block), so the residual is read
    before the output element over it is written."""
    if all(n.op.kind <= FusionKind.BROADCAST for n in k.nodes):
        return [(o, i) for o in k.outputs for i in k.inputs if i.type.shape == o.type.shape and
                i.type.itemsize == o.type.itemsize]
    pairs = []
    for i in k.inputs:
        tainted, ok = {i}, True
        for n in k.nodes:  # in order: a node's producers come before it
            if not any(v in tainted for v in n.inputs):
                continue
            if n.op.kind > FusionKind.BROADCAST or any(o.type.shape != i.type.shape for o in n.outputs):
                ok = False
                break
            tainted.update(n.outputs)
        reached = [o for o in k.outputs if o in tainted]
        if ok and len(reached) == 1 and reached[0].type.itemsize == i.type.itemsize:
            pairs.append((reached[0], i))
    return pairs


def fusion_report(g: Graph, steps) -> list[dict]:
    """One entry per step: its kernel and nodes, and for an op left on its own, why the fuse pass left it."""
    report = []
    for s in steps:
        nodes = s.nodes if isinstance(s, Kernel) else [s.node]
        entry = {"kernel": s.spec.name() if isinstance(s, Kernel) else None,
                 "nodes": [[n.op.name, n.name] for n in nodes]}
        if len(nodes) == 1:
            entry["reason"] = g.fusion_reasons.get(nodes[0], "fusion is off at this optimization level")
        report.append(entry)
    return report


def make_plan(g: Graph, target, cpu_features: list[str], steps: list | None = None,
              state: Mapping[str, str] | None = None, initial_state: Mapping[str, np.ndarray] | None = None, *,
              tuned: Collection[str] | None = None, precision: str | None = None, device: dict | None = None,
              symbols: Mapping[str, str] | None = None) -> tuple[dict, list]:
    """The execution plan and the parameter arrays (in the plan's order) for a graph after the passes, with its
    fusion report. `state`: output name -> input name of each persistent state update; `initial_state`: input
    name -> array. For built kernels (`tuned`: the kernels whose schedule came from a tuning database) the plan
    also carries each step's tuned flag, the IR, the precision and, for CUDA, the `device` entry; without them it
    is the report of `tensorforge inspect`. `symbols`: kernel name -> the kernel over run-time sizes that a step
    calls instead (backend/symbolic.py)."""
    steps = steps if steps is not None else partition(g)
    symbols = symbols or {}
    state = dict(state or {})
    # state: the inputs updated in place, and those only read but kept from run to run like them (given an
    # initial value: a data-parallel step's parameters, read by the gradient plan and updated by another)
    state_in = {v.name: v for v in g.inputs if v.name in state.values() or v.name in (initial_state or {})}
    state_out = {name: v for v, name in zip(g.outputs, g.output_names) if name in state}
    if state:
        _check_state(steps, {state_out[o]: state_in[i] for o, i in state.items()})
    _check_in_place(g, {state_out[o]: state_in[i] for o, i in state.items()})
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
    for out_name, in_name in state.items():
        ids[state_out[out_name]] = ids[state_in[in_name]]  # the update kernel writes the state's own buffer
    params, param_data = [], []

    def param(buffer_id: int, data: np.ndarray, splat: bool = True) -> None:
        flat = data.reshape(-1)
        if (splat and flat.size >= SPLAT_MIN and flat.dtype.kind in "fiu" and (flat[:64] == flat[0]).all()
                and (flat == flat[0]).all()):
            params.append({"buffer": buffer_id, "splat": flat[0].item()})
        else:
            params.append({"buffer": buffer_id, "file": f"params/{len(params)}.npy"})
        param_data.append(data)

    for p in g.params:
        param(buffer(p), p.data)
    # a cache written in place (ops/cache.py) starts empty in every artifact, one number; other state (a training
    # run's weights and moments) is saved as it stands
    caches = {n.inputs[0] for n in g.nodes if n.op.in_place}
    for v in state_in.values():
        param(ids[v], np.asarray(initial_state[v.name], v.type.dtype), splat=v in caches)
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
        name = s.spec.name()
        plan_steps.append({"kernel": symbols.get(name, name), "args": args, "op": "+".join(n.op.name for n in s.nodes),
                           "node": s.nodes[-1].name, "work": _work(s)})
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
        "inputs": [{"name": v.name, "buffer": ids[v]} for v in g.inputs if v.name not in state_in],
        "outputs": [{"name": name, "buffer": ids[v]} for v, name in zip(g.outputs, g.output_names)
                    if name not in state],
        "params": params,
        "steps": plan_steps,
        **({"state": [{"name": v.name, "buffer": ids[v]} for v in state_in.values()]} if state_in else {}),
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
    plan["fusion"] = fusion_report(g, steps)
    if tuned is not None:
        for step in plan_steps:
            step["tuned"] = step["kernel"] in tuned
        plan["stats"]["tuned_kernels"] = sum(step["tuned"] for step in plan_steps)
        plan["ir"] = print_graph(g)
        plan["precision"] = precision
    if device is not None:
        plan["device"] = device
    return plan, [np.asarray(d, order="C") for d in param_data]


def _check_in_place(g: Graph, updates: dict[Value, Value]) -> None:
    """An `in_place` op (ops/cache.py) writes part of its input 0's buffer and nothing else: its output must be a
    state update of that very input, so that the plan gives both one buffer."""
    for n in g.nodes:
        if n.op.in_place and updates.get(n.outputs[0]) is not n.inputs[0]:
            raise CompileError(f"{n.op.name} (node {n.name!r}) writes {n.inputs[0].name!r} in place, so its output "
                               f"must be that persistent state's next value; it is not (compile it through "
                               f"compile_decoder, compiler/decoding.py)")


def _check_state(steps: list, updates: dict[Value, Value]) -> None:
    """Each state update (new value -> old value) must be written by a kernel, after every read of the old value
    (views of it included) by other kernels; its own kernel may read the old value elementwise only."""
    aliases = {old: {old} for old in updates.values()}
    for s in steps:
        if isinstance(s, View):
            for old, vs in aliases.items():
                if s.node.inputs[0] in vs:
                    vs.add(s.node.outputs[0])
    writer = {}
    for i, s in enumerate(steps):
        if isinstance(s, Kernel):
            for o in s.outputs:
                writer[o] = i
    for new, old in updates.items():
        if new not in writer:
            raise CompileError(f"the next value of state {old.name!r} is not computed by a kernel")
        k = writer[new]
        for j, s in enumerate(steps):
            if not isinstance(s, Kernel) or not aliases[old] & set(s.inputs):
                continue
            if j > k:
                raise CompileError(f"kernel {j} ({s.spec.name()}) reads state {old.name!r} after kernel {k} "
                                   f"overwrote it with its update")
            if j == k and any(n.op.kind > FusionKind.BROADCAST and not (n.op.in_place and n.inputs[0] in aliases[old])
                              for n in s.nodes if aliases[old] & set(n.inputs)):
                raise CompileError(f"kernel {k} ({s.spec.name()}) updates state {old.name!r} in place but reads it "
                                   f"other than elementwise")


def _work(k: Kernel) -> int:
    """A kernel's size for the runtime's choice to run it on the caller alone (runtime/model.py SERIAL_WORK):
    its multiply-adds or elements computed, or the elements it reads and writes if that is more."""
    flops = sum(node_flops(n) for n in k.nodes)
    touched = sum(int(np.prod(v.type.shape, dtype=np.int64)) for v in (*k.inputs, *k.outputs))
    return int(max(flops, touched))


def _nbytes(buf: dict) -> int:
    return int(np.prod(buf["shape"], dtype=np.int64)) * np.dtype(buf["dtype"]).itemsize
