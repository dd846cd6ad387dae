"""Reductions over a set of axes: reduce_sum, reduce_mean (ONNX ReduceSum / ReduceMean)."""

from __future__ import annotations

import numpy as np
from tvm import te, topi

from compiler.ir.types import TensorType

from .registry import Attr, FusionKind, defop, fail

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


reduce_sum = defop("reduce_sum", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS, reference=_sum_ref,
                   lower=lambda x, *, axes, keepdims: topi.sum(x, axis=list(axes), keepdims=keepdims))
reduce_mean = defop("reduce_mean", FusionKind.REDUCTION, infer=_reduce_infer, attrs=REDUCE_ATTRS,
                    reference=_mean_ref, lower=_mean_lower)
