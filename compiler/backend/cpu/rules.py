"""CPU schedule rules: one kernel's PrimFunc (from te.create_prim_func) -> a scheduled PrimFunc.

RULES are tried in order; the first that applies and succeeds wins. Each rule works on a fresh `s_tir.Schedule`,
so a rule that fails half-way leaves nothing behind, and the generic rule at the end degrades step by step instead
of failing. `schedule_cpu` never raises for a valid PrimFunc: at worst it returns the function unscheduled.

  attention     anchors `attention_qk` + `attention_pv` (ops/attention.py): a row tile's scores stay in L1
  winograd      anchor `winograd_gemm`: transforms and a batched register-tiled GEMM
  weight_grad   anchor `weight_grad`: a weight gradient's product in registers, then its epilogue
  conv_packed   anchor `conv2d_nchw_packed`: [ow_tile x oc_block] register tile, reductions outside it, computed
                into a local buffer under the tile loop of the kernel's final NCHW epilogue
  conv_nchwc    anchors `conv2d_nchwc` / `conv2d_depthwise_nchwc`: the same on NCHW[b]c activations
  conv_rowwise  anchors `conv2d_depthwise` / `conv2d_nchw_plain`: vectorized over output width; plain convs keep
                [8 channels x 16 columns] in registers, depthwise convs accumulate one output plane per task
  amx_dense     anchor `dense_amx` (ops/amx.py): 32 x 32 tiles of AMX tile registers, tensorized
  amx_conv      anchor `conv2d_amx` (ops/amx_conv.py): the same over output pixels x channels, an implicit GEMM
  amx_matmul    anchor `matmul_amx` (ops/amx_matmul.py): the dense tiles under batch loops, both operands converted
  amx_attention anchors `attention_amx_s` + `attention_amx_o` (ops/amx_attention.py): per [batch x head] task and
                block of 32 query rows, both products in AMX tiles, the softmax between them in L1
  dp_dense, dp_conv, dp_matmul   anchors `dense_amx_dp`, `conv2d_amx_dp`, `matmul_amx_dp`: the same ops with
                unit="avx512bf16", in zmm register tiles of `vdpbf16ps` (backend/cpu/bf16dot.py)
  dense         anchor `dense_packed`: [m_tile x n_tile] register tile, k outside it
  matmul        anchor `matmul` (numpy semantics, ops/nn.py): [i_tile x j_tile] register tile, k outside it,
                parallel over batch x tiles; transpose prologues inlined, or packed per batch when strided along j
  softmax_slabs anchors `T_softmax_maxelem` + `T_softmax_expsum` + `T_softmax_norm` (ops/norm.py), rank >= 3: one
                [batch x head] slab per task, its stages in L2 (backend/cpu/softmax.py)
  layer_norm_grad anchors `ln_grad_dx` + `ln_grad_part` (ops/backward.py): one block of rows per task, its
                statistics, dx and partial dscale while the rows are in L1 (backend/cpu/layer_norm_grad.py)
  dense_weight_pack, im2col, from_blocked: data movement with a loop order of its own
  outer_reduction, multi_output_elementwise: tried on every kernel; raise where it is not theirs
  generic       injective and reduction blocks: inline, parallel outer spatial loops, vectorize inner ones
"""

from __future__ import annotations

import dataclasses
import logging

import tvm
from tvm import s_tir, tirx

from tensorforge.compiler.backend.cpu.amx import amx_dense_rule, amx_matmul_rule
from tensorforge.compiler.backend.cpu.amx_attention import amx_attention_rule
from tensorforge.compiler.backend.cpu.amx_conv import amx_conv_rule
from tensorforge.compiler.backend.cpu.bf16dot import dp_conv_rule, dp_dense_rule, dp_matmul_rule, dp_winograd_rule
from tensorforge.compiler.backend.cpu.attention import AttentionKnobs, attention_rule
from tensorforge.compiler.backend.cpu.common import Knobs, Rule, block_names
from tensorforge.compiler.backend.cpu.conv import (
    conv_dw_nchwc_rule, conv_nchwc_rule, conv_packed_rule, conv_rowwise_rule)
from tensorforge.compiler.backend.cpu.dense import DenseKnobs, dense_rule
from tensorforge.compiler.backend.cpu.generic import from_blocked_rule, generic_rule
from tensorforge.compiler.backend.cpu.layer_norm_grad import layer_norm_grad_rule
from tensorforge.compiler.backend.cpu.matmul import MatmulKnobs, matmul_rule
from tensorforge.compiler.backend.cpu.softmax import softmax_rule
from tensorforge.compiler.backend.cpu.training import (
    dense_weight_pack_rule, im2col_rule, multi_output_elementwise_rule, outer_reduction_rule, weight_grad_rule)
