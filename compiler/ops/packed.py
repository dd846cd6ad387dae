"""The CPU's conv2d and dense on weights packed at compile time: the ops `conv2d_packed` and `dense_packed`, their TE
computes and the packers.

`conv2d_packed` and `dense_packed` compute exactly what `conv2d` and `dense` compute; only the weight's memory
layout differs. The `pack_weights` pass rewrites one into the other where the weight is a param. Their references
unpack the weight and call the plain op's reference, so the interpreter checks the packing too.

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
from tvm import te, tirx, topi

from tensorforge.compiler.ir.types import TensorType

from . import nn
from .nn import CONV_ATTRS, _conv2d_infer, _conv2d_ref, _dense_infer, _dense_ref, conv_out_size
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

CONV_OC_BLOCK = 16          # one AVX-512 register of fp32 output channels
GROUPED_OC_BLOCKS = (16, 8, 4)  # grouped convs: the block must divide the output channels per group
DENSE_N_VECTOR = 16
DENSE_N_BLOCK = 64          # 4 independent accumulators per k step for the memory-bound GEMV
# AVX2 (16 ymm registers, 8 lanes): a 4 x 24 tile is 12 accumulators; 4 x 64 spilled (128x768->3072 on one
# core, Emerald Rapids compiled for haswell: 43 GFLOP/s at 64 columns, 117 at 24, the AVX2 FMA peak ~120)
DENSE_N_BLOCK_AVX2 = 24
DENSE_N_VECTOR_AVX2 = 8
DENSE_M_ROUND = 4           # the product's rows are padded to a multiple of this (the default register tile's rows)
OW_TILE_MAX = 16            # register tile over output width: OW_TILE accumulators of oc_block lanes
OW_TILE_MIN = 6
# AVX2: an oc_block of 16 is two ymm registers, so at most 6 columns (12 accumulators of 16 registers); 16 columns
# spilled (ResNet-50's 3x3 64-channel conv on one core, Emerald Rapids compiled for haswell: 49 -> 105 GFLOP/s)
OW_TILE_MAX_AVX2 = 6
OW_TILE_MIN_AVX2 = 3

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


def host_vector_lanes() -> int:
    """float32 lanes of this machine's widest vector unit (the CPU target compiles for the host)."""
    from tensorforge.runtime.cpu_features import cpu_features

    flags = cpu_features()
    return 16 if "avx512f" in flags or not flags else 8  # unknown (no /proc/cpuinfo): the AVX-512 layout, as before


def conv_ow_tile(ow: int, lanes: int | None = None) -> int:
    """Register tile width for an output row of `ow`: the smallest padded width, then the largest tile; the tile
    limits follow the vector unit (`lanes`, default the host's: AVX-512 or AVX2)."""
    lanes = host_vector_lanes() if lanes is None else lanes
    lo, hi = (OW_TILE_MIN, OW_TILE_MAX) if lanes >= 16 else (OW_TILE_MIN_AVX2, OW_TILE_MAX_AVX2)
    if ow <= hi:
        return ow
    return min(range(lo, hi + 1), key=lambda t: (_round_up(ow, t), -t))


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


