"""Compiler passes. Each pass is a small named function (or frozen-dataclass instance) Graph -> Graph; the
pipelines, literal lists in the compiler's order, are in pipeline.py."""

from __future__ import annotations

from .cpu.layout import alter_layout  # noqa: F401
from .cpu.pack_weights import pack_weights  # noqa: F401
from .cpu.winograd import winograd  # noqa: F401
from .cse import cse  # noqa: F401
from .dce import dce  # noqa: F401
from .fold_constants import fold_constants  # noqa: F401
from .fold_scale_shift import fold_scale_shift  # noqa: F401
from .fuse import fuse, fuse_cuda  # noqa: F401
from .manager import Pass, PassManager, pass_name  # noqa: F401
from .patchify import patchify  # noqa: F401
from .pipeline import CLEANUPS, OPTIMIZATIONS, check_pass_names, pipeline  # noqa: F401
from .recognize import recognize  # noqa: F401
from .simplify import simplify  # noqa: F401
from .unroll_lstm import unroll_lstm  # noqa: F401
