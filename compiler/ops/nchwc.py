"""Ops on blocked NCHW[b]c activations (`to_blocked` / `from_blocked`, `conv2d_nchwc`, `depthwise_conv2d_nchwc`,
the blocked pools) and the TE computes of the convs. Like the packed NCHW conv (packed.py), each conv is an anchor
computed over whole register tiles of output width, annotated with its tile, then the valid columns plus the bias.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from tensorforge.compiler.ir.types import TensorType

from . import nn
from .nn import CONV_ATTRS, _conv2d_infer, _conv2d_ref, conv_out_size
from .packed import (ANN_OC_BLOCK, ANN_OW_TILE, _unpacked_conv_type, computed_weight_type, tiled_input,
                     unpack_conv2d_weight, widen, widen_weight)
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

CONV_NCHWC = "conv2d_nchwc"          # blocked activations: the anchor of a conv whose output is NCHW[b]c
CONV_NCHWC_OUT = "conv2d_nchwc_out"
CONV_DW_NCHWC = "conv2d_depthwise_nchwc"  # depthwise conv on NCHW[b]c activations
LAYOUT_TRANSFORM = "T_layout_trans"  # topi.layout_transform's block (to_blocked, from_blocked below)


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


# ---------------------------------------------------------------------------------------------- NCHW[x]c activations
# The `alter_layout` pass (passes/cpu/layout.py) moves chains of convs, pools and elementwise ops into the
# blocked channel layout NCHW[b]c: (N, C / b, H, W, b), the channel lanes innermost, where one vector register holds b
# channels of one pixel. `to_blocked` / `from_blocked` convert at the edges.

def block_nchw(x: np.ndarray, block: int) -> np.ndarray:
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2))


def unblock_nchwc(x: np.ndarray) -> np.ndarray:
    n, cb, h, w, b = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w))


def _blocked_type(t: TensorType, block: int) -> TensorType:
    if t.rank != 4 or block <= 0 or t.shape[1] % block:
        fail(f"cannot block {t} by {block} channels (needs NCHW with C divisible by the block)")
    n, c, h, w = t.shape
    return TensorType((n, c // block, h, w, block), t.dtype)


def _unblocked_type(t: TensorType) -> TensorType:
    if t.rank != 5:
        fail(f"expects an NCHW[x]c input of rank 5, got {t}")
    n, cb, h, w, b = t.shape
    return TensorType((n, cb * b, h, w), t.dtype)


to_blocked = defop(
    "to_blocked", FusionKind.INJECTIVE, attrs={"block": Attr("int")}, movement=True,
    infer=lambda types, *, block: _blocked_type(types[0], block),
    reference=lambda x, *, block: block_nchw(x, block),
    lower=lambda x, *, block: topi.layout_transform(x, "NCHW", f"NCHW{block}c"), grad=NO_RULE_YET,
    doc="NCHW -> NCHW[block]c (N, C/block, H, W, block).")

from_blocked = defop(
    "from_blocked", FusionKind.INJECTIVE, movement=True,
    infer=lambda types: _unblocked_type(types[0]), reference=unblock_nchwc,
    lower=lambda x: topi.layout_transform(x, f"NCHW{int(x.shape[4])}c", "NCHW"), grad=NO_RULE_YET,
    doc="NCHW[b]c -> NCHW.")


def _nchwc_conv_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in ("strides", "pads", "dilations")}


def repack_conv2d_weight_nchwc(wp: np.ndarray, in_block: int) -> np.ndarray:
    """Packed (OC/b, IC, KH, KW, b) -> (OC/b, IC/in_block, KH, KW, in_block, b): for a blocked input, the weights
    of one input-lane loop are contiguous."""
    ocb, ic, kh, kw, b = wp.shape
    return np.ascontiguousarray(wp.reshape(ocb, ic // in_block, in_block, kh, kw, b).transpose(0, 1, 3, 4, 2, 5))


def _nchwc_weight(wp: np.ndarray, in_block: int) -> np.ndarray:
    """The conv2d_nchwc weight back in the 5-D packed layout."""
    if not in_block:
        return wp
    ocb, icb, kh, kw, ib, b = wp.shape
    return wp.transpose(0, 1, 4, 2, 3, 5).reshape(ocb, icb * ib, kh, kw, b)


def _conv2d_nchwc_infer(types, *, in_block, block, out_channels, strides, pads, dilations):
    x = _unblocked_type(types[0]) if in_block else types[0]
    if in_block and types[0].shape[4] != in_block:
        fail(f"input {types[0]} is not blocked by {in_block}")
    if out_channels % block:
        fail(f"{out_channels} output channels do not split into blocks of {block}")
    wt = computed_weight_type(types[0], types[1])
    if in_block:
        if wt.rank != 6 or wt.shape[4] != in_block:
            fail(f"weight {wt} is not (OC/b, IC/{in_block}, KH, KW, {in_block}, b)")
        wt = TensorType((wt.shape[0], wt.shape[1] * in_block) + wt.shape[2:4] + (wt.shape[5],), wt.dtype)
    w = _unpacked_conv_type(wt, "packed", block, out_channels)
    plain = _conv2d_infer([x, w] + types[2:], strides=strides, pads=pads, dilations=dilations, groups=1)
    return _blocked_type(plain, block)


def _conv2d_nchwc_ref(x, wp, b=None, *, in_block, block, out_channels, **conv):
    xp = unblock_nchwc(x) if in_block else x
    w = unpack_conv2d_weight(_nchwc_weight(widen_weight(wp), in_block), wlayout="packed", block=block,
                             out_channels=out_channels)
    return block_nchw(_conv2d_ref(xp, w, b, groups=1, **conv), block)


def _conv2d_nchwc_lower(x, wp, b=None, *, in_block, block, out_channels, strides, pads, dilations):
    return conv2d_nchwc_compute(x, wp, b, in_block=in_block, block=block, out_channels=out_channels,
                                kernel=(int(wp.shape[2]), int(wp.shape[3])), strides=strides,
                                pads=pads, dilations=dilations)


conv2d_nchwc = defop(
    "conv2d_nchwc", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv2d_nchwc_infer, arity=(2, 3),
    attrs={"strides": CONV_ATTRS["strides"], "pads": CONV_ATTRS["pads"], "dilations": CONV_ATTRS["dilations"],
           "in_block": Attr("int"), "block": Attr("int"), "out_channels": Attr("int")},
    reference=_conv2d_nchwc_ref, lower=_conv2d_nchwc_lower, grad=NO_RULE_YET, bf16_weight=True,
    flops=lambda n: (2 * n.outputs[0].type.numel * n.inputs[0].type.shape[1]  # input (N, IC/ib, H, W, ib) or NCHW
                     * (n.inputs[0].type.shape[4] if n.inputs[0].type.rank == 5 else 1)
                     * n.inputs[1].type.shape[2] * n.inputs[1].type.shape[3]),  # weight (OC/b, IC/ib, KH, KW, ...)
    doc="conv2d (groups 1) on NCHW[in_block]c activations (plain NCHW if in_block is 0) with a packed weight "
        "(OC/block, IC/in_block, KH, KW, in_block, block), or (OC/block, IC, KH, KW, block) for a plain input; "
        "the output is NCHW[block]c.")


def _dw_nchwc_infer(types, *, strides, pads, dilations):
    x, w = types[0], types[1]
    xu = _unblocked_type(x)
    b = x.shape[4]
    if w.rank != 4 or w.shape[0] != x.shape[1] or w.shape[3] != b:
        fail(f"weight {w} is not (C/{b}, KH, KW, {b}) for input {x}")
    c = xu.shape[1]
    plain_w = TensorType((c, 1) + w.shape[1:3], w.dtype)
    plain = _conv2d_infer([xu, plain_w] + types[2:], strides=strides, pads=pads, dilations=dilations, groups=c)
    return _blocked_type(plain, b)


def block_depthwise_weight(w: np.ndarray, block: int) -> np.ndarray:
    """(C, 1, KH, KW) -> (C/block, KH, KW, block)."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // block, block, kh, kw).transpose(0, 2, 3, 1))


