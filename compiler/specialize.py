"""Models whose run-time inputs decide shapes: specialized on their values at first sight, and cached.

Some ONNX inputs decide an output's shape or an op's structure: Reshape's `shape`, Pad's `pads`, the `axes` of the
Reduce ops, Slice's `starts`/`ends`, TopK's `k`, Tile's `repeats`, Expand's `shape`, ConstantOfShape, Range, ...
The IR has static shapes, so the importer needs their values (it raises a `FrontendError` whose `needs_constant`
names the input). When such a value is a graph input, `compile_model` returns a `SpecializingModel` instead of
refusing the model: its `run(feeds)` takes those inputs' values from the feeds, compiles the model with them as
constants (and a sequence input's length and tensor shapes, and symbolic dimensions bound to the feeds' sizes), and
keeps the compiled model for the next run with the same values (an LRU of `MAX_SPECIALIZATIONS`). What the
runtime runs is an ordinary `CompiledModel`; `specialize(feeds)` returns it (to save it as an artifact, inspect
or profile it). torch.compile's recompile-on-new-shape works the same way; TensorRT asks for the values ahead.

`compile_model(model, dynamic={"x": {0: (1, 32)}})` asks for the same on purpose: dimension 0 of input x may be
anything from 1 to 32, and each size met is compiled exactly (a feed outside the range is an `InputError` naming
the dimension and its range). The first specialization (the ranges' lower bounds) is compiled at once, so that a
model the compiler refuses is refused by `compile_model`. An artifact (`save`) holds one specialization: artifacts
covering a range without the compiler are not built yet.

A first run with new values pays the compile (~0.05-0.5 s for small graphs, seconds for a large model); the model
logs it on the `tensorforge` logger. The compiles share what does not change with the shape: the constants
(`ConstantMemo`: read, transformed, packed once; the packed weights one buffer for all) and the kernels that differ
only in sizes (`backend.symbolic.SymbolicKernels`: built once over those sizes, linked into each later library).
Compiled specializations are also kept on disk (`cache_dir()`: the directory in TENSORFORGE_CACHE_DIR, else
~/.cache/tensorforge; "off" keeps none), keyed by the model, the values and shapes, the compile options, the host
CPU's features and the versions, so another process loads them instead of compiling; past TENSORFORGE_CACHE_MAX_MB
(4096) the least recently used are deleted. Thread-safe: one compile at a time, while runs of the specializations
already built go on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import numpy as np

from tensorforge.compiler.backend.symbolic import SymbolicKernels
from tensorforge.compiler.disk_cache import cache_dir, load_cached, store_cached
from tensorforge.compiler.ir import ConstantMemo
from tensorforge.runtime.bundle import flat_feeds, regroup
from tensorforge.runtime.plan import SharedBuffers
from tensorforge.runtime.errors import CompileError, FrontendError, InputError

log = logging.getLogger("tensorforge")

MAX_SPECIALIZATIONS = 64  # compiled models kept per SpecializingModel (least recently used dropped first)
def declared_inputs(proto) -> dict[str, tuple[list, np.dtype]]:
    """The ONNX graph's tensor inputs with a declared shape: {name: (dims, None where symbolic; numpy dtype)}."""
    return {name: (_dims(vi), np.dtype(_onnx_numpy_dtype(vi))) for name, vi in _graph_inputs(proto).items()
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")}


def check_shape(name: str, got, dims: list, ranges: Mapping[int, tuple[int, int]] | None = None) -> None:
    """An InputError unless the fed shape `got` of input `name` has the declared `dims` (None: any size), its
    dimensions in `ranges` within their (low, high)."""
    got, ranges = tuple(got), ranges or {}
    if len(got) != len(dims) or any(d is not None and d != g and i not in ranges
                                    for i, (d, g) in enumerate(zip(dims, got))):
        raise InputError(f"input {name!r} has shape {got}, but the model declares "
                         f"{['?' if d is None else d for d in dims]}")
    for axis, (low, high) in ranges.items():
        if not low <= got[axis] <= high:
            raise InputError(f"input {name!r} dimension {axis} is {got[axis]}, outside its dynamic range "
                             f"[{low}, {high}] (shape {got})")


def check_dynamic(proto, dynamic: Mapping) -> dict[str, dict[int, tuple[int, int]]]:
    """`dynamic` ({input: {axis: (low, high)}}) checked against the ONNX model's inputs; returns it normalized."""
    inputs = _graph_inputs(proto)
    out: dict[str, dict[int, tuple[int, int]]] = {}
    for name, axes in dynamic.items():
        if name not in inputs:
            raise CompileError(f"dynamic: {name!r} is not an input of the model; its inputs are {list(inputs)}")
        dims = _dims(inputs[name])
        if not isinstance(axes, Mapping):
            raise CompileError(f"dynamic[{name!r}] must map axes to (low, high) ranges, e.g. {{0: (1, 32)}}; "
                               f"got {axes!r}")
        out[name] = {}
        for axis, rng in axes.items():
            if not isinstance(axis, int) or not -len(dims) <= axis < len(dims):
                raise CompileError(f"dynamic[{name!r}]: axis {axis!r} is not an axis of its {len(dims)} dimensions")
            axis %= len(dims)
            try:
                low, high = (int(v) for v in rng)
            except (TypeError, ValueError):
                raise CompileError(f"dynamic[{name!r}][{axis}]: give a (low, high) range of sizes, got {rng!r}") \
                    from None
            if not 1 <= low <= high:
                raise CompileError(f"dynamic[{name!r}][{axis}]: the range ({low}, {high}) must have 1 <= low <= high")
            if dims[axis] is not None and not low <= dims[axis] <= high or dims[axis] is not None and low != high:
                raise CompileError(f"dynamic[{name!r}][{axis}]: the model fixes that dimension at {dims[axis]}")
            out[name][axis] = (low, high)
    return out


# A value the importer needs that the graph computes from its inputs (Range(0, n), Reshape(x, concat(a, b)), ...)
# is specialized on those inputs if they are integer or boolean tensors of at most this many elements each.
MAX_INDIRECT_ELEMENTS = 64


def specializable(error: FrontendError, proto) -> bool:
    """Can run-time values fix `error`: does it ask for the value (or the sequence shapes) of graph inputs?"""
    return bool(needed_inputs(error, proto))


def needed_inputs(error: FrontendError, proto) -> list[str]:
    """The graph inputs whose values (or sequence shapes) the importer asks for in `error`: the one it names, or,
    when it names a value computed inside the graph, the inputs that value is computed from (small integer or
    boolean ones only: `MAX_INDIRECT_ELEMENTS`). [] if there are none, or others."""
    name = getattr(error, "needs_constant", None) or getattr(error, "needs_shapes", None)
    inputs = _graph_inputs(proto)
    if name is None or name in inputs:
        return [] if name is None else [name]
    if getattr(error, "needs_constant", None) is None:
        return []
    producers = {out: node for node in proto.graph.node for out in node.output}
    constants = {t.name for t in proto.graph.initializer}
    found, seen, stack = [], set(), [name]
    while stack:
        v = stack.pop()
        if v in seen or v == "" or v in constants:
            continue
        seen.add(v)
        if v in inputs:
            found.append(v)
            continue
        node = producers.get(v)
        if node is None or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            return []  # not found in the graph, or computed in a subgraph: not followed
        stack.extend(node.input)
    for n in found:
        t = inputs[n].type.tensor_type
        dims = _dims(inputs[n]) if inputs[n].type.HasField("tensor_type") else [None]
        small = None not in dims and int(np.prod(dims, dtype=np.int64)) <= MAX_INDIRECT_ELEMENTS
        if not (small and np.dtype(_onnx_numpy_dtype(inputs[n])).kind in "iub") or not t.HasField("shape"):
            return []
    return sorted(found)


class SpecializingModel:
    """An ONNX model compiled per value of its shape-deciding inputs (see the module docstring). `compile_fn(proto,
    shapes)` compiles one specialization (compile_model with the caller's options)."""

    def __init__(self, proto, shapes: Mapping | None, compile_fn: Callable, first_error: FrontendError | None = None,
                 *, dynamic: Mapping | None = None, fingerprint: str = ""):
        self._proto = proto
        self._shapes = dict(shapes or {})
        self._compile = compile_fn
        # inputs whose values the importer needs, and sequence inputs (their lengths and shapes): learned as it asks,
        # rebound (never changed in place) so that a thread computing a key reads a whole set
        self._values: frozenset[str] = frozenset()
        self._sequences: frozenset[str] = frozenset()
        if first_error is not None:
            self._learn(first_error)
        self.dynamic = check_dynamic(proto, dynamic or {})
        self._cache: OrderedDict[tuple, object] = OrderedDict()
        self._meta: dict[tuple, dict] = {}  # what each cached specialization is for (bundle.json's entries)
        self._memo = ConstantMemo()  # the model's weights read, transposed, hashed and packed once for every shape
        self._buffers = SharedBuffers()  # ... and held in memory once by all the specializations
        self._kernels = SymbolicKernels()  # kernels over the sizes that change, compiled once for every shape
        self._fingerprint = fingerprint
        self._model_id_: str | None = None  # the disk cache's name for the model: hashed when first needed
        self._lock = threading.Lock()       # the cache
        self._compiling = threading.Lock()  # one compile at a time
        inputs = _graph_inputs(proto)
        self.input_names = list(inputs)
        self.output_names = [vi.name for vi in proto.graph.output]
        self._symbolic = {name for name, vi in inputs.items()
                          if (_has_symbolic_dims(vi) or name in self.dynamic) and name not in self._shapes}
        self._declared = {name: dims for name, (dims, _) in declared_inputs(proto).items()}

    @property
    def value_inputs(self) -> list[str]:
        """The inputs whose values are compiled in (so far: learned from the importer on the first runs)."""
        return sorted(self._values)

    @property
    def sequence_inputs(self) -> list[str]:
        """The sequence inputs (their lengths and tensor shapes are compiled in)."""
        return sorted(self._sequences)

    @property
    def specializations(self) -> int:
        return len(self._cache)

    def run(self, feeds: Mapping) -> list:
        """Run the specialization for these feeds (compiled on first sight). A sequence input is fed as a list of
        arrays and a sequence output comes back as one."""
        compiled = self.specialize(feeds)
        return regroup(self.output_names, compiled.output_names, compiled.run(self._flat(feeds)))

    @property
    def input_specs(self) -> dict[str, tuple[tuple, str]]:
        """{input: (shape, dtype)} as the model declares them, None for a dimension decided at run time (a
        sequence input: shape None)."""
        out = {}
        for name, vi in _graph_inputs(self._proto).items():
            if not vi.type.HasField("tensor_type"):
                out[name] = (None, "sequence")
                continue
            dims = self._declared.get(name)
            ranges = self.dynamic.get(name, {})
            shape = None if dims is None else tuple(None if i in ranges else d for i, d in enumerate(dims))
            out[name] = (shape, np.dtype(_onnx_numpy_dtype(vi)).name)
        return out

    def benchmark(self, feeds: Mapping, repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per run of the specialization for these feeds (compiled first if new), as CompiledModel's."""
        return self.specialize(feeds).benchmark(self._flat(feeds), repeat, warmup)

    def profile(self, feeds: Mapping, repeat: int = 10) -> list[dict]:
        """Each kernel call's median time in the specialization for these feeds, as CompiledModel's."""
        return self.specialize(feeds).profile(self._flat(feeds), repeat)

    def _flat(self, feeds: Mapping) -> dict:
        return flat_feeds(feeds, self._values)

    def specialize(self, feeds: Mapping):
        """The `CompiledModel` for these feeds' values (and sequence and symbolic shapes), compiled on first sight."""
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {self.input_names}")
        for name, dims in self._declared.items():  # before compiling: a wrong shape is the feed's fault
            if name in feeds and name not in self._values and not isinstance(feeds[name], (list, tuple)):
                check_shape(name, np.shape(feeds[name]), dims, self.dynamic.get(name, {}))
        with self._lock:
            hit = self._cached(self._key(feeds))
        if hit is not None:
            return hit
        with self._compiling:  # one compile at a time; runs of the specializations already built go on meanwhile
            return self._build(feeds)

    def _build(self, feeds: Mapping):
        """The specialization for `feeds`: cached, a loop over a smaller batch's (compiler/batch_loop.py), loaded
        from the disk cache, or compiled. Under self._compiling."""
        with self._lock:
            key = self._key(feeds)  # with the value inputs another thread's compile learned
            hit = self._cached(key)
        if hit is not None:
            return hit
        meta = self._describe(feeds)
        compiled, loop = self._loop_for(feeds)
        if compiled is not None:
            meta["loop"] = loop
        else:
            compiled = self._load(key)
            if compiled is None:
                compiled = self._compile_for(feeds)
                key = self._key(feeds)  # with every value input learned while compiling
                self._store(key, compiled)
        with self._lock:
            self._cache[key] = compiled
            self._meta[key] = meta
            while len(self._cache) > MAX_SPECIALIZATIONS:
                self._meta.pop(self._cache.popitem(last=False)[0], None)
        return compiled

    def _loop_for(self, feeds: Mapping):
        """(a LoopedModel running these feeds as slices of the batch at the dynamic axis 0's lower bound, its
        bundle entry) where compiler/batch_loop.py proves it the same and worth it; else (None, None)."""
        from tensorforge.compiler.batch_loop import slicing
        from tensorforge.runtime.bundle import LoopedModel

        if self._values or self._sequences:
            return None, None
        plan = slicing(self._proto, self._shapes, self._symbolic, self.dynamic, feeds, self._memo)
        if plan is None:
            return None, None
        small, batch, times = plan
        base = self._build(small)
        if not hasattr(base, "plan"):  # a CUDA model: no looping
            return None, None
        with self._lock:
            base_key = self._key(small)
        return LoopedModel(base, batch, times), {"of_key": base_key, "inputs": batch, "times": times}

    def _describe(self, feeds: Mapping) -> dict:
        """What a specialization is for, as a bundle records it: the compiled-in values, the other inputs' shapes."""
        values = {}
        for n in sorted(self._values):
            a = np.asarray(feeds[n])
            values[n] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.reshape(-1).tolist()}
        shapes = {n: ([list(np.shape(x)) for x in v] if isinstance(v, (list, tuple)) else list(np.shape(v)))
                  for n, v in feeds.items() if n not in self._values}
        return {"values": values, "shapes": shapes}

    def _cached(self, key):
        """The cached specialization for `key` (marked most recently used), or None. Under self._lock."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def save(self, path) -> None:
        """Write the specializations compiled so far as one bundle (runtime/bundle.py), atomically: `runtime.load`
        gives a model that runs any of them, chosen by the feeds, without the compiler. Compile the ones to ship
        first (`specialize(feeds)` for each value or shape)."""
        from tensorforge.runtime import bundle

        with self._lock:
            entries = [(k, self._meta[k], m) for k, m in self._cache.items() if k in self._meta]
        compiled = [(k, m, model) for k, m, model in entries if "loop" not in m]
        index = {k: i for i, (k, _, _) in enumerate(compiled)}
        loops = [{**m, "loop": {"of": index[m["loop"]["of_key"]], "inputs": m["loop"]["inputs"],
                                "times": m["loop"]["times"]}}
                 for _, m, _ in entries if "loop" in m and m["loop"]["of_key"] in index]
        entries = [(m, model) for _, m, model in compiled]
        if not entries:
            inputs = self.value_inputs + self.sequence_inputs + sorted(self.dynamic)
            raise CompileError(f"nothing to save yet: this model is compiled per value or shape of its input(s) "
                               f"{inputs}; compile the specializations to ship with `model.specialize(feeds)` (or "
                               f"run it), then save them as one bundle (or make those inputs initializers)")
        meta = {"format": bundle.FORMAT, "version": bundle.VERSION, "inputs": self.input_names,
                "outputs": self.output_names, "value_inputs": self.value_inputs,
                "sequence_inputs": self.sequence_inputs, "specializations": [m for m, _ in entries] + loops}
        if not all(hasattr(model, "parts") for _, model in entries):
            raise CompileError("bundles hold CPU specializations; save a CUDA one with model.specialize(feeds).save()")
        bundle.write_bundle(os.fspath(path), meta, [model.parts() for _, model in entries])

    def specialize_shapes(self, shapes: Mapping[str, Sequence[int]]):
        """`specialize` for inputs of these shapes (the others at their ranges' lower bounds, as declared
        elsewhere): what to compile ahead of shipping a bundle. Not for models whose inputs' values decide shapes."""
        if self._values or self._sequences:
            raise CompileError(f"the values of {self.value_inputs + self.sequence_inputs} decide shapes: specialize "
                               f"with real feeds, model.specialize(feeds)")
        feeds = self._zeros()
        for name, shape in shapes.items():
            if name not in feeds:
                raise InputError(f"unknown input {name!r}; the model's inputs are {self.input_names}")
            feeds[name] = np.zeros(tuple(shape), feeds[name].dtype)
        return self.specialize(feeds)

    def _zeros(self) -> dict:
        """Zero feeds at every dynamic range's lower bound, the other dimensions as declared (symbolic ones 1)."""
        feeds = {}
        for name, vi in _graph_inputs(self._proto).items():
            lows = self.dynamic.get(name, {})
            shape = [lows[i][0] if i in lows else (d if d is not None else 1) for i, d in enumerate(_dims(vi))]
            feeds[name] = np.zeros(shape, _onnx_numpy_dtype(vi))
        return feeds

    def compile_lower_bounds(self) -> None:
        """Compile the specialization at every dynamic range's lower bound (the other dimensions as declared), so
        that a model the compiler refuses fails now. Where inputs' values decide shapes, the zeros fed here are no
        real values: a refusal then waits for the first run."""
        inputs = _graph_inputs(self._proto)
        if self._values or self._sequences or not all(vi.type.HasField("tensor_type") for vi in inputs.values()):
            return
        try:
            self.specialize(self._zeros())
        except FrontendError:
            if not self._values:
                raise
            log.info("no specialization compiled ahead: the values of %s decide shapes", self.value_inputs)

    # -- internals ---------------------------------------------------------------------------------------------
    @property
    def _model_id(self) -> str:
        if self._model_id_ is None:
            h = hashlib.sha256(self._proto.SerializeToString())
            h.update(repr(sorted(self._shapes.items())).encode() + self._fingerprint.encode())
            self._model_id_ = h.hexdigest()[:20]
        return self._model_id_

    def _path(self, key: tuple) -> str | None:
        root = cache_dir()
        if root is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return os.path.join(root, "specializations", self._model_id, digest + ".tfa")

    def _load(self, key: tuple):
        return load_cached(self._path(key), "specialization")

    def _store(self, key: tuple, compiled) -> None:
        store_cached(self._path(key), compiled, "specialization")

    def _learn(self, error: FrontendError) -> bool:
        """Note the inputs `error` asks for; False if it asks for nothing we can feed."""
        names = needed_inputs(error, self._proto)
        if getattr(error, "needs_shapes", None) is not None:
            self._sequences = self._sequences | frozenset(names)
        else:
            self._values = self._values | frozenset(names)
        return bool(names)

    def _key(self, feeds: Mapping) -> tuple:
        key = []
        for name in sorted(self._values):
            v = self._needed(feeds, name, "its value decides shapes")
            a = np.asarray(v)
            data = repr(a.tolist()) if a.dtype.kind == "O" else a.tobytes()
            key.append((name, a.dtype.str, a.shape, data))
        for name in sorted(self._sequences):
            v = self._needed(feeds, name, "it is a sequence")
            if not isinstance(v, (list, tuple)):
                raise InputError(f"input {name!r} is a sequence: feed it as a list of arrays, got {type(v).__name__}")
            key.append((name, tuple((np.asarray(x).shape, np.asarray(x).dtype.str) for x in v)))
        for name in sorted(self._symbolic - self._values - self._sequences):
            if name in feeds:
                key.append((name, np.shape(feeds[name])))
        return tuple(key)

    @staticmethod
    def _needed(feeds, name, why):
        if name not in feeds:
            raise InputError(f"missing input {name!r}: the model is compiled for its values at run time ({why})")
        return feeds[name]

    def _compile_for(self, feeds: Mapping):
        while True:
            values = {n: np.asarray(self._needed(feeds, n, "its value decides shapes")) for n in self._values}
            shapes = dict(self._shapes)
            for n in self._sequences:
                shapes[n] = [tuple(np.asarray(x).shape) for x in self._needed(feeds, n, "it is a sequence")]
            for n in self._symbolic - self._values - self._sequences:
                if n in feeds and not isinstance(feeds[n], (list, tuple)):
                    shapes[n] = tuple(np.shape(feeds[n]))
            proto = _with_constants(self._proto, values) if values else self._proto
            try:
                compiled = self._compile(proto, shapes or None, memo=self._memo if proto is self._proto else None,
                                         shared=self._buffers, kernels=self._kernels)
            except FrontendError as e:
                names = set(needed_inputs(e, self._proto))
                if names and names <= set(feeds) and not names <= self._values | self._sequences and self._learn(e):
                    continue
                raise
            log.info("compiled a specialization for %s", ", ".join(
                f"{n}={_short(values[n])}" for n in sorted(values)) or "these input shapes")
            return compiled


def _graph_inputs(proto) -> dict:
    """The ONNX graph's inputs that are not initializers, by name."""
    inits = {t.name for t in proto.graph.initializer}
    return {vi.name: vi for vi in proto.graph.input if vi.name not in inits}


def _dims(vi) -> list:
    """A graph input's declared dimensions, None where symbolic."""
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _onnx_numpy_dtype(vi):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)


def _has_symbolic_dims(vi) -> bool:
    t = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and t.HasField("shape") and any(
        not d.HasField("dim_value") for d in t.shape.dim)


def _with_constants(proto, values: Mapping[str, np.ndarray]):
    """A copy of the ONNX model whose graph inputs in `values` are initializers holding those values."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    keep = [vi for vi in m.graph.input if vi.name not in values]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    for name, v in values.items():
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    return m


def _short(a: np.ndarray) -> str:
    text = np.array2string(np.asarray(a), threshold=8, separator=",")
    return text if len(text) <= 60 else text[:57] + "..."
