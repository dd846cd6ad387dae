"""Layers of the builder API, named and parameterized like PyTorch's (so weights can be exchanged by name)."""

from __future__ import annotations

import math

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ops.rnn import pack_lstm_weight

from .module import Module, kaiming_uniform, normal, ones, zeros


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


class Sequential(Module):
    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)
        self.layers = list(layers)

    def forward(self, t, x):
        for layer in self.layers:
            x = layer(t, x)
        return x


class Linear(Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.has_bias = bias
        self.param("weight", (out_features, in_features), kaiming_uniform(in_features))
        if bias:
            self.param("bias", (out_features,), kaiming_uniform(in_features))

    def forward(self, t, x):
        return t.dense(x, t.p("weight"), t.p("bias") if self.has_bias else None)


class Conv2d(Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.stride, self.dilation, self.groups, self.has_bias = _pair(stride), _pair(dilation), groups, bias
        ph, pw = _pair(padding)
        self.pads = (ph, pw, ph, pw)
        fan_in = in_channels // groups * kh * kw
        self.param("weight", (out_channels, in_channels // groups, kh, kw), kaiming_uniform(fan_in))
        if bias:
            self.param("bias", (out_channels,), kaiming_uniform(fan_in))

    def forward(self, t, x):
        inputs = [x, t.p("weight")] + ([t.p("bias")] if self.has_bias else [])
        return t.op(ops.conv2d, inputs, strides=self.stride, pads=self.pads, dilations=self.dilation,
                    groups=self.groups)


class BatchNorm2d(Module):
    """Inference batch norm with running statistics (training mode comes with the training runtime)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.param("weight", (num_features,), ones)
        self.param("bias", (num_features,), zeros)
        self.param("running_mean", (num_features,), zeros, trainable=False)
        self.param("running_var", (num_features,), ones, trainable=False)

    def forward(self, t, x):
        return t.op(ops.batch_norm, [x, t.p("weight"), t.p("bias"), t.p("running_mean"), t.p("running_var")],
                    epsilon=self.eps)


BatchNorm1d = BatchNorm2d


class LayerNorm(Module):
    def __init__(self, normalized_shape, eps: float = 1e-5):
        super().__init__()
        self.shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        self.param("weight", self.shape, ones)
        self.param("bias", self.shape, zeros)

    def forward(self, t, x):
        return t.op(ops.layer_norm, [x, t.p("weight"), t.p("bias")], axis=x.type.rank - len(self.shape),
                    epsilon=self.eps)


class Embedding(Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.param("weight", (num_embeddings, embedding_dim), normal(1.0))

    def forward(self, t, ids):
        return t.op(ops.take, [t.p("weight"), ids], axis=0)


class _Pool(Module):
    op = None

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, **extra):
        super().__init__()
        self.kernel = _pair(kernel_size)
        self.stride = _pair(stride) if stride is not None else self.kernel
        ph, pw = _pair(padding)
        self.pads, self.ceil_mode, self.extra = (ph, pw, ph, pw), ceil_mode, extra

    def forward(self, t, x):
        return t.op(self.op, [x], kernel=self.kernel, strides=self.stride, pads=self.pads, ceil_mode=self.ceil_mode,
                    **self.extra)


class MaxPool2d(_Pool):
    op = ops.max_pool2d


class AvgPool2d(_Pool):
    op = ops.avg_pool2d

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad=count_include_pad)


class GlobalAvgPool2d(Module):
    """Average over H and W, keeping (N, C, 1, 1) as nn.AdaptiveAvgPool2d(1) does."""

    def forward(self, t, x):
        return t.op(ops.global_avg_pool, [x])


class Flatten(Module):
    def forward(self, t, x):
        return t.reshape(x, (x.type.shape[0], int(np.prod(x.type.shape[1:]))))


class Dropout(Module):
    """The identity at inference (a `dropout` view); compile_training turns it into a masked scale whose mask
    the runtime draws each step."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, t, x):
        return t.op(ops.dropout, [x], p=self.p) if self.p > 0 else x


def _activation(name, build):
    cls = type(name, (Module,), {"forward": lambda self, t, x: build(t, x), "__doc__": f"{name} activation."})
    return cls


ReLU = _activation("ReLU", lambda t, x: t.op(ops.relu, [x]))
Sigmoid = _activation("Sigmoid", lambda t, x: t.op(ops.sigmoid, [x]))
Tanh = _activation("Tanh", lambda t, x: t.op(ops.tanh, [x]))
ReLU6 = _activation("ReLU6", lambda t, x: t.op(ops.clip, [x], min=0.0, max=6.0))
# one gelu op (not x/2 * (1 + erf(x/sqrt 2)) in pieces): its backward is one gelu_grad kernel with vectorized
# erf and exp (the pieces' gradients call scalar libm erf/exp: 4 x ~36 ms of a Transformer training step)
GELU = _activation("GELU", lambda t, x: t.op(ops.gelu, [x]))


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, t, x):
        return t.op(ops.softmax, [x], axis=self.dim % x.type.rank)


class MultiheadAttention(Module):
    """Self-attention over (batch, seq, embed): projections query/key/value/out, `heads` heads, optional additive
    mask (a constant array broadcast to (seq, seq))."""

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.heads, self.head_dim, self.causal = num_heads, embed_dim // num_heads, causal
        for name in ("query", "key", "value", "out"):
            setattr(self, name, Linear(embed_dim, embed_dim))

    def forward(self, t, x):
        b, s, e = x.type.shape

        def split(v):  # (b, s, e) -> (b, heads, s, head_dim)
            return t.transpose(t.reshape(v, (b, s, self.heads, self.head_dim)), (0, 2, 1, 3))

        q, k, v = split(self.query(t, x)), split(self.key(t, x)), split(self.value(t, x))
        scores = t.op(ops.matmul, [q, t.transpose(k, (0, 1, 3, 2))])
        scores = t.op(ops.mul, [scores, np.float32(1 / math.sqrt(self.head_dim))])
        if self.causal:
            scores = t.op(ops.add, [scores, np.triu(np.full((s, s), -1e4, np.float32), 1)])
        ctx = t.op(ops.matmul, [t.op(ops.softmax, [scores], axis=3), v])
        return self.out(t, t.reshape(t.transpose(ctx, (0, 2, 1, 3)), (b, s, e)))


class _Recurrent(Module):
    """A one-layer recurrent net over (batch, seq, features), unrolled over the static sequence: returns
    (all hidden states (batch, seq, hidden), last hidden state (batch, hidden)). Gate order as PyTorch's."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden = hidden_size
        init = kaiming_uniform(hidden_size)
        self.param("weight_ih", (self.gates * hidden_size, input_size), init)
        self.param("weight_hh", (self.gates * hidden_size, hidden_size), init)
        self.param("bias_ih", (self.gates * hidden_size,), init)
        self.param("bias_hh", (self.gates * hidden_size,), init)

    def forward(self, t, x):
        b, s, _ = x.type.shape
        x_proj = t.dense(x, t.p("weight_ih"), t.p("bias_ih"))  # all steps at once: (b, s, gates * hidden)
        h = t.const(np.zeros((b, self.hidden), np.float32))
        state = self.initial_state(t, b)
        outs = []
        for step in range(s):
            xt = t.reshape(t.slice(x_proj, 1, step, step + 1), (b, self.gates * self.hidden))
            h, state = self.cell(t, xt, h, state)
            outs.append(t.reshape(h, (b, 1, self.hidden)))
        return t.op(ops.concat, outs, axis=1) if len(outs) > 1 else outs[0], h

    def initial_state(self, t, b):
        return None

    def gate(self, t, v, i):
        return t.slice(v, 1, i * self.hidden, (i + 1) * self.hidden)


class RNN(_Recurrent):
    def cell(self, t, xt, h, state):
        hh = t.dense(h, t.p("weight_hh"), t.p("bias_hh"))
        return t.op(ops.tanh, [t.op(ops.add, [xt, hh])]), None


class LSTM(_Recurrent):
    """Runs as one `lstm_sequence` op (the whole recurrence in one kernel; compiler/ops/rnn.py) after one dense for
    every step's input projection."""

    gates = 4

    def forward(self, t, x):
        b, s, features = x.type.shape
        xs = t.transpose(x, (1, 0, 2))  # time-major: (s, b, features)
        bias = t.op(ops.add, [t.p("bias_ih"), t.p("bias_hh")])
        x_proj = t.dense(xs, t.p("weight_ih"), bias)  # (s, b, 4 * hidden)
        w = pack_lstm_weight(t.op, t.p("weight_hh"), self.hidden)
        zeros = t.const(np.zeros((b, self.hidden), np.float32))
        y, _ = t.op(ops.lstm_sequence, [x_proj, w, zeros, zeros])
        last = t.reshape(t.slice(y, 0, s - 1, s), (b, self.hidden))
        return t.transpose(y, (1, 0, 2)), last


class GRU(_Recurrent):
    gates = 3

    def cell(self, t, xt, h, state):
        hh = t.dense(h, t.p("weight_hh"), t.p("bias_hh"))
        r = t.op(ops.sigmoid, [t.op(ops.add, [self.gate(t, xt, 0), self.gate(t, hh, 0)])])
        z = t.op(ops.sigmoid, [t.op(ops.add, [self.gate(t, xt, 1), self.gate(t, hh, 1)])])
        n = t.op(ops.tanh, [t.op(ops.add, [self.gate(t, xt, 2), t.op(ops.mul, [r, self.gate(t, hh, 2)])])])
        # h' = (1 - z) * n + z * h = n + z * (h - n)
        return t.op(ops.add, [n, t.op(ops.mul, [z, t.op(ops.sub, [h, n])])]), None
