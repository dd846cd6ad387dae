"""CompiledModel: runs an execution plan over a kernel library with memory allocated once, at load time.

The plan (JSON, built by compiler/backend/plan.py):
    buffers  [{"shape", "dtype", "arena_offset"? | "view_of"?}]
                                                  every tensor of the program: kernel results live in one arena
                                                  (arena_bytes) at planned offsets; a view aliases another buffer
    inputs   [{"name", "buffer"}]                 copied into their buffers at the start of each run
    outputs  [{"name", "buffer"}]                 copied out at the end (so later runs cannot overwrite them)
    params   [{"buffer", "file" | "splat"}]       constants, filled once at load
    steps    [{"kernel", "args", "node", "op", "work"}]
                                                  kernel calls in order; args are buffer ids, outputs last;
                                                  work: the kernel's size (small ones run on the caller alone)
    state    [{"name", "buffer"}]                 optional: persistent state (a training graph's parameters and
                                                  optimizer moments), filled at load like params, then updated
                                                  in place by the kernels; read and written through `state`
Buffers are 64-byte aligned numpy arrays wrapped once as TVM tensors; a run allocates nothing but its outputs. The
typed plan and the executor (execution contexts for concurrent callers) are runtime/plan.py's, shared with the
CUDA runtime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import weakref
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from . import artifact, cpu_pool
from .cpu_features import AMX_FLAGS, cpu_features, request_amx  # noqa: F401 (cpu_features: public here too)
from .errors import ArtifactError, InputError
from .plan import (ALIGNMENT, Executor, HostMemory, Plan, SharedBuffers, aligned_empty,  # noqa: F401 (re-exported)
                   resolve_views)
from .tvm_loader import STORAGE_DTYPES, default_num_threads, init_runtime, load_kernels, numpy_dtype


def _as_bfloat16(data: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A bfloat16 parameter as `dst` holds it: .npy files store ml_dtypes.bfloat16 as raw 2-byte records (|V2), and
    uint16 bit patterns are accepted too."""
    if data.dtype != dst.dtype and data.dtype.itemsize == 2 and (data.dtype.kind in "Vu" or
                                                                 data.dtype.name == "bfloat16"):
        return np.ascontiguousarray(data).view(dst.dtype).reshape(data.shape)
    return data


