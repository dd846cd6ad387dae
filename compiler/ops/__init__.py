"""All ops, declared one family per module. Importing this package registers every op in `OPS`; every op is also
an attribute here (`ops.conv2d`, `ops.relu`), imported by name so that editors and linters resolve it
(tests/ops/test_ops.py checks that the names below are exactly the registry).

    elementwise.py  unary, binary, comparison ops (tables)   activation.py  gelu
    nn.py           conv, dense, matmul, pooling              norm.py        batch/layer norm, lrn, softmax
    reduce.py       reductions, arg-extremes, scans, top-k, einsum
    shape.py        reshape, transpose, slices, gathers, scatters
    attention.py    scaled dot-product attention              rnn.py         the LSTM recurrence and its backward
    training.py     masks, dropout, losses                    backward.py    backward kernels
    packed.py       conv/dense on weights packed at compile time, their computes and packers
    nchwc.py        NCHW[x]c activations: layout changes, convs and pools on them
    train_pack.py   run-time weight packing, im2col, weight-gradient GEMM (training on the CPU)
    winograd.py     the Winograd conv: matrices, tile sizes, compute
    amx.py          dense in bfloat16 on Intel AMX tiles: weight layout, packer, compute
    amx_conv.py     conv2d in bfloat16 on AMX tiles, an implicit GEMM on NCHW[16]c
    amx_matmul.py   batched matmul of two activations on AMX tiles (attention's products)
    cache.py        the key/value cache written in place, attention over its written keys (decoding)
    collective.py   the mean over the processes of a data-parallel run (synchronized batch norm)
"""

from .registry import (NO_RULE_YET, NOT_DIFFERENTIABLE, OPS, Attr, FusionKind, OpDef, defop, get_op,  # noqa: F401
                       missing_facts)

# every op by name (the imports also register them)
from .activation import gelu  # noqa: F401
from .amx import dense_amx  # noqa: F401
from .amx_attention import attention_amx  # noqa: F401
from .amx_conv import conv2d_amx  # noqa: F401
from .amx_matmul import matmul_amx  # noqa: F401

from .attention import attention  # noqa: F401
from .cache import cache_write, cached_attention  # noqa: F401
from .collective import all_reduce_mean  # noqa: F401
from .backward import (avg_pool2d_grad, conv2d_backward_data, conv2d_backward_weight, gelu_grad,  # noqa: F401
                       layer_norm_grad, max_pool2d_grad, relu_grad, scatter_slices, strided_slice_grad, take_grad)
from .elementwise import (abs, acos, acosh, add, asin, asinh, atan, atanh, bitwise_and, bitwise_not,  # noqa: F401
                          bitwise_or, bitwise_xor, cast, ceil, clip, cos, cosh, div, equal, erf, exp, floor, greater,
                          greater_equal, isinf, isnan, leaky_relu, left_shift, less, less_equal, log, logical_and,
                          logical_not, logical_or, logical_xor, maximum, minimum, mod, mul, neg, pow, reciprocal, relu,
                          right_shift, round, sigmoid, sign, sin, sinh, sqrt, sub, tan, tanh, where)
from .nn import (avg_pool2d, avg_pool3d, conv2d, conv3d, dense, global_avg_pool, matmul, max_pool2d,  # noqa: F401
                 max_pool3d, max_pool_indices)
from .nchwc import (avg_pool2d_nchwc, conv2d_nchwc, depthwise_conv2d_nchwc, from_blocked,  # noqa: F401
                    global_avg_pool_nchwc, max_pool2d_nchwc, to_blocked)
from .norm import (batch_norm, layer_norm, log_softmax, lrn, softmax)  # noqa: F401
from .packed import conv2d_packed, dense_packed  # noqa: F401
from .reduce import (argmax, argmin, cumprod, cumsum, einsum, reduce_max, reduce_mean, reduce_min,  # noqa: F401
                     reduce_prod, reduce_sum, topk)
from .rnn import (lstm_sequence, lstm_sequence_grad)  # noqa: F401
from .rnn_bf16 import lstm_sequence_dp  # noqa: F401
from .shape import (bitcast, broadcast_to, concat, gather_elements, gather_nd, pad, reshape,  # noqa: F401
                    scatter_elements, scatter_nd, strided_slice, take, transpose)
from .train_pack import (conv2d_weight_flip, conv2d_weight_pack, dense_weight_pack, im2col,  # noqa: F401
                         weight_grad_gemm)
from .training import (dropout, dropout_train, ge_mask, gt_mask, softmax_cross_entropy,  # noqa: F401
                       softmax_cross_entropy_grad)
from .winograd import winograd_conv2d  # noqa: F401

# the ops whose products run on the CPU's bf16 unit (their `unit` attr: ops/amx.py UNITS)
BF16_UNIT_OPS = (dense_amx, conv2d_amx, matmul_amx, attention_amx)