from tensorforge.compiler.backend.cpu.winograd import WinogradKnobs, winograd_rule

log = logging.getLogger(__name__)

RULES: tuple[Rule, ...] = (
    attention_rule,
    amx_attention_rule,
    winograd_rule,
    dp_winograd_rule,
    weight_grad_rule,
    conv_packed_rule,
    conv_nchwc_rule,
    conv_dw_nchwc_rule,
    conv_rowwise_rule,
    amx_dense_rule,
    amx_conv_rule,
    amx_matmul_rule,
    dp_dense_rule,
    dp_conv_rule,
    dp_matmul_rule,
    dense_rule,
    matmul_rule,
    softmax_rule,
    layer_norm_grad_rule,
    dense_weight_pack_rule,
    im2col_rule,
    from_blocked_rule,
    outer_reduction_rule,
    multi_output_elementwise_rule,
)
FALLBACK = generic_rule  # tried last, on every kernel
RULES_BY_NAME = {r.name: r for r in (*RULES, FALLBACK)}


def schedule_cpu(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """Schedule one kernel for the CPU `target`; returns a new PrimFunc (never raises for a valid one)."""
    sch, _ = schedule_cpu_traced(func, target)
    return func if sch is None else sch.mod["main"]


def schedule_cpu_traced(func: tirx.PrimFunc, target: tvm.target.Target, knobs: Knobs | None = None
                        ) -> tuple[s_tir.Schedule | None, Rule | None]:
    """(the schedule, with its trace, and the rule that made it), or (None, None) when not even the generic rule
    applies (library calls need no schedule). `knobs` replaces the knobs of every rule tuned by that class (the
    matmul's serve the weight gradient too). The trace replays the schedule on the unscheduled function: the knob
    search (backend/tuning.py) stores it as a tuning record."""
    names = block_names(func)
    for rule in RULES:
        if not rule.applies(names):
            continue
        if knobs is not None and type(rule.knobs) is type(knobs):
            rule = rule.with_knobs(knobs)
        sch = rule.apply_to(func, target)
        if sch is not None:
            return sch, rule
    try:
        sch = s_tir.Schedule(func)
        FALLBACK.schedule(sch, target)
        return sch, FALLBACK
    except Exception as err:
        log.debug("generic CPU schedule failed, kernel left unscheduled (library calls need none): %s", err)
        return None, None


def knob_variants(rule: Rule | None) -> list[Knobs]:
    """Every combination of the rule's knob candidates except its defaults."""
    if rule is None or rule.knobs is None:
        return []
    return [k for k in type(rule.knobs).space() if k != rule.knobs]


# Tuning indexes written before the knobs were dataclasses store them as {"module.NAME": value}, where NAME was a
# module global of the old backend/cpu_schedule.py, cpu_attention.py or cpu_winograd.py: read them as fields.
LEGACY_KNOB_KEYS = {
    "cpu_schedule.DENSE_M_TILE": (DenseKnobs, "m_tile"),
    "cpu_schedule.DENSE_X_BLOCK_BYTES": (DenseKnobs, "x_block_bytes"),
    "cpu_schedule.MATMUL_I_TILE": (MatmulKnobs, "i_tile"),
    "cpu_schedule.MATMUL_J_TILE": (MatmulKnobs, "j_tile"),
    "cpu_attention.ROWS": (AttentionKnobs, "rows"),
    "cpu_attention.J_TILE": (AttentionKnobs, "j_tile"),
    "cpu_winograd.GEMM_P_TILE": (WinogradKnobs, "p_tile"),
}


def knobs_record(rule: Rule, knobs: Knobs | None) -> dict:
    """The index entry's fields for the knobs a search chose: {"rule", "knobs"}; "knobs" is {} for the defaults."""
    return {"rule": rule.name, "knobs": {} if knobs is None or knobs == rule.knobs else dataclasses.asdict(knobs)}


def knobs_from_index(entry: dict) -> Knobs | None:
    """The knobs an index entry of the knob search chose (new or legacy form); None where it names none."""
    values = entry.get("knobs") or {}
    if "rule" in entry:
        rule = RULES_BY_NAME.get(entry["rule"])
        if rule is None or rule.knobs is None:
            return None
        return dataclasses.replace(rule.knobs, **values)
    if not values:
        return None
    fields = {}
    classes = set()
    for key, value in values.items():
        if key not in LEGACY_KNOB_KEYS:
            raise KeyError(f"no schedule parameter {key}")
        cls, name = LEGACY_KNOB_KEYS[key]
        classes.add(cls)
        fields[name] = value
    if len(classes) != 1:
        raise KeyError(f"schedule parameters of several rules in one entry: {sorted(values)}")
    return classes.pop()(**fields)
