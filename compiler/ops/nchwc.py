"""TE computes of the convs on blocked NCHW[b]c activations (the ops `conv2d_nchwc` and `depthwise_conv2d_nchwc`
are declared in layout.py, with `to_blocked` / `from_blocked`). Like the packed NCHW conv (packed.py), each is an
anchor computed over whole register tiles of output width, annotated with its tile, then the valid columns plus the
bias.
"""

from __future__ import annotations

from tvm import te

from .nn import conv_out_size
from .packed import ANN_OC_BLOCK, ANN_OW_TILE, tiled_input, widen

CONV_NCHWC = "conv2d_nchwc"          # blocked activations: the anchor of a conv whose output is NCHW[b]c
CONV_NCHWC_OUT = "conv2d_nchwc_out"
CONV_DW_NCHWC = "conv2d_depthwise_nchwc"  # depthwise conv on NCHW[b]c activations
LAYOUT_TRANSFORM = "T_layout_trans"  # topi.layout_transform's block (layout.py's to_blocked, from_blocked)


def conv2d_nchwc_compute(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor | None, *, in_block: int, block: int,
                         out_channels: int, kernel: tuple[int, int], strides: tuple[int, int],
                         pads: tuple[int, int, int, int], dilations: tuple[int, int]) -> te.Tensor:
    """Conv2d (groups 1) with blocked activations: x is NCHW[in_block]c (or plain NCHW when in_block is 0), the
    weight is packed as (OC / block, IC / in_block, KH, KW, in_block, block) (or (OC / block, IC, KH, KW, block)
    for a plain input), the output is NCHW[block]c: (N, OC / block, OH, OW, block).

    The anchor computes a width padded to whole register tiles, as the NCHW kernel does; the output block copies
    the valid columns and adds the bias. Both the input's channel lanes and the output's are contiguous, so the
    kernel's loads of weights and its stores are whole vectors with no transposition.
    """
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    if in_block:
        n, cb, h, w, _ = (int(d) for d in x.shape)
    else:
        n, cb, h, w = (int(d) for d in x.shape)
    oh = conv_out_size(h, kh, sh, top, bottom, dh)
    ow = conv_out_size(w, kw, sw, left, right, dw)
    xp, tile, ow_pad = tiled_input(x, ow, kw, sw, dw, pads)
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    if in_block:
        rcb = te.reduce_axis((0, cb), name="rcb")
        rci = te.reduce_axis((0, in_block), name="rci")

        def body(b_, ob, y, z, oi):
            return te.sum(xp[b_, rcb, y * sh + rkh * dh, z * sw + rkw * dw, rci]
                          * widen(w_packed[ob, rcb, rkh, rkw, rci, oi]), axis=[rcb, rkh, rkw, rci])
    else:
        ric = te.reduce_axis((0, cb), name="ric")

        def body(b_, ob, y, z, oi):
            return te.sum(xp[b_, ric, y * sh + rkh * dh, z * sw + rkw * dw] * widen(w_packed[ob, ric, rkh, rkw, oi]),
                          axis=[ric, rkh, rkw])
    ocb = out_channels // block
    conv = te.compute((n, ocb, oh, ow_pad, block), body, name=CONV_NCHWC, tag=CONV_NCHWC,
                      attrs={ANN_OW_TILE: tile, ANN_OC_BLOCK: block})
    return _nchwc_output(conv, bias, ow)


def _nchwc_output(conv: te.Tensor, bias: te.Tensor | None, ow: int) -> te.Tensor:
    """The valid `ow` columns of a blocked anchor computed over whole register tiles, plus the (C,) bias."""
    n, cb, oh, _, b = (int(d) for d in conv.shape)

    def out(b_, c, y, z, ci):
        v = conv[b_, c, y, z, ci]
        return v if bias is None else v + bias[c * b + ci]

    return te.compute((n, cb, oh, ow, b), out, name=CONV_NCHWC_OUT, tag="injective")


def depthwise_conv2d_nchwc_compute(x: te.Tensor, w: te.Tensor, bias: te.Tensor | None, *, kernel: tuple[int, int],
                                   strides: tuple[int, int], pads: tuple[int, int, int, int],
                                   dilations: tuple[int, int]) -> te.Tensor:
    """Depthwise conv (channel multiplier 1) on NCHW[b]c: x (N, C/b, H, W, b), weight (C/b, KH, KW, b), output
    (N, C/b, OH, OW, b). Each output pixel's b channels are one vector: b independent FMAs per weight tap."""
    n, cb, h, w_, b = (int(d) for d in x.shape)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    oh = conv_out_size(h, kh, sh, top, bottom, dh)
    ow = conv_out_size(w_, kw, sw, left, right, dw)
    xp, tile, ow_pad = tiled_input(x, ow, kw, sw, dw, pads)
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    conv = te.compute(
        (n, cb, oh, ow_pad, b),
        lambda b_, c, y, z, ci: te.sum(xp[b_, c, y * sh + rkh * dh, z * sw + rkw * dw, ci] * w[c, rkh, rkw, ci],
                                       axis=[rkh, rkw]),
        name=CONV_DW_NCHWC, tag=CONV_DW_NCHWC, attrs={ANN_OW_TILE: tile, ANN_OC_BLOCK: b})
    return _nchwc_output(conv, bias, ow)
