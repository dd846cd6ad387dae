"""Load compiled kernel libraries with TVM's runtime alone: `tvm_ffi` plus `libtvm_runtime.so`, never `import tvm`.

`import tvm` pulls in the 260 MB compiler library (and, with torch installed, torch); a deployed model needs only
the runtime. libtvm_runtime.so provides the thread pool that kernels with parallel loops call into, so it is
loaded (RTLD_GLOBAL) before any kernel library. Its location: $TENSORFORGE_TVM_RUNTIME, else the apache-tvm
wheel's `tvm/lib/`, found without importing the package.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import threading

from .errors import ArtifactError

_loaded = False

# How long an idle worker of TVM's thread pool spins (sched_yield calls) before it sleeps. TVM's default, 300000,
# kept a core busy for ~150 ms after every run: onnxruntime's MobileNetV2 took 15 ms instead of 4 ms right after
# one of our runs in the same process. 3000 (~1 ms) still covers the gaps between the kernels of a run (measured:
# the same latency for the MLP, LSTM and MobileNetV2). Read by TVM when its pool starts; the environment wins.
SPIN_COUNT = 3000
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", str(SPIN_COUNT))


def default_num_threads() -> int:
    """All cores this process may use (TVM itself would take half the logical cores on x86)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _runtime_library() -> str:
    env = os.environ.get("TENSORFORGE_TVM_RUNTIME")
    if env:
        return env
    spec = importlib.util.find_spec("tvm")
    if spec is None or spec.origin is None:
        raise ArtifactError("TVM's runtime library was not found: install apache-tvm, or point "
                            "TENSORFORGE_TVM_RUNTIME at libtvm_runtime.so")
    return os.path.join(os.path.dirname(spec.origin), "lib", "libtvm_runtime.so")


def init_runtime(num_threads: int | None = None) -> None:
    """Load libtvm_runtime.so once. The thread count is read by TVM when the first parallel kernel runs."""
    global _loaded
    if num_threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(int(num_threads))
    else:
        os.environ.setdefault("TVM_NUM_THREADS", str(default_num_threads()))
    if _loaded:
        return
    import tvm_ffi  # noqa: F401  (loads libtvm_ffi.so, which libtvm_runtime.so needs)

    path = _runtime_library()
    try:
        ctypes.CDLL(path, ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"cannot load TVM's runtime library {path}: {e}") from None
    # the extra runtime holds the library kernels some ops call (sort and top-k: tvm.contrib.sort.*)
    extra = os.path.join(os.path.dirname(path), "libtvm_runtime_extra.so")
    if os.path.exists(extra):
        try:
            ctypes.CDLL(extra, ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # only models that use those ops need it; their kernels will say so
    _loaded = True


def load_kernels(path: str):
    """Load a kernel library (.so) exported by the compiler; returns a tvm_ffi Module."""
    init_runtime()
    import tvm_ffi

    try:
        return tvm_ffi.load_module(path)
    except Exception as e:
        raise ArtifactError(f"cannot load the kernel library {path}: {e}") from None


# Storage-only element types (compiler/ir/types.py STORAGE_DTYPES): ml_dtypes' numpy types, one element per byte;
# kernels read and write their bytes as uint8.
STORAGE_DTYPES = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
                            "float4_e2m1fn", "int4", "uint4", "int2", "uint2"})


def numpy_dtype(name: str):
    """The numpy dtype that holds a plan dtype. bfloat16 is ml_dtypes.bfloat16 where ml_dtypes is installed (it
    comes with the apache-tvm wheel, but the runtime does not require it), else its uint16 bit patterns; the
    storage-only types (float8, int4, ...) likewise are ml_dtypes' types, else their uint8 bytes."""
    import numpy as np

    if name == "bfloat16" or name in STORAGE_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            return np.dtype(np.uint16 if name == "bfloat16" else np.uint8)
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def as_tvm_tensor(array, dtype: str | None = None):
    """A TVM tensor aliasing `array` (64-byte aligned, C-contiguous). `dtype` is the plan's dtype name: bfloat16
    tensors, which DLPack-from-numpy cannot carry, travel as their uint16 bit patterns and are re-typed in place."""
    import tvm_ffi

    if dtype == "bfloat16" or array.dtype.name == "bfloat16":
        bits = tvm_ffi.from_dlpack(array.view("uint16"))
        create_view = tvm_ffi.get_global_func("runtime.TVMTensorCreateView")
        return create_view(bits, tvm_ffi.Shape([int(d) for d in array.shape]), tvm_ffi.dtype("bfloat16"), 0)
    if dtype in STORAGE_DTYPES or array.dtype.name in STORAGE_DTYPES:
        return tvm_ffi.from_dlpack(array.view("uint8"))  # the kernels take these as uint8 (kernel_dtype)
    return tvm_ffi.from_dlpack(array)


class CallerPlacement:
    """Keeps the thread that runs a model off the cores TVM's thread pool has pinned its workers to.

    TVM pins worker i of its pool to core i (i >= 1) and leaves the calling thread free to run anywhere. When the
    scheduler puts the caller on a worker's core (another library's threads moved it there, say), every parallel
    kernel waits for a worker that shares its core, and Linux keeps both there: a 64-step LSTM took 1.2 ms instead
    of 0.5 ms for hundreds of runs after an onnxruntime run in the same process. During a run the caller is
    therefore allowed only the cores no worker is pinned to, and its own affinity is restored afterwards (two
    system calls, ~3 us). The pinned cores are read from /proc once the pool exists (after the first run); with
    one thread, TVM_BIND_THREADS=0, or outside Linux, this does nothing."""

    def __init__(self):
        self.cpus: set[int] | None = None
        self.resolved = False

    def resolve(self) -> None:
        """Find the cores TVM's workers are pinned to; called after a run, when its thread pool exists."""
        self.resolved = True
        try:
            allowed = os.sched_getaffinity(0)
            me = str(threading.get_native_id())
            pinned = set()
            for tid in os.listdir("/proc/self/task"):
                if tid == me:
                    continue
                with open(f"/proc/self/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("Cpus_allowed_list:"):
                            cpus = _parse_cpu_list(line.split(":", 1)[1])
                            if len(cpus) == 1:
                                pinned |= cpus
                            break
        except (OSError, AttributeError, ValueError):
            return
        free = allowed - pinned
        if pinned & allowed and free:
            self.cpus = free

    @contextlib.contextmanager
    def placed(self):
        """For the duration of a run: the calling thread on the free cores, then its own affinity again (and,
        after the first run, find the pinned cores)."""
        saved = None
        if self.cpus is not None:
            try:
                current = os.sched_getaffinity(0)
                if current != self.cpus:
                    os.sched_setaffinity(0, self.cpus)
                    saved = current
            except OSError:
                pass
        try:
            yield
        finally:
            if saved is not None:
                try:
                    os.sched_setaffinity(0, saved)
                except OSError:
                    pass
            elif not self.resolved and os.environ.get("TVM_NUM_THREADS", "1") != "1":
                self.resolve()


def _parse_cpu_list(text: str) -> set[int]:
    """'0-3,6' -> {0, 1, 2, 3, 6}"""
    out = set()
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.update(range(int(lo), int(hi) + 1))
        elif part:
            out.add(int(part))
    return out


caller_placement = CallerPlacement()  # one per process: TVM has one thread pool
