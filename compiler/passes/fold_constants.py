"""fold_constants: evaluate nodes whose inputs are all params, through each op's numpy reference."""

from __future__ import annotations

from dataclasses import dataclass

from tensorforge.compiler.ir import Graph


@dataclass(frozen=True)
class FoldConstants:
    """Options: results larger than `max_elements` stay nodes (folding a broadcast could blow up the artifact)."""

    max_elements: int = 1 << 24
    name: str = "fold_constants"

    def __call__(self, g: Graph) -> Graph:
        for n in list(g.nodes):
            if not n.inputs or not all(v.is_param for v in n.inputs):
                continue
            if any(o.type.numel > max(self.max_elements, max(v.type.numel for v in n.inputs)) for o in n.outputs):
                continue
            results = n.op.evaluate(*(v.data for v in n.inputs), **n.attrs)
            for out, data in zip(n.outputs, results):
                g.replace_uses(out, g.add_param(out.name + ".folded", data.astype(out.type.dtype, copy=False)
                                                .reshape(out.type.shape)))
            g.remove_node(n)
        g.remove_unused()
        return g


fold_constants = FoldConstants()
