"""Lowering: every kernel-bearing node of the graph becomes a scheduled TIR PrimFunc.

A kernel is described by a `KernelSpec` (op, attrs, input and output types). Identical specs share one PrimFunc,
so ResNet-50's repeated blocks compile once. The seam for fusion (issue 3): a spec will describe a fused group
instead of one node, and `build_prim_func` will compose the group's TE lowerings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from compiler.ir import Graph, Node, TensorType
from compiler.ops import OpDef
from runtime.errors import CompileError


@dataclass(frozen=True)
class KernelSpec:
    op: OpDef
    attrs: tuple  # sorted (key, value) pairs
    in_types: tuple[TensorType, ...]
    out_types: tuple[TensorType, ...]

    @staticmethod
    def of(node: Node) -> "KernelSpec":
        return KernelSpec(node.op, tuple(node.attrs.items()), tuple(v.type for v in node.inputs),
                          tuple(v.type for v in node.outputs))

    def key(self) -> str:
        """A stable hash of the workload, for naming kernels and (later) for tuning-database lookups."""
        text = json.dumps([self.op.name, [list(a) for a in self.attrs], [str(t) for t in self.in_types],
                           [str(t) for t in self.out_types]], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_prim_func(spec: KernelSpec):
    """The unscheduled PrimFunc of one kernel: parameters are the inputs, then the outputs (destination passing)."""
    from tvm import te

    placeholders = [te.placeholder(t.shape, t.dtype, name=f"in{i}") for i, t in enumerate(spec.in_types)]
    try:
        outs = spec.op.lower(*placeholders, **dict(spec.attrs))
    except Exception as e:
        raise CompileError(f"lowering {spec.op.name} ({', '.join(map(str, spec.in_types))}) to TE failed: "
                           f"{type(e).__name__}: {e}") from e
    outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
    for o, t in zip(outs, spec.out_types):
        got = tuple(int(d) for d in o.shape)
        if got != t.shape or o.dtype != t.dtype:
            raise CompileError(f"the TE lowering of {spec.op.name} gives {o.dtype}{list(got)}, the type rule says {t}")
    return te.create_prim_func(placeholders + outs)


def kernel_nodes(g: Graph) -> list[Node]:
    """Nodes that need a kernel: not views, not constant."""
    return [n for n in g.nodes if not n.op.is_view]
