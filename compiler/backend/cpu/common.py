"""What every CPU schedule family shares: the rule object, knob dataclasses, and the schedule helpers.

A rule follows dlight's `ScheduleRule` protocol (`apply(func, target, tunable) -> Schedule | None`), as the CUDA
backend's rules do, plus `applies(block_names)`: the anchor blocks it dispatches on, named by the op files that
create them (compiler/ops/). A rule works on a fresh `s_tir.Schedule`, so a rule that fails half-way leaves nothing
behind. A tunable rule carries its schedule-only parameters as a frozen dataclass (`Knobs`); the knob search
(backend/tuning.py) schedules with other instances, never by patching module state.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass
from typing import Callable, ClassVar

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

log = logging.getLogger(__name__)

VECTOR_MAX = 64          # widest loop handed to `vectorize` (LLVM splits it into registers)
PARALLEL_MIN_WORK = 4096  # iterations worth a parallel launch (~ a few microseconds)
SPATIAL = 0  # tirx.IterVar.DataPar
UNROLL_MAX = 16  # longest loop unrolled where it cannot be vectorized (odd sequence lengths: ViT's 197)


@dataclass(frozen=True)
class Knobs:
    """Schedule-only parameters of one rule: none of them changes the kernel's computation (tile sizes fixed by
    packed weights or tiled inputs are not knobs). Subclasses are frozen dataclasses whose defaults are the first
    guess and whose SPACE lists the candidates of each field, in field order."""

    SPACE: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def space(cls) -> list[Knobs]:
        """Every combination of the candidates (the defaults among them), fields varied in declaration order."""
        names = [f.name for f in dataclasses.fields(cls)]
        return [cls(**dict(zip(names, combo))) for combo in itertools.product(*(cls.SPACE[n] for n in names))]


@dataclass(frozen=True)
class Rule(ScheduleRule):
    """A CPU schedule rule: `schedule(sch, target)` (or `schedule(sch, target, knobs)` for a tunable rule) schedules
    a kernel in place and raises where the kernel does not fit it. `blocks` are the anchor block names the rule
    dispatches on (any of them, or all with `needs_all`); a rule without blocks is tried on every kernel."""

    name: str
    schedule: Callable
    blocks: tuple[str, ...] = ()
    needs_all: bool = False
    knobs: Knobs | None = None

    def applies(self, names: set[str]) -> bool:
        if not self.blocks:
            return True
        return (all if self.needs_all else any)(b in names for b in self.blocks)

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, tunable: bool = False) -> s_tir.Schedule | None:
        """The scheduled kernel, or None where the rule does not apply or fails (ScheduleError, TVMError)."""
        if not self.applies(block_names(func)):
            return None
        return self.apply_to(func, target)

    def apply_to(self, func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
        """`apply` without the block-name test (the caller made it)."""
        try:
            sch = s_tir.Schedule(func)
            if self.knobs is None:
                self.schedule(sch, target)
            else:
                self.schedule(sch, target, self.knobs)
            return sch
        except Exception as err:  # ScheduleError, TVMError: the caller falls through to a simpler rule
            log.debug("schedule rule %s failed: %s", self.name, err)
            return None

    def with_knobs(self, knobs: Knobs) -> Rule:
        return dataclasses.replace(self, knobs=knobs)


def block_names(func: tirx.PrimFunc) -> set[str]:
    try:
        sch = s_tir.Schedule(func)
        return {sch.get(b).name_hint for b in root_blocks(sch)}
    except Exception:
        return set()


def attempt(fn: Callable, *args):
    """Run one optional schedule step; a failed step changes nothing (schedule primitives are atomic)."""
    try:
        return fn(*args)
    except Exception as err:
        log.debug("schedule step %s failed: %s", getattr(fn, "__name__", fn), err)
        return None


def root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_output(sch: s_tir.Schedule, block) -> bool:
    root = sch.get_sblock("root")
    outs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    return sch.get(block).name_hint in outs


def loop_extent(sch: s_tir.Schedule, loop) -> int | None:
    """The loop's extent, None where it is known only at run time (backend/symbolic.py)."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def divides(sch: s_tir.Schedule, loop, n: int) -> bool:
    """Is the loop's extent a multiple of n: known, or proven of an extent known only at run time."""
    from tvm import sym

    ext = sch.get(loop).extent
    if isinstance(ext, tirx.IntImm):
        return int(ext) % n == 0
    return sym.Analyzer().can_prove_equal(tirx.floormod(ext, n), 0)


