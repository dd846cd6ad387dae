"""amx_dense: the CPU's bf16 mode puts dense products on AMX tiles where the CPU has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ops import amx
from tensorforge.runtime.cpu_features import has_amx


@dataclass(frozen=True)
class AmxDense:
    """amx_dense: `dense(x, W)` with a float32 param weight and at least `amx.MIN_ROWS` rows becomes
    `dense_amx(x, pack_amx_weight(W))` (ops/amx.py): x and W rounded to bfloat16, products summed in float32 on
    the AMX unit, 8 bits of mantissa per operand as in OpenVINO's and PyTorch's bf16 modes. On a CPU without
    AMX-BF16 the pass changes nothing (the bf16_weights pass then stores the packed weights as bfloat16).

    It runs before pack_weights, which packs the dense nodes it leaves. Weights computed at run time (training)
    keep the float32 kernels."""

    name: ClassVar[str] = "amx_dense"
    force: bool = False  # tests: rewrite even where this CPU has no AMX (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        if not (self.force or has_amx()):
            return g
        packed: dict = {}  # one packed weight per float32 weight, shared by its readers
        for n in list(g.nodes):
            if n.op is not ops.dense:
                continue
            x, w = n.inputs[0], n.inputs[1]
            if not (w.is_param and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"
                    and x.type.shape[0] >= amx.MIN_ROWS):
                continue
            if w not in packed:
                packed[w] = g.add_param(w.name + ".amx", amx.pack_amx_weight(w.data))
            n_out, k = w.type.shape
            (new_out,) = g.add_node(ops.dense_amx, [x, packed[w]] + n.inputs[2:], {"n": n_out, "k": k},
                                    name=n.name, index=g.nodes.index(n))
            old_out = n.outputs[0]
            g.replace_uses(old_out, new_out)
            g.remove_node(n)
            g.rename(new_out, old_out.name)
        g.remove_unused()
        return g


amx_dense = AmxDense()
