"""conv2d on the CPU's matrix unit (Intel AMX): `conv2d_amx`, an implicit GEMM on NCHW[16]c activations.

The CPU's bf16 mode on a CPU with AMX-BF16 (passes/cpu/amx.py) replaces `conv2d_nchwc` (a blocked input, groups 1)
by this op: same input and output layout (N, C/16, H, W, 16), products in bfloat16 with float32 sums
(`tdpbf16ps`, scheduled by backend/cpu/amx.py).

The GEMM: rows are output pixels, columns output channels, the reduction runs over (32-channel block, kh, kw, 32
channels). Output pixels are numbered over a virtual row as wide as the padded input, Wp, m = y * Wp + z, so
that output pixel m of tap (kh, kw) reads the padded input's flattened pixel s * m + kh * dh * Wp + kw * dw (s the
stride, equal along both axes): one tile row per pixel at a constant stride of s pixels. The columns z >= OW of
each virtual row are computed and dropped by the write-back: 2 of 58 at 56x56 with a 3x3 conv, about half with
stride 2. A strided 1x1 conv without padding is the exception: its conversion gathers the pixels it reads, and it
runs at stride 1 on them (ResNet-50's downsampling convs, bf16 on one core: the whole model 13.3-13.6 -> 12.0 ms).

  x       (N, IC/16, H, W, 16) float32 or bfloat16 (passes/cpu/bf16_activations.py) -> `amx_conv_a` (N, IC_pad/32, F, 2, 16) bf16 bits (uint16): zero padded
          (the conv's pads, channels to 32, F pixels so every tile read is in bounds), flattened over (H, W)
  weight  OIHW float32 -> (OC_pad/16, CB * KH * KW, 16, 16, 2) bf16: [oc block][(ic block, kh, kw)][ic pair][oc][2],
          one B tile per (oc block, reduction step), zero padded; CB = IC_pad / 32 (at least 2 for a 1x1 conv)
  product `conv2d_amx` (N, OC_pad/16, M_pad, 16) float32, M_pad = OH * Wv rounded up to 32 (8 on AVX512-BF16)
  output  `conv2d_amx_out` (N, OC/16, OH, OW, 16) float32 (+ bias)
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType

from .amx import (ACTIVATION_DTYPES, K_BLOCK, M_TILE, N_BLOCK, N_TILE, PAIR, UNIT_ATTR, from_bf16_bits, operand_bits,
                  padded_rows, product_name)
from .nn import CONV_ATTRS, _conv2d_infer, _conv2d_ref, conv_out_size
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

AMX_CONV_A = "amx_conv_a"
CONV_AMX = "conv2d_amx"
CONV_AMX_OUT = "conv2d_amx_out"
ANN_STEP = "tf_amx_pixel_step"      # on CONV_AMX: input pixels between consecutive output pixels (the stride)
ANN_TAPS = "tf_amx_taps"            # on CONV_AMX: (KH, KW, kh step, kw step) in flattened input pixels
ANN_ROW = "tf_amx_row"              # on AMX_CONV_A: pixels per padded input row (the schedule splits by it, so the
                                    # conversion's row and column are loop variables, not a division per element)
ANN_TASK_PIXELS = "tf_amx_task_pixels"  # on CONV_AMX (1x1 convs): pixels per schedule task, whole output rows and
                                    # whole tiles (the write-back of a task's rows then follows its tiles)
IN_BLOCK = 16                       # the NCHW[16]c activations the op reads and writes


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def conv_channel_blocks(in_channels: int, kh: int, kw: int) -> int:
    """32-channel blocks of the reduction: at least two for a 1x1 conv (TE drops a reduction axis of extent 1,
    and the tensor intrinsic matches one loop over blocks and taps)."""
    cb = -(-in_channels // K_BLOCK)
    return max(cb, 2) if kh * kw == 1 else cb


def pack_amx_conv_weight(w: np.ndarray) -> np.ndarray:
    """OIHW float32 -> (OC_pad/16, CB * KH * KW, 16, 16, 2) bfloat16, zero padded (C-contiguous): one B tile per
    (oc block, reduction step), the steps ordered (channel block, kh, kw)."""
    import ml_dtypes

    w = np.asarray(w, np.float32)
    oc, ic, kh, kw = w.shape
    oc_pad, cb = _round_up(oc, N_TILE), conv_channel_blocks(ic, kh, kw)
    full = np.zeros((oc_pad, cb * K_BLOCK, kh, kw), ml_dtypes.bfloat16)
    full[:oc, :ic] = w.astype(ml_dtypes.bfloat16)
    blocked = full.reshape(oc_pad // N_BLOCK, N_BLOCK, cb, K_BLOCK // PAIR, PAIR, kh, kw).transpose(0, 2, 5, 6, 3, 1, 4)
    return np.ascontiguousarray(blocked.reshape(oc_pad // N_BLOCK, cb * kh * kw, K_BLOCK // PAIR, N_BLOCK, PAIR))


def unpack_amx_conv_weight(wp: np.ndarray, oc: int, ic: int, kh: int, kw: int) -> np.ndarray:
    """The inverse of `pack_amx_conv_weight`, as float32 OIHW."""
    ob, steps, kp, ot, pair = wp.shape
    cb = steps // (kh * kw)
    full = np.asarray(wp).astype(np.float32).reshape(ob, cb, kh, kw, kp, ot, pair).transpose(0, 5, 1, 4, 6, 2, 3)
    return full.reshape(ob * ot, cb * kp * pair, kh, kw)[:oc, :ic]


def geometry(h, w, kernel, strides, pads, dilations, unit="amx"):
    """(OH, OW, Wp, Wv, M_pad, F): the output size, the padded input width, the virtual row width (Wp on AMX, whose
    tile rows are pixels at a constant stride; OW on AVX512-BF16, which broadcasts each row's pixel on its own, so
    rows are output pixels and no column is dropped), the padded pixel count and the flattened input pixels the
    kernel reads."""
    kh, kw = kernel
    s = strides[0]
    dh, dw = dilations
    top, left, bottom, right = pads
    oh = conv_out_size(h, kh, s, top, bottom, dh)
    ow = conv_out_size(w, kw, s, left, right, dw)
    wp = w + left + right
    wv = wp if unit == "amx" else ow  # s input rows per output row: s * Wp flattened pixels, s * Wv along m
    m_pad = padded_rows(oh * wv, unit)
    last = (m_pad - 1) // wv * wp + (m_pad - 1) % wv  # the last row's first tap over s (as `pixel` reads it)
    f = _round_up(s * last + (kh - 1) * dh * wp + (kw - 1) * dw + 1, wp)  # whole rows: see ANN_ROW
    return oh, ow, wp, wv, m_pad, f


def conv2d_amx_compute(x: te.Tensor, wp: te.Tensor, bias: te.Tensor | None, *, out_channels: int, in_channels: int,
                       kernel, strides, pads, dilations, unit: str = "amx") -> te.Tensor:
    n, _, h, w, _ = (int(d) for d in x.shape)
    ocb, steps = int(wp.shape[0]), int(wp.shape[1])
    kh, kw = kernel
    cb = steps // (kh * kw)
    s = strides[0]
    # a strided 1x1 conv without padding (ResNet's downsampling) reads only every s-th pixel of every s-th row: the
    # conversion gathers those, and the GEMM runs over them at stride 1 (over the virtual rows at stride s, half the
    # product of a stride-2 conv was columns the write-back drops)
    sub = s if kh == kw == 1 and s > 1 and not any(pads) else 1
    if sub > 1:
        h, w, s = conv_out_size(h, 1, sub, 0, 0, 1), conv_out_size(w, 1, sub, 0, 0, 1), 1
        strides = (1, 1)
    dh, dw = dilations
    top, left = pads[0], pads[1]
    oh, ow, wpad, wv, m_pad, f = geometry(h, w, (kh, kw), strides, pads, dilations, unit)
    task = {}
    # on AMX, virtual rows are output rows: tasks of whole rows (ANN_TASK_PIXELS)
    if unit == "amx" and kh == kw == 1 and s == 1 and not any(pads):
        rows = M_TILE // math.gcd(ow, M_TILE)  # the fewest rows that make whole 32-pixel tiles
        if rows < oh:
            m_pad = -(-oh // rows) * rows * ow
            f = max(f, m_pad)
            task = {ANN_TASK_PIXELS: rows * ow}

    # no padded channels: every reduction block is real input (a 1x1 conv on 32 channels still has two blocks,
    # conv_channel_blocks, and its second must read zeros, not the memory past the input: that read NaN garbage)
    whole = in_channels == cb * K_BLOCK

    def a_value(b, c32, px, half, lane):  # channel c32 * 32 + half * 16 + lane: one NCHW[16]c vector per half
        c = c32 * K_BLOCK + half * IN_BLOCK + lane
        y, z = px // wpad - top, px % wpad - left
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        block = c32 * (K_BLOCK // IN_BLOCK) + half
        v = x[b, block if whole else tirx.min(block, in_channels // IN_BLOCK - 1),
              tirx.max(tirx.min(y, h - 1), 0) * sub, tirx.max(tirx.min(z, w - 1), 0) * sub, lane]
        inside = inside if whole else tirx.all(inside, c < in_channels)
        return operand_bits(v, inside, x.dtype)

    halves = K_BLOCK // IN_BLOCK
    xa = te.compute((n, cb, f, halves, IN_BLOCK), a_value, name=AMX_CONV_A, tag="injective", attrs={ANN_ROW: wpad})
    r = te.reduce_axis((0, steps), name="rstep")  # (channel block, kh, kw)
    rkp = te.reduce_axis((0, K_BLOCK // PAIR), name="rkp")
    rkt = te.reduce_axis((0, PAIR), name="rkt")

    def pixel(m, step):
        # output pixel m = (m // Wv, m % Wv) at stride s; with Wv = Wp (AMX) that is s * m
        first = m * s if wv == wpad else (m // wv * wpad + m % wv) * s
        return first + (step // kw) % kh * (dh * wpad) + step % kw * dw

    prod = te.compute(
        (n, ocb, m_pad, N_BLOCK),
        lambda b, ob, m, oi: te.sum(
            from_bf16_bits(xa[b, r // (kh * kw), pixel(m, r), rkp // 8, rkp % 8 * PAIR + rkt])
            * wp[ob, r, rkp, oi, rkt].astype("float32"),
            axis=[r, rkp, rkt]),
        name=product_name(CONV_AMX, unit), tag=CONV_AMX,
        attrs={ANN_STEP: s, ANN_TAPS: [kh, kw, dh * wpad, dw], **task})

    def out(b, ob, y, z, oi):
        v = prod[b, ob, y * wv + z, oi]
        return v if bias is None else v + bias[ob * N_BLOCK + oi]

    return te.compute((n, out_channels // IN_BLOCK, oh, ow, IN_BLOCK), out, name=CONV_AMX_OUT,
                      tag="broadcast" if bias is not None else "injective")


def _infer(types, *, out_channels, in_channels, kernel, strides, pads, dilations, unit="amx"):
    x, wt = types[0], types[1]
    if (x.rank != 5 or x.shape[4] != IN_BLOCK or x.dtype not in ACTIVATION_DTYPES
            or x.shape[1] * IN_BLOCK != in_channels):
        fail(f"expects a float32 or bfloat16 NCHW[16]c input with {in_channels} channels, got {x}")
    kh, kw = kernel
    if wt.dtype != "bfloat16" or wt.rank != 5 or wt.shape[2:] != (K_BLOCK // PAIR, N_BLOCK, PAIR):
        fail(f"weight {wt} is not the AMX conv layout")
    if (out_channels % IN_BLOCK or wt.shape[0] * N_BLOCK < out_channels
            or wt.shape[1] != conv_channel_blocks(in_channels, kh, kw) * kh * kw):
        fail(f"weight {wt} does not match {in_channels} -> {out_channels} channels and a {kh}x{kw} kernel")
    if strides[0] != strides[1]:
        fail(f"strides {strides} differ along the two axes")
    n, _, h, w, _ = x.shape
    plain = _conv2d_infer([TensorType((n, in_channels, h, w), "float32"),
                           TensorType((out_channels, in_channels, kh, kw), "float32")] + types[2:],
                          strides=strides, pads=pads, dilations=dilations, groups=1)
    on, oc, oh, ow = plain.shape
    return TensorType((on, oc // IN_BLOCK, oh, ow, IN_BLOCK), "float32")


def _reference(x, wp, b=None, *, out_channels, in_channels, kernel, strides, pads, dilations, unit="amx"):
    from .amx import round_bf16
    from .nchwc import block_nchw, unblock_nchwc

    w = unpack_amx_conv_weight(wp, out_channels, in_channels, *kernel)
    y = _conv2d_ref(round_bf16(unblock_nchwc(np.asarray(x, np.float32))), w, b, strides=strides, pads=pads, dilations=dilations, groups=1)
    return block_nchw(y, IN_BLOCK)


def _lower(x, wp, b=None, **attrs):
    return conv2d_amx_compute(x, wp, b, **attrs)


def _flops(n):
    kh, kw = n.attrs["kernel"]
    return 2 * n.outputs[0].type.numel * n.attrs["in_channels"] * kh * kw


conv2d_amx = defop(
    "conv2d_amx", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_infer, arity=(2, 3),
    attrs={"strides": CONV_ATTRS["strides"], "pads": CONV_ATTRS["pads"], "dilations": CONV_ATTRS["dilations"],
           "out_channels": Attr("int"), "in_channels": Attr("int"), "kernel": Attr("ints"),
           "unit": UNIT_ATTR},
    reference=_reference, lower=_lower, grad=NO_RULE_YET, flops=_flops, bf16_input=True,
    doc="conv2d (groups 1) on NCHW[16]c in bfloat16 on AMX tiles (or AVX512-BF16 dot products) with float32 sums; weight "
        "(OC/16, IC/32 * KH * KW, 16, 16, 2) bf16; the output is NCHW[16]c.")
