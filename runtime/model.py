"""CompiledModel: runs an execution plan over a kernel library with memory allocated once, at load time.

The plan (JSON, built by compiler/backend/package.py):
    buffers  [{"shape", "dtype", "arena_offset"? | "view_of"?}]
                                                  every tensor of the program: kernel results live in one arena
                                                  (arena_bytes) at planned offsets; a view aliases another buffer
    inputs   [{"name", "buffer"}]                 copied into their buffers at the start of each run
    outputs  [{"name", "buffer"}]                 copied out at the end (so later runs cannot overwrite them)
    params   [{"buffer", "file" | "splat"}]       constants, filled once at load
    steps    [{"kernel", "args", "node", "op"}]   kernel calls in order; args are buffer ids, outputs last
    state    [{"name", "buffer"}]                 optional: persistent state (a training graph's parameters and
                                                  optimizer moments), filled at load like params, then updated
                                                  in place by the kernels; read and written through `state`
Buffers are 64-byte aligned numpy arrays wrapped once as TVM tensors; a run allocates nothing but its outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from typing import Mapping, Sequence

import numpy as np

from . import artifact
from .errors import ArtifactError, InputError
from .tvm_loader import STORAGE_DTYPES, as_tvm_tensor, caller_placement, init_runtime, load_kernels, numpy_dtype

ALIGNMENT = 64


def aligned_empty(shape: Sequence[int], dtype: str, align: int = ALIGNMENT) -> np.ndarray:
    dtype = numpy_dtype(dtype) if isinstance(dtype, str) else np.dtype(dtype)
    nbytes = max(int(np.prod(shape, dtype=np.int64)), 1) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset:offset + nbytes].view(dtype)[: int(np.prod(shape, dtype=np.int64))].reshape(shape)


def cpu_features() -> set[str]:
    """The CPU flags of this machine (Linux); empty if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


