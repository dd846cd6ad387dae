"""TE computes and compile-time weight packing of the CPU's conv2d and dense kernels (the ops `conv2d_packed` and
`dense_packed` are declared in layout.py).

Activations stay NCHW / (M, K). Weights are packed once, at compile time, with numpy, into layouts whose innermost
axis is a block of output channels, so one SIMD register holds `oc_block` consecutive output channels:

  conv "packed":    OIHW  -> (OC_pad / b, IC / groups, KH, KW, b); zero rows pad OC up to a multiple of b (groups
                    == 1 only; a grouped conv uses a block b dividing OC / groups)
  conv "depthwise": OIHW kept as is; the schedule vectorizes over output width instead
  conv "plain":     OIHW kept as is (grouped convs whose channels per group do not split into blocks)
  dense "packed":   (N, K) -> (N_pad / b, K, b)

A packed conv is two TE stages: the anchor `conv2d_nchw_packed` computes (N, OC_pad/b, OH, OW_pad, b), padded so the
schedule's register tiles are always full, and `conv2d_nchw_unpack` gathers it back to NCHW and adds the bias. The
CPU schedule rules (backend/cpu/) find the anchors by the block names below and read the tile they should
use from the block annotations written here (`ANN_OW_TILE`, `ANN_N_TILE`), so the compute and its schedule cannot
disagree.
"""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from .nn import conv_out_size

CONV_OC_BLOCK = 16          # one AVX-512 register of fp32 output channels
GROUPED_OC_BLOCKS = (16, 8, 4)  # grouped convs: the block must divide the output channels per group
DENSE_N_VECTOR = 16
DENSE_N_BLOCK = 64          # 4 independent accumulators per k step for the memory-bound GEMV
OW_TILE_MAX = 16            # register tile over output width: OW_TILE accumulators of oc_block lanes
OW_TILE_MIN = 6

# Anchor block names; the CPU schedule rules dispatch on these.
CONV_PACKED = "conv2d_nchw_packed"
CONV_UNPACK = "conv2d_nchw_unpack"
CONV_DEPTHWISE = "conv2d_depthwise"
CONV_PLAIN = "conv2d_nchw_plain"
CONV_BIAS = "conv2d_bias"
DENSE_PACKED = "dense_packed"
DENSE_BIAS = "dense_bias"
PAD = "conv2d_pad"

ANN_OW_TILE = "tf_ow_tile"      # on CONV_PACKED (and nchwc.py's anchors): width of the register tile (divides OW_pad)
ANN_OC_BLOCK = "tf_oc_block"
ANN_N_TILE = "tf_n_tile"        # on DENSE_PACKED: columns per register tile (divides N_pad)


def widen(w):
    """A weight element as float32: a bfloat16 weight (CPU bf16 mode) is widened where it is loaded, which LLVM
    vectorizes as a zero-extend and a 16-bit shift per vector (vpmovzxwd, vpslld), so the kernels read half the
    weight bytes and still multiply and accumulate in float32."""
    return w.astype("float32") if w.dtype == "bfloat16" else w


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def conv_ow_tile(ow: int) -> int:
    """Register tile width for an output row of `ow`: the smallest padded width, then the largest tile."""
    if ow <= OW_TILE_MAX:
        return ow
    return min(range(OW_TILE_MIN, OW_TILE_MAX + 1), key=lambda t: (_round_up(ow, t), -t))


# ---------------------------------------------------------------------------------------------- conv2d

def conv2d_weight_layout(out_channels: int, in_channels_per_group: int, groups: int, kh: int, kw: int) -> dict:
    """Choose the packed weight layout of a conv (JSON-able, stored with the compiled model)."""
    if groups == 1:
        return {"kind": "packed", "oc_block": CONV_OC_BLOCK}
    if in_channels_per_group == 1:
        return {"kind": "depthwise"}
    # A register tile must not straddle two groups, so the block divides the output channels per group.
    oc_per_group = out_channels // groups
    for block in GROUPED_OC_BLOCKS:
        if oc_per_group % block == 0:
            return {"kind": "packed", "oc_block": block}
    return {"kind": "plain"}


