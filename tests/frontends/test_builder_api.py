"""The builder API (frontends.nn): networks defined in code compile and match PyTorch with the same weights."""

import numpy as np
import pytest
import torch

from tensorforge import compile_model
from tensorforge.frontends import nn
from tensorforge.runtime.errors import FrontendError
from tests.support import assert_close


def run(net, params, x):
    model = compile_model(net, shapes={"x": x.shape}, params=params)
    return model.run({"x": x})[0]


def torch_load(module, params, rename=lambda k: k):
    module.load_state_dict({rename(k): torch.from_numpy(v) for k, v in params.items()}, strict=True)
    return module.eval()


def test_cnn_matches_pytorch():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU6(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 2 * 2, 10), nn.Softmax())
    params = net.init(seed=1)
    params["1.running_mean"] = np.linspace(-1, 1, 8).astype(np.float32)
    params["1.running_var"] = np.linspace(0.5, 2, 8).astype(np.float32)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2),
                              torch.nn.ReLU6(), torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(64, 10), torch.nn.Softmax(-1))
    ref = torch_load(ref, {k: v for k, v in params.items()})
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        assert_close(run(net, params, x), ref(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_matches_pytorch(kind):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, kind)(6, 12)
            self.fc = nn.Linear(12, 3)

        def forward(self, t, x):
            seq, last = self.rnn(t, x)
            return self.fc(t, last), seq

    net = Net()
    params = net.init(seed=2)
    ref_rnn = getattr(torch.nn, kind)(6, 12, batch_first=True)
    torch_load(ref_rnn, {k[4:]: v for k, v in params.items() if k.startswith("rnn.")}, lambda k: k + "_l0")
    x = np.random.default_rng(0).standard_normal((2, 5, 6)).astype(np.float32)
    with torch.no_grad():
        seq, _ = ref_rnn(torch.from_numpy(x))
        logits = seq[:, -1] @ torch.from_numpy(params["fc.weight"]).T + torch.from_numpy(params["fc.bias"])
    model = compile_model(net, shapes={"x": x.shape}, params=params)
    got_logits, got_seq = model.run({"x": x})
    assert_close(got_seq, seq.numpy(), rtol=1e-4, atol=1e-5)
    assert_close(got_logits, logits.numpy(), rtol=1e-4, atol=1e-5)


def test_transformer_block_matches_pytorch():
    class Block(nn.Module):
        def __init__(self, d=32, heads=4):
            super().__init__()
            self.attn = nn.MultiheadAttention(d, heads, causal=True)
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.ff = nn.Sequential(nn.Linear(d, 64), nn.GELU(), nn.Linear(64, d))

        def forward(self, t, x):
            from tensorforge.compiler import ops

            x = t.op(ops.add, [x, self.attn(t, self.norm1(t, x))])
            return t.op(ops.add, [x, self.ff(t, self.norm2(t, x))])

    net = Block()
    params = net.init(seed=3)
    p = {k: torch.from_numpy(v) for k, v in params.items()}
    x = np.random.default_rng(0).standard_normal((2, 6, 32)).astype(np.float32)

    def ref(x):
        def lin(v, name):
            return v @ p[name + ".weight"].T + p[name + ".bias"]

        def ln(v, name):
            return torch.nn.functional.layer_norm(v, (32,), p[name + ".weight"], p[name + ".bias"])

        h = ln(x, "norm1")
        q, k, v = (lin(h, f"attn.{n}").view(2, 6, 4, 8).transpose(1, 2) for n in ("query", "key", "value"))
        scores = q @ k.transpose(-1, -2) / np.sqrt(8) + torch.triu(torch.full((6, 6), -1e4), 1)
        ctx = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 6, 32)
        x = x + lin(ctx, "attn.out")
        h = ln(x, "norm2")
        return x + lin(torch.nn.functional.gelu(lin(h, "ff.0")), "ff.2")

    with torch.no_grad():
        assert_close(run(net, params, x), ref(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_embedding():
    net = nn.Embedding(10, 4)
    params = net.init()
    ids = np.array([[1, 9, 0]], np.int64)
    from tensorforge.compiler.ir import TensorType

    g = net.to_graph({"x": TensorType((1, 3), "int64")}, params)
    model = compile_model(g)
    np.testing.assert_array_equal(model.run({"x": ids})[0], params["weight"][ids])


def test_parameter_errors():
    net = nn.Linear(3, 2)
    with pytest.raises(FrontendError, match=r"missing \['bias'\], unknown \['b'\]"):
        net.to_graph({"x": (1, 3)}, {"weight": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)})
    with pytest.raises(FrontendError, match=r"parameter 'weight' has shape \(3, 2\), the module declares \(2, 3\)"):
        net.to_graph({"x": (1, 3)}, {"weight": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)})
    with pytest.raises(FrontendError, match=r"in module 'Linear'.*expects x \(M, K\)"):
        net.to_graph({"x": (1, 4)})
