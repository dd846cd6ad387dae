"""Plain MLPs exported from PyTorch, with both of torch.onnx's exporters, compile and match PyTorch."""

import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from tensorforge import compile_model
from tests.support import assert_close


def mlp(activation, in_features=20):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(in_features, 64), activation, torch.nn.Linear(64, 32), activation,
                               torch.nn.Dropout(0.1), torch.nn.Linear(32, 10)).eval()


def export(module, x, dynamo):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=dynamo, opset_version=18 if dynamo else 17,
                          input_names=["x"], output_names=["y"])
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("activation", [torch.nn.ReLU(), torch.nn.Tanh(), torch.nn.Sigmoid(), torch.nn.GELU(),
                                        torch.nn.LeakyReLU(0.1)], ids=lambda a: type(a).__name__)
def test_mlp(activation, dynamo):
    module = mlp(activation)
    x = torch.randn(8, 20)
    model = export(module, x, dynamo)
    with torch.no_grad():
        expected = module(x).numpy()
    got = compile_model(model).run({"x": x.numpy()})[0]
    assert_close(got, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_mlp_on_sequences(dynamo):
    """A 3-D input exports Linear as MatMul + Add: the frontend turns MatMul by a constant into dense."""
    module = mlp(torch.nn.ReLU(), in_features=12)
    x = torch.randn(2, 5, 12)
    model = export(module, x, dynamo)
    with torch.no_grad():
        expected = module(x).numpy()
    got = compile_model(model).run({"x": x.numpy()})[0]
    assert got.shape == (2, 5, 10)
    assert_close(got, expected, rtol=1e-3, atol=1e-4)