def _as_storage_type(data: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """A float8/int4/... parameter as `dst` holds it: .npy files store ml_dtypes' types as raw 1-byte records (|V1),
    and uint8 bytes are accepted too."""
    if data.dtype != dst.dtype and data.dtype.itemsize == 1 and data.dtype.kind in "Vu":
        return np.ascontiguousarray(data).view(dst.dtype).reshape(data.shape)
    return data


def _runs_in_place(data, b) -> bool:
    """Can the kernels take `data` as buffer `b` where it lies: its type, C order, aligned, writable (DLPack exports
    no read-only array)."""
    return (isinstance(data, np.ndarray) and data.shape == tuple(b.shape) and data.dtype == numpy_dtype(b.dtype)
            and data.flags.c_contiguous and data.flags.writeable and data.ctypes.data % ALIGNMENT == 0)


# Kernels with less work than this (multiply-adds or elements, the plan's per-step "work") run on the calling
# thread alone: handing a loop out to the pool costs a few microseconds, more than such a kernel takes on one core.
SERIAL_WORK = 100_000


class CompiledModel:
    """A compiled model, ready to run. Build one with `compiler.compile_model` or `runtime.load`.

    Thread-safe: `run` may be called from many threads at once. Parameters and kernels are shared; each concurrent
    run takes an execution context (its own arena and input buffers) from a pool that grows on demand up to
    `max_concurrency` (default: the number of CPUs) and is reused afterwards, so a steady state allocates nothing
    but the returned outputs. A caller beyond that bound waits for a context. A plan with persistent state (a
    training step updates it in place) runs one call at a time."""

    def __init__(self, plan: dict, kernels_path: str, params: list, *, owned_dir: str | None = None,
                 num_threads: int | None = None, max_concurrency: int | None = None, thread_pool: str = "tensorforge",
                 shared: SharedBuffers | None = None, map_params: bool = False, adopt: Collection[int] = ()):
        if thread_pool not in ("tensorforge", "tvm"):
            raise InputError(f"thread_pool must be 'tensorforge' or 'tvm', got {thread_pool!r}")
        self.plan = plan
        self.program = Plan.parse(plan)
        self._check_machine()
        init_runtime(num_threads)
        self._kernels_path = kernels_path
        self._dir = owned_dir
        if owned_dir:
            self._cleanup = weakref.finalize(self, shutil.rmtree, owned_dir, True)
        self._module = load_kernels(kernels_path)
        # thread_pool="tvm" keeps TVM's own pool (static split, pinned workers): the baseline of
        # benchmarks/contention.py
        own_pool = cpu_pool.adopt(kernels_path) if thread_pool == "tensorforge" else False
        try:
            kernels = [self._module[s.kernel] for s in self.program.steps]
        except Exception as e:
            raise ArtifactError(f"the kernel library lacks a kernel the plan calls: {e}") from None
        mem = HostMemory()
        # copied into aligned buffers, or mapped, or (`adopt`: indices of `params` made by the compile that made
        # this model and held by no one else) run on where they lie
        shared = self._load_params(mem, params, shared, map_params, frozenset(adopt))
        serial = [s.work is not None and s.work < SERIAL_WORK for s in self.program.steps]
        self._executor = Executor(self.program, kernels, mem, shared,
                                  max_concurrency=max_concurrency if max_concurrency is not None
                                  else default_num_threads(),
                                  serial=serial, set_serial=cpu_pool.serial_setter() if own_pool else None,
                                  count_run=cpu_pool.run_counter() if own_pool else None)
        first = self._executor.first
        self._arena, self._arrays = first.arena, first.memory  # the first context's, for inspection
        self._input_specs = [(name, first.memory[b]) for name, b in self.program.inputs]
        self._state = {name: shared[b] for name, b in self.program.state}
        self._shared = shared
        self._binding = None  # run_dlpack's, made on its first call

    @property
    def max_concurrency(self) -> int:
        return self._executor.max_concurrency

    @property
    def contexts(self) -> int:
        """Execution contexts allocated so far (at most max_concurrency)."""
        return self._executor.created

    # -- setup ----------------------------------------------------------------------------------------------------------
    def _check_machine(self) -> None:
        need = set(self.plan.get("cpu_features", []))
        have = cpu_features()
        missing = sorted(need - have) if have else []
        if missing:
            raise ArtifactError(f"this model was compiled for a CPU with {', '.join(missing)}, which this machine "
                                f"lacks; recompile it here (tensorforge compile)")
        if any(f in need for f in AMX_FLAGS):
            request_amx()

    def _load_params(self, mem: HostMemory, params: list, among: SharedBuffers | None = None,
                     map_params: bool = False, adopt: frozenset = frozenset()) -> list:
        """The shared buffers: parameters and persistent state (filled once, here, or taken from the models
        `among` holds memory with), and views of them. With `map_params`, a parameter read from an artifact
        (a callable in `params`) whose array lies aligned in the file's mapping is used where it lies."""
        prog = self.program
        shared: list = [None] * len(prog.buffers)
        state_names = {b: name for name, b in prog.state}
        for index, (entry, data) in enumerate(zip(prog.params, params)):
            b = prog.buffers[entry.buffer]
            key = None
            if among is not None:
                if entry.buffer in state_names:
                    key, pool = state_names[entry.buffer], among.state
                elif entry.splat is None and entry.external is None:
                    key, pool = among.param_key(entry, data), among.params
                have = pool.get(key) if key is not None else None
                if have is not None and have.shape == tuple(b.shape) and have.dtype == numpy_dtype(b.dtype):
                    shared[entry.buffer] = have  # parameters are never written; state is one for all the models
                    continue
            if index in adopt and entry.buffer not in state_names and _runs_in_place(data, b):
                shared[entry.buffer] = data  # made for this model alone by its compile; parameters are never written
                if key is not None:
                    pool[key] = data
                continue
            if map_params and callable(data) and entry.buffer not in state_names:
                data = data()
                if _runs_in_place(data, b):
                    shared[entry.buffer] = data  # the file's pages, copy-on-write; parameters are never written
                    if key is not None:
                        pool[key] = data
                    continue
            dst = shared[entry.buffer] = mem.empty(b.shape, b.dtype)
            if key is not None:
                pool[key] = dst
            if entry.splat is not None:
                dst.fill(entry.splat)
                continue
            if entry.external is not None:
                raise ArtifactError(f"parameter {entry.external!r} is external: only CUDA bundles take external "
                                    f"parameters")
            data = data() if callable(data) else data  # artifacts read each parameter only when it is copied
            data = _as_bfloat16(data, dst) if b.dtype == "bfloat16" else data
            data = _as_storage_type(data, dst) if b.dtype in STORAGE_DTYPES else data
            if data.shape != dst.shape or data.dtype != dst.dtype:
                raise ArtifactError(f"parameter for buffer {entry.buffer} is {data.dtype}{list(data.shape)}, "
                                    f"the plan expects {dst.dtype}{list(dst.shape)}: the artifact is damaged")
            np.copyto(dst, data)
        resolve_views(prog, mem, shared)  # views of parameters and state are shared too
        return shared

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The persistent state buffers themselves (not copies): writing into them changes the model's state."""
        return dict(self._state)

    def read_state(self, name: str) -> np.ndarray:
        """A copy of persistent state `name` (the same call reads a CudaModel's state from the GPU)."""
        if name not in self._state:
            raise InputError(f"unknown state {name!r}")
        return self._state[name].copy()

    def write_state(self, name: str, value: np.ndarray) -> None:
        if name not in self._state:
            raise InputError(f"unknown state {name!r}")
        np.copyto(self._state[name], np.asarray(value, self._state[name].dtype))

    # -- metadata -------------------------------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [n for n, _ in self.program.inputs]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self.program.outputs]

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (a.shape, str(a.dtype)) for n, a in self._input_specs}

    @property
    def num_kernels(self) -> int:
        return len(self.plan["steps"])

    # -- running --------------------------------------------------------------------------------------------------------
    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The feeds as arrays in input order, each checked against its input's shape and dtype."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        names = self.input_names
        unknown = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise InputError("; ".join(parts) + f"; the model's inputs are {names}")
        out = []
        for name, dst in self._input_specs:
            src = feeds[name]
            if not isinstance(src, np.ndarray):
                src = np.asarray(src)
            if dst.dtype != src.dtype and src.dtype == np.uint16 and dst.dtype.itemsize == 2 and dst.dtype.kind == "V":
                src = src.view(dst.dtype)  # bfloat16 given as its bit patterns
            elif dst.dtype != src.dtype and src.dtype == np.uint8 and dst.dtype.name in STORAGE_DTYPES:
                src = src.view(dst.dtype)  # float8, int4, ... given as their bytes
            if src.shape != dst.shape:
                raise InputError(f"input {name!r} has shape {list(src.shape)}, but the model was compiled for "
                                 f"{list(dst.shape)}; pass an array of that shape or recompile with "
                                 f"--shape {name}={'x'.join(map(str, src.shape)) or 'scalar'} "
                                 f"(shapes={{{name!r}: {tuple(src.shape)}}})")
            if src.dtype != dst.dtype:
                how = (f".astype(np.{dst.dtype})" if dst.dtype.name not in STORAGE_DTYPES | {"bfloat16"} else
                       f".astype(ml_dtypes.{dst.dtype.name}), or pass its bit patterns as "
                       f"uint{8 * dst.dtype.itemsize}")
                raise InputError(f"input {name!r} has dtype {src.dtype}, the model expects {dst.dtype}; "
                                 f"convert it with {how}")
            out.append(src)
        return out

    @contextlib.contextmanager
    def _bound(self, feeds):
        """An execution context with the feeds copied in (stateful plans: one at a time, see Executor)."""
        srcs = self._check_feeds(feeds)
        with self._executor.context() as ctx:
            for (_, b), src in zip(self.program.inputs, srcs):
                np.copyto(ctx.memory[b], src)
            yield ctx

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; returns fresh arrays, one per output, in the model's output order. Safe to call from
        several threads at once (see the class docstring)."""
        with self._bound(feeds) as ctx:
            self._executor.execute(ctx)
            return [ctx.memory[b].copy() for _, b in self.program.outputs]

    __call__ = run

    def run_dlpack(self, inputs: Sequence, empty: Callable[[tuple, str], Any]) -> list:
        """Run without copying: `inputs` in input order, anything with __dlpack__ (torch tensors, numpy arrays) of
        the input's shape and dtype, read where they lie when they are contiguous and 64-byte aligned (else
        copied in); each output is made by `empty(shape, dtype name)` (an object with __dlpack__, e.g. a
        torch.empty) and the kernel computing it writes it there. Returns those objects (one object for outputs of
        one buffer). Outputs that are an input, a parameter or share memory with another output are copied."""
        import tvm_ffi

        if self._binding is None:
            self._binding = _Binding(self.program, self._shared)
        bind = self._binding
        if len(inputs) != len(bind.inputs):
            raise InputError(f"{len(inputs)} inputs given, the model takes {len(bind.inputs)} ({self.input_names})")
        buffers = self.program.buffers
        with self._executor.context() as ctx:
            tensors = {}
            for (name, b), x in zip(self.program.inputs, inputs):
                t = tvm_ffi.from_dlpack(x)
                if tuple(t.shape) != buffers[b].shape or str(t.dtype) != buffers[b].dtype:
                    raise InputError(f"input {name!r} is {t.dtype}{list(t.shape)}, the model expects "
                                     f"{buffers[b].dtype}{list(buffers[b].shape)}")
                if b in bind.roots and t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0:
                    tensors[b] = t
                else:
                    np.copyto(ctx.memory[b], np.from_dlpack(x))
            outs = []
            for (_, b), own, same in zip(self.program.outputs, bind.outputs, bind.same):
                if same is not None:  # the same buffer as an earlier output: the same object
                    outs.append(outs[same])
                    continue
                outs.append(empty(buffers[b].shape, buffers[b].dtype))
                if own:
                    t = tvm_ffi.from_dlpack(outs[-1])
                    if t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0:
                        tensors[b] = t
                        r = self.program.root(b)
                        if r != b:  # the output is a view (a reshape) of the kernel result: that result is bound
                            tensors[r] = bind.create_view(t, *bind.typed[r], 0)
            for v, r in bind.views:
                if r in tensors and v not in tensors:
                    tensors[v] = bind.create_view(tensors[r], *bind.typed[v], 0)
            calls = ctx.calls
            if tensors:
                calls = list(calls)
                for i, uses in bind.uses:
                    fn, args = calls[i]
                    args = list(args)
                    for j, a in uses:
                        args[j] = tensors.get(a, args[j])
                    calls[i] = (fn, args)
            self._executor.execute(ctx, calls)
            for (_, b), out, same in zip(self.program.outputs, outs, bind.same):
                if b not in tensors and same is None:
                    np.copyto(np.from_dlpack(out), ctx.memory[b])
        return outs

    def benchmark(self, feeds: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per run, `repeat` samples after `warmup` runs."""
        with self._bound(feeds) as ctx:
            for _ in range(warmup):
                self._executor.execute(ctx)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                self._executor.execute(ctx)
                times.append(time.perf_counter() - t0)
        return times

    def profile(self, feeds: Mapping[str, np.ndarray], repeat: int = 10) -> list[dict]:
        """Median time of each kernel call over `repeat` runs, in plan order: [{"kernel", "op", "node", "ms"}]."""
        ex = self._executor
        with self._bound(feeds) as ctx:
            samples = [[] for _ in ctx.calls]
            ex.execute(ctx)
            for _ in range(repeat + 1):
                for i in range(len(ctx.calls)):
                    t0 = time.perf_counter()
                    ex.call_one(ctx, i)
                    samples[i].append(time.perf_counter() - t0)
        return [{"kernel": s["kernel"], "op": s["op"], "node": s["node"], "ms": float(np.median(t[1:])) * 1e3}
                for s, t in zip(self.plan["steps"], samples)]

    # -- persistence ----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the artifact atomically (see runtime/artifact.py)."""
        artifact.write_artifact(os.fspath(path), *self.parts())

    def parts(self) -> tuple[dict, str, list]:
        """What an artifact (or a bundle, runtime/bundle.py) stores of this model: (plan, kernel library path,
        parameter arrays in plan order)."""
        return self.plan, self._kernels_path, [self._shared[entry["buffer"]] for entry in self.plan["params"]]


