"""The `tensorforge` command line, end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tensorforge.compiler.cli import main
from tests.support import light_expected, light_input, light_path


def relu_onnx(path, dims):
    """relu(x) on x of `dims` (names for symbolic ones), saved at `path`."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.fixture(scope="module")
def squeezenet_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "squeezenet.tfa"
    assert main(["compile", light_path("squeezenet"), "-o", str(out), "--print-pass-times"]) == 0
    return out


def test_compile_run_writes_outputs(squeezenet_artifact, tmp_path, capsys):
    feeds = light_input(onnx.load(light_path("squeezenet")))
    (name, x), = feeds.items()
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(squeezenet_artifact), "--input", f"{name}=" + str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "softmaxout_1: float32[1, 1000, 1, 1]" in printed
    out = np.load(tmp_path / "out" / "softmaxout_1.npy")
    np.testing.assert_allclose(out, light_expected("squeezenet"), rtol=1e-3, atol=1e-5)


def test_inspect_onnx_and_artifact(squeezenet_artifact, capsys):
    assert main(["inspect", light_path("squeezenet")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("graph ") and "conv2d(" in text and "return %softmaxout_1" in text
    assert main(["inspect", str(squeezenet_artifact)]) == 0
    text = capsys.readouterr().out
    assert "conv2d_nchwc(" in text and "distinct kernels" in text
    assert main(["inspect", str(squeezenet_artifact), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {"ops", "kernels", "arena_bytes", "live_lower_bound_bytes", "unplanned_bytes", "params_bytes"}
    assert 20 < info["kernels"] < info["ops"] and info["arena_bytes"] <= 1.1 * info["live_lower_bound_bytes"]


def test_inspect_report_and_fusion_for_onnx(capsys):
    assert main(["inspect", light_path("resnet50"), "--json", "--fusion"]) == 0
    out = capsys.readouterr().out
    report, stats = out.rsplit("\n", 2)[0], json.loads(out.strip().splitlines()[-1])
    assert "fused kernels" in report and "conv2d_nchwc" in report and "add" in report
    assert "max_pool2d_nchwc (" in report and "a reduction ends its kernel" in report
    assert stats["kernels"] <= 58 and stats["params_bytes"] > 90e6
    assert main(["inspect", light_path("squeezenet"), "--optimized", "-O", "1"]) == 0
    assert "conv2d_packed(" in capsys.readouterr().out


def test_shape_flag_and_dump(tmp_path, capsys):
    relu_onnx(tmp_path / "m.onnx", ["n", 4])
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tfa"), "--shape", "x=3x4",
                 "--dump-after", "pack_weights"]) == 0
    assert "// IR after pack_weights" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.full((3, 4), -1.0, np.float32))
    assert main(["run", str(tmp_path / "m.tfa"), "-i", f"x={tmp_path / 'x.npy'}", "--benchmark", "3",
                 "--profile"]) == 0
    out = capsys.readouterr().out
    assert "y: float32[3, 4]" in out and "median latency" in out and "relu" in out.split("profile:")[1]


@pytest.mark.parametrize("argv, message", [
    (["compile", "/no/such.onnx", "-o", "/tmp/x.tfa"], "ONNX file '/no/such.onnx' does not exist"),
    (["run", "/no/such.tfa"], "artifact '/no/such.tfa' does not exist"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("tensorforge: error: ") and message in err
    assert "Traceback" not in err


def test_run_with_wrong_input(squeezenet_artifact, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 10, 10), np.float32))
    assert main(["run", str(squeezenet_artifact), "-i", f"data_0={tmp_path / 'bad.npy'}"]) == 1
    assert "input 'data_0' has shape [1, 3, 10, 10]" in capsys.readouterr().err
    assert main(["run", str(squeezenet_artifact), "-i", f"data_0={tmp_path / 'missing.npy'}"]) == 1
    assert "cannot read input 'data_0'" in capsys.readouterr().err


def test_bad_shape_flag(capsys):
    assert main(["compile", "m.onnx", "-o", "x", "--shape", "x=1xfoo"]) == 1
    assert "dimensions must be integers" in capsys.readouterr().err


def test_console_script_demo():
    """The installed entry point, in a fresh process, as a newcomer runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "tensorforge")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tensorforge.compiler.cli"]
    proc = subprocess.run(cmd + ["demo", "--repeat", "5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "-> match" in proc.stdout and "onnxruntime" in proc.stdout and "latency" in proc.stdout


def test_verbose_shows_traceback():
    proc = subprocess.run([sys.executable, "-m", "tensorforge.compiler.cli", "--verbose", "run", "/no/such.tfa"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ArtifactError" in proc.stderr


def test_inspect_training_program(tmp_path, capsys):
    import onnx

    from tensorforge.compiler.examples import small_cnn_onnx

    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn_onnx(), str(path))
    assert main(["inspect", str(path), "--train", "--optimizer", "adam", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(stats) >= {"ops", "kernels", "arena_bytes", "live_lower_bound_bytes", "unplanned_bytes",
                          "params_bytes", "saved_activation_bytes", "state_bytes"}
    # Adam keeps two moments beside each trainable float: the state holds at least 3 floats per weight
    weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer if t.data_type == 1)
    assert stats["state_bytes"] >= 3 * 4 * weights > 0 and stats["saved_activation_bytes"] > 0
    assert stats["arena_bytes"] >= stats["live_lower_bound_bytes"] > 0 and stats["kernels"] < stats["ops"]


def test_cache_shows_and_clears_the_specializations(tmp_path, monkeypatch, capsys):
    from onnx import TensorProto, helper

    from tensorforge import compile_model

    monkeypatch.setenv("TENSORFORGE_CACHE_DIR", str(tmp_path))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                                                [x, shape], [y]), opset_imports=[helper.make_opsetid("", 17)])
    compile_model(model).run({"x": np.ones((2, 6), np.float32), "shape": np.array([3, 4], np.int64)})
    assert main(["cache"]) == 0
    assert f"{tmp_path}: 1 compiled specialization(s)" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "deleted 1 cached specialization(s)" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tfa"))
    monkeypatch.setenv("TENSORFORGE_CACHE_DIR", "off")
    assert main(["cache"]) == 0 and "no on-disk cache" in capsys.readouterr().out


def test_compile_a_dynamic_model_into_a_bundle(tmp_path, capsys):
    from tensorforge import runtime

    relu_onnx(tmp_path / "m.onnx", ["batch", 6])
    out = tmp_path / "m.tfa"
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(out), "--dynamic", "x=1..8x6", "--at", "x=4x6"]) == 0
    assert "a bundle of 2 specialization(s) for {'x': {0: (1, 8)}}" in capsys.readouterr().out
    b = runtime.load(out)
    for rows in (1, 4):
        v = np.linspace(-1, 1, rows * 6, dtype=np.float32).reshape(rows, 6)
        np.testing.assert_array_equal(b.run({"x": v})[0], np.maximum(v, 0))
    assert len(b.benchmark({"x": v}, repeat=2, warmup=1)) == 2 and b.profile({"x": v}, repeat=2)
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "2 specialization(s) of inputs ['x']" in shown and "'shapes': {'x': [4, 6]}" in shown
    np.save(tmp_path / "x.npy", v)
    assert main(["run", str(out), "--input", f"x={tmp_path / 'x.npy'}", "--benchmark", "2"]) == 0
    assert "median latency" in capsys.readouterr().out
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(out), "--dynamic", "x=1..8x6", "--at",
                 "x=9x6"]) == 1
    assert "input 'x' dimension 0 is 9, outside its dynamic range [1, 8]" in capsys.readouterr().err
