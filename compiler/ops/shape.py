"""Shape and data-movement ops: reshape, transpose, concat, pad, take, and their gradient rules (adjoint movements)."""

from __future__ import annotations

from math import prod

import numpy as np
from tvm import te, topi

from tensorforge.runtime.errors import AutodiffError

from tensorforge.compiler.ir.types import TensorType, kernel_dtype, numpy_dtype

from .registry import NOT_DIFFERENTIABLE, NO_RULE_YET, Attr, FusionKind, defop, fail, first_input_per_sample, ops


def _x(n):
    return n.inputs[0]


def _reshape_infer(types, *, shape):
    (t,) = types
    if prod(shape) != t.numel:
        fail(f"cannot reshape {t} ({t.numel} elements) to {shape} ({prod(shape)} elements)")
    return TensorType(shape, t.dtype)


# Reshape of a contiguous tensor is a view: the runtime aliases the buffer and runs no kernel.
reshape = defop("reshape", FusionKind.INJECTIVE, infer=_reshape_infer, attrs={"shape": Attr("ints")},
                reference=lambda x, *, shape: x.reshape(shape),
                lower=lambda x, *, shape: topi.reshape(x, shape), is_view=True,
                # the flat order is kept: samples stay whole blocks when axis 0 stays a multiple of the batch, which
                # compiler/batch_loop.py checks of every value
                per_sample=first_input_per_sample,
                grad=lambda e, n, dy: [e.op(ops.reshape, [dy], shape=_x(n).type.shape)])


def _bitcast_infer(types, *, to):
    (t,) = types
    out = TensorType(t.shape, to)
    if out.itemsize != t.itemsize or "bool" in (t.dtype, out.dtype):
        fail(f"cannot reinterpret {t} as {to}: the element sizes differ (or one is bool)")
    return out


def _bitcast_lower(x, *, to):
    from tvm import tirx

    if kernel_dtype(to) == x.dtype:  # a storage-only type and its uint8 bytes: the same thing to a kernel
        return te.compute(x.shape, lambda *i: x(*i), name="bitcast")
    return te.compute(x.shape, lambda *i: tirx.reinterpret(kernel_dtype(to), x(*i)), name="bitcast")


# The same bytes as another type of the same size (float8 <-> its uint8 bit patterns): a view, no kernel.
bitcast = defop("bitcast", FusionKind.INJECTIVE, infer=_bitcast_infer, attrs={"to": Attr("str")},
                reference=lambda x, *, to: np.ascontiguousarray(x).view(numpy_dtype(to)),
                lower=_bitcast_lower, grad=NOT_DIFFERENTIABLE, is_view=True)


def _transpose_infer(types, *, perm):
    (t,) = types
    if sorted(perm) != list(range(t.rank)):
        fail(f"perm {perm} is not a permutation of the {t.rank} axes of {t}")
    return TensorType(tuple(t.shape[p] for p in perm), t.dtype)


transpose = defop("transpose", FusionKind.INJECTIVE, infer=_transpose_infer, attrs={"perm": Attr("ints")},
                  reference=lambda x, *, perm: np.asarray(np.transpose(x, perm), order="C"),
                  lower=lambda x, *, perm: topi.transpose(x, perm), movement=True,
                  per_sample=lambda n, carries: first_input_per_sample(n, carries) and n.attrs["perm"][0] == 0,
                  grad=lambda e, n, dy: [e.op(ops.transpose, [dy], perm=tuple(np.argsort(n.attrs["perm"])))])


