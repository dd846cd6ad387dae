"""amx_dense, amx_conv: the CPU's bf16 mode puts dense and conv products on AMX tiles where the CPU has them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

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


@dataclass(frozen=True)
class AmxConv:
    """amx_conv: `conv2d_nchwc` on an NCHW[16]c input with NCHW[16]c output (groups 1), a float32 param weight and
    equal strides becomes `conv2d_amx` (ops/amx_conv.py), the implicit GEMM on AMX tiles: x and the weight rounded
    to bfloat16, sums in float32, the same layouts in and out. On a CPU without AMX-BF16 it changes nothing.

    It runs after alter_layout (which makes the blocked convs) and before winograd, which would otherwise take the
    3x3 convs in float32."""

    name: ClassVar[str] = "amx_conv"
    force: bool = False  # tests: rewrite even where this CPU has no AMX (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import amx_conv
        from tensorforge.compiler.ops.nchwc import _nchwc_weight
        from tensorforge.compiler.ops.packed import unpack_conv2d_weight

        if not (self.force or has_amx()):
            return g
        packed: dict = {}
        for n in list(g.nodes):
            if n.op is not ops.conv2d_nchwc:
                continue
            x, w, a = n.inputs[0], n.inputs[1], n.attrs
            if not (a["in_block"] == amx_conv.IN_BLOCK and a["block"] == amx_conv.IN_BLOCK and w.is_param
                    and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"
                    and a["strides"][0] == a["strides"][1]):
                continue
            kh, kw = w.type.shape[2], w.type.shape[3]
            if w not in packed:
                oihw = unpack_conv2d_weight(_nchwc_weight(np.asarray(w.data), a["in_block"]), wlayout="packed",
                                            block=a["block"], out_channels=a["out_channels"])
                packed[w] = g.add_param(w.name + ".amx", amx_conv.pack_amx_conv_weight(oihw))
            attrs = {"strides": a["strides"], "pads": a["pads"], "dilations": a["dilations"],
                     "out_channels": a["out_channels"], "in_channels": x.type.shape[1] * amx_conv.IN_BLOCK,
                     "kernel": (kh, kw)}
            (new_out,) = g.add_node(ops.conv2d_amx, [x, packed[w]] + n.inputs[2:], attrs, name=n.name,
                                    index=g.nodes.index(n))
            old_out = n.outputs[0]
            g.replace_uses(old_out, new_out)
            g.remove_node(n)
            g.rename(new_out, old_out.name)
        g.remove_unused()
        return g


amx_conv = AmxConv()
