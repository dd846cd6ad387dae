"""The driver (compiler/driver.py), the options (compiler/options.py) and the API's argument checks: one training
flow behind compile_training, compile_gradients and analyze_training; frozen options; a light `compiler.ir`."""

import dataclasses
import io
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch

from tensorforge import CompileOptions, compile_model
from tensorforge.compiler.driver import optimize, training_graph
from tensorforge.compiler.ir import parse_graph
from tensorforge.compiler.report import analyze_training
from tensorforge.runtime.errors import CompileError, InputError


class _LSTMNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _lstm_onnx() -> onnx.ModelProto:
    torch.manual_seed(0)
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LSTMNet().eval(), (torch.randn(2, 6, 3),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    return onnx.load_from_string(f.getvalue())


def test_cuda_lstm_training_graph_is_the_same_in_every_entry_point():
    """Regression: analyze_training (tensorforge inspect --train) and compile_gradients raised PassError for an
    LSTM on the cuda target while compile_training worked; all three now build one training graph."""
    model = _lstm_onnx()
    options = CompileOptions(target="cuda")
    g, plan = analyze_training(model, optimizer={"name": "adam", "lr": 0.01}, options=options)
    assert "lstm_sequence" not in {n.op.name for n in g.nodes}  # unrolled before autodiff
    assert plan["stats"]["saved_activation_bytes"] > 0 and plan["state"]
    grads = training_graph(model, "cross_entropy", None, options, gradients_only=True).graph
    assert any(name.endswith(":grad") for name in grads.output_names)
    assert "lstm_sequence" not in {n.op.name for n in grads.nodes}
    # on the cpu the recurrence stays one op in forward and backward
    cpu = training_graph(model, "cross_entropy", None, CompileOptions(), gradients_only=True).graph
    assert "lstm_sequence" in {n.op.name for n in cpu.nodes}


def test_unknown_pass_names_are_rejected_with_the_valid_ones():
    g = parse_graph("graph g(%x: f32[4]) {\n  %y = relu(%x) : f32[4]\n  return %y\n}\n")
    with pytest.raises(InputError, match=r"--disable-pass fsue: no such pass in this pipeline; its passes are: "
                                         r"fold_constants, simplify, .*fuse$"):
        optimize(g.copy(), CompileOptions(disabled_passes={"fsue"}))
    with pytest.raises(InputError, match=r"--dump-after winograd: .*runs in another pipeline"):
        optimize(g.copy(), CompileOptions(target="cuda", dump_after={"winograd"}))
    optimize(g.copy(), CompileOptions(disabled_passes={"dce_2"}, dump_after=set(), verify_each_pass=True))


def test_options_are_frozen_checked_and_not_overridden_silently():
    options = CompileOptions(tuning_db="some/dir", disabled_passes=["fuse"])
    assert options.tuning_db == ("some/dir",) and options.disabled_passes == frozenset({"fuse"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.target = "cuda"
    assert CompileOptions(target="llvm").target == "cpu" and CompileOptions(target="cuda").spec.is_cuda
    for bad, message in (({"target": "tpu"}, "unknown target 'tpu'"), ({"precision": "fp8"}, "unknown precision"),
                         ({"opt_level": 3}, "unknown optimization level 3"),
                         ({"arch": "sm_80"}, "--arch sm_80 applies to the cuda target only")):
        with pytest.raises(CompileError, match=message):
            CompileOptions(**bad)
    g = parse_graph("graph g(%x: f32[4]) {\n  %y = relu(%x) : f32[4]\n  return %y\n}\n")
    with pytest.raises(CompileError, match=r"give either options= or target=, not both \(options has "
                                           r"target='cpu'\)"):
        compile_model(g, "cuda", options=CompileOptions())
    model = compile_model(g, options=CompileOptions(opt_level=1))
    assert "pass:simplify" in model.compile_timings and "total_s" in model.compile_timings
    np.testing.assert_array_equal(model.run({"x": np.array([-1, 2, -3, 4], np.float32)})[0], [0, 2, 0, 4])


def test_importing_the_ir_loads_neither_tvm_nor_onnx_nor_torch():
    code = "import sys, tensorforge.compiler.ir; print(sorted(m for m in ('tvm', 'onnx', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
