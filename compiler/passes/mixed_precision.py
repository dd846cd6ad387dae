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

The cast back to float32 sits right before its reader: a kernel that reads its operands through those casts loads
half-precision data and accumulates in float32, the pattern of a tensor-core matmul. Folding those casts into the
anchor's kernel is the fuse pass's job (today it fuses only movement ops as prologues, so each cast is a kernel of
its own and the pass changes the numbers but does not yet make anything faster). It runs after the cleanups
(constant folding would otherwise fold the weight casts away again) and before packing and fusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler import ops
from compiler.ir import Graph, Value
from runtime.errors import PassError

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

    def anchors(self):
        # op -> positions of the operands that are multiplied (a bias stays float32)
        return {ops.matmul: (0, 1), ops.dense: (0, 1), ops.conv2d: (0, 1)}

    def __call__(self, g: Graph) -> Graph:
        anchors = self.anchors()
        rounded: dict[Value, Value] = {}  # float32 value -> the same value rounded to half precision, as float32
        for n in list(g.nodes):
            slots = anchors.get(n.op)
            if slots is None or any(n.inputs[i].type.dtype != "float32" for i in slots):
                continue
            for i in slots:
                v = n.inputs[i]
                if v not in rounded:
                    at = g.nodes.index(n)
                    if v.is_param:
                        half = g.add_param(v.name + "." + ("f16" if self.dtype == "float16" else "bf16"),
                                           v.data.astype(_np_half(self.dtype)))
                    else:
                        (half,) = g.add_node(ops.cast, [v], {"to": self.dtype}, name=n.name, index=at,
                                             out_names=[v.name + ".half"])
                        at += 1
                    (rounded[v],) = g.add_node(ops.cast, [half], {"to": "float32"}, name=n.name, index=at,
                                               out_names=[v.name + ".rounded"])
                n.inputs[i] = rounded[v]
        g.remove_unused()  # float32 weights that only fed the products
        return g


def insert_mixed_precision(passes: list, precision: str) -> list:
    """The pipeline with the mixed-precision pass before weight packing and fusion (or last), for 'fp16'/'bf16'."""
    from .manager import pass_name

    dtype = half_dtype(precision)
    if dtype is None:
        return list(passes)
    names = [pass_name(p) for p in passes]
    at = next((i for i, name in enumerate(names) if name in ("pack_weights", "fuse")), len(passes))
    return list(passes[:at]) + [MixedPrecision(dtype)] + list(passes[at:])