def iter_types(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def is_spatial_block(sch: s_tir.Schedule, block) -> bool:
    return all(t == SPATIAL for t in iter_types(sch, block)) and sch.get(block).init is None


def reads_along(block, var) -> list:
    """The block's read regions whose last (contiguous) index uses `var` (a block iter var's Var)."""
    return [r for r in block.reads if len(r.region)
            and any(v.same_as(var) for v in tirx.analysis.undefined_vars(r.region[-1].min))]


def largest_divisor(n: int, limit: int) -> int:
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def inline_all(sch: s_tir.Schedule, keep: set[str] = frozenset()) -> None:
    """Inline every non-output spatial block (padding, elementwise, broadcast) into its consumers."""
    for block in root_blocks(sch):
        name = sch.get(block).name_hint
        if name in keep or is_output(sch, block) or not is_spatial_block(sch, block):
            continue
        attempt(sch.compute_inline, block)


def vector_lanes(target: tvm.target.Target) -> int:
    """float32 lanes of the target's widest vector: 16 with AVX-512, 8 with AVX/AVX2, 4 below. LLVM answers from
    the target's CPU and features; a list of CPU names (the old way) left newer CPUs out: Emerald Rapids got 8-lane
    (ymm) kernels, half its FMA width (dense 1 thread: 101 -> see benchmarks/results/amx_dense.md)."""
    key = str(target)
    if key not in _LANES:
        _LANES[key] = _ask_llvm_lanes(target)
    return _LANES[key]


_LANES: dict[str, int] = {}


def _ask_llvm_lanes(target: tvm.target.Target) -> int:
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return 8
    try:
        if codegen.target_has_features("avx512f", target):
            return 16
        return 8 if codegen.target_has_features("avx", target) else 4
    except Exception:  # not an x86 CPU LLVM knows
        return 4


def anchor_epilogue(sch: s_tir.Schedule, anchor, *keep: str):
    """Inline the elementwise chain after `anchor`; returns the one block consuming it (a write-back if none)."""
    inline_all(sch, keep={sch.get(anchor).name_hint, *keep})
    consumers = sch.get_consumers(anchor)
    if not consumers:
        return sch.cache_write(anchor, 0, "global")
    if len(consumers) != 1 or not is_spatial_block(sch, consumers[0]):
        raise ValueError("anchor has several consumers")
    return consumers[0]


def register_tile(sch: s_tir.Schedule, block, vec: int):
    """The [rows x cols] accumulator tile of a product computed at its tile loop (last three loops: rows, cols,
    k): k outside the tile, rows unrolled, cols unrolled in `vec`-lane pieces that are vectorized, so that LLVM
    keeps the tile in registers and each k step is one FMA per vector. Returns the k loop."""
    rows, cols, k = sch.get_loops(block)[-3:]
    co, cl = sch.split(cols, [None, vec])
    sch.reorder(k, rows, co, cl)
    sch.unroll(rows)
    sch.unroll(co)
    sch.vectorize(cl)
    return k


def task_rows(m: int, step: int, most: int, other_tasks: int, target: tvm.target.Target) -> int:
    """Rows of a k-blocked task: a multiple of `step` dividing `m`, at most `most` (or `step`), the largest that
    still leaves every core two tasks (with `other_tasks` tasks along the columns), else the smallest."""
    cores = int(target.attrs.get("num-cores", 1) or 1)
    fits = [r for r in range(step, m + 1, step) if m % r == 0 and r <= max(most, step)]
    busy = [r for r in fits if (m // r) * other_tasks >= 2 * cores]
    return max(busy or fits[:1])


def k_blocked_register_tile(sch: s_tir.Schedule, block, rows: int, k_block: int, vec: int, cols: int = 0):
    """The product `block`, computed at its task's loop (last three loops: rows, cols, k) into the task's local
    accumulators: for each block of `k_block` k steps, every [rows x cols] register tile of the task steps through
    it, so a k block's operand slices stay in L1 while the accumulators carry over between k blocks (zeroed before
    the first). `cols`: the register tile's columns where the task has more (0: all of them). The dense and
    weight-gradient schedules block this way. Returns the k-block loop."""
    r, c, k = sch.get_loops(block)[-3:]
    mo, mi = sch.split(r, [None, rows])
    ko, ki = sch.split(k, [None, k_block])
    if cols and loop_extent(sch, c) > cols:
        cb, co, cl = sch.split(c, [None, cols // vec, vec])
        sch.reorder(ko, cb, mo, ki, mi, co, cl)
    else:
        co, cl = sch.split(c, [None, vec])
        sch.reorder(ko, mo, ki, mi, co, cl)
    sch.unroll(mi)
    sch.unroll(co)
    sch.vectorize(cl)
    init = sch.decompose_reduction(block, ko)
    attempt(lambda: sch.vectorize(sch.get_loops(init)[-1]))
    return ko


def schedule_spatial(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Fuse outer loops and parallelize them (if worth it); vectorize the innermost axis in pieces."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = loop_extent(sch, inner)
    outer = list(loops[:-1])
    if ext is None or ext < 4:
        outer.append(inner)
        inner = None
    elif ext > VECTOR_MAX:
        piece = vector_piece(ext, lanes)
        o, inner = sch.split(inner, [None, piece])
        outer.append(o)
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if loop_work(sch, block) >= PARALLEL_MIN_WORK:
            sch.parallel(fused)
    if inner is not None:
        attempt(sch.vectorize, inner)


def vector_piece(ext: int, lanes: int) -> int:
    """The widest multiple of 4 up to VECTOR_MAX dividing `ext`, else `lanes` (the split then has a tail)."""
    for d in range(VECTOR_MAX, 3, -4):
        if ext % d == 0:
            return d
    return lanes


def loop_work(sch: s_tir.Schedule, block) -> int:
    total = 1
    for loop in sch.get_loops(block):
        total *= loop_extent(sch, loop) or 1
    return total


# -- row-wise stages (the attention kernels' softmax pieces) ------------------------------------------------------
def vectorize_or_unroll(sch: s_tir.Schedule, loop, lanes: int) -> None:
    """Vectorize `loop` in pieces of `lanes` (the outer piece unrolled) when it divides; else unroll a short one.
    An extent known only at run time: its pieces vectorized where they divide it (the outer loop as it is)."""
    ext = loop_extent(sch, loop)
    if ext is None:
        if divides(sch, loop, lanes):
            sch.vectorize(sch.split(loop, [None, lanes])[1])
        return
    if ext % lanes == 0 and ext > lanes:
        o, i = sch.split(loop, [None, lanes])
        sch.unroll(o)
        sch.vectorize(i)
    elif ext <= lanes and ext % 4 == 0:
        sch.vectorize(loop)
    elif ext <= UNROLL_MAX:
        sch.unroll(loop)


def row_partials(sch: s_tir.Schedule, block, lanes: int):
    """A row reduction (its last loop) as `lanes` partial results per row (rfactor), combined after: the partials'
    block, or None where the row is no multiple of the vector width."""
    r = sch.get_loops(block)[-1]
    ext = loop_extent(sch, r)
    if not divides(sch, r, lanes) or ext == lanes:
        return None
    _, ri = sch.split(r, [None, lanes])
    return sch.rfactor(ri, len(sch.get(block).iter_vars) - 1)


def vector_partials(sch: s_tir.Schedule, rf) -> None:
    """rfactor puts the lane first among the partials block's iter vars (and compute_at its loops in that order):
    move it innermost and vectorize it."""
    lane, *rest = sch.get_loops(rf)[-len(sch.get(rf).iter_vars):]
    sch.reorder(*rest, lane)
    sch.vectorize(lane)


def inline_spatial(sch: s_tir.Schedule, keep: set[str]) -> None:
    """Inline every spatial, non-output block not in `keep` (prologue views, score expressions, epilogues)."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):  # prologue views, the score expression, fast_exp's pieces, epilogues
        blk = sch.get(block)
        if blk.name_hint in keep or blk.name_hint in outputs or blk.init is not None or \
                any(int(iv.iter_type) != SPATIAL for iv in blk.iter_vars):
            continue
        sch.compute_inline(block)
