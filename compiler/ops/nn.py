"""Neural-network ops: convolution, dense/matmul and pooling, with their gradient rules and FLOP counts.
(Over 500 lines as one idea: each op's declaration holds its facts; conv2d's gradient rule is most of the excess.)

The heavy ops (conv2d, dense, matmul) are fusion anchors (OUT_ELEMWISE_FUSABLE). Their references are written for
speed as well as clarity (im2col views + BLAS) because the tests run whole CNNs through the reference interpreter.
Normalizations and softmax are in norm.py; einsum is in reduce.py (a product summed over the absent indices).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, tirx, topi

from tensorforge.runtime.errors import AutodiffError

from tensorforge.compiler.ir.types import TensorType

from .registry import (NOT_DIFFERENTIABLE, NO_RULE_YET, Attr, FusionKind, broadcast_per_sample, defop, fail,
                       first_input_per_sample, ops)

MATMUL = "matmul"  # the block of matmul's compute, which the CPU's matmul schedule rule dispatches on

CONV_ATTRS = {
    "strides": Attr("ints", (1, 1)),
    "pads": Attr("ints", (0, 0, 0, 0)),  # begin_h, begin_w, end_h, end_w (ONNX order)
    "dilations": Attr("ints", (1, 1)),
    "groups": Attr("int", 1),
}


def conv_out_size(size, k, stride, pad_begin, pad_end, dilation, ceil=False):
    span = size + pad_begin + pad_end - dilation * (k - 1) - 1
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad_begin:
        out -= 1  # ceil mode never starts a window in the end padding
    return out


def _conv2d_infer(types, *, strides, pads, dilations, groups):
    x, w = types[0], types[1]
    if x.rank != 4 or w.rank != 4:
        fail(f"expects NCHW input and OIHW weight, got {x} and {w}")
    if x.dtype != w.dtype:
        fail(f"input {x} and weight {w} differ in dtype")
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if groups < 1 or c % groups or o % groups or cg != c // groups:
        fail(f"input channels {c}, weight {w} and groups={groups} are inconsistent "
             f"(weight dim 1 must be {c}/groups)")
    if len(types) == 3 and types[2].shape != (o,):
        fail(f"bias must have shape ({o},), got {types[2]}")
    oh = conv_out_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
    ow = conv_out_size(wd, kw, strides[1], pads[1], pads[3], dilations[1])
    if oh <= 0 or ow <= 0:
        fail(f"kernel {kh}x{kw} does not fit input {h}x{wd} with pads {pads}")
    return TensorType((n, o, oh, ow), x.dtype)


def windows(x, kernel, strides, pads, dilations, fill=0.0, ceil=False):
    """Sliding windows of an (N, C, *spatial) array as a view (N, C, *out, *kernel), padded with `fill`; `pads`
    is (begins..., ends...) in ONNX order."""
    nd = len(kernel)
    size = x.shape[2:]
    out = [conv_out_size(size[i], kernel[i], strides[i], pads[i], pads[nd + i], dilations[i], ceil)
           for i in range(nd)]
    # extra padding at the end so that every window (ceil mode too) lies inside the array
    extra = [max(0, (out[i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - (size[i] + pads[i] + pads[nd + i]))
             for i in range(nd)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i] + extra[i]) for i in range(nd)], constant_values=fill)
    spans = tuple(dilations[i] * (kernel[i] - 1) + 1 for i in range(nd))
    win = sliding_window_view(xp, spans, axis=tuple(range(2, 2 + nd)))
    all2 = (slice(None),) * 2
    win = win[all2 + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)]
    return win[all2 + tuple(slice(0, o) for o in out)]


def windows2d(x, kernel, strides, pads, dilations, fill=0.0, ceil=False):
    """Sliding windows of an NCHW array as a view (N, C, OH, OW, KH, KW), padded with `fill`."""
    return windows(x, kernel, strides, pads, dilations, fill, ceil)


def _conv2d_ref(x, w, b=None, *, strides, pads, dilations, groups):
    o, cg, kh, kw = w.shape
    win = windows2d(x, (kh, kw), strides, pads, dilations)  # N, C, OH, OW, KH, KW
    n, c, oh, ow = win.shape[:4]
    og = o // groups
    out = np.empty((n, o, oh, ow), x.dtype)
    if groups == c and cg == 1 and og == 1:  # depthwise
        out[:] = np.einsum("ncpqhw,chw->ncpq", win, w[:, 0], optimize=True)
    else:
        for g in range(groups):
            out[:, g * og:(g + 1) * og] = np.tensordot(
                win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def _conv2d_lower(x, w, b=None, *, strides, pads, dilations, groups):
    c, o = x.shape[1], w.shape[0]
    if groups == 1:
        y = topi.nn.conv2d_nchw(x, w, strides, pads, dilations)
    elif groups == c and groups == o:
        y = topi.nn.depthwise_conv2d_nchw(x, topi.reshape(w, (c, 1, w.shape[2], w.shape[3])), strides, pads,
                                          dilations)
    else:
        y = topi.nn.group_conv2d_nchw(x, w, strides, pads, dilations, groups)
    if b is not None:
        y = topi.add(y, topi.reshape(b, (1, o, 1, 1)))
    return y


def conv2d_flops(n) -> int:
    """2 per multiply-add. The weight is OIHW, or packed (OC/b, IC/g, KH, KW, b): KH, KW are dims 2 and 3 either way
    (conv2d_packed counts the same)."""
    batch, oc, oh, ow = n.outputs[0].type.shape
    cin, (kh, kw) = n.inputs[0].type.shape[1], n.inputs[1].type.shape[2:4]
    return 2 * batch * oc * oh * ow * (cin // n.attrs["groups"]) * kh * kw


WGRAD_COLUMN_BLOCK = 16  # the weight gradient's columns (C*KH*KW) are padded to a multiple of this, when
WGRAD_PAD_MIN_ROWS = 4096  # its reduction (N*OH*OW rows) is at least this long


def _conv2d_grad(e, n, dy):
    """Ungrouped convs differentiate into the forward's own kernels: dx of a stride-1 conv is a conv of dy with the
    flipped, channel-swapped weight; dw is a matrix product with the input's windows (im2col). Other convs use the
    gather-form backward ops."""
    x, w = n.inputs[:2]
    conv = {k: n.attrs[k] for k in ("strides", "pads", "dilations", "groups")}
    ungrouped = conv["groups"] == 1
    dx = _conv2d_input_grad(e, x, w, dy, conv) if ungrouped else None
    if dx is None:
        dx = e.op(ops.conv2d_backward_data, [dy, w], input_shape=x.type.shape, **conv)
    if ungrouped:
        o = w.type.shape[0]
        dy_rows = e.op(ops.reshape, [e.op(ops.transpose, [dy], perm=(1, 0, 2, 3))], shape=(o, dy.type.numel // o))
        cols = e.op(ops.im2col, [x], kernel=w.type.shape[2:], strides=conv["strides"], pads=conv["pads"],
                    dilations=conv["dilations"])
        rows, r = cols.type.shape
        r_pad = -(-r // WGRAD_COLUMN_BLOCK) * WGRAD_COLUMN_BLOCK
        if r != r_pad and rows >= WGRAD_PAD_MIN_ROWS and o % WGRAD_COLUMN_BLOCK == 0:
            # C*KH*KW not a multiple of a register tile's width but O is: dW transposed, (R, O) = cols.T @ dy in
            # NHWC rows, O the vector columns (ResNet-50's 7x7 stem, 147 x 64 at batch 2: 31.7 -> 17.8 ms; padding
            # the columns fused the pad into im2col, whose schedule then fell to the generic one: 20 ms of it)
            dy_nhwc = e.op(ops.reshape, [e.op(ops.transpose, [dy], perm=(0, 2, 3, 1))], shape=(rows, o))
            dw_t = e.op(ops.weight_grad_gemm, [cols, dy_nhwc], shape=(r, o), transpose_rows=True)
            dw = e.op(ops.reshape, [e.op(ops.transpose, [dw_t], perm=(1, 0))], shape=w.type.shape)
        elif r != r_pad and rows >= WGRAD_PAD_MIN_ROWS:
            # columns padded to whole register tiles: the product runs on the blocked weight-gradient kernel (a
            # partial tile left ResNet-50's 7x7 stem, 147 columns x 25088 rows per image, on the generic loop nest:
            # 58 ms per image; the padding costs one pass over the columns)
            cols = e.op(ops.pad, [cols], pads=(0, 0, 0, r_pad - r), value=0.0)
            dw = e.op(ops.weight_grad_gemm, [dy_rows, cols], shape=(o, r_pad))
            dw = e.op(ops.strided_slice, [dw], begins=(0, 0), ends=(o, r), strides=(1, 1))
            dw = e.op(ops.reshape, [dw], shape=w.type.shape)
        else:
            dw = e.op(ops.weight_grad_gemm, [dy_rows, cols], shape=w.type.shape)
    else:
        dw = e.op(ops.conv2d_backward_weight, [dy, x], kernel_shape=w.type.shape, **conv)
    db = [e.op(ops.reduce_sum, [dy], axes=(0, 2, 3), keepdims=False)] if len(n.inputs) == 3 else []
    return [dx, dw] + db


def _conv2d_input_grad(e, x, w, dy, conv):
    """dx = conv2d(dy', flip(w)), stride 1, where dy' is dy with stride - 1 zeros between its pixels (dy itself for
    stride 1), padded by dilation * (k - 1) - pad before and what makes dx x's size after; None when a pad would be
    negative (a pad exceeding the window: the gather form handles it). A strided, undilated conv takes the sub-pixel
    split first (_strided_input_grad: no zeros multiplied); the spread form is left for the rest, where it runs on the
    forward's register-tiled kernel, ~20x faster than the gather form (ResNet-50's stride-2 convs, measured)."""
    n, o = dy.type.shape[:2]
    h, wd = x.type.shape[2:]
    kh, kw = w.type.shape[2:]
    (sh, sw), (dh, dw_), (pt, pl, pb, pr) = conv["strides"], conv["dilations"], conv["pads"]
    if (sh, sw) != (1, 1) and (dh, dw_) == (1, 1):
        dx = _strided_input_grad(e, x, w, dy, conv)
        if dx is not None:
            return dx
    if (sh, sw) != (1, 1):
        dy = _spread(e, dy, sh, sw)
    spread_h, spread_w = dy.type.shape[2:]
    pads = (dh * (kh - 1) - pt, dw_ * (kw - 1) - pl, h + pt - spread_h, wd + pl - spread_w)
    if min(pads[2:]) < 0 and -pads[2] < sh and -pads[3] < sw:  # rows of the zeros spread after the last pixel
        cut_h, cut_w = spread_h + min(pads[2], 0), spread_w + min(pads[3], 0)
        dy = e.op(ops.strided_slice, [dy], begins=(0, 0, 0, 0), ends=(n, o, cut_h, cut_w), strides=(1, 1, 1, 1))
        pads = pads[:2] + (max(pads[2], 0), max(pads[3], 0))
    if min(pads) < 0:
        return None
    dx = e.op(ops.conv2d, [dy, e.op(ops.conv2d_weight_flip, [w])], strides=(1, 1), pads=pads,
              dilations=conv["dilations"], groups=1)
    return dx if dx.type == x.type else None


def _spread(e, t, sh: int, sw: int):
    """(N, C, H, W) -> (N, C, H*sh, W*sw) with t's pixels sh and sw apart, zeros between: (N, C, H, 1, W, 1) padded
    to (N, C, H, sh, W, sw)."""
    n, c, h, w = t.type.shape
    t = e.op(ops.reshape, [t], shape=(n, c, h, 1, w, 1))
    t = e.op(ops.pad, [t], pads=(0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1), value=0.0)
    return e.op(ops.reshape, [t], shape=(n, c, h * sh, w * sw))


def _phase_taps(r: int, k: int, s: int, p: int, out: int, n: int) -> tuple[int, int, int, int] | None:
    """Along one axis of a stride-`s` conv (kernel k, pad before p, input n, output `out`): the input positions
    r, r + s, ... get their gradient from the taps k0, k0 + s, ... alone, as a stride-1 correlation of dy with those
    taps reversed. Returns (first tap of the flipped kernel, taps, dy's pad before, dy's pad after: negative crops),
    None where no tap reaches the phase."""
    k0 = (r + p) % s
    taps = len(range(k0, k, s))
    if taps == 0:
        return None
    c = (r + p - k0) // s  # dx[r + s*i] = sum_m dy[i + c - m] * w[k0 + s*m]
    before = taps - 1 - c
    after = len(range(r, n, s)) - out - before + taps - 1
    return k - 1 - k0 - s * (taps - 1), taps, before, after


def _strided_input_grad(e, x, w, dy, conv):
    """dx of a stride-s conv as s*s stride-1 convs of dy, one per phase of dx's pixels (a sub-pixel split), each
    with the kernel taps that reach it, interleaved: the zeros-spread form's multiply-adds over 4 (stride 2) without
    its zeros. A 1x1 kernel without pads gives one phase: its conv output spread with zeros. None where some phase has
    no taps otherwise (a kernel smaller than its stride)."""
    n, o, oh, ow = dy.type.shape
    c, (h, wd), (kh, kw) = x.type.shape[1], x.type.shape[2:], w.type.shape[2:]
    (sh, sw), (pt, pl) = conv["strides"], conv["pads"][:2]
    flipped = e.op(ops.conv2d_weight_flip, [w])
    if (kh, kw) == (1, 1) and (pt, pl) == (0, 0):
        small = e.op(ops.conv2d, [dy, flipped], strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
        return e.op(ops.pad, [_spread(e, small, sh, sw)], pads=(0, 0, 0, 0, 0, 0, h - oh * sh, wd - ow * sw),
                    value=0.0)
    rows = [_phase_taps(r, kh, sh, pt, oh, h) for r in range(sh)]
    cols = [_phase_taps(r, kw, sw, pl, ow, wd) for r in range(sw)]
    if None in rows or None in cols:
        return None
    hc, wc = -(-h // sh), -(-wd // sw)  # every phase padded to these, interleaved, then cut to (h, wd)
    bands = []
    for y0, ny, yb, ya in rows:
        band = []
        for x0, nx, xb, xa in cols:
            k = e.op(ops.strided_slice, [flipped], begins=(0, 0, y0, x0), ends=(c, o, y0 + sh * (ny - 1) + 1,
                                                                                 x0 + sw * (nx - 1) + 1),
                     strides=(1, 1, sh, sw))
            src = dy
            if min(yb, ya, xb, xa) < 0:  # a negative pad: those rows or columns of dy reach no pixel of the phase
                src = e.op(ops.pad, [dy], pads=(0, 0, min(yb, 0), min(xb, 0), 0, 0, min(ya, 0), min(xa, 0)),
                           value=0.0)
            phase = e.op(ops.conv2d, [src, k], strides=(1, 1), pads=(max(yb, 0), max(xb, 0), max(ya, 0),
                                                                     max(xa, 0)), dilations=(1, 1), groups=1)
            ph, pw = phase.type.shape[2:]
            if (ph, pw) != (hc, wc):
                phase = e.op(ops.pad, [phase], pads=(0, 0, 0, 0, 0, 0, hc - ph, wc - pw), value=0.0)
            band.append(e.op(ops.reshape, [phase], shape=(n, c, hc, 1, wc, 1)))
        bands.append(e.op(ops.concat, band, axis=5) if sw > 1 else band[0])
    dx = e.op(ops.concat, bands, axis=3) if sh > 1 else bands[0]
    dx = e.op(ops.reshape, [dx], shape=(n, c, hc * sh, wc * sw))
    if (hc * sh, wc * sw) != (h, wd):
        dx = e.op(ops.pad, [dx], pads=(0, 0, 0, 0, 0, 0, h - hc * sh, wd - wc * sw), value=0.0)
    return dx if dx.type == x.type else None


conv2d = defop("conv2d", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv2d_infer, attrs=CONV_ATTRS, arity=(2, 3),
               reference=_conv2d_ref, lower=_conv2d_lower, grad=_conv2d_grad, flops=conv2d_flops,
               half_operands=(0, 1), per_sample=first_input_per_sample,
               doc="2-D convolution, NCHW input, OIHW weight, optional bias (O,).")


def _conv3d_infer(types, *, strides, pads, dilations, groups):
    x, w = types[0], types[1]
    if x.rank != 5 or w.rank != 5:
        fail(f"expects NCDHW input and OIDHW weight, got {x} and {w}")
    if x.dtype != w.dtype:
        fail(f"input {x} and weight {w} differ in dtype")
    if len(strides) != 3 or len(dilations) != 3 or len(pads) != 6:
        fail(f"strides {strides} and dilations {dilations} need 3 values, pads {pads} 6")
    c, o, cg = x.shape[1], w.shape[0], w.shape[1]
    if groups < 1 or c % groups or o % groups or cg != c // groups:
        fail(f"input channels {c}, weight {w} and groups={groups} are inconsistent "
             f"(weight dim 1 must be {c}/groups)")
    if len(types) == 3 and types[2].shape != (o,):
        fail(f"bias must have shape ({o},), got {types[2]}")
    out = [conv_out_size(x.shape[2 + i], w.shape[2 + i], strides[i], pads[i], pads[3 + i], dilations[i])
           for i in range(3)]
    if min(out) <= 0:
        fail(f"kernel {w.shape[2:]} does not fit input {x.shape[2:]} with pads {pads}")
    return TensorType((x.shape[0], o, *out), x.dtype)


def _conv3d_ref(x, w, b=None, *, strides, pads, dilations, groups):
    o, cg = w.shape[:2]
    win = windows(x, w.shape[2:], strides, pads, dilations)  # N, C, OD, OH, OW, KD, KH, KW
    og = o // groups
    out = np.empty((x.shape[0], o) + win.shape[2:5], x.dtype)
    for g in range(groups):
        out[:, g * og:(g + 1) * og] = np.tensordot(win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og],
                                                   axes=([1, 5, 6, 7], [1, 2, 3, 4])).transpose(0, 4, 1, 2, 3)
    if b is not None:
        out += b.reshape(1, -1, 1, 1, 1)
    return out


def _conv3d_lower(x, w, b=None, *, strides, pads, dilations, groups):
    y = topi.nn.conv3d_ncdhw(x, w, strides, pads, dilations, groups)
    return y if b is None else topi.add(y, topi.reshape(b, (w.shape[0], 1, 1, 1)))


conv3d = defop("conv3d", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv3d_infer, arity=(2, 3),
               attrs={"strides": Attr("ints", (1, 1, 1)), "pads": Attr("ints", (0,) * 6),
                      "dilations": Attr("ints", (1, 1, 1)), "groups": Attr("int", 1)},
               reference=_conv3d_ref, lower=_conv3d_lower, grad=NO_RULE_YET,
               doc="3-D convolution, NCDHW input, OIDHW weight, optional bias (O,); pads (begins..., ends...).")


def _dense_infer(types):
    x, w = types[0], types[1]
    if x.rank != 2 or w.rank != 2 or x.shape[1] != w.shape[1]:
        fail(f"expects x (M, K) and weight (N, K), got {x} and {w}")
    if len(types) == 3 and types[2].shape != (w.shape[0],):
        fail(f"bias must have shape ({w.shape[0]},), got {types[2]}")
    return TensorType((x.shape[0], w.shape[0]), x.dtype)


def _dense_ref(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def gemm_flops(n) -> int:
    """dense and matmul: 2 per multiply-add over the inner dimension (dense_packed counts the same)."""
    return 2 * n.outputs[0].type.numel * n.inputs[0].type.shape[-1]


def _dense_grad(e, n, dy):
    x, w = n.inputs[:2]
    # dx = dy (M, N) @ w (N, K), as a dense on w's transpose: on the CPU it becomes a dense_packed on a weight
    # packed at run time (contiguous k panels), where a matmul read w's rows 4 KB apart for a 1024-wide layer
    # (Transformer training step, 2 threads: data gradients 37.7 -> 32.4 ms)
    dx = e.op(ops.dense, [dy, e.op(ops.transpose, [w], perm=(1, 0))])
    dw = e.op(ops.weight_grad_gemm, [dy, x], shape=w.type.shape, transpose_rows=True)  # dy.T (N, M) @ x (M, K)
    db = [e.op(ops.reduce_sum, [dy], axes=(0,), keepdims=False)] if len(n.inputs) == 3 else []
    return [dx, dw] + db


dense = defop("dense", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_dense_infer, arity=(2, 3), reference=_dense_ref,
              lower=lambda x, w, b=None: topi.nn.dense(x, w, b), grad=_dense_grad, flops=gemm_flops,
              half_operands=(0, 1), per_sample=first_input_per_sample,
              doc="y = x @ w.T + b, with x (M, K), w (N, K) as stored by Linear and Gemm(transB=1).")


def _matmul_infer(types):
    a, b = types
    if a.rank < 1 or b.rank < 1 or a.dtype != b.dtype:
        fail(f"cannot multiply {a} and {b}")
    ash = a.shape if a.rank > 1 else (1,) + a.shape
    bsh = b.shape if b.rank > 1 else b.shape + (1,)
    if ash[-1] != bsh[-2]:
        fail(f"inner dimensions differ: {a} @ {b}")
    try:
        batch = np.broadcast_shapes(ash[:-2], bsh[:-2])
    except ValueError:
        fail(f"batch dimensions of {a} and {b} do not broadcast")
    shape = tuple(batch) + ((ash[-2],) if a.rank > 1 else ()) + ((bsh[-1],) if b.rank > 1 else ())
    return TensorType(shape, a.dtype)


def _matmul_lower(a, b):
    """numpy matmul semantics: 1-D operands promoted, batch dims broadcast."""
    ar, br = len(a.shape), len(b.shape)
    out_shape = [int(d) for d in _matmul_infer([TensorType([int(d) for d in a.shape], str(a.dtype)),
                                                TensorType([int(d) for d in b.shape], str(b.dtype))]).shape]
    k = te.reduce_axis((0, a.shape[-1]), name="k")

    def index(t, rank, batch, row, col):
        bi = [0 if t.shape[i] == 1 else batch[len(batch) - (rank - 2) + i] for i in range(rank - 2)]
        return t(*bi, *row, *col)

    def f(*idx):
        nb = len(out_shape) - (ar > 1) - (br > 1)
        batch = idx[:nb]
        i = idx[nb:nb + 1] if ar > 1 else ()
        j = idx[nb + (ar > 1):] if br > 1 else ()
        av = index(a, ar, batch, i, (k,)) if ar > 1 else a[k]
        bv = index(b, br, batch, (k,), j) if br > 1 else b[k]
        return te.sum(av * bv, axis=k)

    return te.compute(out_shape, f, name=MATMUL)


def _swap_last(e, v):
    r = v.type.rank
    return e.op(ops.transpose, [v], perm=tuple(range(r - 2)) + (r - 1, r - 2))


def _matmul_grad(e, n, dy):
    a, b = n.inputs
    if a.type.rank < 2 or b.type.rank < 2:
        raise AutodiffError(f"gradient of matmul (node {n.name or '?'}) with a 1-D operand is not supported")
    da = e.op(ops.matmul, [dy, _swap_last(e, b)])
    db = e.op(ops.matmul, [_swap_last(e, a), dy])
    return [e.sum_to(da, a.type.shape), e.sum_to(db, b.type.shape)]


def _matmul_per_sample(n, carries) -> bool:
    """A batched matmul per leading index: every carrying operand has the output's rank (a 2-D one, rows)."""
    rank = n.outputs[0].type.rank
    return broadcast_per_sample(n, carries) if rank > 2 else bool(carries[0]) and not carries[1]


