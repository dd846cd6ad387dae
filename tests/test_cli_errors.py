"""Every mistake on the command line ends in one line on stderr, `tensorforge: error: ...`, and exit status 1:
usage errors argparse finds as well as the ones only the command can see, each found before any slow work."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorforge.compiler.cli import main


@pytest.fixture
def relu_onnx(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "relu.onnx"
    onnx.save(model, path)
    return str(path)


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tensorforge: error: "), captured.err
    assert "internal error" not in lines[0] and "usage:" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch", "0"], "argument --batch: must be a positive integer, got 0 (see tensorforge train --help)"),
    (["train", "--steps", "-3"], "argument --steps: must be a positive integer, got -3"),
    (["train", "--batch", "many"], "argument --batch: expected a positive integer, got 'many'"),
    (["train", "--lr", "0"], "argument --lr: must be a positive number, got 0"),
    (["train", "--test-size", "16"], "--test-size 16 is smaller than --batch 32: it must hold at least one batch"),
    (["train", "--sync-batch-norm"], "--sync-batch-norm averages batch norm's statistics between the processes: it "
                                     "needs --distributed"),
    (["run", "m.tfa", "--threads", "0"], "argument --threads: must be a positive integer, got 0"),
    (["run", "m.tfa", "--benchmark", "-5"], "argument --benchmark: must be a positive integer, got -5"),
    (["demo", "--repeat", "0"], "argument --repeat: must be a positive integer, got 0"),
    (["demo", "-O", "7"], "argument -O: invalid choice: 7"),
    (["tune", "m.onnx", "--db", "d", "--trials", "0"], "argument --trials: must be a positive integer, got 0"),
    (["compile", "m.onnx"], "the following arguments are required: -o/--output (see tensorforge compile --help)"),
    (["compile", "m.onnx", "-o", "m.tfa", "--shape", "x=1xfoo"], "dimensions must be integers"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
    (["run", "m.tfa", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_usage_errors(argv, message, capsys):
    assert message in one_line_error(argv, capsys)


def test_compile_into_a_directory(relu_onnx, tmp_path, capsys):
    err = one_line_error(["compile", relu_onnx, "-o", str(tmp_path)], capsys)
    assert f"-o {tmp_path} is a directory; give a file name, e.g. {tmp_path / 'relu.tfa'}" in err


def test_compile_into_a_missing_directory(relu_onnx, tmp_path, capsys):
    out = tmp_path / "no" / "such.tfa"
    assert f"-o {out}: directory {tmp_path / 'no'} does not exist" in one_line_error(
        ["compile", relu_onnx, "-o", str(out)], capsys)


def test_missing_tuning_db(relu_onnx, tmp_path, capsys):
    err = one_line_error(["compile", relu_onnx, "-o", str(tmp_path / "m.tfa"), "--tuning-db",
                          str(tmp_path / "nodb")], capsys)
    assert f"--tuning-db {tmp_path / 'nodb'}: no such directory" in err
    assert not (tmp_path / "m.tfa").exists()


def test_run_output_dir_is_a_file(tmp_path, capsys):
    """run's -o is --output-dir: one .npy per output goes into it."""
    (tmp_path / "out.npy").write_bytes(b"")
    err = one_line_error(["run", str(tmp_path / "m.tfa"), "-o", str(tmp_path / "out.npy")], capsys)
    assert "-o/--output-dir" in err and "is a file: run writes one .npy file per output into a directory" in err


def test_train_checkpoint_into_a_directory(tmp_path, capsys):
    err = one_line_error(["train", "--checkpoint", str(tmp_path)], capsys)
    assert f"--checkpoint {tmp_path} is a directory; give a file name" in err


def test_run_an_onnx_file(relu_onnx, capsys):
    err = one_line_error(["run", relu_onnx], capsys)
    assert f"is an ONNX model; compile it first: tensorforge compile {relu_onnx} -o {relu_onnx[:-5]}.tfa" in err


def test_run_a_directory(tmp_path, capsys):
    assert "is a directory, not an artifact file" in one_line_error(["run", str(tmp_path)], capsys)


def test_console_script_exit_status(tmp_path):
    """The installed entry point, in a fresh process: status 1 and one line, not argparse's usage and status 2."""
    exe = os.path.join(os.path.dirname(sys.executable), "tensorforge")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tensorforge.compiler.cli"]
    for argv in (["train", "--batch", "0"], ["run", str(tmp_path)]):
        proc = subprocess.run(cmd + argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("tensorforge: error: ")


def test_run_still_works_with_output_dir(relu_onnx, tmp_path, capsys):
    assert main(["compile", relu_onnx, "-o", str(tmp_path / "m.tfa")]) == 0
    np.save(tmp_path / "x.npy", np.full((2, 4), -1.0, np.float32))
    assert main(["run", str(tmp_path / "m.tfa"), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out"),
                 "--benchmark", "2"]) == 0
    assert np.array_equal(np.load(tmp_path / "out" / "y.npy"), np.zeros((2, 4), np.float32))


def test_compile_a_model_whose_inputs_decide_shapes(tmp_path, capsys):
    """The Python API compiles such a model per fed value (compiler/specialize.py) and saves the values compiled
    as a bundle; the CLI has compiled none, so it says how to."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                                                [x, shape], [y]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "r.onnx")
    err = one_line_error(["compile", str(tmp_path / "r.onnx"), "-o", str(tmp_path / "r.tfa")], capsys)
    assert "nothing to save yet: this model is compiled per value or shape of its input(s) ['shape']" in err
    assert "make those inputs initializers" in err
    assert not (tmp_path / "r.tfa").exists()


@pytest.mark.parametrize("flag, message", [
    ("x=1..", "dimension 0's range '1..' must be LOW..HIGH with 1 <= LOW <= HIGH"),
    ("x=8..2x6", "dimension 0's range '8..2'"),
    ("x=4x6", "no LOW..HIGH range (use --shape for fixed shapes)"),
    ("x=1..4xfoo", "dimension 1 is 'foo'; give LOW..HIGH, a number or ?"),
    ("1..4", "expected NAME=LOW..HIGHxD"),
])
def test_bad_dynamic_flags(flag, message, relu_onnx, tmp_path, capsys):
    assert message in one_line_error(["compile", relu_onnx, "-o", str(tmp_path / "m.tfa"), "--dynamic", flag],
                                     capsys)


def test_at_needs_dynamic(relu_onnx, tmp_path, capsys):
    assert "--at compiles shapes within --dynamic ranges" in one_line_error(
        ["compile", relu_onnx, "-o", str(tmp_path / "m.tfa"), "--at", "x=2x4"], capsys)