def _dw_nchwc_ref(x, w, b=None, *, strides, pads, dilations):
    cb, kh, kw, blk = w.shape
    plain_w = w.transpose(0, 3, 1, 2).reshape(cb * blk, 1, kh, kw)
    return block_nchw(_conv2d_ref(unblock_nchwc(x), plain_w, b, strides=strides, pads=pads, dilations=dilations,
                                  groups=cb * blk), blk)


def _dw_nchwc_lower(x, w, b=None, *, strides, pads, dilations):
    return depthwise_conv2d_nchwc_compute(x, w, b, kernel=(int(w.shape[1]), int(w.shape[2])),
                                          strides=strides, pads=pads, dilations=dilations)


depthwise_conv2d_nchwc = defop(
    "depthwise_conv2d_nchwc", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_dw_nchwc_infer, arity=(2, 3),
    attrs={"strides": CONV_ATTRS["strides"], "pads": CONV_ATTRS["pads"], "dilations": CONV_ATTRS["dilations"]},
    reference=_dw_nchwc_ref, lower=_dw_nchwc_lower, grad=NO_RULE_YET, widens_input=True,
    # weight (C/b, KH, KW, b)
    flops=lambda n: 2 * n.outputs[0].type.numel * n.inputs[1].type.shape[1] * n.inputs[1].type.shape[2],
    doc="depthwise conv2d (channel multiplier 1) on NCHW[b]c activations, weight (C/b, KH, KW, b).")