matmul = defop("matmul", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_matmul_infer, arity=(2, 2),
               reference=lambda a, b: np.matmul(a, b), lower=_matmul_lower, prologue=True, grad=_matmul_grad,
               flops=gemm_flops, half_operands=(0, 1), per_sample=_matmul_per_sample,
               doc="numpy.matmul semantics. Its kernel may read its operands through transposes and reshapes.")


POOL_ATTRS = {
    "kernel": Attr("ints"),
    "strides": Attr("ints", (1, 1)),
    "pads": Attr("ints", (0, 0, 0, 0)),  # begins..., ends... (ONNX order)
    "dilations": Attr("ints", (1, 1)),
    "ceil_mode": Attr("bool", False),
}
POOL3D_ATTRS = {**POOL_ATTRS, "strides": Attr("ints", (1, 1, 1)), "pads": Attr("ints", (0,) * 6),
                "dilations": Attr("ints", (1, 1, 1))}
_LAYOUTS = {2: "NCHW", 3: "NCDHW"}


def _pool_out_shape(shape, kernel, strides, pads, dilations, ceil_mode):
    nd = len(kernel)
    return tuple(conv_out_size(shape[2 + i], kernel[i], strides[i], pads[i], pads[nd + i], dilations[i], ceil_mode)
                 for i in range(nd))


