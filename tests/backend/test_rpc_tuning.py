"""Tuning farmed out over TVM's RPC tracker (backend/remote.py): a tracker and two servers on 127.0.0.1, the knob
search building here and timing there, one kernel per server at a time; sharded tuning joined by --merge."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tensorforge.compiler.backend.build import resolve_target
from tensorforge.compiler.backend.tuning import TuningDatabase
from tensorforge.compiler.backend.tuning_merge import merge_databases
from tensorforge.compiler.cli import main
from tensorforge.compiler.ir import parse_graph
from tensorforge.compiler.tune import tune_model
from tensorforge.runtime.errors import CompileError

TEXT = """graph g(%x: f32[16,64]) {
  %w = param f32[32,64]
  %d = dense(%x, %w) : f32[16,32]
  %r = relu(%d) : f32[16,32]
  %w2 = param f32[48,32]
  %d2 = dense(%r, %w2) : f32[16,48]
  %w3 = param f32[24,48]
  %d3 = dense(%d2, %w3) : f32[16,24]
  return %d3
}"""  # three dense kernels of different shapes: three searches


def graph():
    rng = np.random.default_rng(0)
    g = parse_graph(TEXT)
    return parse_graph(TEXT, {p.name: rng.standard_normal(p.type.shape).astype(np.float32) for p in g.params})


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracker():
    """A tracker and two servers of key "test" on 127.0.0.1, stopped afterwards."""
    port = _port()
    env = {**os.environ, "TVM_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(port), "--port-end", str(port + 1)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        from tvm import rpc

        deadline = time.monotonic() + 60
        while True:
            try:
                rpc.connect_tracker("127.0.0.1", port).summary()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker",
                                           f"127.0.0.1:{port}", "--key", "test", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        while True:
            summary = rpc.connect_tracker("127.0.0.1", port).summary()
            if (summary.get("queue_info", {}).get("test") or {}).get("free", 0) >= 2:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the servers did not register: {summary}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for p in procs:  # each with the workers it forked: its own process group
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(autouse=True)
def few_variants(monkeypatch):
    """Three knob variants per kernel (of dense's 48): the same search, in seconds."""
    from tensorforge.compiler.backend.cpu import rules

    every = rules.knob_variants
    monkeypatch.setattr(rules, "knob_variants", lambda rule: every(rule)[:3])


def _entries(db_dir):
    return TuningDatabase(str(db_dir), resolve_target("cpu")).index()


def test_knob_search_over_rpc_fills_the_database_as_local_tuning_does(tracker, tmp_path):
    calls = []
    result = tune_model(graph(), tmp_path / "remote", rpc_tracker=tracker, rpc_key="test",
                        progress=lambda *a: calls.append(a))
    assert result.tuned == 3 and result.remaining == 0 and len(calls) == 3
    local = tune_model(graph(), tmp_path / "local")
    assert local.tuned == 3
    remote, here = _entries(tmp_path / "remote"), _entries(tmp_path / "local")
    assert set(remote) == set(here) and len(remote) == 3  # the same kernels searched, the same variants
    for k in remote:
        assert remote[k]["method"] == "knobs" and remote[k]["trials"] == here[k]["trials"] == 4  # 3 + default
        assert remote[k]["best_us"] > 0 and remote[k]["default_us"] > 0


def test_shards_cover_the_kernels_once_and_merge_into_one_database(tracker, tmp_path):
    for i in range(2):
        assert main(["tune", "--db", str(tmp_path / f"shard{i}"), "--shard", f"{i}/2", "--rpc-tracker", tracker,
                     "--rpc-key", "test", _onnx(tmp_path)]) == 0
    parts = [_entries(tmp_path / f"shard{i}") for i in range(2)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert main(["tune", "--db", str(tmp_path / "all"), "--merge", str(tmp_path / "shard0"),
                 str(tmp_path / "shard1")]) == 0
    merged = _entries(tmp_path / "all")
    assert set(merged) == set(parts[0]) | set(parts[1])
    assert merge_databases([str(tmp_path / "shard0")], str(tmp_path / "all"))  # merging again changes nothing
    assert _entries(tmp_path / "all") == merged


def _onnx(tmp_path):
    """The test graph's dense layers as an ONNX file (the CLI tunes ONNX models)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = tmp_path / "m.onnx"
    if not path.exists():
        rng = np.random.default_rng(0)
        ws = [rng.standard_normal(s).astype(np.float32) for s in ((64, 32), (32, 48), (48, 24))]
        nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                 helper.make_node("MatMul", ["r", "w1"], ["b"]), helper.make_node("MatMul", ["b", "w2"], ["y"])]
        g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 24])],
                              initializer=[numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(ws)])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_rpc_errors_name_what_is_missing(tracker, tmp_path):
    with pytest.raises(CompileError, match="no free server of key 'nokey'"):
        tune_model(graph(), tmp_path / "db", rpc_tracker=tracker, rpc_key="nokey")
    with pytest.raises(CompileError, match="cannot reach the RPC tracker"):
        tune_model(graph(), tmp_path / "db", rpc_tracker=f"127.0.0.1:{_port()}", rpc_key="test")
    with pytest.raises(CompileError, match="needs both"):
        tune_model(graph(), tmp_path / "db", rpc_tracker=tracker)


def test_merge_refuses_a_database_of_another_tvm(tmp_path):
    import json

    TuningDatabase(str(tmp_path / "a"), resolve_target("cpu")).write_index({})
    (meta,) = (tmp_path / "a").glob("*/meta.json")
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "tvm_version": "0.1"}))
    with pytest.raises(CompileError, match="was written by TVM 0.1"):
        merge_databases([str(tmp_path / "a")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # MetaSchedule's search: minutes on two cores
def test_metaschedule_measures_on_the_servers(tracker, tmp_path):
    one = parse_graph("""graph g(%x: f32[16,64]) {
  %w = param f32[32,64]
  %d = dense(%x, %w) : f32[16,32]
  return %d
}""", {"w": np.ones((32, 64), np.float32)})
    result = tune_model(one, tmp_path / "ms", search="metaschedule", trials=2, rpc_tracker=tracker, rpc_key="test")
    assert result.tuned == 1
    (entry,) = _entries(tmp_path / "ms").values()
    assert entry["trials"] == 2 and entry["best_us"] > 0  # measured: a record with its time
