"""mixed_precision: matmul, dense and conv2d read their float32 operands rounded to half precision (float16 or
bfloat16) and accumulate in float32.

    dense(x, W, b)  ->  dense(cast(cast(x, f16), f32), cast(%W.f16, f32), b)      %W.f16 = W as a float16 param
    conv2d(x, W)    ->  conv2d(cast(cast(x, f16), f32), cast(%W.f16, f32))
    matmul(a, b)    ->  matmul(cast(cast(a, f16), f32), cast(cast(b, f16), f32))

The graph states the arithmetic exactly: operands rounded to half precision, products and sums in float32, a
float32 result, which the numpy reference interpreter evaluates as such (the accuracy tests rely on it). Weights
are stored in half precision (half the bytes), and an activation read by several such ops is rounded once. Biases,
normalizations, softmax, losses and every other op stay in float32, as do a training graph's master weights and
optimizer state (the update kernels read the float32 state; only the products see rounded copies).

The cast back to float32 sits right before its reader, one per reader (an activation read by the Q, K and V
projections is rounded once and widened three times): on the CUDA target the fuse pass makes each widening cast
the prologue of its reader's kernel, which then loads half-precision data and accumulates in float32, the pattern
of a tensor-core matmul (backend/cuda/build.py schedules it with one). It runs after the cleanups (constant folding would
otherwise fold the weight casts away again, and CSE would merge the per-reader casts) and before packing and
fusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Value
from tensorforge.runtime.errors import PassError

PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def half_dtype(precision: str) -> str | None:
    """'fp16' -> 'float16', 'bf16' -> 'bfloat16', 'fp32' -> None (no pass)."""
    if precision not in PRECISIONS:
        raise PassError(f"unknown precision {precision!r}; supported: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _np_half(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return dtype


@dataclass(frozen=True)
class MixedPrecision:
    dtype: str = "float16"  # the operands' storage type: float16 or bfloat16
    name: ClassVar[str] = "mixed_precision"

    def __call__(self, g: Graph) -> Graph:
        halves: dict[Value, Value] = {}  # float32 value -> the same value in half precision
        for n in list(g.nodes):
            slots = n.op.half_operands  # the operands it multiplies (matmul, dense, conv2d); a bias stays float32
            if not slots or any(n.inputs[i].type.dtype != "float32" for i in slots):
                continue
            widened: dict[Value, Value] = {}  # one widening cast per reader and value: its kernel's prologue
            for i in slots:
                v = n.inputs[i]
                at = g.nodes.index(n)
                if v not in halves:
                    if v.is_param:
                        halves[v] = g.add_param(v.name + "." + ("f16" if self.dtype == "float16" else "bf16"),
                                                v.data.astype(_np_half(self.dtype)))
                    else:
                        (halves[v],) = g.add_node(ops.cast, [v], {"to": self.dtype}, name=n.name, index=at,
                                                  out_names=[v.name + ".half"])
                        at += 1
                if v not in widened:
                    (widened[v],) = g.add_node(ops.cast, [halves[v]], {"to": "float32"}, name=n.name, index=at,
                                               out_names=[v.name + ".rounded"])
                n.inputs[i] = widened[v]
        g.remove_unused()  # float32 weights that only fed the products
        return g