def _pool_infer(nd):
    """The type rule of an `nd`-D pooling op: (N, C, *spatial) in, (N, C, *out) out."""

    def infer(types, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad=False):
        (x,) = types
        if x.rank != nd + 2:
            fail(f"expects an {_LAYOUTS[nd]} input, got {x}")
        if (len(kernel), len(strides), len(dilations), len(pads)) != (nd, nd, nd, 2 * nd):
            fail(f"kernel {kernel}, strides {strides} and dilations {dilations} need {nd} values, pads {pads} "
                 f"{2 * nd}")
        out = _pool_out_shape(x.shape, kernel, strides, pads, dilations, ceil_mode)
        if min(out) <= 0:
            fail(f"window {kernel} does not fit input {x}")
        return TensorType(x.shape[:2] + out, x.dtype)

    return infer


def _kernel_axes(kernel):
    return tuple(range(-len(kernel), 0))


def _max_pool_ref(x, *, kernel, strides, pads, dilations, ceil_mode):
    return windows(x, kernel, strides, pads, dilations, fill=-np.inf, ceil=ceil_mode).max(axis=_kernel_axes(kernel))


def _avg_pool_ref(x, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad):
    axes = _kernel_axes(kernel)
    total = windows(x, kernel, strides, pads, dilations, ceil=ceil_mode).sum(axis=axes, dtype=np.float64)
    # the divisor counts the window's cells inside the input (or inside the padded input): pool a map of ones
    nd = len(kernel)
    ones = np.ones((1, 1) + x.shape[2:])
    if count_include_pad:
        ones = np.pad(ones, [(0, 0), (0, 0)] + [(pads[i], pads[nd + i]) for i in range(nd)], constant_values=1.0)
        pads = (0,) * (2 * nd)
    count = windows(ones, kernel, strides, pads, dilations, ceil=ceil_mode).sum(axis=axes)
    return (total / count).astype(x.dtype)


