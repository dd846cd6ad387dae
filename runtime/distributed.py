"""ProcessGroup: the collectives data-parallel training needs, on torch.distributed (gloo on the CPU).

`compile_training(..., distributed=True)` (runtime/training.py runs it) averages every gradient between the
processes in one all_reduce of one flat buffer, in place: torch.from_numpy shares the numpy buffer's memory, so
nothing is copied on our side. torch is imported only here, only when distributed training is asked for: the
runtime itself does not need it.

Launch with torchrun (`torchrun --nproc_per_node 2 train.py`): its environment (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE) initializes the default process group with gloo when the program has not done it itself.

Collectives inside a plan (synchronized batch norm: compiler/ops/collective.py) call the runtime function
`tensorforge.all_reduce_mean`, registered here when the runtime loads (runtime/tvm_loader.py): it averages over the
group of the run in progress (`ProcessGroup.collectives()`), and copies where there is none (one process).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import threading

import numpy as np

from .errors import InputError

_TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
ALL_REDUCE_MEAN = "tensorforge.all_reduce_mean"  # compiler/ops/collective.py's kernels call it


class ProcessGroup:
    """A torch.distributed process group (None: the default one, initialized from torchrun's environment with
    gloo if needed)."""

    def __init__(self, group=None):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise InputError("distributed training needs PyTorch (pip install torch==2.13.0): its "
                             "torch.distributed does the all_reduce") from None
        if not dist.is_available():
            raise InputError("this PyTorch build has no torch.distributed")
        if not dist.is_initialized():
            if group is not None or not all(k in os.environ for k in _TORCHRUN_ENV):
                raise InputError("distributed training needs torch.distributed: launch with torchrun (which sets "
                                 f"{', '.join(_TORCHRUN_ENV)}), or call torch.distributed.init_process_group first")
            dist.init_process_group("gloo")
            # torn down before the interpreter exits: left to the process's end, gloo's threads were destroyed
            # still running in about one exit out of three ("terminate called without an active exception")
            atexit.register(_destroy, dist)
        self._torch, self._dist, self.group = torch, dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def average(self, a: np.ndarray) -> np.ndarray:
        """`a` (C-contiguous, writable float32 or float64) replaced in place by its mean over the processes;
        returned."""
        if self.world_size > 1:
            t = self._torch.from_numpy(a)
            self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self.group)
            t.div_(self.world_size)
        return a

    @contextlib.contextmanager
    def collectives(self):
        """The collectives inside the plans run in this block average over this group (one block at a time)."""
        global _active
        with _active_lock:
            _active = self
            try:
                yield
            finally:
                _active = None

    def broadcast(self, a: np.ndarray, src: int = 0) -> None:
        """`a` (C-contiguous, writable) overwritten in place with rank `src`'s."""
        if self.world_size > 1:
            self._dist.broadcast(self._torch.from_numpy(a), src, group=self.group)


def _destroy(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -- collectives inside a plan --------------------------------------------------------------------------------------------
_active: ProcessGroup | None = None
_active_lock = threading.Lock()


_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double}


def _host_array(t) -> np.ndarray:
    """A float kernel argument's memory as a numpy array (no copy). DLPack from such an argument (a view the
    kernel passes) crashes the process, so the array is made from its address."""
    element = _CTYPES.get(str(t.dtype))
    if element is None:
        raise InputError(f"{ALL_REDUCE_MEAN} averages float32 or float64 tensors, got {t.dtype}")
    shape = tuple(int(d) for d in t.shape)
    n = int(np.prod(shape, dtype=np.int64))
    return np.ctypeslib.as_array((element * max(n, 1)).from_address(t.data_ptr()))[:n].reshape(shape)


def _all_reduce_mean(src, dst) -> None:
    out = _host_array(dst)
    out[...] = _host_array(src)
    if _active is not None:
        _active.average(out.reshape(-1))


def register_collectives() -> None:
    """Register the runtime functions collective kernels call (runtime/tvm_loader.py, when the runtime loads)."""
    import tvm_ffi

    tvm_ffi.register_global_func(ALL_REDUCE_MEAN, _all_reduce_mean, override=True)