def _gap_nchwc_infer(types):
    n, cb, h, w, b = _check_rank5(types[0])
    return TensorType((n, cb * b, 1, 1), types[0].dtype)


def _check_rank5(t: TensorType):
    if t.rank != 5:
        fail(f"expects an NCHW[x]c input of rank 5, got {t}")
    return t.shape


def _gap_nchwc_lower(x):
    from tvm import te

    n, cb, h, w, b = (int(d) for d in x.shape)
    rh = te.reduce_axis((0, h), name="rh")
    rw = te.reduce_axis((0, w), name="rw")
    total = te.compute((n, cb * b, 1, 1), lambda i, c, _y, _z: te.sum(x[i, c // b, rh, rw, c % b], axis=[rh, rw]),
                       name="gap_sum")
    return te.compute(total.shape, lambda *i: total(*i) / te.const(float(h * w), x.dtype), name="gap_mean")


global_avg_pool_nchwc = defop(
    "global_avg_pool_nchwc", FusionKind.REDUCTION, infer=_gap_nchwc_infer,
    reference=lambda x: nn.global_avg_pool.reference(unblock_nchwc(x)), lower=_gap_nchwc_lower, grad=NO_RULE_YET,
    doc="global average pool of an NCHW[b]c tensor; the (N, C, 1, 1) result is plain NCHW.")


def _blocked_pool(pool):
    """`pool` (an NCHW pooling op of ops/nn.py) on NCHW[b]c activations: same attributes, same window."""
    def infer(types, **attrs):
        x = types[0]
        plain = pool.infer([_unblocked_type(x)], **attrs)
        return _blocked_type(plain, x.shape[4])

    def reference(x, **attrs):
        return block_nchw(pool.reference(unblock_nchwc(x), **attrs), x.shape[4])

    def lower(x, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad=False):
        return topi.nn.pool2d(x, kernel, strides, dilations, pads, "max" if pool.name.startswith("max") else "avg",
                              ceil_mode, f"NCHW{int(x.shape[4])}c", count_include_pad)

    return defop(pool.name + "_nchwc", pool.kind, infer=infer, attrs=pool.attrs, reference=reference, lower=lower,
                 grad=NO_RULE_YET,
                 doc=f"{pool.name} on NCHW[b]c activations.")


max_pool2d_nchwc = _blocked_pool(nn.max_pool2d)
avg_pool2d_nchwc = _blocked_pool(nn.avg_pool2d)