class CompiledModel:
    """A compiled model, ready to run. Build one with `compiler.compile_model` or `runtime.load`."""

    def __init__(self, plan: dict, kernels_path: str, params: list, *, owned_dir: str | None = None,
                 num_threads: int | None = None):
        self.plan = plan
        self._check_machine()
        init_runtime(num_threads)
        self._kernels_path = kernels_path
        self._dir = owned_dir
        if owned_dir:
            self._cleanup = weakref.finalize(self, shutil.rmtree, owned_dir, True)
        self._module = load_kernels(kernels_path)
        self._allocate(params)  # params are copied into their aligned buffers and not kept twice

    # -- setup ----------------------------------------------------------------------------------------------------------
    def _check_machine(self) -> None:
        need = set(self.plan.get("cpu_features", []))
        have = cpu_features()
        missing = sorted(need - have) if have else []
        if missing:
            raise ArtifactError(f"this model was compiled for a CPU with {', '.join(missing)}, which this machine "
                                f"lacks; recompile it here (tensorforge compile)")

    def _allocate(self, params: list) -> None:
        plan = self.plan
        arrays: list[np.ndarray | None] = [None] * len(plan["buffers"])
        # one arena for every tensor a kernel writes, at offsets chosen by the compiler's memory planner
        self._arena = aligned_empty((int(plan.get("arena_bytes", 0)),), "uint8")
        for i, b in enumerate(plan["buffers"]):
            if "arena_offset" in b:
                count = int(np.prod(b["shape"], dtype=np.int64))
                start = int(b["arena_offset"])
                nbytes = count * numpy_dtype(b["dtype"]).itemsize
                if start % ALIGNMENT or start + nbytes > self._arena.size:
                    raise ArtifactError(f"buffer {i} lies outside the arena or is misaligned: the artifact is damaged")
                arrays[i] = self._arena[start:start + nbytes].view(numpy_dtype(b["dtype"])).reshape(b["shape"])
            elif "view_of" not in b:
                arrays[i] = aligned_empty(b["shape"], b["dtype"])
        for i, b in enumerate(plan["buffers"]):
            if "view_of" in b:
                base = arrays[b["view_of"]]
                arrays[i] = base.reshape(b["shape"])
                if arrays[i].dtype != numpy_dtype(b["dtype"]):  # a bitcast view: the same bytes re-typed
                    arrays[i] = arrays[i].view(numpy_dtype(b["dtype"]))
        for entry, data in zip(plan["params"], params):
            dst = arrays[entry["buffer"]]
            if "splat" in entry:
                dst.fill(entry["splat"])
            else:
                data = data() if callable(data) else data  # artifacts read each parameter only when it is copied
                data = _as_bfloat16(data, dst) if plan["buffers"][entry["buffer"]]["dtype"] == "bfloat16" else data
                data = _as_storage_type(data, dst) if plan["buffers"][entry["buffer"]]["dtype"] in STORAGE_DTYPES \
                    else data
                if data.shape != dst.shape or data.dtype != dst.dtype:
                    raise ArtifactError(f"parameter for buffer {entry['buffer']} is {data.dtype}{list(data.shape)}, "
                                        f"the plan expects {dst.dtype}{list(dst.shape)}: the artifact is damaged")
                np.copyto(dst, data)
        self._arrays = arrays
        self._tensors = [as_tvm_tensor(a, b["dtype"]) for a, b in zip(arrays, plan["buffers"])]
        try:
            self._calls = [(self._module[s["kernel"]], [self._tensors[a] for a in s["args"]]) for s in plan["steps"]]
        except Exception as e:
            raise ArtifactError(f"the kernel library lacks a kernel the plan calls: {e}") from None
        self._inputs = [(i["name"], arrays[i["buffer"]]) for i in plan["inputs"]]
        self._outputs = [(o["name"], arrays[o["buffer"]]) for o in plan["outputs"]]
        self._state = {s["name"]: arrays[s["buffer"]] for s in plan.get("state", [])}

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
        return [n for n, _ in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self._outputs]

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {n: (a.shape, str(a.dtype)) for n, a in self._inputs}

    @property
    def num_kernels(self) -> int:
        return len(self.plan["steps"])

    # -- running --------------------------------------------------------------------------------------------------------
    def _bind(self, feeds: Mapping[str, np.ndarray]) -> None:
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        names = set(self.input_names)
        unknown = sorted(set(feeds) - names)
        missing = [n for n in self.input_names if n not in feeds]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            if missing:
                parts.append(f"missing input(s) {missing}")
            raise InputError("; ".join(parts) + f"; the model's inputs are {self.input_names}")
        for name, dst in self._inputs:
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
            np.copyto(dst, src)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; returns fresh arrays, one per output, in the model's output order."""
        self._bind(feeds)
        self._execute()
        return [a.copy() for _, a in self._outputs]

    def _execute(self) -> None:
        """Every kernel call of the plan, with the calling thread off the thread pool's cores (tvm_loader)."""
        with caller_placement.placed():
            for fn, args in self._calls:
                fn(*args)

    __call__ = run

    def benchmark(self, feeds: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per run, `repeat` samples after `warmup` runs."""
        self._bind(feeds)
        for _ in range(warmup):
            self._execute()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._execute()
            times.append(time.perf_counter() - t0)
        return times

    def profile(self, feeds: Mapping[str, np.ndarray], repeat: int = 10) -> list[dict]:
        """Median time of each kernel call over `repeat` runs, in plan order: [{"kernel", "op", "node", "ms"}]."""
        self._bind(feeds)
        samples = [[] for _ in self._calls]
        self._execute()  # the first run finds the thread pool's cores (tvm_loader.CallerPlacement)
        with caller_placement.placed():
            for _ in range(repeat + 1):
                for i, (fn, args) in enumerate(self._calls):
                    t0 = time.perf_counter()
                    fn(*args)
                    samples[i].append(time.perf_counter() - t0)
        return [{"kernel": s["kernel"], "op": s["op"], "node": s["node"], "ms": float(np.median(t[1:])) * 1e3}
                for s, t in zip(self.plan["steps"], samples)]

    # -- persistence ----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the artifact atomically (see runtime/artifact.py)."""
        params = [self._arrays[entry["buffer"]] for entry in self.plan["params"]]
        artifact.write_artifact(os.fspath(path), self.plan, self._kernels_path, params)


def load(path: str | os.PathLike, num_threads: int | None = None, device_id: int = 0, external_params=None):
    """Load an artifact written by `save` (needs numpy and TVM's runtime only). A CUDA artifact gives a
    `runtime.cuda.CudaModel` on GPU `device_id`, set up at once: without a usable GPU this raises
    `runtime.cuda.DeviceError` (a RuntimeError) naming what is missing; `external_params` supplies the weights
    a CUDA artifact names instead of storing (benchmarks/cuda.py ships artifacts that way)."""
    tmp = tempfile.mkdtemp(prefix="tensorforge-")
    try:
        plan, kernels, params = artifact.read_artifact(os.fspath(path), tmp)
        if (plan.get("device") or {}).get("kind") == "cuda":
            from .cuda import CudaModel

            init_runtime(num_threads)
            return CudaModel(plan, kernels, params, owned_dir=tmp, device_id=device_id,
                             external_params=external_params)
        if plan.get("device"):
            raise ArtifactError(f"artifact {os.fspath(path)!r} is for device {plan['device'].get('kind')!r}, which "
                                f"this runtime does not know")
        return CompiledModel(plan, kernels, params, owned_dir=tmp, num_threads=num_threads)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