def _pool_lower(pool_type):
    def lower(x, *, kernel, strides, pads, dilations, ceil_mode, count_include_pad=False):
        pool = topi.nn.pool2d if len(kernel) == 2 else topi.nn.pool3d
        return pool(x, kernel, strides, dilations, pads, pool_type, ceil_mode, _LAYOUTS[len(kernel)],
                    count_include_pad)

    return lower


def _max_pool_grad(e, n, dy):
    return [e.op(ops.max_pool2d_grad, [n.inputs[0], n.outputs[0], dy], **n.attrs)]


def _avg_pool_grad(e, n, dy):
    return [e.op(ops.avg_pool2d_grad, [n.inputs[0], dy], **n.attrs)]


max_pool2d = defop("max_pool2d", FusionKind.REDUCTION, infer=_pool_infer(2), attrs=POOL_ATTRS,
                   reference=_max_pool_ref, lower=_pool_lower("max"), grad=_max_pool_grad,
                   per_sample=first_input_per_sample)
avg_pool2d = defop("avg_pool2d", FusionKind.REDUCTION, infer=_pool_infer(2),
                   attrs={**POOL_ATTRS, "count_include_pad": Attr("bool", False)},
                   reference=_avg_pool_ref, lower=_pool_lower("avg"), grad=_avg_pool_grad,
                   per_sample=first_input_per_sample)
