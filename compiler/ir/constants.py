"""ConstantMemo: compile-time constants computed once for several compiles of one model.

A dynamic model (compiler/specialize.py) compiles the same ONNX model once per shape met. Its weights do not change
with the shape, yet each compile read every initializer out of the protobuf, transposed every MatMul weight, hashed
every parameter (cse) and packed every dense and conv weight again: for BERT-base ~2 s of each ~4 s specialization.
A memo kept by the dynamic model and carried by each graph it imports (`Graph.memo`) lets each of these be done
once: the importer takes its initializers from it, converters and passes ask it for a transform of a constant
(`derived`).

What it hands out is read-only (`flags.writeable = False`): entries are found by the identity of the array they
came from, so none of them may change after it was made. A graph without a memo (every ordinary compile) computes
everything as before.
"""

from __future__ import annotations

from typing import Callable, Hashable

import numpy as np


class ConstantMemo:
    def __init__(self):
        self._made: dict[Hashable, np.ndarray] = {}                          # key -> array
        self._derived: dict[tuple, tuple] = {}                                # (kind, ids of srcs) -> (srcs, result)
        self.checked: dict[Hashable, object] = {}  # anything verified once (the ONNX checker's verdict on a model)
        self._lent: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(read-only array) -> (it, its writable twin)

    def constant(self, key: Hashable, make: Callable[[], np.ndarray]) -> np.ndarray:
        """The array for `key` (an initializer's name), made by `make()` the first time and read-only."""
        hit = self._made.get(key)
        if hit is None:
            hit = self._made[key] = _frozen(make())
        return hit

    def derived(self, kind: Hashable, srcs: tuple, make: Callable, lend: bool = False):
        """`make()`, a transform `kind` of the arrays `srcs` (an array, or a list of arrays, returned read-only),
        computed once per tuple of source arrays. Only memoized when every source is read-only itself (else it
        could change, and the result with it). `lend`: `make()` returns one new array that nothing else holds (a
        packed weight, 64-byte aligned): it is handed out as a read-only view of itself, and `lent` gives the
        array back to the compile, which lets the runtime's parameter buffers be it (kernels never write
        parameters) instead of a copy."""
        if any(s.flags.writeable for s in srcs):
            return make()
        key = (kind, tuple(id(s) for s in srcs))
        hit = self._derived.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], srcs)):
            return hit[1]
        out = make()
        if lend:
            twin, out = out, out.view()
            out.flags.writeable = False
            self._lent[id(out)] = (out, twin)
        else:
            out = [_frozen(o) for o in out] if isinstance(out, (list, tuple)) else _frozen(out)
        self._derived[key] = (tuple(srcs), out)  # the sources kept alive: their ids stay their own
        return out


    def lent(self, a: np.ndarray) -> np.ndarray | None:
        """The writable array behind `a`, a read-only result of `derived(..., lend=True)`; None for any other."""
        hit = self._lent.get(id(a))
        return hit[1] if hit is not None and hit[0] is a else None


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.flags.writeable and a.flags.owndata:
        a.flags.writeable = False
    elif a.flags.writeable:  # a view: freezing it would leave its base writable under it; take a copy of our own
        a = a.copy(order="K")  # in its own memory order (a transposed view: a plain copy, not a transpose)
        a.flags.writeable = False
    return a
