"""Load compiled kernel libraries with TVM's runtime alone: `tvm_ffi` plus `libtvm_runtime.so`, never `import tvm`.

`import tvm` pulls in the 260 MB compiler library (and, with torch installed, torch); a deployed model needs only
the runtime. libtvm_runtime.so is loaded (RTLD_GLOBAL) before any kernel library: the libraries need its symbols
(TVM's loader fills their function pointers from it); parallel loops then go to TensorForge's own pool
(runtime/cpu_pool.py). Its location: $TENSORFORGE_TVM_RUNTIME, else the apache-tvm
wheel's `tvm/lib/`, found without importing the package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os

from .errors import ArtifactError

_loaded = False

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
    """Load libtvm_runtime.so once and set the number of threads parallel kernels use (TensorForge's pool,
    runtime/cpu_pool.py; TVM's, for libraries built before it, reads TVM_NUM_THREADS when it starts)."""
    global _loaded
    from . import cpu_pool

    if num_threads is not None:
        if int(num_threads) < 1:
            from .errors import InputError

            raise InputError(f"num_threads must be at least 1, got {num_threads}")
        os.environ["TVM_NUM_THREADS"] = str(int(num_threads))
        cpu_pool.set_threads(int(num_threads))
    else:
        os.environ.setdefault("TVM_NUM_THREADS", str(default_num_threads()))
        if os.environ.get("TVM_NUM_THREADS", "").isdigit() and int(os.environ["TVM_NUM_THREADS"]) >= 1:
            cpu_pool.set_threads(int(os.environ["TVM_NUM_THREADS"]))
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
    from .distributed import register_collectives

    register_collectives()  # what collective kernels (synchronized batch norm) call
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
