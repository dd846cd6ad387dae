"""The benchmark models (benchmarks/models.py) export from PyTorch, compile, and match PyTorch."""

import numpy as np
import pytest

from benchmarks.models import export_onnx, example_feeds
from tensorforge import compile_model
from tests.support import assert_close


def check(name: str, dynamo: bool = False):
    model = export_onnx(name, dynamo=dynamo)
    feeds, expected = example_feeds(name)
    got = compile_model(model).run(feeds)[0]
    assert got.dtype == np.float32
    assert_close(got, expected, rtol=1e-3, atol=1e-4, what=name)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["mlp", "bert_layer"])
def test_small_models(name, dynamo):
    check(name, dynamo)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_bert_two_small_layers(dynamo):
    """Embeddings (Gather on run-time token ids), embedding LayerNorm and two encoder layers, hidden 128."""
    check("bert_small", dynamo)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert_base", "resnet50"])
def test_large_models(name):
    check(name)
