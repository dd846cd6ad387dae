"""Reductions over a set of axes: reduce_sum, reduce_mean (ONNX ReduceSum / ReduceMean), the extremes and their
indices, scans, top-k, and einsum (a product summed over the indices absent from the output)."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx, topi

from tensorforge.compiler.ir.types import TensorType
from tensorforge.compiler.ops.elementwise import nan_test

from .registry import NOT_DIFFERENTIABLE, NO_RULE_YET, Attr, FusionKind, defop, fail, ops, per_sample_unless_axis

REDUCE_ATTRS = {"axes": Attr("ints"), "keepdims": Attr("bool", True)}  # axes: sorted, non-negative


def _reduce_infer(types, *, axes, keepdims):
    (t,) = types
    if any(not 0 <= a < t.rank for a in axes) or len(set(axes)) != len(axes):
        fail(f"axes {axes} are not distinct axes of {t}")
    if keepdims:
        return TensorType([1 if i in axes else d for i, d in enumerate(t.shape)], t.dtype)
    return TensorType([d for i, d in enumerate(t.shape) if i not in axes], t.dtype)


def _sum_ref(x, *, axes, keepdims):
    return np.asarray(x.sum(axis=tuple(axes), keepdims=keepdims, dtype=np.float64 if x.dtype.kind == "f" else None)
                      ).astype(x.dtype)


def _mean_ref(x, *, axes, keepdims):
    return np.asarray(x.mean(axis=tuple(axes), keepdims=keepdims, dtype=np.float64)).astype(x.dtype)


def _mean_lower(x, *, axes, keepdims):
    s = topi.sum(x, axis=list(axes), keepdims=keepdims)
    inv = 1.0 / float(np.prod([int(x.shape[a]) for a in axes]))  # a Python float keeps x's dtype
    return te.compute(s.shape, lambda *i: s(*i) * inv, name="reduce_mean")


def _unreduce(e, n, dy):
    x = n.inputs[0]
    kept = tuple(1 if i in n.attrs["axes"] else d for i, d in enumerate(x.type.shape))
    if dy.type.shape != kept:
        dy = e.op(ops.reshape, [dy], shape=kept)
    return e.broadcast(dy, x.type.shape)


reduce_sum = defop("reduce_sum", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                   per_sample=per_sample_unless_axis("axes"), reference=_sum_ref,
                   lower=lambda x, *, axes, keepdims: topi.sum(x, axis=list(axes), keepdims=keepdims),
                   grad=lambda e, n, dy: [_unreduce(e, n, dy)])
reduce_mean = defop("reduce_mean", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                    per_sample=per_sample_unless_axis("axes"),
                    reference=_mean_ref, lower=_mean_lower,
                    grad=lambda e, n, dy: [e.scale(_unreduce(e, n, dy), 1.0 / int(np.prod(
                        [n.inputs[0].type.shape[a] for a in n.attrs["axes"]])))])


def _extreme_ref(fn):
    def ref(x, *, axes, keepdims):
        return np.asarray(fn(x, axis=tuple(axes), keepdims=keepdims)).astype(x.dtype)

    return ref


def _extreme_lower(largest: bool):
    """max/min over `axes`. For floats the identity is -inf/+inf (topi starts from the lowest finite value, so a
    max over a row of -inf would give -3.4e38 instead of -inf), and a NaN wins, as in numpy (TVM's max/min drop
    NaN; onnxruntime 1.31's ReduceMax/ReduceMin drop it too, we follow numpy and onnx's reference)."""

    def lower(x, *, axes, keepdims):
        if not str(x.dtype).startswith("float"):
            return (topi.max if largest else topi.min)(x, axis=list(axes), keepdims=keepdims)
        ident = te.const(float("-inf") if largest else float("inf"), x.dtype)
        # select(a > b or isnan(a), a, b): a NaN on either side wins; commutative up to which NaN is kept
        comb = (lambda a, b: tirx.Select(tirx.Or(a > b, nan_test(a, x.dtype)), a, b)) if largest else \
            (lambda a, b: tirx.Select(tirx.Or(a < b, nan_test(a, x.dtype)), a, b))
        reducer = te.comm_reducer(comb, lambda t: ident, name="max" if largest else "min")
        rank = len(x.shape)
        raxes = {a: te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes}
        out_shape = [1 if a in raxes else x.shape[a] for a in range(rank)] if keepdims else \
            [x.shape[a] for a in range(rank) if a not in raxes]

        def f(*idx):
            it = iter(idx)
            full = []
            for a in range(rank):
                if a in raxes:
                    if keepdims:
                        next(it)
                    full.append(raxes[a])
                else:
                    full.append(next(it))
            return reducer(x(*full), axis=list(raxes.values()))

        return te.compute(out_shape, f, name="reduce_max" if largest else "reduce_min")

    return lower


reduce_max = defop("reduce_max", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                   per_sample=per_sample_unless_axis("axes"),
                   reference=_extreme_ref(np.max), lower=_extreme_lower(True), grad=NO_RULE_YET)
reduce_min = defop("reduce_min", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                   per_sample=per_sample_unless_axis("axes"),
                   reference=_extreme_ref(np.min), lower=_extreme_lower(False), grad=NO_RULE_YET)
reduce_prod = defop("reduce_prod", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                    per_sample=per_sample_unless_axis("axes"),
                    reference=_extreme_ref(np.prod),
                    lower=lambda x, *, axes, keepdims: topi.prod(x, axis=list(axes), keepdims=keepdims),
                    grad=NO_RULE_YET)

ARG_ATTRS = {"axis": Attr("int"), "keepdims": Attr("bool", True), "select_last_index": Attr("bool", False)}


def _arg_infer(types, *, axis, keepdims, select_last_index):
    (t,) = types
    if not 0 <= axis < t.rank:
        fail(f"axis {axis} out of range for {t}")
    shape = [1 if i == axis else d for i, d in enumerate(t.shape)] if keepdims else \
        [d for i, d in enumerate(t.shape) if i != axis]
    return TensorType(shape, "int64")


def _arg_ref(largest: bool):
    """onnxruntime's ArgMax/ArgMin on NaN (1.31, whose scan starts from element 0 and moves on `>` / `<`, or `>=` /
    `<=` with select_last_index): a NaN first element is the answer; any other NaN is never picked. numpy's
    argmax picks the first NaN instead; ONNX leaves it open, and we follow onnxruntime."""

    def ref(x, *, axis, keepdims, select_last_index):
        nan = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
        key = np.where(nan, -np.inf if largest else np.inf, x) if nan.any() else x
        best = (np.max if largest else np.min)(key, axis=axis, keepdims=True) if x.shape[axis] else key
        hit = (key == best) & ~nan
        if select_last_index:
            idx = x.shape[axis] - 1 - np.argmax(np.flip(hit, axis), axis=axis)
        else:
            idx = np.argmax(hit, axis=axis)
        first_nan = np.take(nan, 0, axis=axis) if x.shape[axis] else False
        idx = np.where(first_nan | ~hit.any(axis=axis), 0, idx)
        return np.asarray(np.expand_dims(idx, axis) if keepdims else idx, np.int64)

    return ref


def _arg_lower(largest: bool):
    """A (index, value) comm_reducer; values order as usual, a NaN below every number, equal values (or two NaN)
    by index (the smaller wins, or the larger with select_last_index). Then a NaN first element gives index 0."""

    def lower(x, *, axis, keepdims, select_last_index):
        floating = str(x.dtype).startswith(("float", "bfloat"))

        def combine(lhs, rhs):
            (i0, v0), (i1, v1) = lhs, rhs
            better = v0 > v1 if largest else v0 < v1
            tie = v0 == v1
            if floating:
                nan0, nan1 = nan_test(v0, x.dtype), nan_test(v1, x.dtype)
                better = tirx.Or(better, tirx.And(tirx.Not(nan0), nan1))
                tie = tirx.Or(tie, tirx.And(nan0, nan1))
            first = i0 > i1 if select_last_index else i0 < i1
            take0 = tirx.Or(better, tirx.And(tie, first))
            # the value's select must not read the index: on a vectorized loop TVM 0.27 stores the new index
            # before it evaluates the value's select, which then saw the new index (wrong answers off the last
            # axis). On a tie the two values are equal (or both NaN), so `better` alone picks the same value.
            return tirx.Select(take0, i0, i1), tirx.Select(better, v0, v1)

        def identity(t_idx, t_val):
            if floating:
                worst = tirx.const(float("-inf") if largest else float("inf"), t_val)
            else:
                worst = tirx.min_value(t_val) if largest else tirx.max_value(t_val)
            # an index that loses every tie, so that a row of -inf (argmax) still answers a real index
            return tirx.const(-1 if select_last_index else 2 ** 31 - 1, t_idx), worst

        reducer = te.comm_reducer(combine, identity, name="argmax" if largest else "argmin")
        rank, n = len(x.shape), x.shape[axis]
        k = te.reduce_axis((0, n), name="k")
        out_shape = [1 if a == axis else x.shape[a] for a in range(rank)] if keepdims else \
            [x.shape[a] for a in range(rank) if a != axis]

        def full(idx, at):
            idx = list(idx)
            if keepdims:
                idx[axis] = at
            else:
                idx.insert(axis, at)
            return idx

        name = "argmax" if largest else "argmin"
        red_idx, _ = te.compute(out_shape, lambda *i: reducer((k, x(*full(i, k))), axis=k), name=f"{name}_red_temp")
        zero = tirx.const(0, "int64")

        def pick(*i):
            r = red_idx(*i).astype("int64")
            if not floating:
                return r
            first = x(*full(i, 0))
            return tirx.Select(nan_test(first, x.dtype), zero, r)

        return te.compute(out_shape, pick, name=name)

    return lower


argmax = defop("argmax", FusionKind.REDUCTION, infer=_arg_infer, attrs=ARG_ATTRS, reference=_arg_ref(True),
               lower=_arg_lower(True), grad=NOT_DIFFERENTIABLE,
               doc="Index of the first (or last) maximum along `axis`, int64.")
argmin = defop("argmin", FusionKind.REDUCTION, infer=_arg_infer, attrs=ARG_ATTRS, reference=_arg_ref(False),
               lower=_arg_lower(False), grad=NOT_DIFFERENTIABLE,
               doc="Index of the first (or last) minimum along `axis`, int64.")


def _cumsum_infer(types, *, axis, exclusive, reverse):
    if not 0 <= axis < types[0].rank:
        fail(f"axis {axis} out of range for {types[0]}")
    return types[0]


def _scan(name: str, np_scan, identity, topi_scan, doc: str):
    """A cumulative op along `axis` (exclusive: shifted by one, the identity first; reverse: from the end)."""

    def reference(x, *, axis, exclusive, reverse):
        y = np.flip(x, axis) if reverse else x
        s = np_scan(y, axis=axis, dtype=x.dtype)
        if exclusive and s.shape[axis]:
            first = np.full_like(np.take(s, [0], axis=axis), identity)
            s = np.concatenate([first, np.take(s, range(s.shape[axis] - 1), axis=axis)], axis=axis)
        return np.ascontiguousarray(np.flip(s, axis) if reverse else s)

    def lower(x, *, axis, exclusive, reverse):
        y = topi.flip(x, axis) if reverse else x
        s = topi_scan(y, axis=axis, exclusive=exclusive)
        return topi.flip(s, axis) if reverse else s

    return defop(name, FusionKind.OPAQUE, infer=_cumsum_infer,
                 attrs={"axis": Attr("int"), "exclusive": Attr("bool", False), "reverse": Attr("bool", False)},
                 reference=reference, lower=lower, grad=NO_RULE_YET, doc=doc)


cumsum = _scan("cumsum", np.cumsum, 0, topi.cumsum, "Cumulative sum along `axis` (ONNX CumSum).")
cumprod = _scan("cumprod", np.cumprod, 1, topi.cumprod, "Cumulative product along `axis` (ONNX CumProd).")


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
             reference=_topk_ref, grad=NO_RULE_YET,
             lower=lambda x, *, k, axis, largest: tuple(topi.topk(x, k, axis, "both", not largest, "int64")),
             doc="The k largest (or smallest) values along `axis` and their int64 indices, ties by lower index.")


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
               lower=_einsum_lower, grad=NO_RULE_YET,
               doc="numpy.einsum without ellipses: one te.compute, summing the absent indices.")
