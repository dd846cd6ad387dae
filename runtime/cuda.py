"""The GPU runtime: runs a CUDA artifact with TVM's runtime alone (tvm_ffi, libtvm_runtime.so and
libtvm_runtime_cuda.so; never `import tvm`). (Over 500 lines as one idea: the four loading steps below, device
memory and the model; the plan and its executor are runtime/plan.py's, shared with the CPU.)

Loading, in order (each step fails with a one-line `DeviceError` naming what is missing):
 1. the CUDA driver (libcuda.so.1, through ctypes): cuInit, the GPU count, the compute capability of the GPU
    used, which must be at least the artifact's architecture (SASS for sm_XY runs on sm_XY and later minors, the
    PTX of compute_XY is compiled by the driver for any newer GPU);
 2. libtvm_runtime_cuda.so (TVM's CUDA device API and module loader); it needs libcudart of the CUDA version TVM
    was built with (libcudart.so.13 for the 0.27 wheel), searched where pip's nvidia-* wheels and the CUDA
    toolkit put it, or at $TENSORFORGE_CUDART;
 3. the kernel library. The exported library embeds the CUDA *source* of the kernels; TVM's CUDA module loader
    (CUDAModuleCreateImpl in src/runtime/cuda/cuda_module.cc) compiles it when the library is loaded by calling
    the global function `tvm_callback_cuda_compile(source) -> bytes` (first byte '/' means PTX, anything else is
    handed to cuModuleLoadData, which takes cubin and fatbin alike). We register that callback: it hashes the
    source and answers with the fatbin that nvcc built at compile time for exactly that source (the artifact's
    kernels.fatbin, plan["device"]["source_sha256"]), so no NVRTC or nvcc is needed here;
 4. memory: one device arena for every tensor a kernel writes (offsets from the compiler's memory planner), plus
    one allocation per input, parameter and state buffer; parameters are copied to the device once.

A run copies each numpy input into its device buffer, launches every kernel, and copies the outputs back (one
synchronizing copy each). Tensors that already live on this GPU (PyTorch, CuPy or tvm_ffi tensors, anything with
__dlpack__) are taken zero-copy: the kernels read them where they are. `run(..., device_outputs=True)` returns
tvm_ffi tensors on the GPU (each a fresh copy, since the arena is reused) that torch.from_dlpack accepts.

CUDA graphs: TVM's runtime captures CUDA graphs only inside its Relax VM (`vm.builtin.cuda_graph.run_or_capture`);
TensorForge runs its static plan with a Python loop over kernel calls, so there are no CUDA graphs here (the plan is
static, so stream capture through cudart would be possible: see the issue's notes).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import re
import shutil
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from . import artifact
from .errors import ArtifactError, DeviceError, InputError  # noqa: F401 (DeviceError: raised here, re-exported)
from .plan import Executor, Plan, resolve_views
from .tvm_loader import _runtime_library, init_runtime

KDL_CUDA = 2  # DLPack device type of CUDA memory
ALIGNMENT = 64


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# -- 1. the driver ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    count: int
    driver_version: int  # e.g. 13000 for CUDA 13.0

    @property
    def arch(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


def _driver():
    path = os.environ.get("TENSORFORGE_LIBCUDA", "libcuda.so.1")
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        raise DeviceError(f"no CUDA driver: {path} cannot be loaded ({_first_line(e)}); running a CUDA artifact "
                          f"needs an NVIDIA GPU and its driver") from None


def _error_name(lib, code: int) -> str:
    name = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(int(code), ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
    except AttributeError:
        pass
    return f"error {code}"


def gpu_info(device_id: int = 0) -> GpuInfo:
    """Ask the CUDA driver about GPU `device_id`; DeviceError if there is no driver or no such GPU."""
    lib = _driver()
    rc = lib.cuInit(0)
    if rc != 0:
        raise DeviceError(f"the CUDA driver found no usable GPU: cuInit returned {_error_name(lib, rc)}")
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value == 0:
        raise DeviceError("the CUDA driver reports no GPU" + (f" ({_error_name(lib, rc)})" if rc else ""))
    if not 0 <= device_id < count.value:
        raise DeviceError(f"GPU {device_id} does not exist: this machine has {count.value} GPU(s)")
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), device_id)
    cc = []
    for attribute in (75, 76):  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
        v = ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(v), attribute, dev)
        cc.append(v.value)
    name = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(name, 256, dev)
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    return GpuInfo(name.value.decode(errors="replace"), (cc[0], cc[1]), count.value, version.value)


def check_arch(arch: str, info: GpuInfo, device_id: int = 0) -> None:
    """The artifact's SASS (sm_XY) or PTX (compute_XY) must be loadable by this GPU: capability >= XY."""
    m = re.fullmatch(r"sm_(\d+)(\d)a?", arch)
    if m is None:
        raise ArtifactError(f"the artifact names an unknown CUDA architecture {arch!r}: it is damaged")
    need = (int(m.group(1)), int(m.group(2)))
    if info.compute_capability < need:
        raise DeviceError(f"this artifact was compiled for {arch} (PTX compute_{arch[3:].rstrip('a')}), but GPU "
                          f"{device_id} ({info.name}) is {info.arch}: recompile with --arch {info.arch}")


