"""Neural-network ops: convolution, dense/matmul, normalization, pooling, softmax.

The heavy ops (conv2d, dense, matmul) are fusion anchors (OUT_ELEMWISE_FUSABLE). Their references are written for
speed as well as clarity (im2col views + BLAS) because the tests run whole CNNs through the reference interpreter.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, tirx, topi

from compiler.ir.types import TensorType

from .registry import NOT_DIFFERENTIABLE, Attr, FusionKind, defop, fail

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


conv2d = defop("conv2d", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_conv2d_infer, attrs=CONV_ATTRS, arity=(2, 3),
               reference=_conv2d_ref, lower=_conv2d_lower,
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
               reference=_conv3d_ref, lower=_conv3d_lower,
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


dense = defop("dense", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_dense_infer, arity=(2, 3), reference=_dense_ref,
              lower=lambda x, w, b=None: topi.nn.dense(x, w, b),
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

    return te.compute(out_shape, f, name="matmul")


matmul = defop("matmul", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_matmul_infer, arity=(2, 2),
               reference=lambda a, b: np.matmul(a, b), lower=_matmul_lower, prologue=True,
               doc="numpy.matmul semantics. Its kernel may read its operands through transposes and reshapes.")


def _bn_infer(types, *, epsilon):
    x = types[0]
    if x.rank < 2:
        fail(f"expects at least (N, C), got {x}")
    for t in types[1:]:
        if t.shape != (x.shape[1],):
            fail(f"scale/bias/mean/var must have shape ({x.shape[1]},), got {t}")
    return x


def _bn_ref(x, scale, bias, mean, var, *, epsilon):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (scale / np.sqrt(var + x.dtype.type(epsilon))).reshape(shape)
    return ((x - mean.reshape(shape)) * inv + bias.reshape(shape)).astype(x.dtype)


def _bn_lower(x, scale, bias, mean, var, *, epsilon):
    def f(*i):
        c = i[1]
        inv = scale[c] / te.sqrt(var[c] + te.const(epsilon, x.dtype))
        return (x(*i) - mean[c]) * inv + bias[c]

    return te.compute(x.shape, f, name="batch_norm")


batch_norm = defop("batch_norm", FusionKind.BROADCAST, infer=_bn_infer, attrs={"epsilon": Attr("float", 1e-5)},
                   arity=(5, 5), reference=_bn_ref, lower=_bn_lower,
                   doc="Inference batch normalization over axis 1: (x - mean) / sqrt(var + eps) * scale + bias.")

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


max_pool2d = defop("max_pool2d", FusionKind.REDUCTION, infer=_pool_infer(2), attrs=POOL_ATTRS,
                   reference=_max_pool_ref, lower=_pool_lower("max"))
avg_pool2d = defop("avg_pool2d", FusionKind.REDUCTION, infer=_pool_infer(2),
                   attrs={**POOL_ATTRS, "count_include_pad": Attr("bool", False)},
                   reference=_avg_pool_ref, lower=_pool_lower("avg"))
max_pool3d = defop("max_pool3d", FusionKind.REDUCTION, infer=_pool_infer(3), attrs=POOL3D_ATTRS,
                   reference=_max_pool_ref, lower=_pool_lower("max"), doc="max_pool2d over NCDHW.")
avg_pool3d = defop("avg_pool3d", FusionKind.REDUCTION, infer=_pool_infer(3),
                   attrs={**POOL3D_ATTRS, "count_include_pad": Attr("bool", False)},
                   reference=_avg_pool_ref, lower=_pool_lower("avg"), doc="avg_pool2d over NCDHW.")


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


global_avg_pool = defop("global_avg_pool", FusionKind.REDUCTION, infer=_gap_infer,
                        reference=lambda x: x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=np.float64
                                                   ).astype(x.dtype),
                        lower=_gap_lower)


def _lrn_ref(x, *, size, alpha, beta, bias):
    sq = (x.astype(np.float64)) ** 2
    c = x.shape[1]
    padded = np.pad(sq, [(0, 0), ((size - 1) // 2, size // 2)] + [(0, 0)] * (x.ndim - 2))
    s = sum(padded[:, i:i + c] for i in range(size))
    return (x / (bias + alpha / size * s) ** beta).astype(x.dtype)


lrn = defop("lrn", FusionKind.REDUCTION, infer=lambda types, **_: types[0],
            attrs={"size": Attr("int"), "alpha": Attr("float", 1e-4), "beta": Attr("float", 0.75),
                   "bias": Attr("float", 1.0)},
            reference=_lrn_ref,
            lower=lambda x, *, size, alpha, beta, bias: topi.nn.lrn(x, size, 1, alpha, beta, bias),
            doc="Local response normalization across channels (axis 1), ONNX semantics.")


def _softmax_infer(types, *, axis):
    (x,) = types
    if not 0 <= axis < x.rank:
        fail(f"axis {axis} out of range for {x}")
    return x


def _softmax_ref(x, *, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


softmax = defop("softmax", FusionKind.REDUCTION, infer=_softmax_infer, attrs={"axis": Attr("int")},
                reference=_softmax_ref, lower=lambda x, *, axis: (topi.nn.fast_softmax(x, axis) if x.dtype == "float32"
                                                                  else topi.nn.softmax(x, axis)))
# float32 softmax exponentiates with topi.fast_exp (vectorizable, ~1e-7 relative); te.exp is a scalar libm call


def _layer_norm_infer(types, *, axis, epsilon):
    x = types[0]
    if not 0 <= axis < x.rank:
        fail(f"axis {axis} out of range for {x}")
    for t in types[1:]:
        if t.shape != x.shape[axis:] or t.dtype != x.dtype:
            fail(f"scale and bias must be {x.dtype}{list(x.shape[axis:])} (the normalized axes), got {t}")
    return x


def _layer_norm_ref(x, scale, bias=None, *, axis, epsilon):
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + epsilon) * scale
    return (y if bias is None else y + bias).astype(x.dtype)


def _layer_norm_lower(x, scale, bias=None, *, axis, epsilon):
    """Two passes over each row (sum, then sum of squared deviations): fp32 stays accurate where E[x^2] - E[x]^2
    would cancel. The normalizing epilogue reads the two row sums; constants are Python floats (te.const(0.5)
    without a dtype is float64 and promotes)."""
    outer = x.shape[:axis]
    inv_n = 1.0 / float(np.prod([int(d) for d in x.shape[axis:]]))

    def reduce_axes():
        return [te.reduce_axis((0, d), name=f"r{i}") for i, d in enumerate(x.shape[axis:])]

    r1 = reduce_axes()
    row_sum = te.compute(outer, lambda *i: te.sum(x(*i, *r1), axis=r1), name="layer_norm_sum")
    r2 = reduce_axes()

    def sq_dev(*i):
        d = x(*i, *r2) - row_sum(*i) * inv_n
        return te.sum(d * d, axis=r2)

    row_sq = te.compute(outer, sq_dev, name="layer_norm_sqdev")

    def normalize(*i):
        o, inner = i[:axis], i[axis:]
        y = (x(*i) - row_sum(*o) * inv_n) * te.rsqrt(row_sq(*o) * inv_n + epsilon) * scale(*inner)
        return y if bias is None else y + bias(*inner)

    return te.compute(x.shape, normalize, name="layer_norm")


layer_norm = defop("layer_norm", FusionKind.REDUCTION, infer=_layer_norm_infer,
                   attrs={"axis": Attr("int"), "epsilon": Attr("float", 1e-5)}, arity=(2, 3),
                   reference=_layer_norm_ref, lower=_layer_norm_lower,
                   doc="(x - mean) / sqrt(var + epsilon) * scale + bias over axes axis..rank-1 (biased variance).")


def _log_softmax_ref(x, *, axis):
    x64 = x.astype(np.float64)
    m = x64.max(axis=axis, keepdims=True)
    return (x64 - m - np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True))).astype(x.dtype)


log_softmax = defop("log_softmax", FusionKind.REDUCTION, infer=_softmax_infer, attrs={"axis": Attr("int")},
                    reference=_log_softmax_ref, lower=lambda x, *, axis: topi.nn.log_softmax(x, axis))


def _einsum_parse(equation, types):
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(types) or "." in equation:
        fail(f"equation {equation!r} does not fit {len(types)} inputs (ellipses are not supported)")
    sizes = {}
    for term, t in zip(terms, types):
        if len(term) != t.rank:
            fail(f"term {term!r} does not match {t}")
        for ch, d in zip(term, t.shape):
            if sizes.setdefault(ch, d) != d:
                fail(f"index {ch!r} has sizes {sizes[ch]} and {d}")
    if not _:  # implicit output: the indices that appear once, sorted
        rhs = "".join(sorted(ch for ch in sizes if lhs.count(ch) == 1))
    return terms, rhs, sizes


def _einsum_infer(types, *, equation):
    if len({t.dtype for t in types}) != 1:
        fail("operands have different dtypes")
    _, rhs, sizes = _einsum_parse(equation, types)
    return TensorType([sizes[ch] for ch in rhs], types[0].dtype)


def _einsum_lower(*xs, equation):
    types = [TensorType([int(d) for d in x.shape], str(x.dtype)) for x in xs]
    terms, rhs, sizes = _einsum_parse(equation, types)
    summed = [ch for ch in sizes if ch not in rhs]
    raxes = {ch: te.reduce_axis((0, sizes[ch]), name=f"r{ch}") for ch in summed}

    def f(*out):
        env = dict(zip(rhs, out), **raxes)
        prod = None
        for term, x in zip(terms, xs):
            v = x(*[env[ch] for ch in term])
            prod = v if prod is None else prod * v
        return te.sum(prod, axis=list(raxes.values())) if raxes else prod

    return te.compute([sizes[ch] for ch in rhs], f, name="einsum")


einsum = defop("einsum", FusionKind.OUT_ELEMWISE_FUSABLE, infer=_einsum_infer, attrs={"equation": Attr("str")},
               arity=(1, -1), reference=lambda *xs, equation: np.asarray(np.einsum(equation, *xs)).astype(xs[0].dtype),
               lower=_einsum_lower, doc="numpy.einsum without ellipses: one te.compute, summing the absent indices.")


def _topk_infer(types, *, k, axis, largest):
    (x,) = types
    if not 0 <= axis < x.rank or not 0 <= k <= x.shape[axis]:
        fail(f"k={k}, axis={axis} do not fit {x}")
    shape = tuple(k if i == axis else d for i, d in enumerate(x.shape))
    return [TensorType(shape, x.dtype), TensorType(shape, "int64")]


def _topk_ref(x, *, k, axis, largest):
    n = x.shape[axis]
    if largest:  # descending, equal values keep the lower index first: a stable sort of the reversed axis
        idx = np.flip(n - 1 - np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        idx = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(idx, np.arange(k), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)


topk = defop("topk", FusionKind.OPAQUE, infer=_topk_infer,
             attrs={"k": Attr("int"), "axis": Attr("int"), "largest": Attr("bool", True)},
             reference=_topk_ref,
             lower=lambda x, *, k, axis, largest: tuple(topi.topk(x, k, axis, "both", not largest, "int64")),
             doc="The k largest (or smallest) values along `axis` and their int64 indices, ties by lower index.")