max_pool3d = defop("max_pool3d", FusionKind.REDUCTION, infer=_pool_infer(3), attrs=POOL3D_ATTRS,
                   reference=_max_pool_ref, lower=_pool_lower("max"), grad=NO_RULE_YET, doc="max_pool2d over NCDHW.")
avg_pool3d = defop("avg_pool3d", FusionKind.REDUCTION, infer=_pool_infer(3),
                   attrs={**POOL3D_ATTRS, "count_include_pad": Attr("bool", False)},
                   reference=_avg_pool_ref, lower=_pool_lower("avg"), grad=NO_RULE_YET, doc="avg_pool2d over NCDHW.")


# MaxPool's Indices: where each window's maximum is, as a flat index into the whole input (N and C included),
# row-major (storage_order 0) or with the spatial axes column-major (1); the first maximum in the window's
# row-major order wins, as in onnx's reference.
def _pool_indices_infer(types, *, storage_order, **attrs):
    x = types[0]
    nd = len(attrs["kernel"])
    if nd not in _LAYOUTS:
        fail(f"only 2-D and 3-D windows, got kernel {attrs['kernel']}")
    return TensorType(_pool_infer(nd)(types, **attrs).shape, "int64")


def _spatial_index(coords, size, storage_order):
    """Flat index of spatial coordinates inside one (n, c) plane."""
    order = range(len(size)) if storage_order == 0 else reversed(range(len(size)))
    flat = 0
    for i in order:
        flat = flat * size[i] + coords[i]
    return flat


