"""Converters for the backward ATen ops that aot_autograd's backward graphs call (torch.compile training,
compiler/torch_backend.py): convolution_backward through conv2d's own gradient rule (the forward's kernels where
it can), max_pool2d_with_indices_backward as a scatter-add at the forward's indices (PyTorch's choice among equal
maxima, not every one of them), avg_pool2d_backward; and batch norm's functional training form. Registered in
converters.CONVERTERS on import."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from tensorforge.compiler import ops

from .converters import _reshape, aten, converter, moments


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


@converter(aten._native_batch_norm_legit_functional.default)
def batch_norm_training(b, input, weight, bias, running_mean, running_var, training, momentum, eps):
    """Batch norm over the batch's statistics (aot_autograd's functional form in a training graph): y, the mean and
    1 / std saved for the backward, and the running statistics' updates as PyTorch makes them (the variance
    unbiased)."""
    if not training:
        raise b.error("batch norm with running statistics in a training graph is not converted here")
    shape = b.type(input).shape
    dt = b.type(input).dtype
    axes = (0,) + tuple(range(2, len(shape)))
    per_channel = (1, shape[1]) + (1,) * (len(shape) - 2)
    count = int(np.prod([shape[a] for a in axes]))
    mean, centered, var, invstd = moments(b, input, axes, eps)  # (1, C, 1, ...)
    y = b.emit(ops.mul, [centered, invstd])
    mean, var, invstd = (_reshape(b, v, (shape[1],)) for v in (mean, var, invstd))
    if weight is not None:
        y = b.emit(ops.mul, [y, _reshape(b, weight, per_channel)])
    if bias is not None:
        y = b.emit(ops.add, [y, _reshape(b, bias, per_channel)])
    m = np.asarray(momentum, dt)
    keep = np.asarray(1 - momentum, dt)
    new_mean = b.emit(ops.add, [b.emit(ops.mul, [running_mean, keep]), b.emit(ops.mul, [mean, m])])
    unbiased = b.emit(ops.mul, [var, np.asarray(count / max(count - 1, 1), dt)])
    new_var = b.emit(ops.add, [b.emit(ops.mul, [running_var, keep]), b.emit(ops.mul, [unbiased, m])])
    return y, mean, invstd, new_mean, new_var
