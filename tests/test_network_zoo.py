"""Every kind of network, three ways in: ONNX from PyTorch's TorchScript exporter (opset 17), ONNX from its dynamo
exporter (opset 18), and the PyTorch module directly (torch.export). All must match PyTorch (rtol 1e-3, atol 1e-4).

The default run uses small configurations of the same architectures; the full-size ones (BERT-base, GPT-2 small,
ViT-base) are marked slow.
"""

import warnings

import numpy as np
import pytest
import torch

from benchmarks.models import INPUT_NAME, MODELS, export_onnx
from tensorforge import compile_model
from tests.support import assert_close

SMALL = ["bert_small", "gpt2_tiny", "vit_tiny", "lstm_classifier", "gru_classifier", "llama_block"]
FULL = ["bert_base", "gpt2_small", "vit_base"]
PATHS = ["torchscript", "dynamo", "torch"]


def check(name, path):
    module, x = MODELS[name](1)
    with torch.no_grad():
        expected = module(x).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path == "torch":
            model = compile_model(module, example_inputs=(x,))
        else:
            model = compile_model(export_onnx(name, dynamo=path == "dynamo"))
    got = model.run({INPUT_NAME: x.numpy()})[0]
    assert_close(got, expected, rtol=1e-3, atol=1e-4, what=f"{name} via {path}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", SMALL)
def test_small(name, path):
    check(name, path)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", FULL)
def test_full_size(name, path):
    check(name, path)
