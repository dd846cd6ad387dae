"""recognize: rewrite decomposed activations and normalizations, as exporters spell them, into single ops.

    0.5 * x * (1 + erf(x / sqrt(2)))                          -> gelu(x)                  (any order of the products)
    0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))   -> gelu(x, approximate="tanh")
    d / sqrt(mean(d^2) + eps), d = x - mean(x)               -> layer_norm(x, ones)      (means over trailing axes)
    layer_norm(x, s) * g                                      -> layer_norm(x, s * g)     (g a constant, per row)
    layer_norm(x, s) + b                                      -> layer_norm(x, s, b)
    softmax(scale * q @ kT (+ mask)) @ v                     -> attention(q, k, v[, mask])  (scale anywhere in the
                                                                product, on q or k too; kT a transpose of k; a mask
                                                                equal to the causal -inf triangle -> causal=True)
A product is read as a bag of factors (through nested muls and divisions by constants), so every association
and operand order an exporter picks matches the same rule. The three layer-norm rules together match
LayerNormalization as exporters before opset 17 write it (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul,
Add), with or without the affine part.
"""

from __future__ import annotations

import math

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Value

from .rewrite import Rewrite, apply_rules


def _splat(v: Value) -> float | None:
    if v.is_param and v.data.size and np.all(v.data == v.data.reshape(-1)[0]):
        return float(v.data.reshape(-1)[0])
    return None


def _factors(v: Value, depth: int = 6) -> tuple[list[Value], float]:
    """v as (non-constant factors, constant coefficient), looking through mul and division by constants."""
    p = v.producer
    if depth and p is not None and p.op is ops.mul:
        fa, ca = _factors(p.inputs[0], depth - 1)
        fb, cb = _factors(p.inputs[1], depth - 1)
        return fa + fb, ca * cb
    if depth and p is not None and p.op is ops.div and _splat(p.inputs[1]) not in (None, 0.0):
        f, c = _factors(p.inputs[0], depth - 1)
        return f, c / _splat(p.inputs[1])
    c = _splat(v)
    return ([], c) if c is not None else ([v], 1.0)


def _terms(v: Value) -> tuple[list[Value], float]:
    """v as (non-constant terms, constant offset) through add."""
    p = v.producer
    if p is not None and p.op is ops.add:
        ta, ca = _terms(p.inputs[0])
        tb, cb = _terms(p.inputs[1])
        return ta + tb, ca + cb
    c = _splat(v)
    return ([], c) if c is not None else ([v], 0.0)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(abs(b), 1e-12)


def _is_cube_of(v: Value, x: Value) -> bool:
    p = v.producer
    if p is not None and p.op is ops.pow and p.inputs[0] is x and _splat(p.inputs[1]) == 3.0:
        return True
    f, c = _factors(v)
    return c == 1.0 and len(f) == 3 and all(t is x for t in f)


def _gelu(r: Rewrite, n):
    out = n.outputs[0]
    factors, coef = _factors(out)
    if len(factors) != 2 or not _close(coef, 0.5):
        return None
    for x, other in (factors, factors[::-1]):
        if x.type != out.type:
            continue
        terms, offset = _terms(other)
        if len(terms) != 1 or not _close(offset, 1.0) or terms[0].producer is None:
            continue
        act = terms[0].producer
        arg_f, arg_c = _factors(act.inputs[0])
        if act.op is ops.erf and arg_f == [x] and _close(arg_c, 1 / math.sqrt(2)):
            return r.emit(ops.gelu, [x], approximate="none")
        inner = arg_f[0].producer if len(arg_f) == 1 else None
        if act.op is ops.tanh and inner is not None and inner.op is ops.add and _close(arg_c, math.sqrt(2 / math.pi)):
            a, b = inner.inputs  # x + 0.044715 * x^3, either order (x itself may be a sum: look one level only)
            if x in (a, b):
                cube_f, cube_c = _factors(b if a is x else a)
                if _close(cube_c, 0.044715) and ((len(cube_f) == 1 and _is_cube_of(cube_f[0], x)) or
                                                 (len(cube_f) == 3 and all(t is x for t in cube_f))):
                    return r.emit(ops.gelu, [x], approximate="tanh")
    return None


_NORM_DTYPES = frozenset({"float16", "float32", "float64"})


def _trailing_mean(v: Value) -> tuple[Value, int] | None:
    """(x, axis) when v = reduce_mean(x) over axes axis..rank-1, keeping them."""
    p = v.producer
    if p is None or p.op is not ops.reduce_mean or not p.attrs["keepdims"]:
        return None
    rank, axes = p.inputs[0].type.rank, tuple(p.attrs["axes"])
    if not axes or axes != tuple(range(axes[0], rank)):
        return None
    return p.inputs[0], axes[0]


