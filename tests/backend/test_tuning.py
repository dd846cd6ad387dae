"""Tuning: a real (tiny) MetaSchedule run into a database, then compile_model using its records; the database's
checks on target, TVM version and workload."""

import dataclasses
import json
import os

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.tune import tune_model
from tensorforge.compiler.backend.build import resolve_target
from tensorforge.compiler.backend.tuning import TuningDatabase, parse_duration, target_key
from tensorforge.compiler.ir import interpret, parse_graph
from tests.support import assert_close

TEXT = """graph g(%x: f32[16,64]) {
  %w = param f32[32,64]
  %b = param f32[32]
  %d = dense(%x, %w, %b) : f32[16,32]
  %r = relu(%d) : f32[16,32]
  return %r
}"""


def graph(seed=0, text=TEXT):
    rng = np.random.default_rng(seed)
    g = parse_graph(text)
    return parse_graph(text, {p.name: rng.standard_normal(p.type.shape).astype(np.float32) for p in g.params})


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("tuning")
    calls = []
    result = tune_model(graph(), db, trials=4, progress=lambda *a: calls.append(a), search="metaschedule")
    assert result.tuned == 1 and result.remaining == 0 and len(calls) == 1
    assert calls[0][3]["best_us"] > 0
    return db


def with_times(db, tmp_path, best_vs_default):
    """A copy of the database whose record claims to be `best_vs_default` times the default schedule's time."""
    import shutil

    copy = tmp_path / f"db{best_vs_default}"
    shutil.copytree(db, copy)
    path = copy / target_key(resolve_target("cpu")) / "index.json"
    index = json.loads(path.read_text())
    for entry in index.values():
        entry["best_us"] = entry["default_us"] * best_vs_default
    path.write_text(json.dumps(index))
    return copy


def test_index_records_tuned_and_default_times(tuned_db):
    (entry,) = TuningDatabase(str(tuned_db), resolve_target("cpu")).index().values()
    assert entry["best_us"] > 0 and entry["default_us"] > 0 and entry["trials"] == 4


def test_faster_records_are_used_and_correct(tuned_db, tmp_path):
    model = compile_model(graph(), tuning_db=str(with_times(tuned_db, tmp_path, 0.5)))
    assert model.plan["stats"]["tuned_kernels"] == 1 and model.plan["steps"][0]["tuned"]
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    assert_close(model.run({"x": x})[0], interpret(graph(), {"x": x})[0], rtol=1e-4)
    untuned = compile_model(graph(), options=CompileOptions(use_shipped_tuning=False))
    assert untuned.plan["stats"]["tuned_kernels"] == 0


def test_slower_records_are_not_used(tuned_db, tmp_path):
    model = compile_model(graph(), tuning_db=str(with_times(tuned_db, tmp_path, 2.0)))
    assert model.plan["stats"]["tuned_kernels"] == 0


def test_tuning_resumes(tuned_db):
    result = tune_model(graph(), tuned_db, trials=4, search="metaschedule")
    assert result.tuned == 0 and result.skipped == 1


def test_changed_workload_finds_no_record(tuned_db):
    other = TEXT.replace("16,", "8,").replace("f32[16,32]", "f32[8,32]")
    model = compile_model(graph(text=other), tuning_db=str(tuned_db))
    assert model.plan["stats"]["tuned_kernels"] == 0


def test_records_are_kept_per_target(tuned_db):
    from tvm.target import Target

    host = resolve_target("cpu")
    other = Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    assert target_key(other) != target_key(host)
    assert not TuningDatabase(str(tuned_db), other).exists()
    assert TuningDatabase(str(tuned_db), host).exists()


def test_other_tvm_version_is_ignored(tuned_db, tmp_path):
    copy = with_times(tuned_db, tmp_path, 0.5)
    sub = copy / target_key(resolve_target("cpu"))
    meta = json.loads((sub / "meta.json").read_text())
    meta["tvm_version"] = "0.0.1"
    (sub / "meta.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written by TVM 0.0.1"):
        model = compile_model(graph(), tuning_db=str(copy))
    assert model.plan["stats"]["tuned_kernels"] == 0


def test_parse_duration():
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("45") == 45
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("soon")