def pack_conv2d_weight(w: np.ndarray, layout: dict) -> np.ndarray:
    """OIHW float32 -> the layout's packed array (C-contiguous)."""
    w = np.asarray(w, dtype=np.float32)
    if layout["kind"] != "packed":
        return np.ascontiguousarray(w)
    b = layout["oc_block"]
    oc, icg, kh, kw = w.shape
    oc_pad = _round_up(oc, b)  # only groups == 1 convs need padding: grouped ones use a block dividing OC / groups
    if oc_pad != oc:
        w = np.concatenate([w, np.zeros((oc_pad - oc, icg, kh, kw), np.float32)])
    return np.ascontiguousarray(w.reshape(oc_pad // b, b, icg, kh, kw).transpose(0, 2, 3, 4, 1))


def pad_input(x: te.Tensor, pads: tuple[int, int, int, int]) -> te.Tensor:
    """Zero-pad the spatial axes (2, 3) of NCHW or NCHW[b]c."""
    top, left, bottom, right = pads
    if top == left == bottom == right == 0:
        return x
    lanes = [0] * (len(x.shape) - 4)
    return topi.nn.pad(x, [0, 0, top, left, *lanes], [0, 0, bottom, right, *lanes], name=PAD)


def tiled_input(x: te.Tensor, ow: int, kw: int, sw: int, dw: int, pads: tuple[int, int, int, int]):
    """(x padded, ow_tile, ow_pad): the output width rounded up to whole register tiles, and the input padded with
    extra zero columns on the right so that the padded output width reads inside it."""
    top, left, bottom, right = pads
    tile = conv_ow_tile(ow)
    ow_pad = _round_up(ow, tile)
    w_needed = (ow_pad - 1) * sw + (kw - 1) * dw + 1
    right_extra = max(0, w_needed - (int(x.shape[3]) + left + right))
    return pad_input(x, (top, left, bottom, right + right_extra)), tile, ow_pad


def conv2d_nchw_compute(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor | None, *, layout: dict,
                        out_channels: int, kernel: tuple[int, int], strides: tuple[int, int],
                        pads: tuple[int, int, int, int], dilations: tuple[int, int], groups: int) -> te.Tensor:
    """NCHW conv2d (+ bias) on a weight packed by `pack_conv2d_weight(w, layout)`; returns the NCHW output."""
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    oh = conv_out_size(h, kh, sh, top, bottom, dh)
    ow = conv_out_size(w, kw, sw, left, right, dw)
    icg = c // groups
    ocg = out_channels // groups
    if layout["kind"] == "packed":
        return _conv_packed(x, w_packed, bias, layout["oc_block"], out_channels, icg, ocg, groups,
                            (kh, kw), (sh, sw), (top, left, bottom, right), (dh, dw), (oh, ow))
    name = CONV_DEPTHWISE if layout["kind"] == "depthwise" else CONV_PLAIN
    xp = pad_input(x, pads)
    ric = te.reduce_axis((0, icg), name="ric")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    out = te.compute(
        (n, out_channels, oh, ow),
        lambda b_, o, y, z: te.sum(
            xp[b_, o // ocg * icg + ric, y * sh + rkh * dh, z * sw + rkw * dw] * w_packed[o, ric, rkh, rkw],
            axis=[ric, rkh, rkw]),
        name=name, tag=name)
    if bias is None:
        return out
    return te.compute(out.shape, lambda b_, o, y, z: out[b_, o, y, z] + bias[o], name=CONV_BIAS, tag="broadcast")


def _conv_packed(x, w_packed, bias, b, out_channels, icg, ocg, groups, kernel, strides, pads, dilations, out_hw):
    n = int(x.shape[0])
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    oh, ow = out_hw
    xp, tile, ow_pad = tiled_input(x, ow, kw, sw, dw, pads)
    blocks_per_group = ocg // b
    ric = te.reduce_axis((0, icg), name="ric")
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")

    def in_channel(ob):
        return ric if groups == 1 else ob // blocks_per_group * icg + ric

    conv = te.compute(
        (n, int(w_packed.shape[0]), oh, ow_pad, b),
        lambda b_, ob, y, z, oi: te.sum(
            xp[b_, in_channel(ob), y * sh + rkh * dh, z * sw + rkw * dw] * widen(w_packed[ob, ric, rkh, rkw, oi]),
            axis=[ric, rkh, rkw]),
        name=CONV_PACKED, tag=CONV_PACKED, attrs={ANN_OW_TILE: tile, ANN_OC_BLOCK: b})

    def unpack(b_, o, y, z):
        v = conv[b_, o // b, y, z, o % b]
        return v if bias is None else v + bias[o]

    return te.compute((n, out_channels, oh, ow), unpack, name=CONV_UNPACK, tag="injective")


# ---------------------------------------------------------------------------------------------- dense

def dense_weight_layout(n: int, k: int) -> dict:
    """Packed (N_pad / n_block, K, n_block); small N gets one-vector blocks."""
    block = DENSE_N_BLOCK if n >= 2 * DENSE_N_BLOCK else DENSE_N_VECTOR
    return {"kind": "packed", "n_block": block}


def pack_dense_weight(w: np.ndarray, layout: dict) -> np.ndarray:
    """(N, K) float32 -> (N_pad / n_block, K, n_block), zero rows padding N."""
    w = np.asarray(w, dtype=np.float32)
    nb = layout["n_block"]
    n, k = w.shape
    n_pad = _round_up(n, nb)
    if n_pad != n:
        w = np.concatenate([w, np.zeros((n_pad - n, k), np.float32)])
    return np.ascontiguousarray(w.reshape(n_pad // nb, nb, k).transpose(0, 2, 1))


def dense_compute(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor | None, *, layout: dict, n: int) -> te.Tensor:
    """(M, K) x packed weight -> (M, N) = x @ w.T (+ bias)."""
    m, k = (int(d) for d in x.shape)
    nb = layout["n_block"]
    n_pad = int(w_packed.shape[0]) * nb
    rk = te.reduce_axis((0, k), name="rk")
    out = te.compute(
        (m, n_pad),
        lambda i, j: te.sum(x[i, rk] * widen(w_packed[j // nb, rk, j % nb]), axis=rk),
        name=DENSE_PACKED, tag=DENSE_PACKED, attrs={ANN_N_TILE: nb})
    if bias is None:
        return te.compute((m, n), lambda i, j: out[i, j], name=DENSE_BIAS, tag="injective")
    return te.compute((m, n), lambda i, j: out[i, j] + bias[j], name=DENSE_BIAS, tag="broadcast")
