"""The builder API: define networks in Python with named parameters, compile them like any model.

    from tensorforge.frontends import nn
    net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    model = compiler.compile_model(net, shapes={"x": (32, 784)})          # parameters from net.init(seed=0)
    model = compiler.compile_model(net, shapes={"x": (32, 784)}, params=trained)
"""

from .layers import (GELU, GRU, LSTM, RNN, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,  # noqa: F401
                     Embedding, Flatten, GlobalAvgPool2d, LayerNorm, Linear, MaxPool2d, MultiheadAttention, ReLU,
                     ReLU6, Sequential, Sigmoid, Softmax, Tanh)
from .module import Module, ParamSpec, Tracer  # noqa: F401