# -- 2. TVM's CUDA runtime --------------------------------------------------------------------------------------------
_cuda_loaded = False


def _cudart_candidates(soname: str) -> list[str]:
    found = []
    env = os.environ.get("TENSORFORGE_CUDART")
    if env:
        found.append(env)
    for root in sys.path:  # pip's nvidia-cuda-runtime wheels: nvidia/cuda_runtime/lib, nvidia/cu13/lib, ...
        found += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", soname)))
    for pattern in ("/usr/local/cuda*/lib64/", "/usr/local/cuda*/lib/", "/usr/lib/x86_64-linux-gnu/"):
        found += sorted(glob.glob(pattern + soname))
    return found


def _cuda_runtime_library() -> str:
    env = os.environ.get("TENSORFORGE_TVM_RUNTIME_CUDA")
    return env or os.path.join(os.path.dirname(_runtime_library()), "libtvm_runtime_cuda.so")


def load_cuda_runtime() -> None:
    """Load libtvm_runtime_cuda.so (RTLD_GLOBAL), first the libcudart it needs if the loader cannot find it."""
    global _cuda_loaded
    if _cuda_loaded:
        return
    init_runtime()
    path = _cuda_runtime_library()
    if not os.path.exists(path):
        raise DeviceError(f"TVM's CUDA runtime {path} does not exist: install the apache-tvm wheel (it has "
                          f"libtvm_runtime_cuda.so) or set TENSORFORGE_TVM_RUNTIME_CUDA")
    tried: list[str] = []
    for _ in range(3):
        try:
            ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
            break
        except OSError as e:
            m = re.search(r"(libcudart\.so\.\d+)", str(e))
            if m is None:
                raise DeviceError(f"cannot load TVM's CUDA runtime {path}: {_first_line(e)}") from None
            candidates = [c for c in _cudart_candidates(m.group(1)) if c not in tried]
            if not candidates:
                raise DeviceError(f"TVM's CUDA runtime needs {m.group(1)}, which was not found: install the CUDA "
                                  f"runtime of that version (pip install nvidia-cuda-runtime) or set "
                                  f"TENSORFORGE_CUDART to its path") from None
            tried.append(candidates[0])
            try:
                ctypes.CDLL(candidates[0], ctypes.RTLD_GLOBAL)
            except OSError as e2:
                raise DeviceError(f"cannot load {candidates[0]}: {_first_line(e2)}") from None
    _cuda_loaded = True


# -- 3. the compile callback ------------------------------------------------------------------------------------------
_FATBINS: dict[str, bytes] = {}  # sha256 of CUDA source -> fatbin compiled from it
_callback: dict = {"registered": False, "previous": None, "misses": [], "served": 0}


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _compile_callback(source, *rest):
    text = str(source)
    fatbin = _FATBINS.get(source_digest(text))
    if fatbin is not None:
        _callback["served"] += 1
        return fatbin
    if _callback["previous"] is not None:  # a process that also compiles (tvm.support.nvcc registered one)
        return _callback["previous"](source, *rest)
    _callback["misses"].append(source_digest(text))
    raise ArtifactError(f"no compiled device code for CUDA source {source_digest(text)[:12]}")


