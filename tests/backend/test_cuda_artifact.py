"""CUDA artifacts without a GPU: compile, package (fatbin + plan with the device), load refusing cleanly where the
driver or GPU is missing, and TVM's CUDA module loader taking our fatbin through the compile callback (against a
fake libcuda.so.1, so that libtvm_runtime_cuda.so loads here). Running on a GPU: tests/runtime/test_cuda_gpu.py."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tensorforge import compile_model, runtime
from tensorforge.compiler.cli import main
from tensorforge.compiler.examples import small_cnn_onnx
from tensorforge.runtime.cuda import CudaModel, DeviceError
from tensorforge.runtime.errors import ArtifactError, CompileError

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit)")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NO_DRIVER = "/nonexistent/libcuda.so.1"


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(compiled model, its saved artifact): the small CNN for sm_90, half-precision operands."""
    path = str(tmp_path_factory.mktemp("cuda") / "cnn.tfa")
    model = compile_model(small_cnn_onnx(), target="cuda", arch="sm_90", precision="fp16")
    assert isinstance(model, CudaModel)
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def cnn_artifact(cnn):
    return cnn[1]


def test_artifact_carries_fatbin_and_device(cnn_artifact):
    with zipfile.ZipFile(cnn_artifact) as z:
        names = set(z.namelist())
        plan = json.loads(z.read("plan.json"))
        fatbin = z.read("kernels.fatbin")
    assert {"plan.json", "kernels.so", "kernels.fatbin"} <= names
    assert plan["device"]["kind"] == "cuda" and plan["device"]["arch"] == "sm_90"
    assert plan["device"]["fatbin"] == "kernels.fatbin" and len(plan["device"]["source_sha256"]) == 64
    assert plan["device"]["device_kernels"] >= len({s["kernel"] for s in plan["steps"]})
    assert plan["cpu_features"] == [] and plan["precision"] == "fp16"
    assert any(b["dtype"] == "float16" for b in plan["buffers"])  # weights stored in half precision
    assert '"arch":"sm_90"' in plan["target"].replace(" ", "")
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # the fatbin magic, little-endian 0xBA55ED50
    assert plan["arena_bytes"] > 0 and all("arena_offset" in b or "view_of" in b or i < len(plan["inputs"]) +
                                           len(plan["params"]) for i, b in enumerate(plan["buffers"]))


def test_load_without_driver_is_one_clean_line(cnn_artifact, monkeypatch):
    monkeypatch.setenv("TENSORFORGE_LIBCUDA", NO_DRIVER)
    with pytest.raises(DeviceError) as info:
        runtime.load(cnn_artifact)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ArtifactError)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("no CUDA driver: /nonexistent/libcuda.so.1 cannot be loaded")
    assert "needs an NVIDIA GPU" in msg


def test_compiled_model_defers_the_gpu_until_it_runs(cnn, monkeypatch):
    monkeypatch.setenv("TENSORFORGE_LIBCUDA", NO_DRIVER)
    model, _ = cnn  # compiled and saved without a GPU
    assert model.input_specs == {"image": ((1, 3, 32, 32), "float32")} and model.output_names
    with pytest.raises(DeviceError, match="no CUDA driver"):
        model.run({"image": np.zeros((1, 3, 32, 32), np.float32)})


def test_damaged_cuda_artifact(cnn_artifact, tmp_path):
    bad = tmp_path / "bad.tfa"
    with zipfile.ZipFile(cnn_artifact) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            if name != "kernels.fatbin":
                dst.writestr(name, src.read(name))
    with pytest.raises(ArtifactError, match="damaged: kernels.fatbin is missing"):
        runtime.load(bad)


def test_unknown_target_and_arch_errors():
    with pytest.raises(CompileError, match="unknown target 'tpu'; supported: 'cpu', 'cuda'"):
        compile_model(small_cnn_onnx(), target="tpu")
    with pytest.raises(CompileError, match="--arch sm_90 applies to the cuda target only"):
        compile_model(small_cnn_onnx(), target="cpu", arch="sm_90")


# -- TVM's CUDA loader, against a fake driver -------------------------------------------------------------------------
FAKE_DRIVER = r"""
#include <stdlib.h>
#include <string.h>
static int devices(void) { const char* m = getenv("FAKE_CUDA_DEVICES"); return m ? atoi(m) : 0; }
int cuInit(unsigned flags) { return devices() > 0 ? 0 : 100; }
int cuDeviceGetCount(int* c) { *c = devices(); return 0; }
int cuDeviceGet(int* d, int i) { *d = i; return 0; }
int cuDeviceGetAttribute(int* v, int attr, int dev) {
  const char* cc = getenv("FAKE_CUDA_CC"); int x = cc ? atoi(cc) : 90; *v = attr == 75 ? x / 10 : x % 10; return 0; }
int cuDeviceGetName(char* n, int len, int dev) { strncpy(n, "Fake GPU", len); return 0; }
int cuDriverGetVersion(int* v) { *v = 13000; return 0; }
int cuGetErrorName(int e, const char** s) { *s = e == 100 ? "CUDA_ERROR_NO_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0; }
int cuGetErrorString(int e, const char** s) { return cuGetErrorName(e, s); }
int cuFuncSetAttribute(void) { return 999; }
int cuLaunchKernelEx(void) { return 999; }
int cuModuleGetFunction(void) { return 999; }
int cuModuleLoadData(void) { return 999; }
int cuModuleUnload(void) { return 0; }
int cuTensorMapEncodeTiled(void) { return 999; }
"""


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the fake driver")
    d = tmp_path_factory.mktemp("fakecuda")
    (d / "fake.c").write_text(FAKE_DRIVER)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(d / "libcuda.so.1"), "-Wl,-soname,libcuda.so.1",
                    str(d / "fake.c")], check=True)
    return str(d / "libcuda.so.1")


