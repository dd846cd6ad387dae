"""The CPU rule list (compiler/backend/cpu/rules.py): every block name a rule dispatches on is written by some op's
TE lowering (compiler/ops/), so a renamed block cannot silently send its kernel to the generic rule."""

from __future__ import annotations

import pytest
from tvm import te

from tensorforge.compiler import ops
from tensorforge.compiler.backend.cpu.common import Rule, block_names
from tensorforge.compiler.backend.cpu.rules import FALLBACK, RULES, RULES_BY_NAME, knob_variants

CONV = {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1)}


def _p(*shape):
    return te.placeholder(shape, name="p")


# one small instance of every op whose kernel a rule schedules by name: (op, inputs, attrs)
KERNELS = [
    (ops.attention, [_p(1, 2, 8, 16), _p(1, 2, 8, 16), _p(1, 2, 8, 16)], {"scale": 0.25}),
    (ops.winograd_conv2d, [_p(1, 1, 8, 8, 16), _p(6, 6, 1, 16, 16)], {"pads": (1, 1, 1, 1), "tile": 4,
                                                                       "out_channels": 16}),
    (ops.weight_grad_gemm, [_p(4, 8), _p(8, 18)], {"shape": (4, 2, 3, 3)}),
    (ops.conv2d_packed, [_p(1, 3, 8, 8), _p(1, 3, 3, 3, 16)], {**CONV, "groups": 1, "wlayout": "packed",
                                                                "block": 16, "out_channels": 16}),
    (ops.conv2d_packed, [_p(1, 4, 8, 8), _p(4, 1, 3, 3)], {**CONV, "groups": 4, "wlayout": "depthwise",
                                                            "out_channels": 4}),
    (ops.conv2d_packed, [_p(1, 6, 8, 8), _p(6, 3, 3, 3)], {**CONV, "groups": 2, "wlayout": "plain",
                                                            "out_channels": 6}),
    (ops.conv2d_nchwc, [_p(1, 1, 8, 8, 16), _p(1, 1, 3, 3, 16, 16)], {**CONV, "in_block": 16, "block": 16,
                                                                        "out_channels": 16}),
    (ops.depthwise_conv2d_nchwc, [_p(1, 1, 8, 8, 16), _p(1, 3, 3, 16)], CONV),
    (ops.dense_packed, [_p(4, 32), _p(1, 32, 16)], {"block": 16, "n": 16}),
    (ops.dense_amx, [_p(32, 64), te.placeholder((2, 2, 16, 16, 2), "bfloat16", name="w")], {"n": 32, "k": 64}),
    (ops.conv2d_amx, [_p(1, 2, 6, 6, 16), te.placeholder((2, 9, 16, 16, 2), "bfloat16", name="w")],
     {"out_channels": 32, "in_channels": 32, "kernel": (3, 3), "pads": (1, 1, 1, 1)}),
    (ops.matmul_amx, [_p(1, 2, 32, 64), _p(1, 2, 64, 32)], {}),
    (ops.attention_amx, [_p(1, 2, 64, 64), _p(1, 2, 64, 64), _p(1, 2, 64, 64)], {"scale": 0.125}),
    (ops.dense_amx, [_p(32, 64), te.placeholder((2, 2, 16, 16, 2), "bfloat16", name="w")],
     {"n": 32, "k": 64, "unit": "avx512bf16"}),
    (ops.conv2d_amx, [_p(1, 2, 6, 6, 16), te.placeholder((2, 9, 16, 16, 2), "bfloat16", name="w")],
     {"out_channels": 32, "in_channels": 32, "kernel": (3, 3), "pads": (1, 1, 1, 1), "unit": "avx512bf16"}),
    (ops.matmul_amx, [_p(1, 2, 32, 64), _p(1, 2, 64, 32)], {"unit": "avx512bf16"}),
    (ops.winograd_conv2d, [_p(1, 2, 8, 8, 16), te.placeholder((4, 4, 2, 1, 16, 16, 2), "bfloat16", name="u")],
     {"pads": (1, 1, 1, 1), "tile": 2, "out_channels": 32, "unit": "avx512bf16"}),
    (ops.matmul, [_p(4, 32), _p(32, 16)], {}),
    (ops.softmax, [_p(2, 4, 32)], {"axis": 2}),
    (ops.dense_weight_pack, [_p(16, 32)], {"block": 16}),
    (ops.im2col, [_p(1, 3, 8, 8)], {"kernel": (3, 3), **CONV}),
    (ops.from_blocked, [_p(1, 2, 8, 8, 16)], {}),
    (ops.layer_norm_grad, [_p(32, 64), _p(64), _p(32, 64)], {}),
]


def _kernel_block_names(op, inputs, attrs) -> set[str]:
    """The root block names of the op's TE lowering (its attributes completed with their defaults)."""
    out = op.lower(*inputs, **op.check_attrs(attrs))
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    return block_names(te.create_prim_func([*inputs, *outs]))


def _written_block_names() -> set[str]:
    return set().union(*(_kernel_block_names(*k) for k in KERNELS))


def test_every_dispatch_block_name_is_written_by_an_op():
    written = _written_block_names()
    for rule in RULES:
        missing = set(rule.blocks) - written
        assert not missing, f"rule {rule.name} dispatches on {sorted(missing)}, which no op's compute writes"


@pytest.mark.parametrize("op, inputs, attrs", KERNELS, ids=[k[0].name for k in KERNELS])
def test_each_op_kernel_gets_a_named_rule(op, inputs, attrs):
    """Every kernel of the table above is claimed by a rule with block names (not the catch-alls)."""
    names = _kernel_block_names(op, inputs, attrs)
    assert any(r.blocks and r.applies(names) for r in RULES), (op.name, sorted(names))


def test_rules_are_schedule_rule_objects_with_unique_names():
    from tvm.s_tir.dlight.base import ScheduleRule

    assert all(isinstance(r, Rule) and isinstance(r, ScheduleRule) for r in (*RULES, FALLBACK))
    assert len(RULES_BY_NAME) == len(RULES) + 1
    tunable = {r.name for r in RULES if knob_variants(r)}
    assert tunable == {"attention", "winograd", "weight_grad", "conv_nchwc", "dense", "matmul"}


def test_rules_drive_dlights_apply_default_schedule():
    """The rules keep dlight's protocol: dlight's own driver schedules a kernel with them as schedule_cpu does."""
    import tvm
    from tvm.s_tir import dlight as dl

    from tensorforge.compiler.backend.cpu.rules import schedule_cpu

    a, b = _p(64, 32), _p(32, 64)
    func = te.create_prim_func([a, b, ops.matmul.lower(a, b)])
    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    with target:
        mod = dl.ApplyDefaultSchedule(*RULES, FALLBACK)(tvm.IRModule({"main": func}))
    assert str(mod["main"].body) == str(schedule_cpu(func, target).body)
    assert RULES_BY_NAME["dense"].apply(func, target, False) is None  # not its anchor: not applicable
