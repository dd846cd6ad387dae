"""One converter per core-ATen op, keyed by the op overload itself (`torch.ops.aten.convolution.default`), named
like it, its arguments as ATen declares them with ATen's defaults.

A converter gets the builder `b` (frontends/builder.Builder: `b.emit` folds when every input is a known
array) and the node's arguments with tensors already converted (IR values or numpy arrays).
"""

from __future__ import annotations

from math import prod
from typing import Callable

import numpy as np
import torch

from tensorforge.compiler import ops

aten = torch.ops.aten
CONVERTERS: dict[object, Callable] = {}


def converter(*targets):
    def register(fn):
        for t in targets:
            CONVERTERS[t] = fn
        return fn

    return register


def _axis(b, dim: int, rank: int) -> int:
    if not -rank <= dim < max(rank, 1):
        raise b.error(f"dim {dim} is out of range for rank {rank}")
    return dim % rank if rank else 0


def _np_dtype(dtype: torch.dtype) -> str:
    """A torch dtype's name as the IR spells it (torch.float32 -> "float32", torch.bfloat16 -> "bfloat16")."""
    return str(dtype).removeprefix("torch.")


def _reshape(b, x, shape):
    return b.emit(ops.reshape, [x], shape=tuple(int(d) for d in shape))


def _scalar(b, x, like):
    """A Python number as an array of `like`'s dtype (ATen's scalar operands)."""
    return np.asarray(x, dtype=b.type(like).dtype) if not isinstance(x, (np.ndarray,)) and not hasattr(x, "type") \
        else x


# -- elementwise ------------------------------------------------------------------------------------------------------
def _unary(op):
    return lambda b, x: b.emit(op, [x])


for _t, _op in {aten.relu.default: ops.relu, aten.sigmoid.default: ops.sigmoid, aten.tanh.default: ops.tanh,
                aten.exp.default: ops.exp, aten.log.default: ops.log, aten.sqrt.default: ops.sqrt,
                aten.neg.default: ops.neg, aten.abs.default: ops.abs, aten.erf.default: ops.erf,
                aten.reciprocal.default: ops.reciprocal, aten.sin.default: ops.sin, aten.cos.default: ops.cos}.items():
    CONVERTERS[_t] = _unary(_op)


def _promoted(b, self, other, *, true_division=False):
    """`self` and `other` (a tensor or a Python number) cast to the type ATen computes them in (torch.result_type:
    a Python float makes an integer tensor float, a 0-d tensor does not outrank a shaped one); true_division:
    integers divide as float32 (torch.get_default_dtype)."""
    def probe(x):
        if isinstance(x, (bool, int, float)):
            return x
        t = b.type(x)
        return torch.empty(() if t.rank == 0 else (1,) * t.rank, dtype=getattr(torch, t.dtype))

    dt = torch.result_type(probe(self), probe(other))
    if true_division and not dt.is_floating_point:
        dt = torch.get_default_dtype()
    dt = _np_dtype(dt)

    def cast(x):
        if isinstance(x, (bool, int, float)):
            return np.asarray(x, dt)
        return x if b.type(x).dtype == dt else b.emit(ops.cast, [x], to=dt)

    return cast(self), cast(other)


def _binary(op):
    def convert(b, self, other, alpha=1):
        self, other = _promoted(b, self, other, true_division=op is ops.div)
        if alpha != 1:
            other = b.emit(ops.mul, [other, np.asarray(alpha, b.type(self).dtype)])
        return b.emit(op, [self, other])

    return convert


for _t, _op in {aten.add.Tensor: ops.add, aten.sub.Tensor: ops.sub, aten.mul.Tensor: ops.mul,
                aten.div.Tensor: ops.div, aten.pow.Tensor_Scalar: ops.pow, aten.pow.Tensor_Tensor: ops.pow,
                aten.maximum.default: ops.maximum, aten.minimum.default: ops.minimum, aten.add.Scalar: ops.add,
                aten.sub.Scalar: ops.sub, aten.mul.Scalar: ops.mul, aten.div.Scalar: ops.div}.items():
    CONVERTERS[_t] = _binary(_op)