def _max_pool_indices_ref(x, *, kernel, strides, pads, dilations, ceil_mode, storage_order):
    nd = len(kernel)
    win = windows(x, kernel, strides, pads, dilations, fill=-np.inf, ceil=ceil_mode)
    inside = windows(np.ones((1, 1) + x.shape[2:], bool), kernel, strides, pads, dilations, fill=False,
                     ceil=ceil_mode)
    out = win.shape[2:2 + nd]
    flat_win = win.reshape(win.shape[:2 + nd] + (-1,))
    best = flat_win.max(axis=-1, keepdims=True)
    pick = ((flat_win == best) & inside.reshape(inside.shape[:2 + nd] + (-1,))).argmax(axis=-1)  # first max
    k = np.unravel_index(pick, kernel)
    o = np.indices(out).reshape((1, 1, nd) + out)
    coords = [o[:, :, i] * strides[i] - pads[i] + k[i] * dilations[i] for i in range(nd)]
    plane = int(np.prod(x.shape[2:]))
    nc = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * nd)
    return (nc * plane + _spatial_index(coords, x.shape[2:], storage_order)).astype(np.int64)


def _max_pool_indices_lower(x, *, kernel, strides, pads, dilations, ceil_mode, storage_order):
    nd = len(kernel)
    size = [int(d) for d in x.shape[2:]]
    out = _pool_out_shape([int(d) for d in x.shape], kernel, strides, pads, dilations, ceil_mode)
    last = tirx.const(int(np.prod(size)), "int64")  # the key of a padded cell: after every real one

    def combine(a, b):
        take = tirx.Or(b[1] > a[1], tirx.And(b[1] == a[1], b[0] < a[0]))
        return tirx.Select(take, b[0], a[0]), tirx.Select(take, b[1], a[1])

    argmax = te.comm_reducer(combine, lambda t0, t1: (last, te.min_value(t1)), name="window_argmax")
    r = [te.reduce_axis((0, k), name=f"k{i}") for i, k in enumerate(kernel)]

    def best(n, c, *o):
        pos = [o[i] * strides[i] - pads[i] + r[i] * dilations[i] for i in range(nd)]
        inside = tirx.all(*[tirx.all(p >= 0, p < size[i]) for i, p in enumerate(pos)])
        safe = [tirx.Select(inside, p, 0) for p in pos]
        key = _spatial_index([p.astype("int64") for p in safe], size, 0)
        val = x(n, c, *safe)
        return argmax((tirx.Select(inside, key, last), tirx.Select(inside, val, te.min_value(x.dtype))), axis=r)

    key, _ = te.compute(tuple(int(d) for d in x.shape[:2]) + out, best, name="max_pool_argmax")
    c_count, plane = int(x.shape[1]), int(np.prod(size))

    def flat(n, c, *o):
        k = key(n, c, *o)
        if storage_order == 0:
            spatial = k
        else:
            coords, rest = [], k
            for d in reversed(size):
                coords.insert(0, tirx.floormod(rest, d))
                rest = tirx.floordiv(rest, d)
            spatial = _spatial_index(coords, size, 1)
        return (n.astype("int64") * c_count + c.astype("int64")) * plane + spatial

    return te.compute(key.shape, flat, name="max_pool_indices")


