"""Weight packing at run time, and the data movement that lets convolution backward reuse the fast kernels.

In a training graph the weights are graph inputs (state updated every step), not params, so `pack_weights` cannot
pack them at compile time. It packs them at run time instead: `conv2d(x, W)` -> `conv2d_packed(x,
conv2d_weight_pack(W))`, `dense(x, W)` -> `dense_packed(x, dense_weight_pack(W))`; the pack is one cheap injective
kernel per weight and step, read by every conv or dense that uses the weight.

The convolution gradient rules (compiler/ops/nn.py) use two more ops so that the backward runs on the same
register-tiled kernels as the forward:
  * `conv2d_weight_flip`: the input gradient of a stride-1 conv is a conv of dy with the weight flipped in space
    and with input and output channels swapped;
  * `im2col`: the weight gradient is a matrix product, dW (O, C*KH*KW) = dy (O, N*OH*OW) @ im2col(x), computed
    by `weight_grad_gemm` (dense weight gradients too) on a register-tiled schedule of its own.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from tensorforge.compiler.ir.types import TensorType

from .nn import CONV_ATTRS, MATMUL, conv_out_size, windows2d
from .packed import pack_conv2d_weight, pack_dense_weight
from .registry import NO_RULE_YET, Attr, FusionKind, defop, fail

# Block names the CPU schedule rules (backend/cpu/training.py) dispatch on.
DENSE_WEIGHT_PACK = "dense_weight_pack"
IM2COL = "im2col"
ANN_IM2COL_DIMS = "tf_im2col_dims"  # on IM2COL: (N, OH, OW, C, KH, KW): its rows are (N, OH, OW), columns (C, KH, KW)
WGRAD = "weight_grad"  # the weight-shaped view of weight_grad_gemm's product, a matmul block (nn.MATMUL)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


# -- run-time packing: the same layouts as packed.py packs at compile time ---------------------------------------------
def _conv_pack_infer(types, *, block):
    w = types[0]
    if w.rank != 4 or block <= 0:
        fail(f"expects an OIHW weight and a positive block, got {w} and block {block}")
    o, i, kh, kw = w.shape
    return TensorType((_round_up(o, block) // block, i, kh, kw, block), w.dtype)


def _conv_pack_ref(w, *, block):
    return pack_conv2d_weight(w, {"kind": "packed", "oc_block": block}).astype(w.dtype)


def _conv_pack_lower(w, *, block):
    o = int(w.shape[0])
    i, kh, kw = (int(d) for d in w.shape[1:])
    ob = _round_up(o, block) // block
    zero = tirx.const(0, w.dtype)

    def f(b, c, y, x, lane):
        oc = b * block + lane
        if o % block == 0:
            return w[oc, c, y, x]
        return tirx.Select(oc < o, w[tirx.min(oc, o - 1), c, y, x], zero)

    return te.compute((ob, i, kh, kw, block), f, name="conv2d_weight_pack")


conv2d_weight_pack = defop(
    "conv2d_weight_pack", FusionKind.INJECTIVE, infer=_conv_pack_infer, attrs={"block": Attr("int")},
    reference=_conv_pack_ref, lower=_conv_pack_lower, movement=True, grad=NO_RULE_YET,
    doc="OIHW -> (OC_pad / block, IC, KH, KW, block), zero rows padding OC: conv2d_packed's 'packed' weight, "
        "packed at run time (a weight that is not a compile-time param).")


def _dense_pack_infer(types, *, block):
    w = types[0]
    if w.rank != 2 or block <= 0:
        fail(f"expects an (N, K) weight and a positive block, got {w} and block {block}")
    n, k = w.shape
    return TensorType((_round_up(n, block) // block, k, block), w.dtype)


def _dense_pack_ref(w, *, block):
    return pack_dense_weight(w, {"kind": "packed", "n_block": block}).astype(w.dtype)


def _dense_pack_lower(w, *, block):
    n, k = (int(d) for d in w.shape)
    nb = _round_up(n, block) // block
    zero = tirx.const(0, w.dtype)

    def f(b, kk, lane):
        row = b * block + lane
        if n % block == 0:
            return w[row, kk]
        return tirx.Select(row < n, w[tirx.min(row, n - 1), kk], zero)

    return te.compute((nb, k, block), f, name=DENSE_WEIGHT_PACK)


dense_weight_pack = defop(
    "dense_weight_pack", FusionKind.INJECTIVE, infer=_dense_pack_infer, attrs={"block": Attr("int")},
    reference=_dense_pack_ref, lower=_dense_pack_lower, movement=True, grad=NO_RULE_YET,
    doc="(N, K) -> (N_pad / block, K, block), zero rows padding N: dense_packed's weight, packed at run time.")


# -- convolution backward as forward kernels ----------------------------------------------------------------------------
def _flip_infer(types):
    w = types[0]
    if w.rank != 4:
        fail(f"expects an OIHW weight, got {w}")
    o, i, kh, kw = w.shape
    return TensorType((i, o, kh, kw), w.dtype)


conv2d_weight_flip = defop(
    "conv2d_weight_flip", FusionKind.INJECTIVE, infer=_flip_infer, movement=True,
    reference=lambda w: np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]), grad=NO_RULE_YET,
    lower=lambda w: te.compute((w.shape[1], w.shape[0], w.shape[2], w.shape[3]),
                               lambda i, o, y, x: w[o, i, w.shape[2] - 1 - y, w.shape[3] - 1 - x],
                               name="conv2d_weight_flip"),
    doc="W (O, I, KH, KW) -> W' (I, O, KH, KW), W'[i, o, y, x] = W[o, i, KH-1-y, KW-1-x]: the weight of the "
        "convolution that computes a stride-1 conv's input gradient from dy.")

IM2COL_ATTRS = {"kernel": Attr("ints"), "strides": CONV_ATTRS["strides"], "pads": CONV_ATTRS["pads"],
                "dilations": CONV_ATTRS["dilations"]}


def _im2col_infer(types, *, kernel, strides, pads, dilations):
    x = types[0]
    if x.rank != 4 or len(kernel) != 2:
        fail(f"expects an NCHW input and a 2-D kernel, got {x} and kernel {kernel}")
    n, c, h, w = x.shape
    oh = conv_out_size(h, kernel[0], strides[0], pads[0], pads[2], dilations[0])
    ow = conv_out_size(w, kernel[1], strides[1], pads[1], pads[3], dilations[1])
    if oh <= 0 or ow <= 0:
        fail(f"kernel {kernel} does not fit input {h}x{w} with pads {pads}")
    return TensorType((n * oh * ow, c * kernel[0] * kernel[1]), x.dtype)


def _im2col_ref(x, *, kernel, strides, pads, dilations):
    win = windows2d(x, tuple(kernel), strides, pads, dilations)  # N, C, OH, OW, KH, KW
    n, c, oh, ow, kh, kw = win.shape
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw))


def _im2col_lower(x, *, kernel, strides, pads, dilations):
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = kernel
    oh = conv_out_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
    ow = conv_out_size(w, kw, strides[1], pads[1], pads[3], dilations[1])

    def f(m, r):
        b, p, q = m // (oh * ow), m // ow % oh, m % ow
        ch, i, j = r // (kh * kw), r // kw % kh, r % kw
        y = p * strides[0] + i * dilations[0] - pads[0]
        z = q * strides[1] + j * dilations[1] - pads[1]
        inside = tirx.all(y >= 0, y < h, z >= 0, z < w)
        return tirx.Select(inside, x[b, ch, tirx.Select(inside, y, 0), tirx.Select(inside, z, 0)],
                           tirx.const(0, x.dtype))

    return te.compute((n * oh * ow, c * kh * kw), f, name=IM2COL,
                      attrs={ANN_IM2COL_DIMS: [n, oh, ow, c, kh, kw]})  # the CPU schedule splits the rows by these


im2col = defop(
    "im2col", FusionKind.INJECTIVE, infer=_im2col_infer, attrs=IM2COL_ATTRS, reference=_im2col_ref,
    lower=_im2col_lower,  # not `movement`: a matmul would take it as a prologue and gather it serially
    grad=NO_RULE_YET,
    doc="NCHW x -> (N*OH*OW, C*KH*KW): row (n, oh, ow) holds the conv window at that output position, zero where "
        "it reads padding; conv2d(x, W) = im2col(x) @ W.reshape(O, -1).T. The conv weight gradient reads it.")


def _wgrad_infer(types, *, shape, transpose_rows):
    rows, cols = types
    if transpose_rows and rows.rank == 2:
        rows = TensorType(rows.shape[::-1], rows.dtype)
    if rows.rank != 2 or cols.rank != 2 or rows.shape[1] != cols.shape[0] or len(shape) < 2:
        fail(f"expects rows (O, M), columns (M, R) and a weight shape (O, ...), got {rows}, {cols} and {shape}")
    if rows.shape[0] != shape[0] or cols.shape[1] != int(np.prod(shape[1:])):
        fail(f"{rows} @ {cols} does not give a weight gradient of shape {shape}")
    return TensorType(tuple(shape), rows.dtype)


def _wgrad_ref(rows, cols, *, shape, transpose_rows):
    return ((rows.T if transpose_rows else rows) @ cols).reshape(shape)


def weight_grad_gemm_compute(rows: te.Tensor, cols: te.Tensor, shape: tuple[int, ...],
                             transpose_rows: bool = False) -> te.Tensor:
    """dW of shape (O, ...) = rows (O, M) @ cols (M, R), R = prod(shape[1:]), rows read as (M, O) if
    `transpose_rows` (the op `weight_grad_gemm` below)."""
    o, m = (int(d) for d in (rows.shape[::-1] if transpose_rows else rows.shape))
    r = int(cols.shape[1])
    rk = te.reduce_axis((0, m), name="rk")

    def row(i, k):
        return rows[k, i] if transpose_rows else rows[i, k]

    mm = te.compute((o, r), lambda i, j: te.sum(row(i, rk) * cols[rk, j], axis=rk), name=MATMUL)
    inner = shape[1:]

    def view(i, *idx):
        flat = 0
        for d, v in zip(inner, idx):
            flat = flat * d + v
        return mm[i, flat]

    return te.compute(shape, view, name=WGRAD, tag="injective")


def _wgrad_lower(rows, cols, *, shape, transpose_rows):
    return weight_grad_gemm_compute(rows, cols, tuple(shape), transpose_rows)


weight_grad_gemm = defop(
    "weight_grad_gemm", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_wgrad_infer, arity=(2, 2),
    attrs={"shape": Attr("ints"), "transpose_rows": Attr("bool", False)}, reference=_wgrad_ref, lower=_wgrad_lower,
    grad=NO_RULE_YET,
    doc="A weight gradient as one matrix product rows (O, M) @ cols (M, R) (rows given as (M, O) with "
        "transpose_rows), written in the weight's shape (O, ...): a conv's dW from dy with channels first (O, "
        "N*OH*OW) and im2col(x), a dense's dW from dy (M, N), transposed, and x (M, K). "
        "The kernel writes the weight's shape itself, so that an optimizer update fused after it writes the "
        "parameter's buffer in place.")
