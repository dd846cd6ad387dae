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


# Dynamic shapes (compiler/specialize.py): one compile_model per network with ranges over its batch (and sequence)
# dimensions, run at sizes other than the lower bounds, against onnxruntime on the same export. The LLaMA block's
# rotary tables are exported for its 64 positions, so only its batch is dynamic.
DYNAMIC_AXES = {"bert_small": (0, 1), "gpt2_tiny": (0, 1), "vit_tiny": (0,), "lstm_classifier": (0, 1),
                "gru_classifier": (0, 1), "llama_block": (0,)}


@pytest.mark.parametrize("name", SMALL)
def test_dynamic_batch_and_sequence(name):
    import onnxruntime as ort

    _, x = MODELS[name](1)
    axes = DYNAMIC_AXES[name]
    model = export_onnx(name, dynamic_axes={a: ("batch", "seq")[a] for a in axes})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile_model(model, dynamic={INPUT_NAME: {a: (1, 4 if a == 0 else x.shape[a]) for a in axes}})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    looped = 0
    for batch, cut in ((3, 1), (2, 2)):
        xb = torch.cat([x.roll(i, dims=1) for i in range(batch)])  # rows that differ
        if 1 in axes:
            xb = xb[:, :max(1, x.shape[1] // cut)]
        feeds = {INPUT_NAME: xb.numpy()}
        assert_close(compiled.run(feeds)[0], sess.run(None, feeds)[0], rtol=1e-3, atol=1e-4,
                     what=f"{name} at {tuple(xb.shape)}")
        looped += type(compiled.specialize(feeds)).__name__ == "LoopedModel"
    # the lower bounds, then each shape met: compiled, or run as slices of batch 1 where compiler/batch_loop.py
    # proves that the same and worth it (batch 1 at a new sequence length compiled for it)
    assert compiled.specializations == 3 + (looped if 1 in axes else 0)
    assert looped >= (name == "bert_small")  # 64 tokens of 128 wide: enough arithmetic per weight
