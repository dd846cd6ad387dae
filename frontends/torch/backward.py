"""Converters for the backward ATen ops that aot_autograd's backward graphs call (torch.compile training,
compiler/torch_backend.py): convolution_backward through conv2d's own gradient rule (the forward's kernels where
it can), max_pool2d_with_indices_backward as a scatter-add at the forward's indices (PyTorch's choice among equal
maxima, not every one of them), avg_pool2d_backward. Registered in converters.CONVERTERS on import."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tensorforge.compiler import ops

from .converters import _reshape, aten, converter


class _Emitter:
    """What an op's gradient rule emits through (compiler/autodiff's Emitter), onto the builder."""

    def __init__(self, b):
        self.b = b

    def op(self, opdef, inputs, **attrs):
        return self.b.emit(opdef, inputs, **attrs)


@converter(aten.convolution_backward.default)
def convolution_backward(b, grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    if transposed or b.type(input).rank != 4:
        raise b.error("only the backward of 2-D convolutions is compiled")
    x, w = b.value(input), b.value(weight)
    attrs = dict(strides=tuple(int(s) for s in stride), pads=tuple(int(p) for p in padding) * 2,
                 dilations=tuple(int(d) for d in dilation), groups=int(groups))
    node = SimpleNamespace(inputs=[x, w] + ([None] if bias_sizes is not None else []), attrs=attrs)
    dx, dw, *db = ops.conv2d.grad(_Emitter(b), node, b.value(grad_output))
    return [dx if output_mask[0] else None, dw if output_mask[1] else None,
            (db[0] if db else b.emit(ops.reduce_sum, [grad_output], axes=(0, 2, 3), keepdims=False))
            if output_mask[2] else None]


@converter(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(b, grad_output, self, kernel_size, stride, padding, dilation, ceil_mode,
                                     indices):
    n, c, h, w = b.type(self).shape
    out = b.type(grad_output).shape
    rows = (n, c, out[2] * out[3])
    zeros = np.zeros((n, c, h * w), b.type(grad_output).dtype)
    dx = b.emit(ops.scatter_elements, [zeros, _reshape(b, indices, rows), _reshape(b, grad_output, rows)], axis=2,
                reduction="add")
    return _reshape(b, dx, (n, c, h, w))


@converter(aten.avg_pool2d_backward.default)
def avg_pool2d_backward(b, grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override=None):
    if divisor_override is not None:
        raise b.error("divisor_override is not supported")
    stride = tuple(stride) or tuple(kernel_size)
    return b.emit(ops.avg_pool2d_grad, [self, grad_output], kernel=tuple(kernel_size), strides=stride,
                  pads=(padding[0], padding[1], padding[0], padding[1]), dilations=(1, 1), ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)
