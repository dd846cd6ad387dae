"""The runtime: loads artifacts with numpy and TVM's runtime only, checks inputs, refuses damaged artifacts."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from tensorforge import compile_model, runtime
from tensorforge.compiler.examples import small_cnn_onnx
from tensorforge.runtime.errors import ArtifactError, InputError, TensorForgeError
from tensorforge.runtime.model import aligned_empty

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def cnn():
    return compile_model(small_cnn_onnx())


@pytest.fixture(scope="module")
def artifact(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("artifact") / "cnn.tfa"
    cnn.save(path)
    return path


def image(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def test_save_load_run_identical(cnn, artifact):
    model = runtime.load(artifact)
    np.testing.assert_array_equal(model.run({"image": image()})[0], cnn.run({"image": image()})[0])
    assert model.input_names == ["image"] and model.output_names == ["probs"]


def test_runtime_never_imports_the_compiler(artifact):
    """In a fresh interpreter: load and run, then check what got imported."""
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from tensorforge import runtime
        m = runtime.load({str(artifact)!r})
        out = m.run({{"image": np.ones((1, 3, 32, 32), np.float32)}})[0]
        assert out.shape == (1, 10) and abs(out.sum() - 1) < 1e-4
        bad = [k for k in sys.modules if k.split(".")[0] in ("compiler", "frontends", "tvm", "onnx")]
        print("BAD" if bad else "CLEAN", bad)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CLEAN" in proc.stdout, proc.stdout


def test_outputs_are_fresh_arrays(cnn):
    a = cnn.run({"image": image(1)})[0]
    b = cnn.run({"image": image(2)})[0]
    assert not np.array_equal(a, b)  # the first result was not overwritten by the second run


@pytest.mark.parametrize("feeds, message", [
    ({"img": image()}, r"unknown input\(s\) \['img'\]; missing input\(s\) \['image'\]; the model's inputs are \['image'\]"),
    ({}, r"missing input\(s\) \['image'\]"),
    ({"image": np.zeros((1, 3, 64, 64), np.float32)},
     r"input 'image' has shape \[1, 3, 64, 64\], but the model was compiled for \[1, 3, 32, 32\]; .*--shape image=1x3x64x64"),
    ({"image": np.zeros((1, 3, 32, 32), np.float64)},
     r"input 'image' has dtype float64, the model expects float32"),
])
def test_bad_inputs(cnn, feeds, message):
    with pytest.raises(InputError, match=message):
        cnn.run(feeds)


def test_feeds_must_be_a_dict(cnn):
    with pytest.raises(InputError, match="feeds must be a dict"):
        cnn.run([image()])


def test_buffers_are_aligned(cnn):
    for a in cnn._arrays:
        if a is None:
            continue
        assert a.ctypes.data % 64 == 0
    assert aligned_empty((3, 5), "float32").ctypes.data % 64 == 0


def test_missing_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        runtime.load(tmp_path / "nothing.tfa")


def test_truncated_artifact(artifact, tmp_path):
    data = artifact.read_bytes()
    bad = tmp_path / "truncated.tfa"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="damaged or truncated"):
        runtime.load(bad)


def test_corrupted_artifact_bytes(artifact, tmp_path):
    data = bytearray(artifact.read_bytes())
    with zipfile.ZipFile(artifact) as z:
        info = z.getinfo("kernels.so")
    start = info.header_offset + 30 + len(info.filename) + 1000  # inside the stored kernel library
    data[start:start + 64] = bytes(64)
    bad = tmp_path / "corrupt.tfa"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="damaged"):
        runtime.load(bad)


def _rewrite(artifact, tmp_path, edit_plan=None, drop=()):
    """A copy with the plan edited or members dropped, its manifest sealed again over what is left."""
    import hashlib

    from tensorforge.runtime.artifact import MANIFEST, manifest_json

    out = tmp_path / "edited.tfa"
    digests = {}
    with zipfile.ZipFile(artifact) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if item.filename in drop or item.filename == MANIFEST:
                continue
            data = src.read(item.filename)
            if item.filename == "plan.json" and edit_plan:
                plan = json.loads(data)
                edit_plan(plan)
                data = json.dumps(plan).encode()
            dst.writestr(item, data)
            digests[item.filename] = (hashlib.sha256(data).hexdigest(), len(data))
        dst.writestr(MANIFEST, manifest_json(digests))
    return out


def test_artifact_missing_member(artifact, tmp_path):
    with pytest.raises(ArtifactError, match="kernels.so is missing"):
        runtime.load(_rewrite(artifact, tmp_path, drop=("kernels.so",)))


def test_artifact_from_a_newer_format(artifact, tmp_path):
    with pytest.raises(ArtifactError, match="format version 99; this runtime reads version 1: recompile"):
        runtime.load(_rewrite(artifact, tmp_path, lambda p: p.update(version=99)))


def test_artifact_for_another_cpu(artifact, tmp_path):
    edit = lambda p: p.update(cpu_features=p["cpu_features"] + ["avx10_9000"])  # noqa: E731
    with pytest.raises(ArtifactError, match="compiled for a CPU with avx10_9000, which this machine lacks"):
        runtime.load(_rewrite(artifact, tmp_path, edit))


def test_not_an_artifact(tmp_path):
    path = tmp_path / "x.tfa"
    path.write_text("hello")
    with pytest.raises(ArtifactError):
        runtime.load(path)


def test_save_is_atomic(cnn, tmp_path, monkeypatch):
    """A failure while writing leaves the previous artifact intact and no temporary files behind."""
    path = tmp_path / "model.tfa"
    cnn.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        cnn.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.tfa"]


def test_save_into_missing_directory(cnn, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        cnn.save(tmp_path / "no" / "such" / "dir.tfa")


def test_error_hierarchy():
    assert issubclass(ArtifactError, TensorForgeError) and issubclass(InputError, TensorForgeError)


def test_library_kernels_run_without_the_compiler(tmp_path):
    """TopK's kernel calls TVM's sort library (libtvm_runtime_extra.so): it must work in a runtime-only process."""
    from tests.support import single_op_model

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    model = compile_model(single_op_model("TopK", {"x": x}, n_outputs=2, const_inputs={"k": np.array([2], np.int64)}))
    path = tmp_path / "topk.tfa"
    model.save(path)
    code = textwrap.dedent(f"""
        import sys, numpy as np, runtime
        x = np.load({str(tmp_path / 'x.npy')!r})
        values, indices = runtime.load({str(path)!r}).run({{"x": x}})
        assert np.allclose(values, -np.sort(-x, axis=1)[:, :2]), values
        assert "tvm" not in sys.modules
        print("OK")
    """)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_thread_pool_does_not_spin_after_a_run(cnn):
    """TVM's workers spun ~150 ms of CPU after every run with its default spin count (stealing a core from
    whatever runs next); TensorForge's pool (runtime/cpu_pool.py) sleeps after ~1 ms idle."""
    cnn.run({"image": image()})
    t0 = os.times()
    import time

    time.sleep(0.3)
    t1 = os.times()
    busy = (t1.user + t1.system) - (t0.user + t0.system)
    assert busy < 0.1, f"the process used {busy * 1e3:.0f} ms of CPU while idle for 300 ms"


def test_poisoned_memory_is_nan_so_unwritten_reads_show(monkeypatch):
    """$TENSORFORGE_POISON_MEMORY=1 (the test suite's setting, tests/conftest.py) fills new runtime memory with NaN
    bytes, so every model test also checks that no kernel reads memory it never wrote."""
    from tensorforge.runtime.plan import POISON_ENV, HostMemory

    monkeypatch.setenv(POISON_ENV, "1")
    assert np.isnan(HostMemory().empty((4, 8), "float32")).all()
    assert (HostMemory().empty((16,), "uint8") == 0xFF).all()
    monkeypatch.setenv(POISON_ENV, "0")
    assert HostMemory().empty((4, 8), "float32").shape == (4, 8)
