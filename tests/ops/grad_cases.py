"""Compiled-vs-reference cases for the training ops of compiler/ops/training.py and backward.py (appended to
test_ops.CASES, so the test there that every op is tested covers them)."""

import numpy as np

rng = np.random.default_rng(1)


def rand(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def distinct(*shape):
    return (rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0).astype(np.float32)


def _max_pool_case(x, **attrs):
    from tensorforge.compiler.ops.nn import _max_pool_ref

    full = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "ceil_mode": False, **attrs}
    y = _max_pool_ref(x, **full)
    return ("max_pool2d_grad", [x, y, rand(*y.shape)], attrs, ())


CONV = {"strides": (2, 2), "pads": (1, 0, 0, 1), "dilations": (1, 2), "groups": 2}
GRAD_CASES = [
    ("ge_mask", [rand(3, 5), rand(5)], {}, ()),
    ("gt_mask", [rand(2, 1, 4), rand(3, 4)], {}, ()),
    ("relu_grad", [rand(4, 9), rand(4, 9)], {}, ()),
    ("dropout", [rand(3, 7)], {"p": 0.3}, ()),
    ("dropout_train", [rand(3, 7), rng.random((3, 7)).astype(np.float32)], {"p": 0.3}, ()),
    ("conv2d_backward_data", [rand(2, 4, 3, 2), rand(4, 3, 3, 3)], {**CONV, "input_shape": (2, 6, 6, 7)}, ()),
    ("conv2d_backward_data", [rand(1, 5, 6, 6), rand(5, 3, 3, 3)], {"pads": (1, 1, 1, 1), "input_shape": (1, 3, 6, 6)},
     ()),
    ("conv2d_backward_weight", [rand(2, 4, 3, 2), rand(2, 6, 6, 7)], {**CONV, "kernel_shape": (4, 3, 3, 3)}, ()),
    _max_pool_case(distinct(2, 3, 7, 7), kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    _max_pool_case(distinct(2, 3, 7, 9), kernel=(2, 3), strides=(2, 3)),  # tiling windows; row 6 in none
    _max_pool_case(np.repeat(distinct(1, 2, 4, 2), 2, axis=3), kernel=(2, 2), strides=(2, 2)),  # ties: both get dy
    ("avg_pool2d_grad", [rand(1, 2, 7, 7), rand(1, 2, 4, 4)],
     {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1), "count_include_pad": False}, ()),
    ("avg_pool2d_grad", [rand(1, 2, 6, 6), rand(1, 2, 3, 3)],
     {"kernel": (2, 2), "strides": (2, 2), "ceil_mode": True, "count_include_pad": True}, ()),
    ("strided_slice_grad", [rand(2, 3)], {"input_shape": (6, 7), "begins": (1, 0), "strides": (2, 3)}, ()),
    ("scatter_slices", [rand(2, 1, 3), rand(2, 2, 3), rand(2, 1, 3)], {"input_shape": (2, 7, 3), "axis": 1,
                                                                      "begins": (0, 2, 6)}, ()),
    ("take_grad", [np.array([[0, 2], [2, -1]], np.int64), rand(2, 2, 3)], {"axis": 0, "input_shape": (5, 3)}, ()),
    ("softmax_cross_entropy", [rand(5, 7), np.array([0, 6, 3, -100, 2], np.int64)], {"label_smoothing": 0.1}, ()),
    ("softmax_cross_entropy_grad", [rand(5, 7), np.array([0, 6, 3, 1, 2], np.int64), rand(5)],
     {"label_smoothing": 0.2, "ignore_index": 1}, ()),
    ("gelu_grad", [rand(4, 40, lo=-6.0, hi=6.0), rand(4, 40)], {}, ()),  # fast_erf / fast_exp vs float64 libm
    ("gelu_grad", [rand(3, 9, lo=-6.0, hi=6.0), rand(3, 9)], {"approximate": "tanh"}, ()),
    # the layer norm backward: its own schedule (48 rows in 3 blocks of 16; 13 rows in one block of 13; rows of
    # 2 vectors) and the generic rule where a row is no whole number of vectors
    ("layer_norm_grad", [rand(48, 64, lo=1.0, hi=3.0), rand(64, lo=0.1, hi=3.0), rand(48, 64)], {"epsilon": 1e-5}, ()),
    ("layer_norm_grad", [rand(13, 32), rand(32, lo=0.1, hi=3.0), rand(13, 32)], {"epsilon": 1e-3}, ()),
    ("layer_norm_grad", [rand(7, 33), rand(33, lo=0.1, hi=3.0), rand(7, 33)], {"epsilon": 1e-5}, ()),
    # run-time weight packing and the conv backward pieces of compiler/ops/train_pack.py
    ("conv2d_weight_pack", [rand(20, 3, 3, 2)], {"block": 16}, ()),  # 20 output channels: 12 zero rows
    ("conv2d_weight_pack", [rand(32, 4, 1, 1)], {"block": 16}, ()),
    ("dense_weight_pack", [rand(10, 7)], {"block": 16}, ()),
    ("dense_weight_pack", [rand(128, 5)], {"block": 64}, ()),
    ("conv2d_weight_flip", [rand(5, 3, 3, 2)], {}, ()),
    ("im2col", [rand(2, 3, 5, 6)], {"kernel": (3, 2), "strides": (2, 1), "pads": (1, 0, 1, 1),
                                    "dilations": (1, 2)}, ()),
    ("weight_grad_gemm", [rand(4, 30), rand(30, 18)], {"shape": (4, 2, 3, 3)}, ()),
    ("weight_grad_gemm", [rand(7, 5), rand(7, 70)], {"shape": (5, 70), "transpose_rows": True}, ()),  # partial tile
]
