"""Small networks written twice, in the builder API and in PyTorch with the same parameter names, for checking
gradients and training against torch autograd."""

import math

import numpy as np
import torch

from tensorforge.compiler import ops
from tensorforge.frontends import nn


class TorchEncoderLayer(torch.nn.Module):
    """Post-norm Transformer encoder layer with separate q/k/v/out projections (names as the builder's)."""

    def __init__(self, d, heads, ff):
        super().__init__()
        self.heads = heads
        self.attn = torch.nn.Module()
        for name in ("query", "key", "value", "out"):
            setattr(self.attn, name, torch.nn.Linear(d, d))
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.ff1, self.ff2 = torch.nn.Linear(d, ff), torch.nn.Linear(ff, d)

    def forward(self, x):
        b, s, d = x.shape
        h = self.heads

        def split(v):
            return v.reshape(b, s, h, d // h).transpose(1, 2)

        a = self.attn
        q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
        p = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d // h), dim=3)
        ctx = (p @ v).transpose(1, 2).reshape(b, s, d)
        x = self.norm1(x + a.out(ctx))
        return self.norm2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, ff):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.act = nn.GELU()

    def forward(self, t, x):
        x = self.norm1(t, t.op(ops.add, [x, self.attn(t, x)]))
        return self.norm2(t, t.op(ops.add, [x, self.ff2(t, self.act(t, self.ff1(t, x)))]))


class TransformerClassifier(nn.Module):
    def __init__(self, d=16, heads=2, ff=32, layers=1, classes=4):
        super().__init__()
        self.layers = [EncoderLayer(d, heads, ff) for _ in range(layers)]
        for i, layer in enumerate(self.layers):
            setattr(self, f"enc{i}", layer)
        self.head = nn.Linear(d, classes)

    def forward(self, t, x):
        for layer in self.layers:
            x = layer(t, x)
        b, s, d = x.type.shape
        pooled = t.op(ops.reduce_mean, [x], axes=(1,), keepdims=False)
        return self.head(t, pooled)


class TorchTransformerClassifier(torch.nn.Module):
    def __init__(self, d=16, heads=2, ff=32, layers=1, classes=4):
        super().__init__()
        for i in range(layers):
            setattr(self, f"enc{i}", TorchEncoderLayer(d, heads, ff))
        self.n = layers
        self.head = torch.nn.Linear(d, classes)

    def forward(self, x):
        for i in range(self.n):
            x = getattr(self, f"enc{i}")(x)
        return self.head(x.mean(1))


class RecurrentClassifier(nn.Module):
    def __init__(self, cell, inp, hidden, classes):
        super().__init__()
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](inp, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, t, x):
        _, h = self.rnn(t, x)
        return self.head(t, h)


class TorchRecurrentClassifier(torch.nn.Module):
    def __init__(self, cell, inp, hidden, classes):
        super().__init__()
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](inp, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def mlp(sizes=(20, 32, 32, 5)):
    layers, tlayers = [], []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b))
        tlayers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            tlayers.append(torch.nn.ReLU())
    return nn.Sequential(*layers), torch.nn.Sequential(*tlayers)


def cnn(channels=3, classes=4, width=8):
    net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(width, width, 3, padding=1, groups=2), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(2 * width, classes))
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(width, width, 3, padding=1, groups=2), torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2 * width, classes))
    return net, tnet


def torch_name(name: str) -> str:
    """Builder parameter name -> torch state_dict key (recurrent weights carry a layer suffix in torch)."""
    for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        if name.endswith(k):
            return name + "_l0"
    return name


def load_into_torch(tnet: torch.nn.Module, params: dict) -> None:
    sd = tnet.state_dict()
    for k, v in params.items():
        assert sd[torch_name(k)].shape == v.shape, k
        sd[torch_name(k)] = torch.from_numpy(np.array(v))
    tnet.load_state_dict(sd)