def _is_square_of(v: Value, d: Value) -> bool:
    p = v.producer
    if p is not None and p.op is ops.pow and p.inputs[0] is d and _splat(p.inputs[1]) == 2.0:
        return True
    return p is not None and p.op is ops.mul and p.inputs[0] is d and p.inputs[1] is d


def _layer_norm(r: Rewrite, n):
    """d / sqrt(var + eps) with d = x - mean(x), var = mean(d^2), both means over the same trailing axes."""
    d, root = n.inputs
    sub, sqrt = d.producer, root.producer
    if sub is None or sub.op is not ops.sub or sqrt is None or sqrt.op is not ops.sqrt:
        return None
    x = sub.inputs[0]
    mean = _trailing_mean(sub.inputs[1])
    if x.type != d.type or x.type.dtype not in _NORM_DTYPES or mean is None or mean[0] is not x:
        return None
    terms, eps = _terms(sqrt.inputs[0])
    var = _trailing_mean(terms[0]) if len(terms) == 1 else None
    if var is None or var[1] != mean[1] or not _is_square_of(var[0], d) or eps <= 0.0:
        return None
    axis = mean[1]
    ones = r.param(np.ones(x.type.shape[axis:], x.type.dtype), "scale")
    return r.emit(ops.layer_norm, [x, ones], axis=axis, epsilon=eps)


def _per_row(v: Value, ln) -> np.ndarray | None:
    """A constant operand of a mul/add after a layer norm as the op's scale/bias (the normalized shape), when it
    varies only along the normalized axes; else None."""
    if not v.is_param:
        return None
    x, axis = ln.inputs[0], ln.attrs["axis"]
    norm, data = x.type.shape[axis:], v.data
    lead = data.ndim - len(norm)
    if data.dtype != np.dtype(x.type.dtype) or (lead > 0 and any(dim != 1 for dim in data.shape[:lead])):
        return None
    data = data.reshape(data.shape[max(lead, 0):])
    try:
        return np.ascontiguousarray(np.broadcast_to(data, norm))
    except ValueError:
        return None


def _layer_norm_affine(r: Rewrite, n):
    """layer_norm(x, s) * g -> layer_norm(x, s * g); layer_norm(x, s) + b -> layer_norm(x, s, b): g and b constant,
    the layer norm without a bias and used only here."""
    for a, c in (n.inputs, n.inputs[::-1]):
        ln = a.producer
        if ln is None or ln.op is not ops.layer_norm or len(ln.inputs) != 2 or a.type != n.outputs[0].type:
            continue
        data = _per_row(c, ln)
        if data is None or len(r.g.users().get(a, ())) != 1 or a in r.g.outputs:
            continue
        x, scale = ln.inputs
        if n.op is ops.add:
            bias = c if c.type.shape == data.shape else r.param(data, "bias")
            return r.emit(ops.layer_norm, [x, scale, bias], **ln.attrs)
        if scale.is_param and np.all(scale.data == 1):  # the ones of _layer_norm: keep the model's own param
            new = c if c.type.shape == data.shape else r.param(data, "scale")
        elif scale.is_param:
            new = r.param((scale.data * data).astype(data.dtype), "scale")
        else:
            continue
        return r.emit(ops.layer_norm, [x, new], **ln.attrs)
    return None


def _scaled(v: Value) -> tuple[Value, float]:
    """v as (x, c) with v = c * x, c a constant (1.0 when v is no such product)."""
    f, c = _factors(v)
    return (f[0], c) if len(f) == 1 else (v, 1.0)


def _untransposed(r: Rewrite, kt: Value) -> Value:
    """k with kt = k^T over the last two axes: a transpose's source read with the composed permutation."""
    rank = kt.type.rank
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    t = kt.producer
    if t is not None and t.op is ops.transpose:
        perm = tuple(t.attrs["perm"][i] for i in swap)
        return t.inputs[0] if perm == tuple(range(rank)) else r.emit(ops.transpose, [t.inputs[0]], perm=perm)
    return r.emit(ops.transpose, [kt], perm=swap)