def _laid_out(a: np.ndarray, aligned: bool) -> np.ndarray:
    """`a` in a C-contiguous array of its own: 64-byte aligned with `aligned`, as the runtime's buffers are (a compiled
    model then runs on it where it lies instead of copying it: 0.7 s of BERT-base's compile)."""
    if not aligned:
        return np.ascontiguousarray(a)
    from tensorforge.runtime.plan import aligned_empty

    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def pack_conv2d_weight(w: np.ndarray, layout: dict, aligned: bool = False) -> np.ndarray:
    """OIHW float32 -> the layout's packed array (C-contiguous; see `_laid_out` for `aligned`)."""
    w = np.asarray(w, dtype=np.float32)
    if layout["kind"] != "packed":
        return _laid_out(w, aligned)
    b = layout["oc_block"]
    oc, icg, kh, kw = w.shape
    oc_pad = _round_up(oc, b)  # only groups == 1 convs need padding: grouped ones use a block dividing OC / groups
    if oc_pad != oc:
        w = np.concatenate([w, np.zeros((oc_pad - oc, icg, kh, kw), np.float32)])
    return _laid_out(w.reshape(oc_pad // b, b, icg, kh, kw).transpose(0, 2, 3, 4, 1), aligned)


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

def dense_weight_layout(n: int, k: int, lanes: int | None = None) -> dict:
    """Packed (N_pad / n_block, K, n_block); small N gets one-vector blocks. The block is the register tile's
    columns, so it follows the vector unit: `lanes` (default: the host's) 16 (AVX-512) or 8 (AVX2)."""
    lanes = host_vector_lanes() if lanes is None else lanes
    wide, vector = (DENSE_N_BLOCK, DENSE_N_VECTOR) if lanes >= 16 else (DENSE_N_BLOCK_AVX2, DENSE_N_VECTOR_AVX2)
    return {"kind": "packed", "n_block": wide if n >= 2 * wide else vector}


def pack_dense_weight(w: np.ndarray, layout: dict, aligned: bool = False) -> np.ndarray:
    """(N, K) float32 -> (N_pad / n_block, K, n_block), zero rows padding N. `w` in either memory order; `aligned`:
    see `_laid_out`."""
    w = np.asarray(w, dtype=np.float32)
    nb = layout["n_block"]
    n, k = w.shape
    n_pad = _round_up(n, nb)
    if not w.flags.c_contiguous and w.flags.f_contiguous:
        return _pack_columns(w.T, nb, n_pad, aligned)
    if n_pad != n:
        w = np.concatenate([w, np.zeros((n_pad - n, k), np.float32)])
    return _laid_out(w.reshape(n_pad // nb, nb, k).transpose(0, 2, 1), aligned)


PACK_K_ROWS = 128  # rows of a (K, N) weight packed at a time: read whole, written as one run per block


def _pack_columns(kn: np.ndarray, nb: int, n_pad: int, aligned: bool) -> np.ndarray:
    """A (K, N) array (a MatMul's weight: the dense weight's transposed view) -> (N_pad / nb, K, nb): each block is
    a run of nb columns of it, copied whole (1.2 ms for 768 x 3072 against 10 ms through a C-order transpose
    first). Done PACK_K_ROWS rows at a time, so that the reads stream and the writes land in one run per block:
    GPT-2's 768 x 50257 LM head column by column touched a new page for every 192 bytes."""
    from tensorforge.runtime.plan import aligned_empty

    k, n = kn.shape
    shape = (n_pad // nb, k, nb)
    out = aligned_empty(shape, np.float32) if aligned else np.empty(shape, np.float32)
    full = n // nb
    for k0 in range(0, k, PACK_K_ROWS):
        k1 = min(k, k0 + PACK_K_ROWS)
        out[:full, k0:k1, :] = kn[k0:k1, :full * nb].reshape(k1 - k0, full, nb).transpose(1, 0, 2)
    if full * nb < n_pad:  # the last block: the remaining columns, then zeros
        out[full, :, :n - full * nb] = kn[:, full * nb:]
        out[full, :, n - full * nb:] = 0
    return out


def dense_rows(m: int) -> int:
    """The rows of the product: M, or M rounded up to a multiple of DENSE_M_ROUND where M's divisors would starve the
    schedule (backend/cpu/dense.py tiles rows by the largest divisor of M up to 4, in blocks that divide M): a
    prime M (ViT's 197 tokens) left a 1-row register tile, 4x fewer FMAs per loaded weight, and M = 2 x prime a
    2-row block, the weights streamed once per 2 rows. Padding rows re-read the last row of x; the write-back drops
    them. Where the divisors are fine (50, 51, 99 rows) padding cost ~10 % (benchmarks/results/dense_rows.md)."""
    if m <= DENSE_M_ROUND or m % DENSE_M_ROUND == 0:
        return m
    tile = next(d for d in range(DENSE_M_ROUND, 0, -1) if m % d == 0)
    block = max(d for d in range(tile, min(m, 128) + 1, tile) if m % d == 0)
    if tile >= 2 and block >= min(16, m):
        return m
    return -(-m // DENSE_M_ROUND) * DENSE_M_ROUND


def dense_compute(x: te.Tensor, w_packed: te.Tensor, bias: te.Tensor | None, *, layout: dict, n: int) -> te.Tensor:
    """(M, K) x packed weight -> (M, N) = x @ w.T (+ bias). M may be a run-time size (backend/symbolic.py): the
    product's rows are then always rounded up to DENSE_M_ROUND."""
    m, k = x.shape[0], int(x.shape[1])
    nb = layout["n_block"]
    n_pad = int(w_packed.shape[0]) * nb
    if isinstance(m, (int, tirx.IntImm)):
        m = int(m)
        m_pad = dense_rows(m)
    else:
        m_pad = (m + DENSE_M_ROUND - 1) // DENSE_M_ROUND * DENSE_M_ROUND
    rk = te.reduce_axis((0, k), name="rk")
    exact = isinstance(m, int) and m_pad == m
    row = (lambda i: i) if exact else (lambda i: tirx.min(i, m - 1))
    out = te.compute(
        (m_pad, n_pad),
        lambda i, j: te.sum(x[row(i), rk] * widen(w_packed[j // nb, rk, j % nb]), axis=rk),
        name=DENSE_PACKED, tag=DENSE_PACKED, attrs={ANN_N_TILE: nb})
    if bias is None:
        return te.compute((m, n), lambda i, j: out[i, j], name=DENSE_BIAS, tag="injective")
    return te.compute((m, n), lambda i, j: out[i, j] + bias[j], name=DENSE_BIAS, tag="broadcast")


# -- the ops ---------------------------------------------------------------------------------------------------------
WEIGHT_LAYOUTS = ("packed", "depthwise", "plain")


def computed_weight_type(x: TensorType, w: TensorType) -> TensorType:
    """A float32 conv or dense may store its packed weight as bfloat16 (the `bf16_weights` pass, CPU bf16 mode):
    its kernel widens each weight to float32 as it loads it, so the op computes in float32 on the rounded weight."""
    if w.dtype == "bfloat16" and x.dtype == "float32":
        return TensorType(w.shape, "float32")
    return w


def widen_weight(w: np.ndarray) -> np.ndarray:
    """The references' side of `computed_weight_type`: a bfloat16 weight as float32 (exact)."""
    return w.astype(np.float32) if w.dtype.name == "bfloat16" else w


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
    w = _unpacked_conv_type(computed_weight_type(types[0], types[1]), wlayout, block, out_channels)
    return _conv2d_infer([types[0], w] + types[2:], **conv)


def _conv2d_packed_ref(x, wp, b=None, *, wlayout, block, out_channels, **conv):
    return _conv2d_ref(x, unpack_conv2d_weight(widen_weight(wp), wlayout=wlayout, block=block,
                                               out_channels=out_channels), b, **conv)


def _conv2d_packed_lower(x, wp, b=None, *, wlayout, block, out_channels, strides, pads, dilations, groups):
    kernel = (int(wp.shape[2]), int(wp.shape[3]))
    layout = {"kind": wlayout, "oc_block": block} if wlayout == "packed" else {"kind": wlayout}
    return conv2d_nchw_compute(x, wp, b, layout=layout, out_channels=out_channels, kernel=kernel,
                               strides=strides, pads=pads, dilations=dilations, groups=groups)


conv2d_packed = defop(
    "conv2d_packed", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv2d_packed_infer, arity=(2, 3),
    attrs={**CONV_ATTRS, "wlayout": Attr("str"), "block": Attr("int", 0), "out_channels": Attr("int")},
    reference=_conv2d_packed_ref, lower=_conv2d_packed_lower, grad=NO_RULE_YET, flops=nn.conv2d_flops,
    bf16_weight=True,
    doc="conv2d whose weight is stored in a CPU-friendly layout: 'packed' = (OC/block, IC/groups, KH, KW, block).")


def _dense_packed_infer(types, *, block, n):
    wp = computed_weight_type(types[0], types[1])
    if wp.rank != 3 or wp.shape[2] != block or wp.shape[0] * block < n:
        fail(f"packed weight {wp} does not match block {block} and n={n}")
    return _dense_infer([types[0], TensorType((n, wp.shape[1]), wp.dtype)] + types[2:])


def _dense_packed_lower(x, wp, b=None, *, block, n):
    return dense_compute(x, wp, b, layout={"kind": "packed", "n_block": block}, n=n)


dense_packed = defop(
    "dense_packed", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_dense_packed_infer, arity=(2, 3),
    attrs={"block": Attr("int"), "n": Attr("int")},
    reference=lambda x, wp, b=None, *, block, n: _dense_ref(x, unpack_dense_weight(widen_weight(wp), block=block,
                                                                                   n=n), b),
    lower=_dense_packed_lower, grad=NO_RULE_YET, flops=nn.gemm_flops, bf16_weight=True,
    doc="dense whose weight (N, K) is stored as (N/block, K, block).")
