"""Lowering: the graph's kernels, each a scheduled TIR PrimFunc.

After the fuse pass, nodes that share a `group` label form one kernel; every other node that is not a view is a
kernel of its own. A kernel is described by a `KernelSpec`: its ops with attributes and wiring, input and output
types. Identical specs share one PrimFunc (ResNet-50's repeated blocks compile once), and the spec's hash is the
workload key for tuning records. A fused group lowers to one PrimFunc whose intermediates are TE stages that the
scheduler inlines, so they are never written to memory.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tensorforge.compiler.ir import Graph, Node, TensorType, Value
from tensorforge.compiler.ir.types import kernel_dtype
from tensorforge.compiler.ops import OpDef
from tensorforge.runtime.errors import CompileError

Ref = tuple  # ("in", i): kernel input i; ("op", j, k): output k of the kernel's op j


@dataclass(frozen=True)
class OpSpec:
    op: OpDef
    attrs: tuple  # (key, value) pairs
    inputs: tuple[Ref, ...]


@dataclass(frozen=True)
class KernelSpec:
    ops: tuple[OpSpec, ...]
    in_types: tuple[TensorType, ...]
    outputs: tuple[Ref, ...]
    out_types: tuple[TensorType, ...]

    def key(self) -> str:
        """A stable hash of the workload: names kernels, dedupes them, keys tuning records."""
        text = json.dumps([[o.op.name, [list(a) for a in o.attrs], [list(r) for r in o.inputs]] for o in self.ops]
                          + [[str(t) for t in self.in_types], [list(r) for r in self.outputs],
                             [str(t) for t in self.out_types]], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def name(self) -> str:
        names = []
        for o in self.ops:
            if o.op.name not in names:
                names.append(o.op.name)
        base = names[0] if len(self.ops) == 1 else "fused_" + "_".join(names[:4])
        return f"{base}_{self.key()[:12]}"


@dataclass
class Kernel:
    spec: KernelSpec
    inputs: list[Value]
    outputs: list[Value]
    nodes: list[Node]


@dataclass
class View:
    node: Node  # a reshape: its output aliases its input's memory


def partition(g: Graph) -> list[Kernel | View]:
    """The program's steps in execution order: kernels (fused groups or single nodes) and views."""
    steps: list[Kernel | View] = []
    i = 0
    readers_outside = _outside_readers(g)
    while i < len(g.nodes):
        n = g.nodes[i]
        j = i + 1
        if n.group:
            while j < len(g.nodes) and g.nodes[j].group == n.group:
                j += 1
        members = g.nodes[i:j]
        i = j
        if len(members) == 1 and n.op.is_view:
            steps.append(View(n))
            continue
        steps.append(_kernel(members, readers_outside))
    return steps


def _outside_readers(g: Graph) -> dict[Value, set]:
    out: dict[Value, set] = {}
    for n in g.nodes:
        for v in n.inputs:
            out.setdefault(v, set()).add(n.group or id(n))
    for v in g.outputs:
        out.setdefault(v, set()).add("<output>")
    return out


def _kernel(members: list[Node], readers: dict[Value, set]) -> Kernel:
    inputs: list[Value] = []
    where: dict[Value, Ref] = {}
    ops = []
    for j, n in enumerate(members):
        refs = []
        for v in n.inputs:
            if v not in where:
                where[v] = ("in", len(inputs))
                inputs.append(v)
            refs.append(where[v])
        ops.append(OpSpec(n.op, tuple(n.attrs.items()), tuple(refs)))
        for k, o in enumerate(n.outputs):
            where[o] = ("op", j, k)
    label = members[0].group or id(members[0])
    outputs = [o for n in members for o in n.outputs if readers.get(o, set()) - {label}]
    spec = KernelSpec(tuple(ops), tuple(v.type for v in inputs), tuple(where[o] for o in outputs),
                      tuple(o.type for o in outputs))
    return Kernel(spec, inputs, outputs, members)


def build_prim_func(spec: KernelSpec, target=None, *, symbolic: tuple | None = None):
    """The unscheduled PrimFunc of a kernel: parameters are its inputs, then its outputs (destination passing).
    `target`: lower inside its scope, so that ops may choose per target (ops/vecmath.py: not for CUDA).
    `symbolic`: (attrs of each op, input shapes, output shapes) replacing the spec's, some of their integers TIR
    variables (a kernel over run-time sizes, backend/symbolic.py)."""
    if target is not None:
        with target:
            return build_prim_func(spec, symbolic=symbolic)
    from tvm import sym, te

    if symbolic is None:
        op_attrs = [o.attrs for o in spec.ops]
        in_shapes, out_shapes = [t.shape for t in spec.in_types], [t.shape for t in spec.out_types]
    else:
        op_attrs, in_shapes, out_shapes = symbolic
    # storage-only types (float8, int4, ...) reach TVM as their bytes, uint8
    placeholders = [te.placeholder(s, kernel_dtype(t.dtype), name=f"in{i}")
                    for i, (s, t) in enumerate(zip(in_shapes, spec.in_types))]
    results: list[list] = []

    def resolve(ref):
        return placeholders[ref[1]] if ref[0] == "in" else results[ref[1]][ref[2]]

    for o, attrs in zip(spec.ops, op_attrs):
        try:
            outs = o.op.lower(*(resolve(r) for r in o.inputs), **dict(attrs))
        except Exception as e:
            raise CompileError(f"lowering {o.op.name} to TE failed: {type(e).__name__}: {e}") from e
        results.append(list(outs) if isinstance(outs, (list, tuple)) else [outs])
    outs = [resolve(r) for r in spec.outputs]
    analyzer = sym.Analyzer() if symbolic is not None else None
    for o, t, want in zip(outs, spec.out_types, out_shapes):
        if symbolic is None:
            same = tuple(int(d) for d in o.shape) == want
        else:
            same = len(o.shape) == len(want) and all(analyzer.can_prove_equal(d, w) for d, w in zip(o.shape, want))
        if not same or o.dtype != kernel_dtype(t.dtype):
            raise CompileError(f"the TE lowering of {spec.name()} gives {o.dtype}{list(o.shape)}, the type rule says "
                               f"{t.dtype}{list(want)}")
    if any(isinstance(o.op, te.PlaceholderOp) for o in outs):
        # an output that is an input unchanged (e.g. a fused reshape chain folded away): copy it
        outs = [te.compute(o.shape, lambda *i, o=o: o(*i), name="copy") if isinstance(o.op, te.PlaceholderOp)
                else o for o in outs]
    return te.create_prim_func(placeholders + outs)
