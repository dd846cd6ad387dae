"""The memory planner: soundness (checked on random problems and every light model), tightness, in-place reuse."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorforge.compiler.report import analyze
from tensorforge.compiler.backend.memory import PlanError, Tensor, assign_offsets, check_plan, live_lower_bound
from tests.support import LIGHT_MODELS, light_path


def test_chain_reuses_two_buffers():
    # a -> b -> c -> d, each read only by the next step: two slots suffice
    ts = [Tensor(i, 1000, i, i + 1) for i in range(4)]
    plan = assign_offsets(ts)
    check_plan(ts, plan)
    assert plan.arena_bytes == 2 * 1024
    assert live_lower_bound(ts) == 2000


def test_in_place_shares_storage():
    a, b = Tensor(0, 4096, 0, 1), Tensor(1, 4096, 1, 2)
    plan = assign_offsets([a, b], inplace=[(1, 0)])
    check_plan([a, b], plan)
    assert plan.offsets[0] == plan.offsets[1] and plan.arena_bytes == 4096


def test_in_place_refused_when_input_lives_on():
    a, b = Tensor(0, 4096, 0, 3), Tensor(1, 4096, 1, 2)
    plan = assign_offsets([a, b], inplace=[(1, 0)])
    check_plan([a, b], plan)
    assert plan.offsets[0] != plan.offsets[1]


def test_in_place_takes_one_input_and_one_output():
    # out = add(a, b) with both inputs dying there: out may reuse a or b, never merge a and b
    a, b, out = Tensor(0, 4096, 0, 2), Tensor(1, 4096, 1, 2), Tensor(2, 4096, 2, 3)
    plan = assign_offsets([a, b, out], inplace=[(2, 0), (2, 1)])
    check_plan([a, b, out], plan)
    assert plan.offsets[0] != plan.offsets[1]
    # two outputs of one step may not both take the same dying input
    x, o1, o2 = Tensor(0, 4096, 0, 1), Tensor(1, 4096, 1, 1), Tensor(2, 4096, 1, 3)
    plan = assign_offsets([x, o1, o2], inplace=[(1, 0), (2, 0)])
    check_plan([x, o1, o2], plan)
    assert plan.offsets[1] != plan.offsets[2]


def test_checker_catches_overlap_and_misalignment():
    a, b = Tensor(0, 128, 0, 2), Tensor(1, 128, 1, 3)
    plan = assign_offsets([a, b])
    plan.offsets[1] = plan.offsets[0]
    with pytest.raises(PlanError, match="live together and share bytes"):
        check_plan([a, b], plan)
    plan.offsets[1] = 8
    with pytest.raises(PlanError, match="not 64-byte aligned"):
        check_plan([a, b], plan)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 10)), min_size=1, max_size=40),
       st.data())
def test_random_plans_are_sound(specs, data):
    ts = [Tensor(i, size, first, first + length) for i, (size, first, length) in enumerate(specs)]
    pairs = data.draw(st.lists(st.tuples(st.integers(0, len(ts) - 1), st.integers(0, len(ts) - 1)), max_size=5))
    plan = assign_offsets(ts, inplace=[(a, b) for a, b in pairs if a != b])
    check_plan(ts, plan)
    assert plan.arena_bytes >= min(plan.live_lower_bound_bytes, plan.arena_bytes)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_plans_are_sound_and_tight(name):
    _, plan = analyze(light_path(name))
    mem = plan["memory"]
    ts = [Tensor(*row) for row in mem["tensors"]]
    from tensorforge.compiler.backend.memory import MemoryPlan

    offsets = {b: plan["buffers"][b]["arena_offset"] for b in (t.id for t in ts)}
    check_plan(ts, MemoryPlan(offsets, plan["arena_bytes"], {int(k): v for k, v in mem["classes"].items()}))
    stats = plan["stats"]
    assert stats["arena_bytes"] <= 1.10 * stats["live_lower_bound_bytes"]
    assert stats["arena_bytes"] < stats["unplanned_bytes"]


def test_runtime_allocates_one_arena(tmp_path):
    from tensorforge import compile_model
    from tensorforge.compiler.examples import small_cnn_onnx

    m = compile_model(small_cnn_onnx())
    arena = m._arena
    inside = [a for a in m._arrays if a.base is not None and np.shares_memory(a, arena)]
    assert len(inside) >= m.num_kernels - 1 and arena.size == m.plan["arena_bytes"]
