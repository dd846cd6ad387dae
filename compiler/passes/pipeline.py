"""The compiler's pass order, as literal lists: per target and optimization level, and for training.

Read top to bottom, each list is what runs, in order, with one line on why each pass is there. Entries that depend
on the precision are `None` when they do not apply and are dropped (`_present`): the lists stay the single place
that says where the mixed-precision and bf16-weight passes sit. Every pass name is unique, so `--disable-pass` and
`--dump-after` name exactly one pass; names that match no pass of the pipeline are rejected (`check_pass_names`).
"""

from __future__ import annotations

from typing import Iterable

from tensorforge.runtime.errors import InputError

from .cpu.amx import amx_attention, amx_conv, amx_dense, amx_stem, lstm_bf16, merge_denses
from .cpu.bf16_activations import bf16_activations
from .cpu.bf16_weights import bf16_fast_math, bf16_weights
from .cpu.layout import alter_layout
from .cpu.pack_weights import pack_weights
from .cpu.winograd import winograd
from .cached_attention import cached_attention_pass
from .cse import cse
from .dce import DeadCodeElimination
from .fold_constants import FoldConstants
from .fold_scale_shift import fold_scale_shift
from .fuse import fuse, fuse_cuda
from .manager import Pass, pass_name
from .mixed_precision import MixedPrecision, half_dtype
from .order_updates import OrderUpdatesLast
from .patchify import patchify
from .recognize import recognize
from .simplify import simplify
from .unroll_lstm import unroll_lstm

fold_constants = FoldConstants()
fold_constants_2 = FoldConstants(name="fold_constants_2")
dce = DeadCodeElimination()
dce_2 = DeadCodeElimination(name="dce_2")
dce_3 = DeadCodeElimination(name="dce_3")

CLEANUPS: list[Pass] = [
    fold_constants,  # evaluate what depends on params only
    simplify,  # algebraic rewrite rules: x*1, reshape chains, cast round trips, ...
    cse,  # merge equal params and equal nodes
    recognize,  # decomposed GELU (erf, tanh) -> gelu; decomposed LayerNorm (+ affine) -> layer_norm; attention
    dce,  # what the rewrites left unread
]

OPTIMIZATIONS: list[Pass] = [
    fold_scale_shift,  # batch norm and per-channel scale/shift into conv/dense weights
    patchify,  # a conv with kernel = stride (a ViT's patch embedding) as a dense over the patches
    fold_constants_2,  # the folded weights' arithmetic, now on params only
    dce_2,  # the scale/shift nodes and their unfolded params
]


def cpu_pipeline(opt_level: int, mixed: Pass | None, stores: Pass | None, matrix: Pass | None = None,
                 matrix_conv: Pass | None = None, matrix_attention: Pass | None = None,
                 activations: Pass | None = None, storage: Pass | None = None, stem: Pass | None = None,
                 merge: Pass | None = None, recurrent: Pass | None = None, decode: Pass | None = None
                 ) -> list[Pass]:
    """`mixed`: the mixed-precision pass or None; `stores`: the bf16-weights pass or None; `matrix`,
    `matrix_conv`, `matrix_attention`: the passes that move bf16 dense, conv and attention products to the CPU's
    matrix unit (AMX), or None; `activations`: the bf16 mode's faster GELU, or None; `storage`: the pass that stores
    the bf16 products' activations as bfloat16, or None; `stem`: the pass that turns a strided conv on an image's few
    channels into a conv the matrix unit takes, or None; `merge`: the pass that merges denses reading one input (for
    the matrix unit), or None; `recurrent`: the pass that computes an LSTM's recurrent product in bf16, or None;
    `decode`: a decoder compiled with its cache in place (compiler/decoding.py): the pass that makes its attention
    read only the cache's written keys, or None."""
    lists = {
        0: [
            mixed,  # operands rounded before packing (packing copies the weights it reads)
            matrix,  # bf16 dense on AMX tiles (where the CPU has them), before packing
            matrix_attention,  # bf16 attention products on AMX tiles, the softmax between them in fp32
            pack_weights,  # the CPU kernels need packed weights at every level
            stores,  # packed weights stored as bfloat16
            activations,  # bf16 mode: GELU's erf to bf16's precision, not to 2 ulp
        ],
        1: [
            *CLEANUPS,
            decode,  # decoding: attention over the written keys of a cache, before the bf16 passes take attention
            mixed,
            matrix,
            matrix_attention,
            recurrent,
            pack_weights,
            stores,
            activations,
        ],
        2: [
            *CLEANUPS,
            *OPTIMIZATIONS,
            decode,
            mixed,
            merge,  # bf16 mode: q, k and v projections as one dense, before amx_dense takes it
            matrix,
            matrix_attention,
            recurrent,  # bf16 mode: an LSTM's recurrent product in AVX512-BF16 dot products
            pack_weights,
            alter_layout,  # NCHW[16]c activations between convs
            stem,  # bf16 mode: an image's strided conv as a stride-1 AMX conv on its space-to-depth
            matrix_conv,  # bf16 blocked convs on AMX tiles, before Winograd takes the 3x3 ones in fp32
            winograd,  # Winograd 3x3 convs where they pay
            dce_3,  # the plain-layout weights the layout passes replaced
            stores,  # after packing and layout (they repack float32 arrays), before fusion
            activations,
            storage,  # bf16 mode: activations read by bf16 products stored as bfloat16 by their producers
            fuse,  # last: it groups the final ops into kernels
        ],
    }
    return lists[opt_level]


