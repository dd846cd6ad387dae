"""Compiler passes and the default pipelines. Each pass is a small named function Graph -> Graph.

The pipelines are plain lists, read top to bottom as the compiler's order. Later issues add the cleanups
(constant folding, CSE, DCE, simplification), layout and fusion passes here.
"""

from __future__ import annotations

from .cse import cse
from .fold_constants import fold_constants
from .fold_scale_shift import fold_scale_shift
from .fuse import fuse, fuse_cuda
from .layout import alter_layout
from .manager import Pass, PassManager, pass_name  # noqa: F401
from .pack_weights import pack_weights
from .recognize import recognize
from .simplify import simplify
from .unroll_lstm import unroll_lstm
from .winograd import winograd


def dce(g):
    """Dead code elimination: drop nodes and params that no output depends on."""
    g.remove_unused()
    return g


CLEANUPS: list[Pass] = [
    fold_constants,  # evaluate what depends on params only
    simplify,  # algebraic rewrite rules: x*1, reshape chains, cast round trips, ...
    cse,  # merge equal params and equal nodes
    recognize,  # decomposed GELU (erf, tanh) -> gelu; decomposed LayerNorm (+ affine) -> layer_norm
    dce,
]

OPTIMIZATIONS: list[Pass] = [
    fold_scale_shift,  # batch norm and per-channel scale/shift into conv/dense weights
    fold_constants,
    dce,
]


def pipeline(opt_level: int = 2, target: str = "cpu") -> list[Pass]:
    """The pass list for an optimization level: -O0 nothing, -O1 cleanups, -O2 everything (the default)."""
    passes: list[Pass] = []
    if target == "cuda":
        passes.append(unroll_lstm)  # the recurrence as per-step kernels: a serial loop is no GPU kernel
    if opt_level >= 1:
        passes += CLEANUPS
    if opt_level >= 2:
        passes += OPTIMIZATIONS
    if target in ("cpu", "llvm"):
        passes.append(pack_weights)  # the CPU kernels need packed weights at every level
        if opt_level >= 2:
            passes += [alter_layout, winograd, dce]  # NCHW[16]c activations; Winograd 3x3 convs where they pay
    if opt_level >= 2:
        # last: it groups the final ops into kernels (on CUDA, half-precision operands' casts join their matmul)
        passes.append(fuse_cuda if target == "cuda" else fuse)
    return passes
