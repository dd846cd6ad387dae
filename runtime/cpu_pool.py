"""TensorForge's CPU thread pool, one per process, in place of TVM's.

Every CPU kernel library the compiler builds carries a small C thread pool (compiler/backend/cpu_pool.c: chunks
handed out dynamically, the caller working too, workers unpinned and asleep when idle). TVM's generated code calls
each parallel loop through the library's function pointer `__TVMBackendParallelLaunch`, which TVM's loader points at
TVM's own pool. After a library is loaded, `adopt(path)` re-points it at the process's pool: the pool of the first
library that carried one (kept loaded for the life of the process), so all models share one set of workers.

Libraries built before the pool existed (no `tf_pool_launch` symbol) keep TVM's pool.
"""

from __future__ import annotations

import ctypes
import os
import threading

ABI = 1

_lock = threading.Lock()
_pool: ctypes.CDLL | None = None  # the library whose pool the process uses
_launch_address: int | None = None
_threads: int = 0  # as configured (0: every CPU this process may use)


def _configure(lib: ctypes.CDLL, num_threads: int) -> None:
    lib.tf_pool_configure.argtypes = [ctypes.c_int]
    lib.tf_pool_configure(int(num_threads))


def adopt(kernels_path: str) -> bool:
    """Point the kernel library at `kernels_path` (already loaded by TVM's loader) at the process's pool. Returns
    False when the library carries no pool (built by an older TensorForge: it keeps TVM's pool)."""
    global _pool, _launch_address
    lib = ctypes.CDLL(os.fspath(kernels_path))  # the handle TVM's loader opened: same file, same mapping
    if not hasattr(lib, "tf_pool_launch") or not hasattr(lib, "tf_pool_abi") or lib.tf_pool_abi() != ABI:
        return False
    with _lock:
        if _pool is None:
            _pool = lib
            _launch_address = ctypes.cast(lib.tf_pool_launch, ctypes.c_void_p).value
            _configure(lib, _threads)
            lib.tf_pool_set_serial.argtypes = [ctypes.c_int]
            lib.tf_pool_set_serial.restype = ctypes.c_int
            lib.tf_pool_runs.argtypes = [ctypes.c_int]
            lib.tf_pool_runs.restype = ctypes.c_int
        try:
            pointer = ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch")
        except ValueError:  # no kernel of this library has a parallel loop
            return True
        pointer.value = _launch_address
    return True


def set_threads(num_threads: int | None) -> None:
    """Threads per parallel loop, the caller included (None or 0: every CPU this process may use)."""
    global _threads
    with _lock:
        _threads = int(num_threads or 0)
        if _pool is not None:
            _configure(_pool, _threads)


def threads() -> int:
    """The threads a parallel loop uses now (the caller included)."""
    if _pool is not None:
        return int(_pool.tf_pool_threads())
    if _threads:
        return _threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def serial_setter():
    """`set(on) -> previous`: while on, parallel loops launched by the calling thread run on it alone."""
    if _pool is None:
        return None
    return _pool.tf_pool_set_serial


def run_counter():
    """`count(delta) -> runs in flight`: a run starts (+1) or ends (-1). While as many runs are in flight as the
    pool has threads, their loops run on their callers (compiler/backend/cpu_pool.c)."""
    if _pool is None:
        return None
    return _pool.tf_pool_runs


def stats() -> dict[str, int]:
    """Counters since the process started: loops run on the pool, loops run on their caller alone, chunks run by
    callers and by workers."""
    if _pool is None:
        return {"loops": 0, "inline": 0, "chunks_by_callers": 0, "chunks_by_workers": 0}
    out = (ctypes.c_int64 * 4)()
    _pool.tf_pool_stats(out)
    return dict(zip(("loops", "inline", "chunks_by_callers", "chunks_by_workers"), (int(v) for v in out)))


def sleeping_workers() -> int:
    return 0 if _pool is None else int(_pool.tf_pool_sleeping())


def active() -> bool:
    return _pool is not None
