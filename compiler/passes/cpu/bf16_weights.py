"""bf16_weights: the CPU's bf16 mode stores the packed dense and conv weights as bfloat16."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Value


@dataclass(frozen=True)
class StoreWeightsBF16:
    """bf16_weights: the CPU's `precision="bf16"` mode. Every packed float32 weight of a dense or conv kernel
    (dense_packed, conv2d_packed with the 'packed' layout, conv2d_nchwc) becomes a bfloat16 param,
    rounded to nearest even; the kernel widens each weight to float32 as it loads it (ops/packed.py widen), so
    activations, products and sums stay float32 and only the weights lose precision (8 significant bits, a
    relative error of at most 2^-9 each). It halves the bytes of weights the kernels stream, which is what bounds a
    batch-1 dense (a GEMV reads each weight once); benchmarks/results/bf16_cpu.md has the accuracy and speed.

    It runs after packing and the layout passes (which repack float32 arrays) and before fusion. Weights computed
    at run time (training graphs) stay float32."""

    name: ClassVar[str] = "bf16_weights"

    def __call__(self, g: Graph) -> Graph:
        import ml_dtypes

        rounded: dict[Value, Value] = {}  # float32 packed weight -> its bfloat16 copy, shared by its readers
        for n in g.nodes:
            if not n.op.bf16_weight or (n.op is ops.conv2d_packed and n.attrs["wlayout"] != "packed"):
                continue
            x, w = n.inputs[0], n.inputs[1]
            if not (w.is_param and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"):
                continue
            if w not in rounded:
                rounded[w] = g.add_param(w.name + ".bf16", np.asarray(w.data, np.float32).astype(ml_dtypes.bfloat16))
            n.inputs[1] = rounded[w]
        g.remove_unused()  # the float32 weights
        return g


# The ops that may read a bfloat16 weight declare `bf16_weight=True` (dense_packed, conv2d_packed, conv2d_nchwc).
# Not winograd_conv2d: its transformed weight U = G g G^T, rounded to bf16, gave 15x the direct conv's error (the
# output transform's coefficients, up to 8, amplify it: 3 % of the largest output on a 32-channel 3x3 conv), and
# the Winograd GEMM is bound by arithmetic, not by weight bytes.
bf16_weights = StoreWeightsBF16()


def bf16_fast_math(g: Graph) -> Graph:
    """bf16_fast_math: in the CPU's bf16 mode, GELU's erf is topi's fast rational (3e-7 absolute) instead of
    vecmath's (within 2 ulp, 6x slower: 7 of BERT-base's 41 ms on one core), and softmax's exponent vecmath's
    exp_fast (4e-6 relative, half the instructions): the products around them round to bf16, whose step is 4e-3."""
    for n in g.nodes:
        if n.op is ops.gelu and n.attrs.get("approximate", "none") == "none":
            n.attrs = {**n.attrs, "fast_erf": True}
        elif n.op is ops.softmax:
            n.attrs = {**n.attrs, "fast_exp": True}
    return g