def test_cli_tune_and_compile(tuned_db, tmp_path, capsys):
    """The same kernel from an ONNX Gemm + Relu: `tune` finds it done, `compile --tuning-db` uses it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tensorforge.compiler.cli import main

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((32, 64)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["d"], transB=1), helper.make_node("Relu", ["d"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 32])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["tune", str(path), "--db", str(tuned_db), "--trials", "4"]) == 0
    assert "tuned 0 kernel(s)" in capsys.readouterr().out
    db = with_times(tuned_db, tmp_path, 0.5)
    assert main(["compile", str(path), "-o", str(tmp_path / "m.tfa"), "--tuning-db", str(db)]) == 0
    assert "(1 tuned)" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "m.tfa")]) == 0
    assert " tuned " in capsys.readouterr().out


def test_knob_search_stores_a_replayable_record(tmp_path):
    """The knob search times the dense kernel's tile variants against the default and stores the best as a
    MetaSchedule record (forced here with a negative margin); compiling with it gives the same numbers."""
    from tensorforge.compiler.driver import import_model, optimize
    from tensorforge.compiler.backend.lower import Kernel, partition
    from tensorforge.compiler.backend.tuning import search_knobs

    target = resolve_target("cpu")
    specs = [s.spec for s in partition(optimize(import_model(graph(), None), CompileOptions())) if isinstance(s, Kernel)]
    db = TuningDatabase(str(tmp_path / "knobs"), target)
    calls = []
    result = search_knobs(specs, db, rounds=2, margin=-10.0, progress=lambda *a: calls.append(a))
    assert result.tuned == 1 and result.remaining == 0 and len(calls) == 1
    (entry,) = db.index().values()
    assert entry["method"] == "knobs" and entry["trials"] > 1 and entry["knobs"]
    assert entry["best_us"] > 0 and entry["default_us"] > 0
    assert search_knobs(specs, db).skipped == 1  # resumable: done kernels are not searched again
    g = graph()
    expected = interpret(g, {"x": np.ones((16, 64), np.float32)})[0]
    model = compile_model(graph(), tuning_db=str(with_times(tmp_path / "knobs", tmp_path, 0.5)))
    assert model.plan["stats"]["tuned_kernels"] == 1
    assert_close(model.run({"x": np.ones((16, 64), np.float32)})[0], expected)
    slower = compile_model(graph(), tuning_db=str(with_times(tmp_path / "knobs", tmp_path, 2.0)))
    assert slower.plan["stats"]["tuned_kernels"] == 0


def test_knob_variants_leave_the_defaults_alone():
    from tensorforge.compiler.backend.cpu.dense import DenseKnobs
    from tensorforge.compiler.backend.cpu.rules import RULES_BY_NAME, knob_variants

    dense = RULES_BY_NAME["dense"]
    variants = knob_variants(dense)
    assert variants and DenseKnobs() not in variants and all(isinstance(v, DenseKnobs) for v in variants)
    assert len(variants) == len(DenseKnobs.space()) - 1 and dense.knobs == DenseKnobs(m_tile=4)
    assert knob_variants(RULES_BY_NAME["generic"]) == [] and knob_variants(None) == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        dense.knobs.m_tile = 8


def test_knobs_are_passed_to_the_rule_not_patched():
    """A variant schedules with another knobs instance; the rule list itself keeps its defaults."""
    from tvm import te

    from tensorforge.compiler.backend.cpu.dense import DenseKnobs
    from tensorforge.compiler.backend.cpu.rules import RULES_BY_NAME, schedule_cpu_traced
    from tensorforge.compiler.ops.packed import dense_compute, dense_weight_layout

    target = resolve_target("cpu")
    x = te.placeholder((16, 64), name="x")
    layout = dense_weight_layout(32, 64)
    w = te.placeholder((32 // layout["n_block"], 64, layout["n_block"]), name="w")
    func = te.create_prim_func([x, w, dense_compute(x, w, None, layout=layout, n=32)])
    base, rule = schedule_cpu_traced(func, target)
    other, rule2 = schedule_cpu_traced(func, target, DenseKnobs(m_tile=8))
    assert rule.name == rule2.name == "dense" and rule2.knobs == DenseKnobs(m_tile=8)
    assert RULES_BY_NAME["dense"].knobs == DenseKnobs()
    assert base.mod.script() != other.mod.script()


def test_knobs_of_index_entries_old_and_new():
    """Indexes written before the knobs were dataclasses name them "module.NAME"; both forms load."""
    from tensorforge.compiler.backend.cpu.attention import AttentionKnobs
    from tensorforge.compiler.backend.cpu.dense import DenseKnobs
    from tensorforge.compiler.backend.cpu.rules import RULES_BY_NAME, knobs_from_index, knobs_record
    from tensorforge.compiler.backend.cpu.winograd import WinogradKnobs

    assert knobs_from_index({"knobs": {"cpu_schedule.DENSE_M_TILE": 8, "cpu_schedule.DENSE_X_BLOCK_BYTES": 65536}}) \
        == DenseKnobs(m_tile=8, x_block_bytes=65536)
    assert knobs_from_index({"knobs": {"cpu_winograd.GEMM_P_TILE": 2}}) == WinogradKnobs(p_tile=2)
    assert knobs_from_index({"knobs": {"cpu_attention.ROWS": 2, "cpu_attention.J_TILE": 128}}) \
        == AttentionKnobs(rows=2, j_tile=128)
    assert knobs_from_index({"knobs": {}}) is None
    with pytest.raises(KeyError, match="no schedule parameter"):
        knobs_from_index({"knobs": {"cpu_schedule.NO_SUCH": 1}})
    dense = RULES_BY_NAME["dense"]
    for knobs in (DenseKnobs(m_tile=6), DenseKnobs()):
        assert knobs_from_index(json.loads(json.dumps(knobs_record(dense, knobs)))) == knobs


def test_shipped_records_knobs_load_into_the_dataclasses():
    """Every knob-search entry of the shipped database (written with the old "module.NAME" keys) names knobs that
    load into a rule's dataclass."""
    from tensorforge.compiler.backend.cpu.common import Knobs
    from tensorforge.compiler.backend.cpu.dense import DenseKnobs
    from tensorforge.compiler.backend.cpu.rules import LEGACY_KNOB_KEYS, knobs_from_index
    from tensorforge.compiler.backend.tuning import SHIPPED

    loaded = []
    for d in os.listdir(SHIPPED):
        if os.path.isdir(os.path.join(SHIPPED, d)):
            for entry in json.load(open(os.path.join(SHIPPED, d, "index.json"))).values():
                if entry.get("method") == "knobs" and entry.get("knobs"):
                    knobs = knobs_from_index(entry)
                    assert isinstance(knobs, Knobs)
                    for key, value in entry["knobs"].items():
                        cls, field = LEGACY_KNOB_KEYS.get(key, (type(knobs), key))
                        assert isinstance(knobs, cls) and getattr(knobs, field) == value
                    loaded.append(knobs)
    assert any(isinstance(k, DenseKnobs) for k in loaded)


def test_shipped_database_is_consistent_and_its_records_build():
    """Every target directory of the shipped database: written by this TVM, each index entry that claims a win has
    a record, and every record's trace replays on its workload and compiles for that target (no CPU needed)."""
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.target import Target

    from tensorforge.compiler.backend.tuning import SHIPPED

    dirs = [d for d in os.listdir(SHIPPED) if os.path.isdir(os.path.join(SHIPPED, d))]
    assert dirs, "the repository ships a tuning database (benchmarks/tune_shipped.py writes it)"
    for d in dirs:
        path = os.path.join(SHIPPED, d)
        meta = json.load(open(os.path.join(path, "meta.json")))
        assert meta["tvm_version"] == tvm.__version__, f"{d}: written by TVM {meta['tvm_version']}: tune again"
        target = Target(json.loads(meta["target"]))
        assert target_key(target) == d
        index = json.load(open(os.path.join(path, "index.json")))
        wins = [e for e in index.values() if e["best_us"] < e["default_us"]]
        records = ms.database.JSONDatabase(work_dir=path).get_all_tuning_records()
        assert len(records) == len(wins) > 0
        for rec in records:
            sch = s_tir.Schedule(rec.workload.mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            tvm.compile(sch.mod, target=target)
