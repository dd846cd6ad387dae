"""The softmax schedule (backend/cpu/softmax.py): [batch x head] slabs per task, against the reference, with a
scale-and-mask prologue (-inf keys, as the bf16 attention split pads them), on rank 3 and 4."""

import numpy as np
import pytest
import tvm
from tvm import te

from tensorforge.compiler import ops
from tensorforge.compiler.backend.build import resolve_target
from tensorforge.compiler.backend.cpu.rules import schedule_cpu_traced
from tests.support import assert_close


@pytest.mark.parametrize("shape, rule", [((3, 5, 48), "softmax_slabs"), ((2, 3, 7, 32), "softmax_slabs"),
                                         ((2, 5, 40), "generic"), ((6, 64), "generic")])
def test_softmax_kernels_match_the_reference(shape, rule):
    rng = np.random.default_rng(3)
    x = te.placeholder(shape, "float32", name="x")
    mask = te.placeholder(shape[-1:], "float32", name="mask")
    scores = te.compute(shape, lambda *i: x(*i) * 0.125 + mask[i[-1]], name="scaled")
    y = ops.softmax.lower(scores, axis=len(shape) - 1)
    target = resolve_target("cpu")
    sch, got_rule = schedule_cpu_traced(te.create_prim_func([x, mask, y]), target)
    assert got_rule.name == rule
    xv = (rng.standard_normal(shape) * 30).astype(np.float32)
    mv = np.where(np.arange(shape[-1]) < shape[-1] - 5, 0.0, -np.inf).astype(np.float32)  # the last 5 keys masked
    out = tvm.runtime.tensor(np.full(shape, np.nan, np.float32))
    tvm.compile(sch.mod, target=target)["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(mv), out)
    want = ops.softmax.reference(xv * np.float32(0.125) + mv, axis=len(shape) - 1)
    assert_close(out.numpy(), want, rtol=1e-6, atol=1e-7)
    assert not out.numpy()[..., -5:].any()