class _Binding:
    """Which kernel arguments a zero-copy run (CompiledModel.run_dlpack) points at the caller's memory: the inputs
    (never written, by the plan's rules), the outputs that are their own memory (an arena or context buffer no other
    output shares), and the views of either."""

    def __init__(self, program: Plan, shared: list):
        import tvm_ffi

        self.create_view = tvm_ffi.get_global_func("runtime.TVMTensorCreateView")
        self.inputs = [b for _, b in program.inputs]
        outputs = [b for _, b in program.outputs]
        by_root: dict[int, set] = {}
        for b in outputs:
            by_root.setdefault(program.root(b), set()).add(b)
        # an output copied from an input's memory (an identity, a reshape of an input) needs that input copied in
        roots = {b for b in self.inputs if program.buffers[b].view_of is None and b not in by_root}
        # an output is written in place where its memory (a kernel result, or a view of one) is no other output's
        # but its own (a buffer given as two outputs is one object)
        self.same = [outputs.index(b) if outputs.index(b) < k else None for k, b in enumerate(outputs)]
        self.outputs = [len(by_root[program.root(b)]) == 1 and shared[program.root(b)] is None
                        and program.root(b) not in self.inputs for b in outputs]
        roots |= {program.root(b) for b, own in zip(outputs, self.outputs) if own}
        self.roots = roots
        self.views = [(v, program.root(v)) for v in range(len(program.buffers))
                      if program.buffers[v].view_of is not None and program.root(v) in roots]
        bound = roots | {v for v, _ in self.views}
        # (shape, dtype) as TVM takes them, for each buffer a view may be made as: made once, not per run
        self.typed = {b: (tvm_ffi.Shape(program.buffers[b].shape), tvm_ffi.dtype(program.buffers[b].dtype))
                      for b in bound}
        self.uses = [(i, uses) for i, s in enumerate(program.steps)  # (step, its (argument, buffer) bound by a run)
                     if (uses := [(j, a) for j, a in enumerate(s.args) if a in bound])]


