"""Winograd convolution: a stride-1, dilation-1, ungrouped 3x3 conv on NCHW[16]c activations whose weight was
transformed at compile time (U = G g G^T, see compiler/backend/cpu_winograd.py). The `winograd` pass
(compiler/passes/winograd.py) rewrites `conv2d_nchwc` into it where it is faster. Its reference runs the same
algorithm in numpy (input transform, batched products, output transform); the tests compare it with the direct
conv as well.
"""

from __future__ import annotations

from compiler.ir.types import TensorType

from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail


def _infer(types, *, pads, tile, out_channels):
    from compiler.backend import cpu_winograd as W

    x, u = types[0], types[1]
    if tile not in W.TILE_SIZES:
        fail(f"tile {tile} is not one of {W.TILE_SIZES}")
    if x.rank != 5 or x.shape[4] != W.BLOCK:
        fail(f"expects an NCHW[{W.BLOCK}]c input, got {x}")
    n, icb, h, w, b = x.shape
    alpha = tile + 2
    if (u.rank != 5 or u.shape[:2] != (alpha, alpha) or u.shape[3] != icb * b
            or u.shape[2] * u.shape[4] != out_channels or out_channels % b):
        fail(f"transformed weight {u} is not ({alpha}, {alpha}, OC/nb, {icb * b}, nb) for {out_channels} "
             f"output channels")
    if x.dtype != u.dtype:
        fail(f"input {x} and weight {u} differ in dtype")
    if len(types) == 3 and types[2].shape != (out_channels,):
        fail(f"bias must have shape ({out_channels},), got {types[2]}")
    oh, ow = W.output_size(h, w, pads)
    if oh <= 0 or ow <= 0:
        fail(f"a 3x3 kernel does not fit input {h}x{w} with pads {pads}")
    return TensorType((n, out_channels // b, oh, ow, b), x.dtype)


def _reference(x, u, b=None, *, pads, tile, out_channels):
    from compiler.backend import cpu_winograd as W

    return W.reference(x, u, b, pads=pads, tile=tile, out_channels=out_channels)


def _lower(x, u, b=None, *, pads, tile, out_channels):
    from compiler.backend import cpu_winograd as W

    return W.conv2d_winograd_compute(x, u, b, pads=pads, tile=tile, out_channels=out_channels)


winograd_conv2d = defop(
    "winograd_conv2d", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(2, 3),
    attrs={"pads": Attr("ints", (0, 0, 0, 0)), "tile": Attr("int", 4), "out_channels": Attr("int")},
    reference=_reference, lower=_lower, grad=NO_RULE_YET,
    # counted as the direct 3x3 conv it replaces; input (N, IC/b, H, W, b)
    flops=lambda n: 2 * n.outputs[0].type.numel * n.inputs[0].type.shape[1] * n.inputs[0].type.shape[4] * 9,
    doc="3x3 conv (stride 1, dilation 1, groups 1) by Winograd F(tile x tile, 3 x 3) on NCHW[16]c activations; "
        "weight U = G g G^T as (tile+2, tile+2, OC/nb, IC, nb); output NCHW[16]c.")