def _batch_view(r: Rewrite, v: Value, single_use: bool = False) -> Value:
    """v's source where v is a reshape that only merges or splits the leading (batch) axes, as torch.export
    writes a 4-D matmul (a bmm between reshapes to 3-D and back); else v itself. With `single_use`, only a source
    read by nothing else."""
    shaped = r.producer(v, ops.reshape)
    if shaped is None or v.type.rank < 2:
        return v
    src = shaped.inputs[0]
    if src.type.rank < 2 or src.type.shape[-2:] != v.type.shape[-2:] or src.type.dtype != v.type.dtype:
        return v
    if single_use and any(len(r.g.users().get(x, ())) != 1 or x in r.g.outputs for x in (src, v)):
        return v
    return src


def _attention(r: Rewrite, n):
    """matmul(softmax(c * matmul(q, kT) [+ mask], last axis), v): the softmax and the scores used only here. The
    products may be batched over other leading axes than the softmax (reshapes of the batch axes around them, as
    torch.export writes a 4-D matmul): the attention then runs on the softmax's axes, its output reshaped."""
    out = _attention_core(r, n)
    if out is not None and out.type.shape != n.outputs[0].type.shape:
        out = r.emit(ops.reshape, [out], shape=n.outputs[0].type.shape)
    return out


def _nan_guarded(r: Rewrite, v: Value) -> tuple[Value, tuple]:
    """(p, the guard's nodes) where v = where(isnan(p), 0, p) read only so (transformers' guard after a softmax),
    else (v, ())."""
    w = r.producer(v, ops.where)
    if w is None or len(w.inputs) != 3:
        return v, ()
    test, zero, p = w.inputs
    isnan = r.producer(test, ops.isnan)
    c = r.const(zero)
    if isnan is None or isnan.inputs[0] is not p or c is None or c.size != 1 or float(c.reshape(-1)[0]) != 0.0:
        return v, ()
    users = r.g.users()
    if len(users.get(test, ())) != 1 or test in r.g.outputs or p in r.g.outputs:
        return v, ()
    return p, (w, isnan)


def _attention_core(r: Rewrite, n):
    probs, v = n.inputs
    probs = _batch_view(r, probs, single_use=True)
    probs, guard = _nan_guarded(r, probs)
    v = _batch_view(r, v)
    sm = probs.producer
    if sm is None or sm.op is not ops.softmax or sm.attrs["axis"] != probs.type.rank - 1 or probs.type.rank < 2 \
            or probs.type.dtype not in _NORM_DTYPES or probs in r.g.outputs:
        return None
    users = r.g.users()
    if (set(users.get(probs, ())) != set(guard) or len(users.get(guard[0].outputs[0], ())) != 1) if guard \
            else len(users.get(probs, ())) != 1:
        return None
    scores, mask = sm.inputs[0], None
    add = scores.producer
    candidates = [(scores, None)]
    if add is not None and add.op is ops.add:
        candidates = [(add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])]
    for scaled, mask in candidates:
        # the batch axes may be reshaped before or after the scaling (simplify moves reshapes past elementwise ops)
        mm, c = _scaled(_batch_view(r, scaled, single_use=True))
        mm = _batch_view(r, mm, single_use=True)  # the same elements as `scaled` in another batch shape
        if mm.producer is not None and mm.producer.op is ops.matmul and mm.type.numel == scaled.type.numel \
                and scaled.type.shape == scores.type.shape:
            break
    else:
        return None
    (q, cq), (kt, ck) = (_scaled(_batch_view(r, x)) for x in mm.producer.inputs)
    if q.type.rank != probs.type.rank or kt.type.rank != q.type.rank or v.type.rank != q.type.rank or \
            not probs.type.shape[:-2] == q.type.shape[:-2] == kt.type.shape[:-2] == v.type.shape[:-2]:
        return None
    if mask is not None and (mask.type.dtype != scores.type.dtype or mask.type.rank > scores.type.rank):
        return None
    causal = False
    if mask is not None and mask.is_param:
        from tensorforge.compiler.ops.attention import causal_bias

        sq, skv = scores.type.shape[-2:]
        data = mask.data.reshape(mask.data.shape[-2:]) if mask.data.size == sq * skv else None
        causal = data is not None and data.shape == (sq, skv) and np.array_equal(
            data, causal_bias(sq, skv, data.dtype))
    k, c_in_k = _scaled(_untransposed(r, kt))
    ins = [q, k, v] + ([mask] if mask is not None and not causal else [])
    return r.emit(ops.attention, ins, scale=c * cq * ck * c_in_k, causal=causal, nan_guard=bool(guard))


def recognize(g: Graph) -> Graph:
    return apply_rules(g, [(ops.mul, _gelu), (ops.div, _gelu), (ops.div, _layer_norm), (ops.mul, _layer_norm_affine),
                           (ops.add, _layer_norm_affine), (ops.matmul, _attention)])
