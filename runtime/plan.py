"""The execution plan as typed, immutable objects, and the executor that runs it: one of each for the CPU and the
CUDA runtime (runtime/model.py, runtime/cuda.py).

The plan arrives as JSON (built by compiler/backend/plan.py, checked by runtime/plan_check.py); `Plan.parse`
turns it into frozen dataclasses once, at load. The `Executor` owns what is shared by every run (parameters and
persistent state, filled once; the kernels) and hands out execution contexts: one per concurrent caller, each with
its own arena and input buffers, taken from a pool that grows on demand up to a bound and is reused afterwards.
Memory is reached through a small device interface (`HostMemory` here, `runtime.cuda.DeviceMemory` on a GPU), so
the layout logic exists once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ArtifactError, InputError
from .tvm_loader import as_tvm_tensor, numpy_dtype

ALIGNMENT = 64


@dataclass(frozen=True)
class Buffer:
    shape: tuple[int, ...]
    dtype: str
    arena_offset: int | None = None  # kernel results: an offset in the arena
    view_of: int | None = None  # a reshape (or bitcast) of another buffer's memory
    name: str | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * numpy_dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Param:
    buffer: int
    file: str | None = None  # member of the artifact holding the array
    splat: float | int | None = None  # every element equal to this
    external: str | None = None  # CUDA bundles: supplied by the caller (external_params)
    transpose: bool = False


@dataclass(frozen=True)
class Step:
    kernel: str
    args: tuple[int, ...]  # buffer ids, outputs last
    op: str = ""
    node: str = ""
    work: int | None = None  # multiply-adds or elements (compiler/backend/plan.py _work); None in older artifacts


@dataclass(frozen=True)
class Plan:
    buffers: tuple[Buffer, ...]
    inputs: tuple[tuple[str, int], ...]
    outputs: tuple[tuple[str, int], ...]
    params: tuple[Param, ...]
    steps: tuple[Step, ...]
    state: tuple[tuple[str, int], ...]
    arena_bytes: int
    cpu_features: tuple[str, ...]
    device: dict | None

    @staticmethod
    def parse(raw: dict) -> "Plan":
        """The typed plan of a JSON plan dict; ArtifactError naming the field if it is malformed."""
        field = "plan"
        try:
            field = "buffers"
            buffers = tuple(Buffer(tuple(int(d) for d in b["shape"]), str(b["dtype"]),
                                   None if b.get("arena_offset") is None else int(b["arena_offset"]),
                                   None if b.get("view_of") is None else int(b["view_of"]), b.get("name"))
                            for b in raw["buffers"])
            field = "inputs"
            inputs = tuple((str(e["name"]), int(e["buffer"])) for e in raw["inputs"])
            field = "outputs"
            outputs = tuple((str(e["name"]), int(e["buffer"])) for e in raw["outputs"])
            field = "params"
            params = tuple(Param(int(e["buffer"]), e.get("file"), e.get("splat"), e.get("external"),
                                 bool(e.get("transpose", False))) for e in raw["params"])
            field = "steps"
            steps = tuple(Step(str(s["kernel"]), tuple(int(a) for a in s["args"]), str(s.get("op", "")),
                               str(s.get("node", "")), None if s.get("work") is None else int(s["work"]))
                          for s in raw["steps"])
            field = "state"
            state = tuple((str(e["name"]), int(e["buffer"])) for e in raw.get("state", []))
            field = "arena_bytes"
            arena = int(raw.get("arena_bytes", 0))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"the plan's {field} are malformed ({type(e).__name__}: {e}): the artifact is "
                                f"damaged") from None
        n = len(buffers)
        for what, ids in (("input", [b for _, b in inputs]), ("output", [b for _, b in outputs]),
                          ("parameter", [p.buffer for p in params]), ("state", [b for _, b in state]),
                          ("view", [b.view_of for b in buffers if b.view_of is not None]),
                          ("step argument", [a for s in steps for a in s.args])):
            bad = [i for i in ids if not 0 <= i < n]
            if bad:
                raise ArtifactError(f"a {what} names buffer {bad[0]}, but the plan has {n} buffers: the artifact "
                                    f"is damaged")
        return Plan(buffers, inputs, outputs, params, steps, state, arena, tuple(raw.get("cpu_features", [])),
                    raw.get("device"))

    def root(self, i: int) -> int:
        """The buffer whose memory buffer i uses (itself unless a view)."""
        seen = set()
        while self.buffers[i].view_of is not None:
            if i in seen:
                raise ArtifactError(f"buffer {i} is a view of itself: the artifact is damaged")
            seen.add(i)
            i = self.buffers[i].view_of
        return i


POISON_ENV = "TENSORFORGE_POISON_MEMORY"


class HostMemory:
    """The CPU as a device: 64-byte aligned numpy arrays, wrapped once as TVM tensors (zero-copy).

    With $TENSORFORGE_POISON_MEMORY=1 every new arena and buffer is filled with 0xFF bytes (NaN as a float) before
    use, so a kernel reading memory it never wrote, or past its input, gives NaN instead of the zeros a fresh page
    happens to hold (the test suite runs this way: tests/conftest.py). A 1x1 AMX conv once read past its input and
    returned all NaN only when the arena held reused memory."""

    def empty(self, shape: Sequence[int], dtype: str):
        a = aligned_empty(shape, dtype)
        if a.ndim and os.environ.get(POISON_ENV) == "1":
            a.view(np.uint8)[...] = 0xFF
        return a

    def region(self, arena, offset: int, shape: Sequence[int], dtype: str):
        nbytes = int(np.prod(shape, dtype=np.int64)) * numpy_dtype(dtype).itemsize
        return arena[offset:offset + nbytes].view(numpy_dtype(dtype)).reshape(shape)

    def view(self, base, shape: Sequence[int], dtype: str):
        flat = base.reshape(-1)
        if flat.dtype != numpy_dtype(dtype):  # a bitcast view: the same bytes re-typed
            flat = flat.view(numpy_dtype(dtype))
        return flat.reshape(shape)

    def tensor(self, array, dtype: str):
        return as_tvm_tensor(array, dtype)


def aligned_empty(shape: Sequence[int], dtype, align: int = ALIGNMENT) -> np.ndarray:
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.empty(max(count, 1) * dtype.itemsize + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + max(count, 1) * dtype.itemsize].view(dtype)[:count].reshape(shape)


class Context:
    """One caller's memory: the arena, the buffers no other run may see (inputs and others outside the arena), and
    the kernel calls bound to them. `memory[i]` is the device object of buffer i (a numpy array on the CPU),
    `tensors[i]` what the kernels take."""

    __slots__ = ("memory", "tensors", "calls", "arena")

    def __init__(self, ex: "Executor"):
        plan, mem = ex.plan, ex.mem
        memory: list[Any] = list(ex.shared_memory)
        self.arena = mem.empty((max(plan.arena_bytes, ALIGNMENT),), "uint8")
        for i, b in enumerate(plan.buffers):
            if memory[i] is not None or b.view_of is not None:
                continue
            if b.arena_offset is not None:
                if b.arena_offset % ALIGNMENT or b.arena_offset < 0 or b.arena_offset + b.nbytes > plan.arena_bytes:
                    raise ArtifactError(f"buffer {i} lies outside the arena or is misaligned: the artifact is damaged")
                memory[i] = mem.region(self.arena, b.arena_offset, b.shape, b.dtype)
            else:
                memory[i] = mem.empty(b.shape, b.dtype)
        resolve_views(plan, mem, memory)
        self.memory = memory
        self.tensors = [t if t is not None else mem.tensor(m, b.dtype)
                        for t, m, b in zip(ex.shared_tensors, memory, plan.buffers)]
        self.calls = [(fn, [self.tensors[a] for a in s.args]) for fn, s in zip(ex.kernels, plan.steps)]


def resolve_views(plan: Plan, mem, memory: list) -> None:
    """Fill in every view whose base has memory (in order: a view's base may be a view)."""
    for i in range(len(plan.buffers)):
        b = plan.buffers[i]
        if b.view_of is None or memory[i] is not None:
            continue
        root = plan.root(i)
        if memory[root] is None:
            continue
        base_b = plan.buffers[root]
        if base_b.nbytes != b.nbytes:  # a bitcast view may change the element type, never the byte count
            raise ArtifactError(f"buffer {i} ({b.dtype}{list(b.shape)}) views buffer {root} of another size: the "
                                f"artifact is damaged")
        memory[i] = mem.view(memory[root], b.shape, b.dtype)


class Executor:
    """Runs a plan's kernels over execution contexts (see the module docstring). Thread-safe."""

    def __init__(self, plan: Plan, kernels: Sequence[Callable], mem, shared_memory: list, *,
                 max_concurrency: int, serial: Sequence[bool] | None = None, set_serial: Callable | None = None,
                 count_run: Callable | None = None):
        self.plan, self.kernels, self.mem = plan, list(kernels), mem
        self.shared_memory = shared_memory
        self.shared_tensors = [None if m is None else mem.tensor(m, b.dtype)
                               for m, b in zip(shared_memory, plan.buffers)]
        if int(max_concurrency) < 1:
            raise InputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        # a plan with persistent state updates it in place: one run at a time
        self.max_concurrency = 1 if plan.state else int(max_concurrency)
        self.serial = list(serial) if serial is not None else [False] * len(plan.steps)
        self.set_serial = set_serial
        self.count_run = count_run  # the thread pool's count of runs in flight (runtime/cpu_pool.py)
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        self._free: list[Context] = []
        self.first = Context(self)  # allocated at load: a plan that cannot be laid out fails there, not in a run
        self.created = 1
        self._free.append(self.first)

    @contextlib.contextmanager
    def context(self):
        """An execution context for one run: a free one, a new one while fewer than max_concurrency exist, or the
        next one another caller gives back."""
        with self._lock:
            while not self._free and self.created >= self.max_concurrency:
                self._available.wait()
            ctx = self._free.pop() if self._free else None
            if ctx is None:
                self.created += 1  # reserved under the lock, built outside it
        if ctx is None:
            try:
                ctx = Context(self)
            except BaseException:
                with self._lock:
                    self.created -= 1
                    self._available.notify()
                raise
        try:
            yield ctx
        finally:
            with self._lock:
                self._free.append(ctx)
                self._available.notify()

    def call_one(self, ctx: Context, i: int) -> None:
        """Kernel call i alone, on the pool or the caller as in a run (profiling)."""
        if self.set_serial is not None:
            self.set_serial(self.serial[i])
        try:
            fn, args = ctx.calls[i]
            fn(*args)
        finally:
            if self.set_serial is not None:
                self.set_serial(False)

    def execute(self, ctx: Context, calls: list | None = None) -> None:
        """Every kernel call in plan order (small kernels on the calling thread alone). A kernel that fails (its
        own checks: an index out of range, ...) raises InputError naming the node and op."""
        set_serial, flags = self.set_serial, self.serial
        serial = False
        i = 0
        if self.count_run is not None:
            self.count_run(1)
        try:
            for i, (fn, args) in enumerate(calls if calls is not None else ctx.calls):
                if set_serial is not None and flags[i] != serial:
                    serial = flags[i]
                    set_serial(serial)
                fn(*args)
        except Exception as e:
            step = self.plan.steps[i]
            text = str(e).strip()
            message = text.splitlines()[-1] if text else type(e).__name__
            raise InputError(f"kernel {step.kernel} (node {step.node!r}, op {step.op}) failed: {message}") from None
        finally:
            if serial:
                set_serial(False)
            if self.count_run is not None:
                self.count_run(-1)


class SharedBuffers:
    """Memory several CompiledModels of one model hold once (the specializations of a bundle, a decoder's step and
    prompt plans): parameters by content, persistent state by name. `params_by_file`: the plans name each parameter
    file by its content (a bundle's params/<sha>.npy), so the name is the key; otherwise each parameter's bytes are
    hashed."""

    def __init__(self, params_by_file: bool = False):
        self.params_by_file = params_by_file
        self.params: dict = {}
        self.state: dict[str, np.ndarray] = {}
        self._keep: dict[int, np.ndarray] = {}  # the arrays known by identity, kept alive: ids stay their own

    def constant(self, data: np.ndarray) -> None:
        """Know `data` by its identity from now on: a compiler's constant that will never change (a packed weight
        a dynamic model's memo lends its specializations, compiler/ir/constants.py)."""
        self._keep.setdefault(id(data), data)

    def param_key(self, entry, data) -> tuple:
        """How the models find a parameter they hold in common: its file, else its identity (a constant: read-only,
        or declared by `constant`), else its bytes."""
        if self.params_by_file:
            return ("file", entry.file)
        data = data() if callable(data) else data
        if isinstance(data, np.ndarray) and (not data.flags.writeable or self._keep.get(id(data)) is data):
            # a compiler's memoized constant (compiler/ir/constants.py), the same object in every specialization
            # that has it and never changed: known by its identity, not hashed
            self._keep.setdefault(id(data), data)
            return ("object", id(data))
        flat = np.ascontiguousarray(data)
        return (flat.dtype.str, flat.shape, hashlib.sha1(flat.view(np.uint8).reshape(-1)).hexdigest())
