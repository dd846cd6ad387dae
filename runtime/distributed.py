"""ProcessGroup: the collectives data-parallel training needs, on torch.distributed (gloo on the CPU).

`compile_training(..., distributed=True)` (runtime/training.py runs it) averages every gradient between the
processes in one all_reduce of one flat buffer, in place: torch.from_numpy shares the numpy buffer's memory, so
nothing is copied on our side. torch is imported only here, only when distributed training is asked for: the
runtime itself does not need it.

Launch with torchrun (`torchrun --nproc_per_node 2 train.py`): its environment (MASTER_ADDR, MASTER_PORT, RANK,
WORLD_SIZE) initializes the default process group with gloo when the program has not done it itself.
"""

from __future__ import annotations

import atexit
import os

import numpy as np

from .errors import InputError

_TORCHRUN_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


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
        """`a` (C-contiguous, writable float32) replaced in place by its mean over the processes; returned."""
        if self.world_size > 1:
            t = self._torch.from_numpy(a)
            self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self.group)
            t.div_(self.world_size)
        return a

    def broadcast(self, a: np.ndarray, src: int = 0) -> None:
        """`a` (C-contiguous, writable) overwritten in place with rank `src`'s."""
        if self.world_size > 1:
            self._dist.broadcast(self._torch.from_numpy(a), src, group=self.group)


def _destroy(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