@converter(aten.rsqrt.default)
def rsqrt(b, self):
    return b.emit(ops.reciprocal, [b.emit(ops.sqrt, [self])])


@converter(aten.rsub.Scalar)
def rsub(b, self, other, alpha=1):
    return b.emit(ops.sub, [_scalar(b, other, self), b.emit(ops.mul, [self, np.asarray(alpha, b.type(self).dtype)])
                            if alpha != 1 else self])


@converter(aten.gelu.default)
def gelu(b, self, approximate="none"):
    dt = b.type(self).dtype
    c = lambda v: np.asarray(v, dt)  # noqa: E731
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = b.emit(ops.mul, [b.emit(ops.mul, [self, self]), self])
        inner = b.emit(ops.mul, [b.emit(ops.add, [self, b.emit(ops.mul, [cube, c(0.044715)])]),
                                 c(np.sqrt(2 / np.pi))])
        half = b.emit(ops.mul, [self, c(0.5)])
        return b.emit(ops.mul, [half, b.emit(ops.add, [b.emit(ops.tanh, [inner]), c(1.0)])])
    erf = b.emit(ops.erf, [b.emit(ops.mul, [self, c(1 / np.sqrt(2))])])
    return b.emit(ops.mul, [b.emit(ops.mul, [self, c(0.5)]), b.emit(ops.add, [erf, c(1.0)])])


@converter(aten.hardtanh.default)
def hardtanh(b, self, min_val=-1.0, max_val=1.0):
    return b.emit(ops.clip, [self], min=min_val, max=max_val)


@converter(aten.clamp.default)
def clamp(b, self, min=None, max=None):
    return b.emit(ops.clip, [self], min=-np.inf if min is None else min, max=np.inf if max is None else max)


@converter(aten.leaky_relu.default)
def leaky_relu(b, self, negative_slope=0.01):
    return b.emit(ops.leaky_relu, [self], alpha=negative_slope)


@converter(aten.silu.default)
def silu(b, self):
    return b.emit(ops.mul, [self, b.emit(ops.sigmoid, [self])])


@converter(aten.clone.default, aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default)
def clone(b, self, memory_format=None):
    return self


