"""The PyTorch frontend: nn.Modules through torch.export (core ATen) compile and match PyTorch."""

import numpy as np
import pytest
import torch

from benchmarks.models import MODELS
from tensorforge import compile_model
from tensorforge.frontends.torch import from_torch
from tensorforge.runtime.errors import CompileError, FrontendError, UnsupportedOpError
from tests.support import assert_close


@pytest.mark.parametrize("name", ["mlp", "resnet50", "mobilenet_v2", "bert_small", "gpt2_tiny", "lstm_classifier"])
def test_module_matches_pytorch(name):
    module, x = MODELS[name](1)
    with torch.no_grad():
        expected = module(x).numpy()
    model = compile_model(module, example_inputs=(x,))
    assert_close(model.run({"input": x.numpy()})[0], expected, rtol=1e-3, atol=1e-4, what=name)


def test_batch_norm_and_pooling_variants():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.LeakyReLU(0.2),
        torch.nn.AvgPool2d(3, stride=2, padding=1), torch.nn.Conv2d(8, 8, 3, groups=8, padding=1), torch.nn.SiLU(),
        torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 5)).eval()
    with torch.no_grad():
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = module(x).numpy()
    assert_close(compile_model(module, example_inputs=(x,)).run({"input": x.numpy()})[0], expected, rtol=1e-3,
                 atol=1e-4)


@pytest.mark.parametrize("layers, bidirectional, batch_first, bias, state", [
    (2, True, False, True, True), (1, True, True, False, True)],
    ids=["2-layer-bidirectional-state", "no-bias-bidirectional-state"])  # 1 layer: lstm_classifier above
def test_lstm_runs_as_lstm_sequence(layers, bidirectional, batch_first, bias, state):
    """aten.lstm is kept whole by the exporter and becomes one lstm_sequence op per layer and direction."""
    torch.manual_seed(1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(6, 12, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                                      bias=bias)

        def forward(self, x, h0, c0):
            y, (h, c) = self.lstm(x, (h0, c0) if state else None)
            return y, h, c

    dirs = 2 if bidirectional else 1
    x = torch.randn((3, 5, 6) if batch_first else (5, 3, 6))
    h0, c0 = torch.randn(layers * dirs, 3, 12), torch.randn(layers * dirs, 3, 12)
    net = Net().eval()
    g = from_torch(net, (x, h0, c0))
    assert sum(n.op.name == "lstm_sequence" for n in g.nodes) == layers * dirs
    with torch.no_grad():
        expected = [t.numpy() for t in net(x, h0, c0)]
    feeds = {name: t.numpy() for name, t in zip([v.name for v in g.inputs], (x, h0, c0))}
    got = compile_model(net, example_inputs=(x, h0, c0)).run(feeds)
    for a, e, what in zip(got, expected, ("y", "h_n", "c_n")):
        assert_close(a, e, rtol=1e-4, atol=1e-5, what=what)


def test_unsupported_aten_ops_are_listed_with_their_nodes():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 0) + torch.sort(x, 0).values

    with pytest.raises(UnsupportedOpError, match=r"2 unsupported ATen op\(s\):\n.*cumprod.*\n.*sort"):
        from_torch(Odd(), (torch.randn(3, 4),))


def test_module_needs_example_inputs():
    with pytest.raises(CompileError, match="needs example_inputs"):
        compile_model(torch.nn.ReLU())


def test_params_keep_their_names():
    module, x = MODELS["mlp"](1)
    g = from_torch(module, (x,))
    assert any(p.name.startswith("0.weight") or p.name.startswith("0.bias") for p in g.params), \
        [p.name for p in g.params]


def test_errors_name_the_torch_node():
    with pytest.raises(FrontendError, match=r"^torch node 'avg_pool2d' \(aten\.avg_pool2d\.default\): "
                                            r"divisor_override is not supported"):
        from_torch(torch.nn.AvgPool2d(2, divisor_override=3).eval(), (torch.randn(1, 2, 6, 6),))


def test_a_vit_exported_by_torch_runs_its_attention_as_one_op():
    """torch.export writes ViT's 4-D q @ k^T and p @ v as bmm between reshapes; the recognizer sees through them
    (passes/recognize.py), so the model gets the attention kernel: ViT-base bf16 through this path 236 -> 60 ms."""
    module, x = MODELS["vit_tiny"](1)
    with torch.no_grad():
        expected = module(x).numpy()
    model = compile_model(module, example_inputs=(x,))
    ops_ = [s["op"] for s in model.plan["steps"]]
    assert sum("attention" in op.split("+") for op in ops_) == len(module.blocks), ops_
    assert_close(model.run({"input": x.numpy()})[0], expected, rtol=1e-3, atol=1e-4)