max_pool_indices = defop(
    "max_pool_indices", FusionKind.REDUCTION, infer=_pool_indices_infer,
    attrs={**POOL_ATTRS, "strides": Attr("ints"), "pads": Attr("ints"), "dilations": Attr("ints"),
           "storage_order": Attr("int", 0)},
    reference=_max_pool_indices_ref, lower=_max_pool_indices_lower, grad=NOT_DIFFERENTIABLE,
    doc="MaxPool's Indices output (2-D or 3-D windows): the flat int64 index of each window's first maximum in the "
        "input, row-major (storage_order=0) or with the spatial axes column-major (1).")


def _gap_infer(types):
    (x,) = types
    if x.rank < 3:
        fail(f"expects (N, C, spatial...), got {x}")
    return TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)


def _gap_lower(x):
    axes = list(range(2, len(x.shape)))
    return topi.divide(topi.sum(x, axis=axes, keepdims=True),
                       te.const(float(np.prod([int(x.shape[a]) for a in axes])), x.dtype))


def _gap_grad(e, n, dy):
    x = n.inputs[0]
    return [e.scale(e.broadcast(dy, x.type.shape), 1.0 / int(np.prod(x.type.shape[2:])))]


global_avg_pool = defop("global_avg_pool", FusionKind.REDUCTION, infer=_gap_infer,
                        reference=lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64
                                                   ).astype(x.dtype),
                        lower=_gap_lower, grad=_gap_grad, per_sample=first_input_per_sample)