def cuda_pipeline(opt_level: int, mixed: Pass | None) -> list[Pass]:
    lists = {
        0: [
            unroll_lstm,  # the recurrence as per-step kernels: a serial loop is no GPU kernel
            mixed,
        ],
        1: [
            unroll_lstm,
            *CLEANUPS,
            mixed,  # after the cleanups: constant folding would fold the weight casts away again
        ],
        2: [
            unroll_lstm,
            *CLEANUPS,
            *OPTIMIZATIONS,
            mixed,
            fuse_cuda,  # last; half-precision operands' widening casts join their matmul as prologues
        ],
    }
    return lists[opt_level]


def pipeline(opt_level: int = 2, target: str = "cpu", precision: str = "fp32", training: bool = False,
             state_outputs: Iterable[str] | None = None, decoding: bool = False) -> list[Pass]:
    """The pass list for an optimization level (-O0 nothing but what the target needs, -O1 cleanups, -O2
    everything), a target ("cpu" or "cuda") and a precision. On the cpu target, bf16 inference computes dense products on
    AMX tiles where the CPU has them (passes/cpu/amx.py) and stores the other packed weights as bfloat16
    (passes/cpu/bf16_weights.py); otherwise (CUDA, fp16, training) the products read operands
    rounded to half precision (passes/mixed_precision.py). A training graph with persistent state (`state_outputs`,
    the output names carrying each state's next value) ends with its update kernels ordered last. `decoding`: a
    decoder whose key/value cache is written in place (compiler/decoding.py), whose attention reads the written keys
    only (passes/cached_attention.py)."""
    if opt_level not in (0, 1, 2):
        raise InputError(f"unknown optimization level {opt_level!r}; supported: 0, 1, 2")
    half = half_dtype(precision)
    cpu_bf16_weights = target == "cpu" and half == "bfloat16" and not training
    mixed = MixedPrecision(half) if half is not None and not cpu_bf16_weights else None
    if target == "cuda":
        passes = cuda_pipeline(opt_level, mixed)
    else:
        passes = cpu_pipeline(opt_level, mixed, bf16_weights if cpu_bf16_weights else None,
                              amx_dense if cpu_bf16_weights else None, amx_conv if cpu_bf16_weights else None,
                              amx_attention if cpu_bf16_weights else None, bf16_fast_math if cpu_bf16_weights else None,
                              bf16_activations if cpu_bf16_weights else None, amx_stem if cpu_bf16_weights else None,
                              merge_denses if cpu_bf16_weights else None, lstm_bf16 if cpu_bf16_weights else None,
                              cached_attention_pass if decoding else None)
    if state_outputs is not None:
        passes = passes + [OrderUpdatesLast(frozenset(state_outputs))]  # in-place updates after every reader
    return [p for p in passes if p is not None]


def registered_passes() -> dict[str, Pass]:
    """Every pass of some pipeline by its name (as the pipelines configure it: `mixed_precision` rounds to
    float16 unless given another dtype), for `tensorforge opt` and for checking names."""
    found: dict[str, Pass] = {}
    for level in (0, 1, 2):
        for precision in ("fp32", "fp16", "bf16"):
            for target in ("cpu", "cuda"):
                for training in (False, True):
                    for p in pipeline(level, target, precision, training, ()):
                        found.setdefault(pass_name(p), p)
    return found


def pass_names() -> set[str]:
    """Every name a pass of some pipeline has."""
    return set(registered_passes())


def check_pass_names(passes: list[Pass], disabled: Iterable[str], dump_after: Iterable[str]) -> None:
    """Reject `--disable-pass` / `--dump-after` names that name no pass of `passes`."""
    names = [pass_name(p) for p in passes]
    for flag, given in (("--disable-pass", disabled), ("--dump-after", dump_after)):
        unknown = sorted(set(given) - set(names))
        if unknown:
            where = " (it runs in another pipeline: check the target, -O level and precision)" \
                if set(unknown) <= pass_names() else ""
            raise InputError(f"{flag} {', '.join(unknown)}: no such pass in this pipeline{where}; its passes are: "
                             f"{', '.join(names) or 'none'}")