def provide_fatbin(source_sha256: str, fatbin: bytes) -> None:
    """Make TVM's CUDA loader take `fatbin` for the CUDA source with this hash (registers the callback once)."""
    import tvm_ffi

    _FATBINS[source_sha256] = bytes(fatbin)
    if not _callback["registered"]:
        previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
        _callback["previous"] = previous
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile_callback, override=True)
        _callback["registered"] = True


def load_cuda_kernels(kernels_path: str, fatbin_path: str, source_sha256: str):
    """Load an exported CUDA kernel library with its nvcc fatbin (libtvm_runtime_cuda.so must be loaded)."""
    import tvm_ffi

    with open(fatbin_path, "rb") as f:
        fatbin = f.read()
    provide_fatbin(source_sha256, fatbin)
    misses = len(_callback["misses"])
    try:
        return tvm_ffi.load_module(kernels_path)
    except Exception as e:
        if len(_callback["misses"]) > misses:
            raise ArtifactError(f"the CUDA source in {os.path.basename(kernels_path)} (sha256 "
                                f"{_callback['misses'][-1][:12]}) is not the one its fatbin was compiled from "
                                f"({source_sha256[:12]}): the artifact is damaged; recompile it") from None
        raise DeviceError(f"cannot load the CUDA kernel library: {_first_line(e)}") from None