@converter(aten._to_copy.default)
def _to_copy(b, self, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    if dtype is None:
        return self
    return b.emit(ops.cast, [self], to=_np_dtype(dtype))


# -- neural-network ops -----------------------------------------------------------------------------------------------
@converter(aten.convolution.default)
def convolution(b, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed or b.type(input).rank != 4:
        return _onnx_conv(b, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    pads = (padding[0], padding[1], padding[0], padding[1])
    inputs = [input, weight] + ([bias] if bias is not None else [])
    return b.emit(ops.conv2d, inputs, strides=tuple(stride), pads=pads, dilations=tuple(dilation), groups=groups)


def _untransposed(mat2):
    """W where the run-time value mat2 is W^T (a transpose of a 2-D graph input: aot_autograd's `t(weight)`), else
    None. (Not of a param kept at run time, compile_training's: its training graph reads the transpose.)"""
    p = getattr(mat2, "producer", None)
    if p is not None and p.op is ops.transpose and tuple(p.attrs["perm"]) == (1, 0) and not p.inputs[0].is_param:
        return p.inputs[0]
    return None


@converter(aten.addmm.default)
def addmm(b, self, mat1, mat2, beta=1, alpha=1):
    # a constant weight as the transposed view of mat2 (graph params keep either memory order): no copy; the same
    # view object for every compile sharing a memo, so that its packed form is found again
    w = b.derive(b.computed(("T",), [mat2], lambda: mat2.T), mat2) if isinstance(mat2, np.ndarray) else \
        _untransposed(mat2)
    if w is not None and beta == 1 and alpha == 1 and b.type(self).numel == b.type(mat2).shape[1]:
        bias = b.derive(self.reshape(-1), self) if isinstance(self, np.ndarray) else \
            _reshape(b, self, (b.type(self).numel,))
        return b.emit(ops.dense, [mat1, w, bias])  # (a run-time w: packed by a kernel of its own each run)
    y = b.emit(ops.matmul, [mat1, mat2])
    if alpha != 1:
        y = b.emit(ops.mul, [y, np.asarray(alpha, b.type(y).dtype)])
    s = self if beta == 1 else b.emit(ops.mul, [self, np.asarray(beta, b.type(self).dtype)])
    return b.emit(ops.add, [y, s])


@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def mm(b, self, mat2):
    rows = _untransposed(self) if not isinstance(self, np.ndarray) and not isinstance(mat2, np.ndarray) else None
    if rows is not None and b.type(mat2).rank == 2 and b.type(mat2).dtype == "float32":
        # a^T @ x, both at run time: a weight gradient (aot_autograd's mm(t(dy), x)), reduced over the batch rows
        # on its own kernel, neither operand transposed or packed first
        return b.emit(ops.weight_grad_gemm, [rows, mat2], shape=(b.type(self).shape[0], b.type(mat2).shape[1]),
                      transpose_rows=True)
    w = None
    if isinstance(mat2, np.ndarray) and mat2.ndim == 2:
        w = b.derive(np.ascontiguousarray(mat2.T), mat2)
    elif b.type(mat2).rank == 2 and b.type(mat2).dtype == "float32":
        # a run-time right operand (a training graph's weight or activation): dense's packed kernel, the transpose
        # fused into the run-time packing (one pass over mat2), beats the generic matmul schedule
        w = _untransposed(mat2)
        if w is None:
            w = b.emit(ops.transpose, [mat2], perm=(1, 0))
    if w is not None and not isinstance(self, np.ndarray):
        shape = b.type(self).shape
        x = _reshape(b, self, (prod(shape[:-1]), shape[-1])) if len(shape) != 2 else self
        y = b.emit(ops.dense, [x, w])
        return _reshape(b, y, shape[:-1] + (b.type(mat2).shape[1],)) if len(shape) != 2 else y
    return b.emit(ops.matmul, [self, mat2])


@converter(aten._native_batch_norm_legit_no_training.default)
def _native_batch_norm_legit_no_training(b, input, weight, bias, running_mean, running_var, momentum, eps):
    c = b.type(input).shape[1]
    dt = b.type(input).dtype
    weight = weight if weight is not None else np.ones(c, dt)
    bias = bias if bias is not None else np.zeros(c, dt)
    y = b.emit(ops.batch_norm, [input, weight, bias, running_mean, running_var], epsilon=eps)
    return y, None, None


@converter(aten.native_layer_norm.default)
def native_layer_norm(b, input, normalized_shape, weight, bias, eps):
    rank = b.type(input).rank
    dt = b.type(input).dtype
    weight = weight if weight is not None else np.ones(normalized_shape, dt)
    inputs = [input, weight] + ([bias] if bias is not None else [])
    axis = rank - len(normalized_shape)
    y = b.emit(ops.layer_norm, inputs, axis=axis, epsilon=eps)
    # mean and 1 / std, kept dims (what a training graph saves for the backward); unread, they are dropped
    mean, _, _, rstd = moments(b, input, tuple(range(axis, rank)), eps)
    return y, mean, rstd


def moments(b, x, axes: tuple[int, ...], eps: float):
    """(mean, x - mean, biased variance, 1 / sqrt(variance + eps)) over `axes`, kept dims: a normalization's
    statistics as PyTorch's training forms give them."""
    mean = b.emit(ops.reduce_mean, [x], axes=axes, keepdims=True)
    centered = b.emit(ops.sub, [x, mean])
    var = b.emit(ops.reduce_mean, [b.emit(ops.mul, [centered, centered])], axes=axes, keepdims=True)
    invstd = b.emit(ops.reciprocal, [b.emit(ops.sqrt, [b.emit(ops.add, [var, np.asarray(eps, b.type(x).dtype)])])])
    return mean, centered, var, invstd


@converter(aten.max_pool2d_with_indices.default)
def max_pool2d_with_indices(b, self, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    stride = tuple(stride) or tuple(kernel_size)
    padding = tuple(padding) * (2 if len(padding) == 1 else 1)
    attrs = dict(kernel=tuple(kernel_size), strides=stride, pads=(padding[0], padding[1], padding[0], padding[1]),
                 dilations=tuple(dilation), ceil_mode=ceil_mode)
    y = b.emit(ops.max_pool2d, [self], **attrs)
    if b.type(self).rank != 4:
        return y, None
    # PyTorch's indices count within each (h, w) plane; max_pool_indices' (ONNX's) over the whole tensor. Unread
    # (inference), the op is dropped with the unused nodes.
    n, c, h, w = b.type(self).shape
    flat = b.emit(ops.max_pool_indices, [self], storage_order=0, **attrs)
    return y, b.emit(ops.sub, [flat, (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)])


@converter(aten.avg_pool2d.default)
def avg_pool2d(b, self, kernel_size, stride=(), padding=(0, 0), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    if divisor_override is not None:
        raise b.error("divisor_override is not supported")
    stride = tuple(stride) or tuple(kernel_size)
    return b.emit(ops.avg_pool2d, [self], kernel=tuple(kernel_size), strides=stride,
                  pads=(padding[0], padding[1], padding[0], padding[1]), ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)


@converter(aten.mean.dim)
def mean_dim(b, self, dim, keepdim=False, dtype=None):
    rank = b.type(self).rank
    axes = tuple(sorted(_axis(b, d, rank) for d in (dim if dim is not None else range(rank))))
    if axes == tuple(range(2, rank)) and rank >= 3:  # global average pooling
        y = b.emit(ops.global_avg_pool, [self])
        return y if keepdim else _reshape(b, y, b.type(self).shape[:2])
    return b.emit(ops.reduce_mean, [self], axes=axes, keepdims=keepdim)


@converter(aten.sum.dim_IntList)
def sum_dim(b, self, dim, keepdim=False, dtype=None):
    rank = b.type(self).rank
    axes = tuple(sorted(_axis(b, d, rank) for d in (dim if dim else range(rank))))
    return b.emit(ops.reduce_sum, [self], axes=axes, keepdims=keepdim)


@converter(aten._softmax.default)
def _softmax(b, self, dim, half_to_float=False):
    return b.emit(ops.softmax, [self], axis=_axis(b, dim, b.type(self).rank))


@converter(aten.embedding.default)
def embedding(b, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return b.emit(ops.take, [weight, indices], axis=0)


# -- shapes -----------------------------------------------------------------------------------------------------------
@converter(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def view(b, self, size):
    size = list(size)
    if -1 in size:
        known = prod(d for d in size if d != -1)
        size[size.index(-1)] = b.type(self).numel // max(known, 1)
    return _reshape(b, self, size)


@converter(aten.permute.default)
def permute(b, self, dims):
    rank = b.type(self).rank
    return b.emit(ops.transpose, [self], perm=tuple(_axis(b, d, rank) for d in dims))


@converter(aten.t.default)
def t(b, self):
    return b.emit(ops.transpose, [self], perm=(1, 0)) if b.type(self).rank == 2 else self


@converter(aten.unsqueeze.default)
def unsqueeze(b, self, dim):
    shape = list(b.type(self).shape)
    shape.insert(_axis(b, dim, len(shape) + 1), 1)
    return _reshape(b, self, shape)


@converter(aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
def squeeze(b, self, dim=None):
    shape = b.type(self).shape
    dims = range(len(shape)) if dim is None else ([dim] if isinstance(dim, int) else dim)
    drop = {_axis(b, d, len(shape)) for d in dims if shape[_axis(b, d, len(shape))] == 1}
    return _reshape(b, self, [d for i, d in enumerate(shape) if i not in drop])


@converter(aten.expand.default)
def expand(b, self, size, implicit=False):
    shape = b.type(self).shape
    target = [s if t == -1 else t for s, t in zip((1,) * (len(size) - len(shape)) + shape, size)]
    if tuple(target) == shape:
        return self
    return b.emit(ops.broadcast_to, [self], shape=tuple(target))


@converter(aten.cat.default)
def cat(b, tensors, dim=0):
    return b.emit(ops.concat, list(tensors), axis=_axis(b, dim, b.type(tensors[0]).rank))


@converter(aten.slice.Tensor)
def slice_(b, self, dim=0, start=None, end=None, step=1):
    shape = b.type(self).shape
    ax = _axis(b, dim, len(shape))
    s, e, st = slice(start, end, step).indices(shape[ax])
    if (s, e, st) == (0, shape[ax], 1):
        return self
    begins, ends, strides = [0] * len(shape), list(shape), [1] * len(shape)
    begins[ax], ends[ax], strides[ax] = s, e, st
    return b.emit(ops.strided_slice, [self], begins=tuple(begins), ends=tuple(ends), strides=tuple(strides))


@converter(aten.select.int)
def select(b, self, dim, index):
    shape = b.type(self).shape
    ax = _axis(b, dim, len(shape))
    index = index % shape[ax]
    y = slice_(b, self, ax, index, index + 1, 1)
    return _reshape(b, y, shape[:ax] + shape[ax + 1:])


@converter(aten.split_with_sizes.default, aten.split.Tensor)
def split_with_sizes(b, self, split_sizes, dim=0):
    shape = b.type(self).shape
    ax = _axis(b, dim, len(shape))
    if isinstance(split_sizes, int):
        split_sizes = [min(split_sizes, shape[ax] - i) for i in range(0, shape[ax], split_sizes)]
    outs, start = [], 0
    for size in split_sizes:
        outs.append(slice_(b, self, ax, start, start + size, 1))
        start += size
    return outs


@converter(aten.arange.start_step, aten.arange.start, aten.arange.default)
def arange(b, start, end=None, step=1, dtype=None, layout=None, device=None, pin_memory=None):
    if end is None:
        start, end = 0, start
    return np.arange(start, end, step, dtype=np.int64 if dtype in (None, torch.int64) else
                     torch.empty((), dtype=dtype).numpy().dtype)


@converter(aten.full.default)
def full(b, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    np_dtype = np.float32 if dtype is None else torch.empty((), dtype=dtype).numpy().dtype
    return np.full(tuple(size), fill_value, dtype=np_dtype)


@converter(aten.zeros.default)
def zeros(b, size, dtype=None, layout=None, device=None, pin_memory=None):
    return full(b, size, 0, dtype)


@converter(aten.dropout.default)
def dropout(b, input, p, train):
    if train and p > 0:  # a graph captured in train mode (torch.compile): random, and PyTorch's to draw
        raise b.error("dropout in train mode is not compiled (compile the module in eval mode, or train it with "
                      "compile_training)")
    # kept as a dropout node: a zero-copy view in inference, seeded train-mode dropout under compile_training
    return b.emit(ops.dropout, [input], p=float(p)) if p > 0 else input


# -- recurrent layers ---------------------------------------------------------------------------------------------------
@converter(aten.lstm.input)
def lstm(b, input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """nn.LSTM (kept whole by the exporter, see importer.export): every layer and direction as one `lstm_sequence`
    op after one input-projection dense. Gate order i, f, g, o is PyTorch's and the op's."""
    from tensorforge.compiler.ops.rnn import pack_lstm_weight

    h0, c0 = hx
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != num_layers * dirs * per:
        raise b.error(f"LSTM with {len(params)} weights for {num_layers} layer(s) x {dirs} direction(s) is not "
                      f"supported (projections, proj_size > 0, are not)")
    x = b.emit(ops.transpose, [input], perm=(1, 0, 2)) if batch_first else input  # time-major (T, B, F)
    steps, batch, _ = b.type(x).shape
    hs, cs = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            w_ih, w_hh, *bias = params[k * per:(k + 1) * per]
            hidden = b.type(w_hh).shape[1]
            features = b.type(x).shape[2]
            proj = b.emit(ops.dense, [_reshape(b, x, (steps * batch, features)), w_ih]
                          + ([b.emit(ops.add, [bias[0], bias[1]])] if bias else []))
            proj = _reshape(b, proj, (steps, batch, 4 * hidden))
            pick = [_reshape(b, b.emit(ops.strided_slice, [s], begins=(k, 0, 0), ends=(k + 1, batch, hidden),
                                       strides=(1, 1, 1)), (batch, hidden)) for s in (h0, c0)]
            y, c = b.emit(ops.lstm_sequence, [proj, pack_lstm_weight(b.emit, w_hh, hidden)] + pick, reverse=d == 1)
            last = 0 if d == 1 else steps - 1
            for seq, acc in ((y, hs), (c, cs)):
                acc.append(b.emit(ops.strided_slice, [seq], begins=(last, 0, 0), ends=(last + 1, batch, hidden),
                                  strides=(1, 1, 1)))
            outs.append(y)
        x = b.emit(ops.concat, outs, axis=2) if dirs > 1 else outs[0]  # (T, B, dirs * H); dropout: eval only
    y = b.emit(ops.transpose, [x], perm=(1, 0, 2)) if batch_first else x
    h_n = b.emit(ops.concat, hs, axis=0) if len(hs) > 1 else hs[0]
    c_n = b.emit(ops.concat, cs, axis=0) if len(cs) > 1 else cs[0]
    return [y, h_n, c_n]


# -- layouts, resampling, transposed convolution: the ONNX converters of the same semantics ----------------------------
def _upsample(b, input, output_size, scale_factors, **resize):
    from tensorforge.frontends.onnx.converters.nn import Resize

    shape = b.type(input).shape
    nd = len(shape) - 2
    if scale_factors is not None:  # PyTorch maps coordinates with the given factors, as Resize with `scales`
        scales = np.asarray([1.0, 1.0] + [float(s) for s in scale_factors], np.float32)
        return Resize(b, input, None, scales, None, **resize)
    if output_size is None or len(output_size) != nd:
        raise b.error(f"give output_size or scale_factors for the {nd} spatial axes")
    sizes = np.asarray(list(shape[:2]) + [int(s) for s in output_size], np.int64)
    return Resize(b, input, None, None, sizes, **resize)


@converter(aten.upsample_bilinear2d.vec, aten.upsample_linear1d.vec, aten.upsample_trilinear3d.vec)
def upsample_linear(b, input, output_size, align_corners, scale_factors=None):
    return _upsample(b, input, output_size, scale_factors, mode="linear",
                     coordinate_transformation_mode="align_corners" if align_corners else "pytorch_half_pixel")


@converter(aten.upsample_nearest2d.vec, aten.upsample_nearest1d.vec, aten.upsample_nearest3d.vec)
def upsample_nearest(b, input, output_size, scale_factors=None):
    return _upsample(b, input, output_size, scale_factors, mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")


def _onnx_conv(b, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    """1-D, 3-D and transposed convolutions: ONNX's Conv and ConvTranspose (the same weight layouts)."""
    from tensorforge.frontends.onnx.converters.nn import Conv
    from tensorforge.frontends.onnx.converters.shape import ConvTranspose

    nd = b.type(input).rank - 2
    if nd not in (1, 2, 3):
        raise b.error(f"convolution over {nd} spatial axes is not supported (input {b.type(input)})")
    pads = [int(p) for p in padding] * 2
    attrs = dict(strides=[int(s) for s in stride], pads=pads, dilations=[int(d) for d in dilation], group=int(groups))
    if transposed:
        return ConvTranspose(b, input, weight, bias, output_padding=[int(p) for p in output_padding], **attrs)
    return Conv(b, input, weight, bias, **attrs)
