"""One compiled batch size for a range of them: a model proven to compute each sample on its own runs a batch of
`b` samples as b / b0 slices of the batch-`b0` model compiled already (runtime/bundle.py `LoopedModel`), instead of
compiling for `b` (compiler/specialize.py asks, for inputs with a dynamic axis 0).

The proof compares the model imported for `b0` and for `b` (`loop_proof`), node by node:
  * the same ops in the same order, with the same attributes but for the batch-sized entries (a reshape's target,
    a slice's end: their first element, scaled from b0 to b);
  * the same parameters, or, for a parameter folded from the batch size (an expanded class token), the `b0` one
    repeated b / b0 times: a per-sample constant;
  * values "carry" the batch along axis 0 as whole blocks of rows: the batch inputs, such parameters, and what an op
    computes from them where its `per_sample` fact (ops/registry.py) holds; a carrying value's axis 0 is m samples'
    rows in the `b0` model and m * b / b0 in the other, the rest of its shape equal; any other value is equal in both;
  * every output carries the batch.
Then output sample i of the `b` model is output sample i mod b0 of the `b0` model on the slice holding sample i,
for any input: the concatenated slices are the `b` model's outputs. Nothing numerical is assumed.
Whether to loop (`worth_looping`): when the model's kernels do enough work per byte of weights that reading the
weights once per slice costs little (convolutional networks at any batch, Transformers from ~128 tokens).
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping

import numpy as np

from tensorforge.compiler.ir import Graph

log = logging.getLogger("tensorforge")

# multiply-adds (flops / 2) per byte of parameters above which a slice re-reading the weights costs little next to
# its arithmetic: ResNet-50 ~20 at batch 1, BERT-base ~32 at 128 tokens, ~4 at 16 tokens
MIN_FLOPS_PER_PARAM_BYTE = 16.0


def _scaled(small: tuple, big: tuple, b0: int, b: int) -> bool:
    """`big` is `small` with its first entry scaled from b0 to b samples (of whole blocks of rows)."""
    return (len(small) == len(big) and small[1:] == big[1:] and small[0] % b0 == 0
            and big[0] == small[0] // b0 * b)


def loop_proof(small: Graph, big: Graph, batch_inputs, b0: int, b: int) -> str | None:
    """None if `big` (imported for b samples) computes each sample as `small` (b0 samples) does, so that slices of
    `small` run it (see the module docstring); otherwise why not."""
    if b <= b0 or b % b0:
        return f"batch {b} is not a multiple of {b0} above it"
    if (len(small.inputs), len(small.params), len(small.nodes), len(small.outputs)) != (
            len(big.inputs), len(big.params), len(big.nodes), len(big.outputs)):
        return "the model's graph differs between the two batch sizes"
    carries: dict = {}
    for vs, vb in zip(small.inputs, big.inputs):
        if vs.name != vb.name or vs.type.dtype != vb.type.dtype:
            return f"input {vb.name!r} differs between the two batch sizes"
        if vs.name in batch_inputs:
            if not (vs.type.shape[:1] == (b0,) and _scaled(vs.type.shape, vb.type.shape, b0, b)):
                return f"input {vb.name!r}: axis 0 is not the batch"
            carries[vb] = True
        elif vs.type != vb.type:
            return f"input {vb.name!r} changes shape with the batch"
        else:
            carries[vb] = False
    for ps, pb in zip(small.params, big.params):
        if ps.type.dtype != pb.type.dtype:
            return f"parameter {pb.name!r} differs between the two batch sizes"
        if ps.type == pb.type:
            if not np.array_equal(ps.data, pb.data, equal_nan=True):
                return f"parameter {pb.name!r} depends on the batch size"
            carries[pb] = False
        elif _scaled(ps.type.shape, pb.type.shape, b0, b) and np.array_equal(
                np.concatenate([ps.data] * (b // b0)), pb.data, equal_nan=True):
            carries[pb] = True  # a per-sample constant, e.g. a class token expanded to the batch
        else:
            return f"parameter {pb.name!r} depends on the batch size"
    for ns, nb in zip(small.nodes, big.nodes):
        where = f"{nb.op.name} (node {nb.name!r})"
        if ns.op is not nb.op or len(ns.inputs) != len(nb.inputs) or len(ns.outputs) != len(nb.outputs):
            return f"{where}: the graph differs between the two batch sizes"
        ins = [carries.get(v) for v in nb.inputs]
        if None in ins:
            return f"{where}: its inputs are not in order"
        if not any(ins):
            if ns.attrs != nb.attrs or [v.type for v in ns.outputs] != [v.type for v in nb.outputs]:
                return f"{where} changes with the batch size although none of its inputs does"
            carries.update((v, False) for v in nb.outputs)
            continue
        if len(nb.outputs) != 1 or nb.op.per_sample is None or not nb.op.per_sample(nb, ins):
            return f"{where} is not known to compute each sample on its own"
        for key in set(ns.attrs) | set(nb.attrs):
            a, c = ns.attrs.get(key), nb.attrs.get(key)
            if a != c and not (isinstance(a, tuple) and isinstance(c, tuple) and a and c
                               and all(isinstance(x, int) for x in a + c) and _scaled(a, c, b0, b)):
                return f"{where}: attribute {key} changes with the batch size otherwise than by it"
        (os_, ob) = ns.outputs[0], nb.outputs[0]
        if os_.type.dtype != ob.type.dtype or not _scaled(os_.type.shape, ob.type.shape, b0, b):
            return f"{where}: its output's axis 0 does not keep each sample's rows together"
        carries[ob] = True
    for vs, vb in zip(small.outputs, big.outputs):
        if not carries.get(vb):
            return f"output {vb.name!r} does not carry the batch along axis 0"
    return None


def worth_looping(small: Graph) -> bool:
    """Enough arithmetic per byte of weights in the slice's model (imported, unoptimized) that each slice
    re-reading the weights costs little (see the constant)."""
    from tensorforge.compiler.ir.analysis import graph_flops

    params = max(sum(p.type.nbytes for p in small.params), 1)
    return graph_flops(small) / 2 / params >= MIN_FLOPS_PER_PARAM_BYTE


def slicing(proto, shapes: Mapping, symbolic, dynamic: Mapping, feeds: Mapping, memo=None):
    """(the feeds of one slice, the batch inputs, the number of slices) where the ONNX model `proto` (bound by
    `shapes`; the inputs in `symbolic` take the fed shapes) runs `feeds` as slices of its dynamic axis 0's lower
    bound, proven the same and worth it; else None (then the batch is compiled). memo: the model's constants, read
    once (compiler/ir/constants.py)."""
    from tensorforge.compiler.driver import import_model

    batch = sorted(n for n, r in dynamic.items() if 0 in r)
    if not batch or any(n not in feeds or isinstance(feeds[n], (list, tuple)) for n in batch):
        return None
    sizes = {np.shape(feeds[n])[0] for n in batch}
    lows = {dynamic[n][0][0] for n in batch}
    if len(sizes) != 1 or len(lows) != 1:
        return None
    (b,), (b0,) = sizes, lows
    if b <= b0 or b % b0:
        return None
    small = {n: (np.asarray(v)[:b0] if n in batch else v) for n, v in feeds.items()}
    graphs = []
    for fed in (small, feeds):
        bound = dict(shapes, **{n: tuple(np.shape(fed[n])) for n in symbolic if n in fed})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graphs.append(import_model(proto, bound, memo=memo))
    why = loop_proof(graphs[0], graphs[1], set(batch), b0, b) or (
        None if worth_looping(graphs[0]) else "too little arithmetic per byte of weights")
    if why is not None:
        log.info("batch %d compiled, not run as %d slices of %d: %s", b, b // b0, b0, why)
        return None
    log.info("batch %d runs as %d slices of the batch-%d specialization", b, b // b0, b0)
    return small, batch, b // b0
