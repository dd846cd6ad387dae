"""Converters for indexing and scatters: gather, index with one tensor, slice_scatter and copy (what an in-place
slice assignment becomes after functionalization), flip; and torch.export's own metadata checks. Registered in
converters.CONVERTERS on import (the importer imports this module)."""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops

from .converters import _axis, aten, converter, slice_


@converter(aten._assert_tensor_metadata.default)
def _assert_tensor_metadata(b, a, size=None, stride=None, dtype=None, *, device=None, layout=None):
    return None  # torch.export's own check of a tensor's dtype and shape, already true of the converted graph


@converter(aten.copy.default)
def copy(b, self, src, non_blocking=False):
    t = b.type(self)
    if b.type(src).dtype != t.dtype:
        src = b.emit(ops.cast, [src], to=t.dtype)
    return src if b.type(src).shape == t.shape else b.emit(ops.broadcast_to, [src], shape=t.shape)


@converter(aten.slice_scatter.default)
def slice_scatter(b, self, src, dim=0, start=None, end=None, step=1):
    """self with self[start:end:step] along `dim` replaced by src: folded when both are known, else (step 1) the
    slices around it concatenated with src."""
    shape = b.type(self).shape
    ax = _axis(b, dim, len(shape))
    s, e, st = slice(start, end, step).indices(shape[ax])
    if isinstance(self, np.ndarray) and isinstance(src, np.ndarray):
        out = self.copy()
        out[(slice(None),) * ax + (slice(s, e, st),)] = src
        return out
    if st != 1:
        raise b.error(f"slice_scatter with step {st} on a run-time tensor is not supported")
    parts = [slice_(b, self, ax, 0, s, 1)] if s > 0 else []
    parts.append(src)
    if e < shape[ax]:
        parts.append(slice_(b, self, ax, e, shape[ax], 1))
    return b.emit(ops.concat, parts, axis=ax) if len(parts) > 1 else src


@converter(aten.gather.default)
def gather(b, self, dim, index, sparse_grad=False):
    return b.emit(ops.gather_elements, [self, index], axis=_axis(b, dim, b.type(self).rank))


@converter(aten.index.Tensor)
def index(b, self, indices):
    """x[..., idx, ...] with one index tensor (the other axes whole): a take along that axis."""
    given = [i for i, ix in enumerate(indices) if ix is not None]
    if len(given) != 1:
        raise b.error(f"indexing with {len(given)} index tensors is not supported (one is)")
    (axis,) = given
    ix = indices[axis]
    if b.type(ix).dtype == "bool":
        raise b.error("indexing with a boolean mask is not supported (its result's shape depends on the data)")
    return b.emit(ops.take, [self, ix], axis=axis)


@converter(aten.flip.default)
def flip(b, self, dims):
    from tensorforge.frontends.onnx.converters.base import _slice

    shape = b.type(self).shape
    axes = sorted({_axis(b, d, len(shape)) for d in dims})
    if not axes:
        return self
    return _slice(b, self, [shape[a] - 1 for a in axes], [-shape[a] - 1 for a in axes], axes, [-1] * len(axes))