FAKE_SESSION = """
import json, os, tempfile
from tensorforge import runtime
import tensorforge.runtime.cuda as C
from tensorforge.runtime import artifact

def attempt(devices, cc):
    os.environ["FAKE_CUDA_DEVICES"], os.environ["FAKE_CUDA_CC"] = str(devices), str(cc)  # read by each driver call
    try:
        runtime.load(PATH)
    except runtime.ArtifactError as e:
        return f"{type(e).__name__} {e}"

out = {"no_gpu": attempt(0, 90), "old_gpu": attempt(1, 80)}
os.environ["FAKE_CUDA_CC"] = "90"
d = tempfile.mkdtemp()
plan, kernels, _ = artifact.read_artifact(PATH, d)
C.init_cuda(0, plan["device"]["arch"])
try:
    C.load_cuda_kernels(kernels, os.path.join(d, "kernels.fatbin"), "0" * 64)
except C.ArtifactError as e:
    out["wrong_hash"] = str(e)
module = C.load_cuda_kernels(kernels, os.path.join(d, "kernels.fatbin"), plan["device"]["source_sha256"])
out["served"] = C._callback["served"]
out["source_is_the_compiled_one"] = C._callback["misses"] == [plan["device"]["source_sha256"]]
out["kernel"] = module[plan["steps"][0]["kernel"]] is not None
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fake_session(cnn_artifact, fake_driver):
    """One fresh process (libtvm_runtime_cuda.so cannot be unloaded) against the fake driver: no GPU, an sm_80
    GPU, then an sm_90 one, whose loader we let compile the artifact's kernels through our callback."""
    env = {**os.environ, "TENSORFORGE_LIBCUDA": fake_driver, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", f"PATH = {cnn_artifact!r}\n" + FAKE_SESSION], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_driver_without_gpu_and_too_old_gpu(fake_session):
    assert fake_session["no_gpu"] == "DeviceError the CUDA driver found no usable GPU: cuInit returned " \
                                     "CUDA_ERROR_NO_DEVICE"
    assert fake_session["old_gpu"] == ("DeviceError this artifact was compiled for sm_90 (PTX compute_90), but GPU 0 "
                                       "(Fake GPU) is sm_80: recompile with --arch sm_80")


def test_tvm_loader_takes_the_shipped_fatbin(fake_session):
    """libtvm_runtime_cuda.so compiles the library's embedded CUDA source by calling tvm_callback_cuda_compile:
    ours answers with the artifact's fatbin when the source hash matches, and refuses a source it has none for."""
    assert fake_session["wrong_hash"].startswith("the CUDA source in kernels.so (sha256 ")
    assert "is not the one its fatbin was compiled from (000000000000)" in fake_session["wrong_hash"]
    assert fake_session["served"] == 1  # the source TVM hands over is exactly the one nvcc compiled
    assert fake_session["source_is_the_compiled_one"] and fake_session["kernel"]


# -- command line and training ------------------------------------------------------------------------------------------
def test_cli_compile_inspect_run_for_cuda(tmp_path, capsys, monkeypatch):
    import onnx

    monkeypatch.setenv("TENSORFORGE_LIBCUDA", NO_DRIVER)
    onnx.save(small_cnn_onnx(), tmp_path / "cnn.onnx")
    out = str(tmp_path / "cnn.tfa")
    assert main(["compile", str(tmp_path / "cnn.onnx"), "-o", out, "--target", "cuda", "--arch", "sm_86"]) == 0
    assert main(["inspect", out]) == 0
    assert "device cuda sm_86" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    assert main(["run", out, "--input", f"image={tmp_path / 'x.npy'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tensorforge: error: no CUDA driver: ") and "\n" not in err


def test_tune_for_cuda_needs_a_gpu(tmp_path, monkeypatch, capsys):
    import onnx

    monkeypatch.setenv("TENSORFORGE_LIBCUDA", NO_DRIVER)
    onnx.save(small_cnn_onnx(), tmp_path / "cnn.onnx")
    assert main(["tune", str(tmp_path / "cnn.onnx"), "--db", str(tmp_path / "db"), "--target", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "tuning for CUDA builds candidates here but measures them on the GPU" in err and "no CUDA driver" in err
    assert not (tmp_path / "db").exists()


def test_training_compiles_for_cuda(monkeypatch):
    from tensorforge import compile_training
    from tensorforge.frontends import nn

    monkeypatch.setenv("TENSORFORGE_LIBCUDA", NO_DRIVER)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    session = compile_training(net, "cross_entropy", {"name": "adam", "lr": 1e-3}, target="cuda",
                               shapes={"x": (8, 8)}, precision="bf16")
    train = session.train_model
    assert isinstance(train, CudaModel) and isinstance(session.eval_model, CudaModel)
    assert train.plan["device"]["kind"] == "cuda" and train.plan["precision"] == "bf16"
    assert len(train.plan["state"]) >= 3 * len(session.spec["trainable"])  # params + two Adam moments each
    with pytest.raises(DeviceError, match="no CUDA driver"):
        session.step({"x": np.zeros((8, 8), np.float32)}, np.zeros(8, np.int64))
