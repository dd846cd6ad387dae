"""Hugging Face transformers models (small configs, random weights, nothing downloaded) exported to ONNX the way
users export them: they compile, match PyTorch, and their planned arena stays within 1.05x of the live lower bound
(issue 16, item 4: a transformers BertModel once planned 1.16x, a ConvNeXt 1.17x)."""

import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from benchmarks.hf_models import _Output
from tensorforge import compile_model
from tensorforge.compiler.report import analyze

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e .[test]")


def _bert():
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, attn_implementation="eager")
    return _Output(transformers.BertModel(cfg, add_pooling_layer=False), "last_hidden_state"), \
        torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


def _convnext():
    # three blocks a stage: with two, the residual stream never fragmented the arena
    cfg = transformers.ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[16, 32], depths=[3, 3],
                                      num_labels=10, image_size=32)
    return _Output(transformers.ConvNextForImageClassification(cfg), "logits"), \
        torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _distilbert():
    cfg = transformers.DistilBertConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                        attn_implementation="eager")
    return _Output(transformers.DistilBertModel(cfg), "last_hidden_state"), \
        torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build", [_bert, _convnext, _distilbert], ids=["bert", "convnext", "distilbert"])
def test_hf_model_compiles_matches_pytorch_and_plans_tightly(build):
    torch.manual_seed(0)
    module, x = build()
    module.eval()
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"])
        ref = module(x).numpy()
    proto = onnx.load_from_string(f.getvalue())
    _, plan = analyze(proto)
    stats = plan["stats"]
    assert 0 < stats["live_lower_bound_bytes"] <= stats["arena_bytes"] <= 1.05 * stats["live_lower_bound_bytes"]
    out = compile_model(proto).run({"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