# -- 4. device memory -------------------------------------------------------------------------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class DeviceMemory:
    """Allocation, views and copies of tvm_ffi tensors on one device, through TVM runtime's global functions."""

    def __init__(self, device):
        import tvm_ffi

        self.device = device
        get = tvm_ffi.get_global_func
        self._alloc = get("runtime.TVMTensorAllocWithScope")
        self._view = get("runtime.TVMTensorCreateView")
        self._from_bytes = get("runtime.TVMTensorCopyFromBytes")
        self._to_bytes = get("runtime.TVMTensorCopyToBytes")
        self._copy = get("runtime.TVMTensorCopyFromTo")
        self._sync = get("runtime.Device_StreamSync")

    def empty(self, shape, dtype: str):
        import tvm_ffi

        return self._alloc(tvm_ffi.Shape([int(d) for d in shape]), tvm_ffi.dtype(dtype), self.device, None)

    def view(self, base, byte_offset: int, shape, dtype: str):
        """A tensor aliasing `base` at `byte_offset`. TVM's own views keep the offset in DLTensor.byte_offset, and
        compiled kernels insist on byte_offset == 0: move the offset into the data pointer instead."""
        import tvm_ffi

        v = self._view(base, tvm_ffi.Shape([int(d) for d in shape]), tvm_ffi.dtype(dtype), int(byte_offset))
        capsule = v._to_dlpack()
        dl = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
        dl.data = (dl.data or 0) + dl.byte_offset
        dl.byte_offset = 0
        return tvm_ffi.from_dlpack(capsule)

    def copy_in(self, tensor, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._from_bytes(tensor, ctypes.c_void_p(array.ctypes.data), array.nbytes)

    def copy_out(self, tensor, shape, dtype: str) -> np.ndarray:
        out = np.empty(tuple(shape), _np_dtype(dtype))
        self._to_bytes(tensor, ctypes.c_void_p(out.ctypes.data), out.nbytes)
        return out

    def copy(self, src, dst) -> None:
        self._copy(src, dst)

    def sync(self) -> None:
        self._sync(self.device, 0)


def init_cuda(device_id: int = 0, arch: str | None = None) -> GpuInfo:
    """Everything before loading a kernel library: the driver and GPU (DeviceError if absent), TVM's CUDA runtime."""
    info = gpu_info(device_id)
    if arch is not None:
        check_arch(arch, info, device_id)
    load_cuda_runtime()
    return info


# -- the model --------------------------------------------------------------------------------------------------------
class CudaModel:
    """A compiled model for an NVIDIA GPU; the same interface as `runtime.CompiledModel`. Made by
    `compiler.compile_model(..., target="cuda")` (which needs no GPU: the device is set up at the first run) or by
    `runtime.load` of a CUDA artifact (which sets it up at once, and fails with DeviceError without a GPU)."""

    def __init__(self, plan: dict, kernels_path: str, params: list, *, owned_dir: str | None = None,
                 device_id: int = 0, defer: bool = False, external_params: Mapping | None = None,
                 max_concurrency: int | None = None):
        device = plan.get("device") or {}
        if device.get("kind") != "cuda":
            raise ArtifactError("CudaModel needs a plan whose device is cuda")
        self.plan = plan
        self.program = Plan.parse(plan)
        if max_concurrency is not None and int(max_concurrency) < 1:
            raise InputError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self._max_concurrency = int(max_concurrency or 4)
        self.device_id = device_id
        self._kernels_path = kernels_path
        self._fatbin_path = os.path.join(os.path.dirname(kernels_path), device["fatbin"])
        if owned_dir:
            self._cleanup = weakref.finalize(self, shutil.rmtree, owned_dir, True)
        self._host_params = list(params)  # until the device holds them
        # params the artifact names instead of storing ({"external": name}): weights shipped separately
        self._external = dict(external_params or {})
        missing = sorted({e["external"] for e in plan["params"] if "external" in e} - set(self._external))
        if missing:
            raise ArtifactError(f"the artifact takes {len(missing)} parameter(s) from outside (external_params=), "
                                f"missing: {', '.join(missing[:5])}")
        self._ready = False
        self.gpu: GpuInfo | None = None
        if not defer:
            self._setup()

    # -- setup ----------------------------------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self._ready:
            return
        import tvm_ffi

        device = self.plan["device"]
        self.gpu = init_cuda(self.device_id, device["arch"])
        self._module = load_cuda_kernels(self._kernels_path, self._fatbin_path, device["source_sha256"])
        try:
            self._mem = DeviceMemory(tvm_ffi.device("cuda", self.device_id))
            self._allocate()
        except ArtifactError:
            raise
        except Exception as e:
            raise DeviceError(f"setting up the model on GPU {self.device_id} failed: {type(e).__name__}: "
                              f"{_first_line(e)}") from None
        self._host_params = None
        self._external = {}
        self._ready = True

    def _allocate(self) -> None:
        """Parameters and state on the device once (shared by every run); an executor whose contexts each hold a
        device arena and input buffers (runtime/plan.py, as on the CPU)."""
        plan, prog, mem = self.plan, self.program, self._mem
        shared: list = [None] * len(prog.buffers)
        for entry, data in zip(prog.params, self._host_params):
            b = prog.buffers[entry.buffer]
            if entry.splat is not None:
                data = np.full(b.shape, entry.splat, _np_dtype(b.dtype))
            elif entry.external is not None:
                data = np.asarray(self._external[entry.external])
                data = (data.T if entry.transpose else data).astype(_np_dtype(b.dtype))
                if tuple(data.shape) != b.shape:
                    raise InputError(f"external parameter {entry.external!r} is {list(data.shape)}, the plan "
                                     f"expects {list(b.shape)}")
            else:
                data = data() if callable(data) else data
                if tuple(data.shape) != b.shape or str(data.dtype) != b.dtype:
                    raise ArtifactError(f"parameter for buffer {entry.buffer} is {data.dtype}{list(data.shape)}, "
                                        f"the plan expects {b.dtype}{list(b.shape)}: the artifact is damaged")
            shared[entry.buffer] = mem.empty(b.shape if b.nbytes else [1], b.dtype)
            mem.copy_in(shared[entry.buffer], data)
        resolve_views(prog, _ViewAdapter(mem), shared)
        try:
            kernels = [self._module[s.kernel] for s in prog.steps]
        except Exception as e:
            raise ArtifactError(f"the kernel library lacks a kernel the plan calls: {_first_line(e)}") from None
        self._executor = Executor(prog, kernels, _ViewAdapter(mem), shared, max_concurrency=self._max_concurrency)
        self._shared = shared
        # where each input's buffer (or a view of it) is an argument: a tensor already on the GPU replaces it there
        views = {}
        for i, b in enumerate(prog.buffers):
            if b.view_of is not None:
                views.setdefault(b.view_of, []).append(i)
        self._input_uses = {}
        for name, buf in prog.inputs:
            ids = {buf: None, **{v: prog.buffers[v].shape for v in views.get(buf, [])}}
            self._input_uses[name] = [(c, a, ids[arg]) for c, st in enumerate(prog.steps)
                                      for a, arg in enumerate(st.args) if arg in ids]

    # -- metadata -------------------------------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [i["name"] for i in self.plan["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.plan["outputs"]]

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {name: (self.program.buffers[b].shape, self.program.buffers[b].dtype)
                for name, b in self.program.inputs}

    @property
    def num_kernels(self) -> int:
        return len(self.plan["steps"])

    # -- state (training) -----------------------------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """The persistent state buffers on the GPU (tvm_ffi tensors, not copies); feeding one to another CudaModel
        on the same GPU is zero-copy."""
        self._setup()
        return {name: self._shared[b] for name, b in self.program.state}

    def _state_entry(self, name: str):
        for n, b in self.program.state:
            if n == name:
                return self.program.buffers[b]
        raise InputError(f"unknown state {name!r}")

    def read_state(self, name: str) -> np.ndarray:
        b = self._state_entry(name)
        return self._mem_ready().copy_out(self.state[name], b.shape, b.dtype)

    def write_state(self, name: str, value: np.ndarray) -> None:
        b = self._state_entry(name)
        self._mem_ready().copy_in(self.state[name], np.asarray(value, _np_dtype(b.dtype)).reshape(b.shape))

    def _mem_ready(self) -> DeviceMemory:
        self._setup()
        return self._mem

    # -- running --------------------------------------------------------------------------------------------------------
    def _check(self, feeds: Mapping) -> list:
        """Each input as (tensor on this GPU, None) or (None, host array), checked against its shape and dtype."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        names = self.input_names
        unknown = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            parts = ([f"unknown input(s) {unknown}"] if unknown else []) + (
                [f"missing input(s) {missing}"] if missing else [])
            raise InputError("; ".join(parts) + f"; the model's inputs are {names}")
        self._setup()
        specs = self.input_specs
        out = []
        for name in names:
            shape, dtype = specs[name]
            src = feeds[name]
            on_gpu = _on_this_gpu(src, self.device_id)
            if on_gpu is not None:
                got_shape, got_dtype = tuple(on_gpu.shape), str(on_gpu.dtype)
            else:
                if hasattr(src, "__dlpack__") and not isinstance(src, np.ndarray):
                    src = np.from_dlpack(src) if hasattr(src, "__dlpack_device__") else np.asarray(src)
                src = np.asarray(src)
                got_shape, got_dtype = tuple(src.shape), str(src.dtype)
            if got_shape != tuple(shape):
                raise InputError(f"input {name!r} has shape {list(got_shape)}, but the model was compiled for "
                                 f"{list(shape)}; pass an array of that shape or recompile with --shape "
                                 f"{name}={'x'.join(map(str, got_shape)) or 'scalar'}")
            if got_dtype != dtype:
                raise InputError(f"input {name!r} has dtype {got_dtype}, the model expects {dtype}")
            out.append((on_gpu, None if on_gpu is not None else src))
        return out

    def _bind(self, ctx, checked: list) -> list:
        """Copy host inputs into the context's device buffers; returns the kernel calls, with GPU-resident inputs
        in place of their buffers."""
        calls = ctx.calls
        for (name, buf), (t, host) in zip(self.program.inputs, checked):
            dtype = self.program.buffers[buf].dtype
            if t is None:
                self._mem.copy_in(ctx.memory[buf], host)
            elif t.is_contiguous() and t.data_ptr() % ALIGNMENT == 0:
                if calls is ctx.calls:
                    calls = [(fn, list(args)) for fn, args in ctx.calls]
                for c, a, view_shape in self._input_uses[name]:
                    calls[c][1][a] = t if view_shape is None else self._mem.view(t, 0, view_shape, dtype)
            else:  # strided or unaligned: one device-to-device copy into our own buffer
                self._mem.copy(t, ctx.memory[buf])
        return calls

    def run(self, feeds: Mapping, *, device_outputs: bool = False) -> list:
        """Run the model. Inputs: numpy arrays (copied to the GPU) or tensors on this GPU (zero-copy).
        Returns numpy arrays, or with device_outputs=True fresh tvm_ffi tensors on the GPU, in output order.
        Thread-safe: concurrent runs take their own execution contexts (runtime/plan.py)."""
        checked = self._check(feeds)
        with self._executor.context() as ctx:
            self._executor.execute(ctx, self._bind(ctx, checked))
            outs = [(ctx.memory[b], self.program.buffers[b]) for _, b in self.program.outputs]
            if device_outputs:
                result = []
                for t, b in outs:
                    fresh = self._mem.empty(b.shape, b.dtype)
                    self._mem.copy(t, fresh)
                    result.append(fresh)
                return result
            return [self._mem.copy_out(t, b.shape, b.dtype) for t, b in outs]

    __call__ = run

    def benchmark(self, feeds: Mapping, repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per run (kernels only, inputs bound once), `repeat` samples after `warmup` runs."""
        checked = self._check(feeds)
        times = []
        with self._executor.context() as ctx:
            calls = self._bind(ctx, checked)
            for i in range(warmup + repeat):
                self._mem.sync()
                t0 = time.perf_counter()
                self._executor.execute(ctx, calls)
                self._mem.sync()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
        return times

    def profile(self, feeds: Mapping, repeat: int = 10) -> list[dict]:
        """Median time of each kernel call (synchronized after each) over `repeat` runs, in plan order."""
        checked = self._check(feeds)
        with self._executor.context() as ctx:
            calls = self._bind(ctx, checked)
            samples = [[] for _ in calls]
            for _ in range(repeat + 1):
                for i, (fn, args) in enumerate(calls):
                    self._mem.sync()
                    t0 = time.perf_counter()
                    fn(*args)
                    self._mem.sync()
                    samples[i].append(time.perf_counter() - t0)
        return [{"kernel": s["kernel"], "op": s["op"], "node": s["node"], "ms": float(np.median(t[1:])) * 1e3}
                for s, t in zip(self.plan["steps"], samples)]

    # -- persistence ----------------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the artifact atomically, fatbin included (see runtime/artifact.py); needs no GPU."""
        if self._ready:
            params = [self._mem.copy_out(self._shared[e.buffer], self.program.buffers[e.buffer].shape,
                                         self.program.buffers[e.buffer].dtype) for e in self.program.params]
        else:
            params = [p() if callable(p) else p for p in self._host_params]
        artifact.write_artifact(os.fspath(path), self.plan, self._kernels_path, params,
                                {self.plan["device"]["fatbin"]: self._fatbin_path})


class _ViewAdapter:
    """DeviceMemory as runtime/plan.py's executor calls it (views at offset 0 by (base, shape, dtype))."""

    def __init__(self, mem: DeviceMemory):
        self.mem = mem

    def empty(self, shape, dtype):
        return self.mem.empty(shape if int(np.prod(shape, dtype=np.int64)) else [1], dtype)

    def region(self, arena, offset, shape, dtype):
        return self.mem.view(arena, offset, shape, dtype)

    def view(self, base, shape, dtype):
        return self.mem.view(base, 0, shape, dtype)

    def tensor(self, t, dtype):
        return t


def _on_this_gpu(value, device_id: int):
    """`value` as a tvm_ffi tensor if it is a DLPack tensor in this GPU's memory, else None."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack_device__"):
        return None
    try:
        kind, index = value.__dlpack_device__()
    except Exception:
        return None
    if int(kind) != KDL_CUDA:
        return None
    if int(index) != device_id:
        raise InputError(f"a tensor on GPU {int(index)} was given to a model on GPU {device_id}")
    import tvm_ffi

    return tvm_ffi.from_dlpack(value)


def _nbytes(buf: dict) -> int:
    return int(np.prod(buf["shape"], dtype=np.int64)) * _np_dtype(buf["dtype"]).itemsize