def load(path: str | os.PathLike, num_threads: int | None = None, device_id: int = 0, external_params=None,
         max_concurrency: int | None = None, thread_pool: str = "tensorforge", map_params: bool = False):
    """Load an artifact written by `save` (needs numpy and TVM's runtime only). A CUDA artifact gives a
    `runtime.cuda.CudaModel` on GPU `device_id`, set up at once: without a usable GPU this raises
    `runtime.cuda.DeviceError` (a RuntimeError) naming what is missing; `external_params` supplies the weights
    a CUDA artifact names instead of storing (benchmarks/cuda.py ships artifacts that way).

    `max_concurrency`: execution contexts (concurrent runs) at most, default the number of CPUs; `num_threads`:
    threads per parallel kernel (process-wide); `thread_pool="tvm"` keeps TVM's own thread pool (for comparison).
    A bundle (several specializations of one model, runtime/bundle.py) gives a `runtime.bundle.BundleModel`.

    `map_params=True` runs a CPU model on the parameters where they lie in the file (mapped copy-on-write: no
    copy, no memory of its own, pages shared with other processes mapping the file), instead of copies: loading
    430 MB of BERT's takes a fraction of the time. The file must then not be changed in place while the model
    lives (TensorForge replaces files atomically, which is safe; copying another file over it in place is not)."""
    from . import bundle

    if bundle.is_bundle(os.fspath(path)):
        return bundle.read_bundle(path, lambda plan, kernels, params, owned, shared: CompiledModel(
            plan, kernels, params, owned_dir=owned, num_threads=num_threads, max_concurrency=max_concurrency,
            thread_pool=thread_pool, shared=shared, map_params=map_params))
    tmp = tempfile.mkdtemp(prefix="tensorforge-")
    try:
        plan, kernels, params = artifact.read_artifact(os.fspath(path), tmp)
        if (plan.get("device") or {}).get("kind") == "cuda":
            from .cuda import CudaModel

            init_runtime(num_threads)
            return CudaModel(plan, kernels, params, owned_dir=tmp, device_id=device_id,
                             external_params=external_params, max_concurrency=max_concurrency)
        if plan.get("device"):
            raise ArtifactError(f"artifact {os.fspath(path)!r} is for device {plan['device'].get('kind')!r}, which "
                                f"this runtime does not know")
        return CompiledModel(plan, kernels, params, owned_dir=tmp, num_threads=num_threads,
                             max_concurrency=max_concurrency, thread_pool=thread_pool, map_params=map_params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

