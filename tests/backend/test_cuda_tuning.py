"""CUDA tuning without RPC (compiler/backend/cuda/bundle.py, cuda_measure.py), compile-only: the bundle builds here
(candidates compiled with nvcc), measure.py's timing and ranking run on fake timings, and ingesting a results file
commits records that compile_model's lookup then uses. Measuring on a real GPU is not tested here."""

import json
import os
import shutil

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.backend.cuda import measure as cuda_measure
from tensorforge.compiler.backend.cuda.build import build_cuda, cuda_target
from tensorforge.compiler.backend.cuda.bundle import ingest_results, prepare_bundle
from tensorforge.compiler.backend.lower import Kernel, partition
from tensorforge.compiler.backend.tuning import TuningDatabase
from tensorforge.compiler.ir import Graph, TensorType
from tensorforge.compiler.passes import fuse_cuda
from tensorforge.runtime.errors import CompileError

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit), no GPU")


def dense_relu_specs():
    g = Graph("mlp")
    x = g.add_input("x", TensorType((64, 128), "float32"))
    w = g.add_param("w", np.ones((128, 128), np.float32))
    (y,) = g.add_node(ops.dense, [x, w], name="fc")
    (r,) = g.add_node(ops.relu, [y], name="act")
    g.outputs = [r]
    return [s.spec for s in partition(fuse_cuda(g)) if isinstance(s, Kernel)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bundle"))
    specs = dense_relu_specs()
    return out, specs, prepare_bundle(specs + specs, out, "sm_90", candidates=4)


def fake_results(manifest, times, arch="sm_90"):
    """results.json as measure.py writes it, with the given seconds per candidate symbol (None: it failed)."""
    tasks = {t["key"]: {c["symbol"]: ({"secs": [times[c["symbol"]]] * 3} if times.get(c["symbol"]) else
                                      {"error": "CUDA_ERROR_INVALID_VALUE"}) for c in t["candidates"]}
             for t in manifest["tasks"]}
    return {"format": cuda_measure.RESULTS_FORMAT, "bundle_id": manifest["id"], "gpu": "NVIDIA H200", "arch": arch,
            "tasks": tasks}


def test_bundle_holds_compiled_candidates(bundle):
    out, specs, manifest = bundle
    assert len(manifest["tasks"]) == 1 and manifest["arch"] == "sm_90"  # identical kernels are one task
    task = manifest["tasks"][0]
    symbols = [c["symbol"] for c in task["candidates"]]
    assert symbols[0] == "default" and 2 <= len(symbols) <= 5 and all(s.startswith("ms") for s in symbols[1:])
    assert task["key"] == specs[0].key() and task["args"] == [[[64, 128], "float32"], [[128, 128], "float32"],
                                                              [[64, 128], "float32"]]
    assert open(os.path.join(out, task["fatbin"]), "rb").read(4) == bytes.fromhex("50ed55ba")
    assert os.path.getsize(os.path.join(out, task["library"])) > 10000
    assert open(os.path.join(out, "measure.py")).read() == open(cuda_measure.__file__).read()
    assert "import tvm\n" not in open(cuda_measure.__file__).read()  # the GPU side needs only the runtime


def test_measure_timing_and_ranking_on_fake_clock():
    ticks = iter(range(100))
    calls = []
    secs = cuda_measure.time_calls(lambda: calls.append(1), lambda: None, number=4, repeat=3, warmup=2,
                                   clock=lambda: next(ticks) * 1e-3)
    assert len(calls) == 2 + 12 and secs == pytest.approx([0.25e-3] * 3)
    ranked = cuda_measure.rank({"default": {"secs": [3e-5, 1e-5, 2e-5]}, "ms0": {"secs": [1e-5, 1.5e-5]},
                                "ms1": {"error": "too much shared memory"}})
    assert ranked == [("ms0", pytest.approx(1.25e-5)), ("default", pytest.approx(2e-5))]


def test_ingest_commits_records_and_compile_uses_them(bundle, tmp_path):
    out, specs, manifest = bundle
    symbols = [c["symbol"] for c in manifest["tasks"][0]["candidates"]]
    times = {"default": 40e-6, **{s: (20e-6 + i * 1e-6) for i, s in enumerate(symbols[1:])}}
    times[symbols[1]] = None  # one candidate failed on the GPU
    path = tmp_path / "results.json"
    path.write_text(json.dumps(fake_results(manifest, times)))
    done = ingest_results(out, str(path), str(tmp_path / "db"))
    entry = done[specs[0].key()]
    assert entry["default_us"] == pytest.approx(40) and entry["best_us"] == pytest.approx(21)
    assert entry["trials"] == len(symbols) - 2 and entry["measured_on"] == "NVIDIA H200"
    db = TuningDatabase(str(tmp_path / "db"), cuda_target("sm_90"))
    assert db.exists() and db.index()[specs[0].key()]["best_us"] == pytest.approx(21)
    result = build_cuda(specs, cuda_target("sm_90"), str(tmp_path), tuning=[db])
    assert result.tuned == {specs[0].name()} and len(result.device_kernels) >= 1
    assert TuningDatabase(str(tmp_path / "db"), cuda_target("sm_80")).lookup(specs[0]) is None  # another GPU


def test_ingest_refuses_other_bundles_and_gpus(bundle, tmp_path):
    out, _, manifest = bundle
    wrong = fake_results(manifest, {"default": 1e-5})
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**wrong, "bundle_id": "0" * 16}))
    with pytest.raises(CompileError, match="holds measurements of bundle 0000000000000000, not of"):
        ingest_results(out, str(path), str(tmp_path / "db"))
    path.write_text(json.dumps(fake_results(manifest, {"default": 1e-5}, arch="sm_80")))
    with pytest.raises(CompileError, match=r"built for sm_90 but measured on NVIDIA H200 \(sm_80\)"):
        ingest_results(out, str(path), str(tmp_path / "db"))
    with pytest.raises(CompileError, match="cannot read the measurement results"):
        ingest_results(out, str(tmp_path / "missing.json"), str(tmp_path / "db"))


def test_cli_cuda_tune_steps(tmp_path, capsys):
    from tensorforge.compiler.cli import main

    assert main(["tune", "m.onnx", "--db", str(tmp_path / "db"), "--target", "cuda", "--prepare", "a",
                 "--ingest", "b"]) == 1
    assert "--prepare and --ingest are two steps" in capsys.readouterr().err
    assert main(["tune", "m.onnx", "--db", str(tmp_path / "db"), "--prepare", str(tmp_path / "b")]) == 1
    assert "are for --target cuda" in capsys.readouterr().err
    assert main(["tune", "m.onnx", "--db", str(tmp_path / "db"), "--target", "cuda", "--ingest",
                 str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tensorforge: error: cannot read the tuning bundle manifest") and "\n" not in err