def _concat_infer(types, *, axis):
    first = types[0]
    if not 0 <= axis < first.rank:
        fail(f"axis {axis} out of range for rank {first.rank}")
    for t in types[1:]:
        if t.dtype != first.dtype or t.rank != first.rank or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis):
            fail(f"inputs {', '.join(map(str, types))} differ outside axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(shape, first.dtype)


def _concat_grad(e, n, dy):
    axis, start, out = n.attrs["axis"], 0, []
    for v in n.inputs:
        size = v.type.shape[axis]
        begins, ends = [0] * v.type.rank, list(dy.type.shape)
        begins[axis], ends[axis] = start, start + size
        out.append(e.op(ops.strided_slice, [dy], begins=tuple(begins), ends=tuple(ends), strides=(1,) * v.type.rank))
        start += size
    return out


concat = defop("concat", FusionKind.INJECTIVE, infer=_concat_infer, attrs={"axis": Attr("int")}, arity=(1, -1),
               reference=lambda *xs, axis: np.concatenate(xs, axis=axis),
               lower=lambda *xs, axis: topi.concatenate(xs, axis), grad=_concat_grad,
               per_sample=lambda n, carries: all(carries) and n.attrs["axis"] != 0)


PAD_MODES = ("constant", "edge", "reflect", "wrap")  # ONNX's (numpy's) pad modes


def _pad_infer(types, *, pads, value, mode):
    (t,) = types
    if len(pads) != 2 * t.rank:
        fail(f"pads {pads} must have 2*rank = {2 * t.rank} entries (all begins, then all ends)")
    if mode not in PAD_MODES:
        fail(f"unknown pad mode {mode!r}; one of {', '.join(PAD_MODES)}")
    if mode != "constant":
        for a, n in enumerate(t.shape):
            lo, hi = pads[a], pads[a + t.rank]
            if lo < 0 or hi < 0:
                fail(f"negative pads crop, which only mode 'constant' does; got {list(pads)}")
            if (lo or hi) and n == 0:
                fail(f"cannot pad axis {a} of size 0 in mode {mode!r}")
            if mode == "reflect" and (lo >= n or hi >= n):
                fail(f"reflect pads {lo}, {hi} of axis {a} must be smaller than its size {n}")
    return TensorType([d + pads[i] + pads[i + t.rank] for i, d in enumerate(t.shape)], t.dtype)


def _pad_ref(x, *, pads, value, mode):
    r = x.ndim
    if any(p < 0 for p in pads):  # negative pads crop
        x = x[tuple(slice(max(-pads[i], 0), x.shape[i] - max(-pads[i + r], 0)) for i in range(r))]
        pads = tuple(max(p, 0) for p in pads)
    widths = [(pads[i], pads[i + r]) for i in range(r)]
    if mode == "constant":
        return np.pad(x, widths, constant_values=value)
    return np.pad(x, widths, mode=mode)


def _pad_source_index(i, lo: int, n: int, mode: str):
    """The input index that output index `i` of an axis padded by `lo` in front reads, as plain min/max/abs
    arithmetic (no nested selects: chained pads inline into each other and stay small)."""
    from tvm import tirx

    j = i - lo
    if mode == "edge":
        return tirx.max(tirx.min(j, n - 1), 0)
    if mode == "wrap":
        return tirx.floormod(j, n)
    # reflect, mirrored around 0 and n-1 without repeating the edge (pads < n: one reflection at most, checked by
    # the type rule): j - 2*min(j, 0) - 2*max(j - (n-1), 0). Min/max, not abs: TVM's abs is a Select, and chained
    # pads inlined into each other made nested Selects that took TVM's simplifier minutes
    return j - 2 * tirx.min(j, 0) - 2 * tirx.max(j - (n - 1), 0)


def _pad_lower(x, *, pads, value, mode):
    r = len(x.shape)
    if mode == "constant":
        return topi.nn.pad(x, pads[:r], pads[r:], value)
    shape = [int(d) for d in x.shape]
    out = [d + pads[a] + pads[a + r] for a, d in enumerate(shape)]
    return te.compute(out, lambda *i: x(*(_pad_source_index(i[a], pads[a], shape[a], mode)
                                          if pads[a] or pads[a + r] else i[a] for a in range(r))), name="pad")


# mode "constant" fills with `value`; "edge", "reflect" and "wrap" read the input at a remapped index.
def _pad_grad(e, n, dy):
    pads, r = n.attrs["pads"], _x(n).type.rank
    if n.attrs.get("mode", "constant") != "constant":  # edge/reflect/wrap read input elements several times
        raise AutodiffError(f"gradient of pad (node {n.name or '?'}) in mode {n.attrs['mode']!r} is not supported")
    if any(p < 0 for p in pads):
        raise AutodiffError(f"gradient of pad (node {n.name or '?'}) with negative pads is not supported")
    begins = tuple(pads[:r])
    ends = tuple(b + d for b, d in zip(begins, _x(n).type.shape))
    return [e.op(ops.strided_slice, [dy], begins=begins, ends=ends, strides=(1,) * r)]


pad = defop("pad", FusionKind.INJECTIVE, infer=_pad_infer,
            attrs={"pads": Attr("ints"), "value": Attr("float", 0.0), "mode": Attr("str", "constant")},
            reference=_pad_ref, lower=_pad_lower, grad=_pad_grad, movement=True,
            per_sample=lambda n, carries: first_input_per_sample(n, carries) and n.attrs["pads"][0] == 0
            and n.attrs["pads"][n.inputs[0].type.rank] == 0)


# -- gathers and scatters: indices may arrive at run time, so every kernel checks them ----------------------------
def _index_error(what, sizes):
    if len(sizes) == 1:
        n = sizes[0]
        return f"{what}: index out of range for an axis of size {n} (valid indices: {-n}..{n - 1})"
    return f"{what}: index out of range for axes of sizes {tuple(sizes)} (valid indices: -size..size-1)"


def _check_range(idx, sizes, what):
    """The numpy references raise as the CPU kernels do (numpy alone would wrap -n-1 around to the end)."""
    idx = np.asarray(idx)
    n = np.asarray(sizes, np.int64) if len(sizes) > 1 else np.int64(sizes[0])
    if idx.size and not np.all((idx >= -n) & (idx < n)):
        raise IndexError(_index_error(what, sizes))


INDEX_CHECK = "tf.index_check"  # block annotation: the assertion's message (compiler/backend/index_checks.py)
INDEX_SIZES = "tf.index_sizes"  # block annotation: the axis sizes the indices must fit


def _checked_indices(idx, sizes, what):
    """idx with negative entries counted from the end and clamped into [0, size): the gather or scatter reading
    it never touches memory outside its tensor, on any target. `sizes`: one axis size, or one per entry of idx's
    last axis (gather_nd, scatter_nd). On the CPU the block also raises for an index outside [-size, size)
    (compiler/backend/index_checks.py adds the assertion named by the block's annotations)."""
    dt = str(idx.dtype)
    sizes = [int(n) for n in sizes]

    def f(*i):
        n = te.const(sizes[0], dt)
        for k in range(1, len(sizes)):
            n = te.if_then_else(i[-1] == k, te.const(sizes[k], dt), n)
        v = idx(*i)
        v = te.if_then_else(v < te.const(0, dt), v + n, v)
        return te.max(te.min(v, n - te.const(1, dt)), te.const(0, dt))

    return te.compute(idx.shape, f, name="index_check",
                      attrs={INDEX_CHECK: _index_error(what, sizes), INDEX_SIZES: sizes})


def _take_infer(types, *, axis):
    data, idx = types
    if not 0 <= axis < data.rank:
        fail(f"axis {axis} out of range for {data}")
    if idx.dtype not in ("int64", "int32"):
        fail(f"indices must be int32 or int64, got {idx}")
    return TensorType(data.shape[:axis] + idx.shape + data.shape[axis + 1:], data.dtype)


def _take_ref(data, idx, *, axis):
    _check_range(idx, [data.shape[axis]], "take")
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    return np.take(data, idx, axis=axis)


def _take_grad(e, n, dy):
    data, idx = n.inputs
    return [e.op(ops.take_grad, [idx, dy], axis=n.attrs["axis"], input_shape=data.type.shape), None]


def _take_per_sample(n, carries) -> bool:
    """Rows of a table looked up by each sample's indices (axis 0), or each sample's data gathered along another
    axis by shared indices."""
    data, idx = carries
    axis = n.attrs["axis"]
    return (idx and not data and axis == 0) or (data and not idx and axis != 0)


take = defop("take", FusionKind.INJECTIVE, infer=_take_infer, attrs={"axis": Attr("int", 0)}, arity=(2, 2),
             reference=_take_ref, lower=lambda d, i, *, axis: topi.take(
                 d, _checked_indices(i, [d.shape[axis]], "take"), axis=axis, mode="fast"), grad=_take_grad,
             per_sample=_take_per_sample)


def _slice_infer(types, *, begins, ends, strides):
    (t,) = types
    if not len(begins) == len(ends) == len(strides) == t.rank or 0 in strides:
        fail(f"begins {begins}, ends {ends} and strides {strides} must have one non-zero stride per axis of {t}")
    return TensorType([len(range(b, e, s)) for b, e, s in zip(begins, ends, strides)], t.dtype)


def _slice_ref(x, *, begins, ends, strides):
    # normalized bounds (slice.indices): an end of -1 means "past index 0" for a negative stride
    return np.ascontiguousarray(x[tuple(slice(b, None if e < 0 else e, s) for b, e, s in zip(begins, ends, strides))])


def _slice_lower(x, *, begins, ends, strides):
    shape = [len(range(b, e, s)) for b, e, s in zip(begins, ends, strides)]
    return te.compute(shape, lambda *i: x(*[b + s * j for b, s, j in zip(begins, strides, i)]), name="slice")


# Bounds are normalized by the frontend (`slice(...).indices(dim)`): 0 <= begin < dim, one per axis.
def _strided_slice_grad(e, n, dy):
    return [e.op(ops.strided_slice_grad, [dy], input_shape=_x(n).type.shape, begins=n.attrs["begins"],
                 strides=n.attrs["strides"])]


strided_slice = defop("strided_slice", FusionKind.INJECTIVE, infer=_slice_infer,
                      attrs={"begins": Attr("ints"), "ends": Attr("ints"), "strides": Attr("ints")},
                      reference=_slice_ref, lower=_slice_lower, movement=True, grad=_strided_slice_grad,
                      per_sample=lambda n, carries: first_input_per_sample(n, carries) and n.attrs["begins"][0] == 0
                      and n.attrs["strides"][0] == 1 and n.attrs["ends"][0] >= n.inputs[0].type.shape[0],
                      doc="x[b0:e0:s0, b1:e1:s1, ...] with normalized bounds, one triple per axis.")


def _broadcast_to_infer(types, *, shape):
    (t,) = types
    if tuple(np.broadcast_shapes(t.shape, tuple(shape))) != tuple(shape):
        fail(f"cannot broadcast {t} to {list(shape)}")
    return TensorType(shape, t.dtype)


broadcast_to = defop("broadcast_to", FusionKind.BROADCAST, infer=_broadcast_to_infer, attrs={"shape": Attr("ints")},
                     reference=lambda x, *, shape: np.ascontiguousarray(np.broadcast_to(x, shape)),
                     lower=lambda x, *, shape: topi.broadcast_to(x, shape),
                     grad=lambda e, n, dy: [e.sum_to(dy, _x(n).type.shape)],
                     channel_axis_agnostic=False)  # a broadcast along axis 1 sees the channel axis


def _gather_elements_infer(types, *, axis):
    data, idx = types
    if not 0 <= axis < data.rank or idx.rank != data.rank or idx.dtype not in ("int64", "int32"):
        fail(f"indices {idx} do not fit data {data} at axis {axis}")
    return TensorType(idx.shape, data.dtype)


def _gather_elements_ref(data, idx, *, axis):
    _check_range(idx, [data.shape[axis]], "gather_elements")
    return np.take_along_axis(data, np.where(idx < 0, idx + data.shape[axis], idx), axis=axis)


def _gather_elements_lower(data, idx, *, axis):
    checked = _checked_indices(idx, [data.shape[axis]], "gather_elements")

    def f(*i):
        j = checked(*i)
        return data(*[j if k == axis else v for k, v in enumerate(i)])

    return te.compute(idx.shape, f, name="gather_elements")


gather_elements = defop("gather_elements", FusionKind.INJECTIVE, infer=_gather_elements_infer,
                        attrs={"axis": Attr("int", 0)}, arity=(2, 2), reference=_gather_elements_ref,
                        lower=_gather_elements_lower, grad=NO_RULE_YET,
                        doc="out[i][j][k] = data[idx[i][j][k]][j][k] for axis 0.")


def _gather_nd_infer(types, *, batch_dims):
    data, idx = types
    m = idx.shape[-1] if idx.rank else 0
    if idx.dtype not in ("int64", "int32") or idx.rank < 1 or batch_dims + m > data.rank:
        fail(f"indices {idx} do not fit data {data}")
    return TensorType(idx.shape[:-1] + data.shape[batch_dims + m:], data.dtype)


def _gather_nd_ref(data, idx, *, batch_dims):
    _check_range(idx, data.shape[batch_dims:batch_dims + idx.shape[-1]], "gather_nd")
    b = int(np.prod(data.shape[:batch_dims]))
    d = data.reshape((b,) + data.shape[batch_dims:])
    ix = idx.reshape((b, -1, idx.shape[-1]))
    out = np.stack([d[i][tuple(np.where(ix[i] < 0, ix[i] + np.array(d.shape[1:1 + idx.shape[-1]]), ix[i]).T)]
                    for i in range(b)])
    return out.reshape(idx.shape[:-1] + data.shape[batch_dims + idx.shape[-1]:])


def _gather_nd_lower(data, idx, *, batch_dims):
    m = int(idx.shape[-1])
    out_shape = list(idx.shape[:-1]) + list(data.shape[batch_dims + m:])
    nidx = len(idx.shape) - 1
    checked = _checked_indices(idx, data.shape[batch_dims:batch_dims + m], "gather_nd")

    def f(*i):
        pre, rest = i[:nidx], i[nidx:]
        coords = [checked(*pre, j) for j in range(m)]
        return data(*pre[:batch_dims], *coords, *rest)

    return te.compute(out_shape, f, name="gather_nd")


gather_nd = defop("gather_nd", FusionKind.INJECTIVE, infer=_gather_nd_infer, attrs={"batch_dims": Attr("int", 0)},
                  arity=(2, 2), reference=_gather_nd_ref, lower=_gather_nd_lower, grad=NO_RULE_YET,
                  doc="ONNX GatherND: the last index axis addresses the leading data axes after batch_dims.")


# -- scatters: a copy of data with some elements replaced (or combined with `reduction`) by updates ----------------
SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")
_NP_COMBINE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_elements_infer(types, *, axis, reduction):
    data, idx, upd = types
    if not 0 <= axis < data.rank or idx.rank != data.rank or idx.shape != upd.shape or upd.dtype != data.dtype \
            or idx.dtype not in ("int64", "int32") or reduction not in SCATTER_REDUCTIONS:
        fail(f"indices {idx} and updates {upd} do not fit data {data} at axis {axis} (reduction {reduction!r})")
    return data


def _scatter_elements_ref(data, idx, upd, *, axis, reduction):
    out = data.copy()
    _check_range(idx, [data.shape[axis]], "scatter_elements")
    idx = np.where(idx < 0, idx + data.shape[axis], idx)
    for pos in np.ndindex(*idx.shape):  # in order: later updates win, as in onnx's reference
        target = tuple(idx[pos] if k == axis else v for k, v in enumerate(pos))
        out[target] = upd[pos] if reduction == "none" else _NP_COMBINE[reduction](out[target], upd[pos])
    return out


scatter_elements = defop(
    "scatter_elements", FusionKind.OPAQUE, infer=_scatter_elements_infer,
    attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none")}, arity=(3, 3), reference=_scatter_elements_ref,
    lower=lambda d, i, u, *, axis, reduction: topi.scatter_elements(
        d, _checked_indices(i, [d.shape[axis]], "scatter_elements"), u, axis,
        "update" if reduction == "none" else reduction), grad=NO_RULE_YET,
    doc="ONNX ScatterElements: out = data; out[..idx[i]..] = updates[i] along `axis` (or combined by reduction).")


def _scatter_nd_infer(types, *, reduction):
    data, idx, upd = types
    m = idx.shape[-1] if idx.rank else 0
    if idx.dtype not in ("int64", "int32") or idx.rank < 1 or m > data.rank or upd.dtype != data.dtype \
            or upd.shape != idx.shape[:-1] + data.shape[m:] or reduction not in SCATTER_REDUCTIONS:
        fail(f"indices {idx} and updates {upd} do not fit data {data} (reduction {reduction!r})")
    return data


def _scatter_nd_ref(data, idx, upd, *, reduction):
    _check_range(idx, data.shape[:idx.shape[-1]], "scatter_nd")
    out = data.copy()
    for pos in np.ndindex(*idx.shape[:-1]):
        target = tuple(int(v) + (data.shape[k] if v < 0 else 0) for k, v in enumerate(idx[pos]))
        out[target] = upd[pos] if reduction == "none" else _NP_COMBINE[reduction](out[target], upd[pos])
    return out


def _scatter_nd_lower(data, idx, upd, *, reduction):
    # topi wants the index tuple first: (M, ...) instead of (..., M)
    checked = _checked_indices(idx, data.shape[:int(idx.shape[-1])], "scatter_nd")
    # max(., 0) (a no-op: checked indices are >= 0) keeps this block from looking like a pure transpose to dlight's
    # CUDA Transpose rule, which compares its index lists with `!=` and raises on TVM expressions
    idx_t = te.compute([idx.shape[-1]] + list(idx.shape[:-1]),
                       lambda m, *i: te.max(checked(*i, m), te.const(0, checked.dtype)), name="scatter_nd_indices")
    mode = {"none": "update"}.get(reduction, reduction)
    return topi.scatter_nd(data, idx_t, upd, mode)


scatter_nd = defop("scatter_nd", FusionKind.OPAQUE, infer=_scatter_nd_infer,
                   attrs={"reduction": Attr("str", "none")}, arity=(3, 3), reference=_scatter_nd_ref,
                   lower=_scatter_nd_lower, grad=NO_RULE_YET,
                   doc="ONNX ScatterND: out = data; out[idx[i]] = updates[i] (or combined by reduction).")
