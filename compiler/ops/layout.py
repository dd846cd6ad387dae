"""Ops on weights packed at compile time for the CPU kernels (see compiler/backend/cpu_kernels.py).

`conv2d_packed` and `dense_packed` compute exactly what `conv2d` and `dense` compute; only the weight's memory
layout differs. The `pack_weights` pass rewrites one into the other where the weight is a param. Their references
unpack the weight and call the plain op's reference, so the interpreter checks the packing too.
"""

from __future__ import annotations

import numpy as np

from compiler.ir.types import TensorType

from .nn import CONV_ATTRS, _conv2d_infer, _conv2d_ref, _dense_infer, _dense_ref
from .registry import Attr, FusionKind, defop, fail

WEIGHT_LAYOUTS = ("packed", "depthwise", "plain")


def unpack_conv2d_weight(wp: np.ndarray, *, wlayout: str, block: int, out_channels: int) -> np.ndarray:
    if wlayout != "packed":
        return wp
    ocb, icg, kh, kw, b = wp.shape
    return wp.transpose(0, 4, 1, 2, 3).reshape(ocb * b, icg, kh, kw)[:out_channels]


def unpack_dense_weight(wp: np.ndarray, *, block: int, n: int) -> np.ndarray:
    nb, k, b = wp.shape
    return wp.transpose(0, 2, 1).reshape(nb * b, k)[:n]


def _unpacked_conv_type(w: TensorType, wlayout, block, out_channels) -> TensorType:
    if wlayout not in WEIGHT_LAYOUTS:
        fail(f"unknown weight layout {wlayout!r}")
    if wlayout != "packed":
        return w
    if w.rank != 5 or w.shape[4] != block or w.shape[0] * block < out_channels:
        fail(f"packed weight {w} does not match block {block} and {out_channels} output channels")
    return TensorType((out_channels,) + w.shape[1:4], w.dtype)


def _conv2d_packed_infer(types, *, wlayout, block, out_channels, **conv):
    w = _unpacked_conv_type(types[1], wlayout, block, out_channels)
    return _conv2d_infer([types[0], w] + types[2:], **conv)


def _conv2d_packed_ref(x, wp, b=None, *, wlayout, block, out_channels, **conv):
    return _conv2d_ref(x, unpack_conv2d_weight(wp, wlayout=wlayout, block=block, out_channels=out_channels), b,
                       **conv)


def _conv2d_packed_lower(x, wp, b=None, *, wlayout, block, out_channels, strides, pads, dilations, groups):
    from compiler.backend import cpu_kernels

    kernel = (int(wp.shape[2]), int(wp.shape[3]))
    layout = {"kind": wlayout, "oc_block": block} if wlayout == "packed" else {"kind": wlayout}
    return cpu_kernels.conv2d_nchw_compute(x, wp, b, layout=layout, out_channels=out_channels, kernel=kernel,
                                           strides=strides, pads=pads, dilations=dilations, groups=groups)


conv2d_packed = defop(
    "conv2d_packed", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv2d_packed_infer, arity=(2, 3),
    attrs={**CONV_ATTRS, "wlayout": Attr("str"), "block": Attr("int", 0), "out_channels": Attr("int")},
    reference=_conv2d_packed_ref, lower=_conv2d_packed_lower,
    doc="conv2d whose weight is stored in a CPU-friendly layout: 'packed' = (OC/block, IC/groups, KH, KW, block).")


def _dense_packed_infer(types, *, block, n):
    wp = types[1]
    if wp.rank != 3 or wp.shape[2] != block or wp.shape[0] * block < n:
        fail(f"packed weight {wp} does not match block {block} and n={n}")
    return _dense_infer([types[0], TensorType((n, wp.shape[1]), wp.dtype)] + types[2:])


def _dense_packed_lower(x, wp, b=None, *, block, n):
    from compiler.backend import cpu_kernels

    return cpu_kernels.dense_compute(x, wp, b, layout={"kind": "packed", "n_block": block}, n=n)


dense_packed = defop(
    "dense_packed", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_dense_packed_infer, arity=(2, 3),
    attrs={"block": Attr("int"), "n": Attr("int")},
    reference=lambda x, wp, b=None, *, block, n: _dense_ref(x, unpack_dense_weight(wp, block=block, n=n), b),
    lower=_dense_packed_lower, doc="dense whose weight (N, K) is stored as (N/block, K, block).")
