"""Every gradient rule against central finite differences, in float64 through the reference interpreter.

One table row per op (lesson: per-op tests are tables): the op, its attributes, and a generator of its inputs.
Only float inputs are differentiated; integer inputs (indices, labels) and bool conditions ride along.
"""

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.autodiff import AutodiffError, backward
from tensorforge.compiler.ir import Graph, TensorType, interpret


def r(*shape, lo=-1.0, hi=1.0, seed=0):
    return lambda rng: rng.uniform(lo, hi, shape)


def away(*shape):  # away from kinks (relu, abs, max): |x| >= 0.2
    return lambda rng: rng.uniform(0.2, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def pos(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, shape)


def ints(hi, *shape):
    return lambda rng: rng.integers(0, hi, shape).astype(np.int64)


def distinct(*shape):  # max pooling: no ties within a window
    return lambda rng: rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0


CONV = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
POOL = dict(kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=False)
CASES = [
    # (id, op, attrs, input generators)
    ("relu", ops.relu, {}, [away(3, 4)]),
    ("sigmoid", ops.sigmoid, {}, [r(3, 4)]),
    ("tanh", ops.tanh, {}, [r(3, 4)]),
    ("exp", ops.exp, {}, [r(3, 4)]),
    ("log", ops.log, {}, [pos(3, 4)]),
    ("sqrt", ops.sqrt, {}, [pos(3, 4)]),
    ("abs", ops.abs, {}, [away(3, 4)]),
    ("neg", ops.neg, {}, [r(3, 4)]),
    ("erf", ops.erf, {}, [r(3, 4)]),
    ("sin", ops.sin, {}, [r(3, 4)]),
    ("cos", ops.cos, {}, [r(3, 4)]),
    ("reciprocal", ops.reciprocal, {}, [pos(3, 4)]),
    ("leaky_relu", ops.leaky_relu, {"alpha": 0.1}, [away(3, 4)]),
    ("clip", ops.clip, {"min": -0.5, "max": 0.5}, [lambda rng: np.array([[-0.9, -0.3, 0.2, 0.7]] * 3)]),
    ("cast", ops.cast, {"to": "float64"}, [r(3, 4)]),
    ("add_bcast", ops.add, {}, [r(2, 3, 4), r(3, 1)]),
    ("sub_bcast", ops.sub, {}, [r(2, 3, 4), r(4)]),
    ("mul_bcast", ops.mul, {}, [r(2, 3, 4), r(1, 3, 1)]),
    ("div", ops.div, {}, [r(3, 4), pos(3, 4)]),
    ("maximum", ops.maximum, {}, [r(3, 4), lambda rng: rng.uniform(-1, 1, (3, 4)) + 0.05]),
    ("minimum", ops.minimum, {}, [r(3, 4), lambda rng: rng.uniform(-1, 1, (3, 4)) + 0.05]),
    ("pow", ops.pow, {}, [pos(3, 4), r(3, 4)]),
    ("where", ops.where, {}, [lambda rng: rng.random((3, 4)) > 0.5, r(3, 4), r(4)]),
    ("reduce_sum", ops.reduce_sum, {"axes": (0, 2), "keepdims": False}, [r(2, 3, 4)]),
    ("reduce_mean", ops.reduce_mean, {"axes": (1,), "keepdims": True}, [r(2, 3, 4)]),
    # one process: x itself (two: tests/test_distributed.py, synchronized batch norm)
    ("all_reduce_mean", ops.all_reduce_mean, {}, [r(3, 4)]),
    ("softmax", ops.softmax, {"axis": 1}, [r(3, 5)]),
    ("log_softmax", ops.log_softmax, {"axis": 1}, [r(3, 5)]),
    ("layer_norm", ops.layer_norm, {"axis": 1, "epsilon": 1e-5}, [r(3, 6), r(6), r(6)]),
    ("batch_norm", ops.batch_norm, {"epsilon": 1e-5}, [r(2, 3, 2, 2), r(3), r(3), r(3), pos(3)]),
    ("dense", ops.dense, {}, [r(3, 5), r(4, 5), r(4)]),
    ("matmul_batched", ops.matmul, {}, [r(2, 3, 4), r(4, 5)]),
    ("conv2d", ops.conv2d, CONV, [r(2, 3, 5, 5), r(4, 3, 3, 3), r(4)]),
    ("conv2d_strided", ops.conv2d, {**CONV, "strides": (2, 2), "pads": (0, 1, 1, 0), "dilations": (1, 2)},
     [r(1, 2, 6, 7), r(3, 2, 3, 2)]),
    ("conv2d_1x1_stride2_odd", ops.conv2d, {**CONV, "strides": (2, 2), "pads": (0, 0, 0, 0)},
     [r(1, 3, 7, 5), r(2, 3, 1, 1)]),  # dy spread with zeros: its last zero rows cut
    ("conv2d_3x3_stride3", ops.conv2d, {**CONV, "strides": (3, 2)}, [r(2, 2, 8, 7), r(3, 2, 3, 3), r(3)]),
    # the sub-pixel split of a strided conv's dx: ResNet's 3x3 stride 2 pad 1 on an even and an odd input, taps
    # cropping dy (pad 0), a kernel the size of its stride, a 5x5 stride 3 with asymmetric pads, a padded 1x1 (a
    # phase without taps: the zeros-spread form)
    ("conv2d_subpixel_even", ops.conv2d, {**CONV, "strides": (2, 2)}, [r(2, 3, 8, 6), r(4, 3, 3, 3)]),
    ("conv2d_subpixel_odd", ops.conv2d, {**CONV, "strides": (2, 2)}, [r(1, 2, 7, 9), r(3, 2, 3, 3)]),
    ("conv2d_subpixel_pad0", ops.conv2d, {**CONV, "strides": (2, 2), "pads": (0, 0, 0, 0)},
     [r(1, 2, 7, 8), r(3, 2, 3, 3)]),
    ("conv2d_subpixel_k2", ops.conv2d, {**CONV, "strides": (2, 2), "pads": (0, 1, 1, 0)},
     [r(1, 2, 6, 7), r(3, 2, 2, 2)]),
    ("conv2d_subpixel_5x5_stride3", ops.conv2d, {**CONV, "strides": (3, 3), "pads": (2, 1, 0, 2)},
     [r(1, 2, 10, 11), r(2, 2, 5, 5), r(2)]),
    ("conv2d_1x1_stride2_padded", ops.conv2d, {**CONV, "strides": (2, 2), "pads": (1, 1, 1, 1)},
     [r(1, 2, 6, 5), r(2, 2, 1, 1)]),
    ("conv2d_dilated", ops.conv2d, {**CONV, "pads": (2, 0, 1, 1), "dilations": (2, 1)},
     [r(1, 2, 6, 5), r(3, 2, 3, 2)]),  # stride 1, asymmetric pads: dx is a conv of dy with the flipped weight
    ("conv2d_wide_pad", ops.conv2d, {**CONV, "pads": (3, 2, 3, 2)}, [r(1, 2, 3, 3), r(2, 2, 3, 3)]),  # pad > k-1
    ("conv2d_grouped", ops.conv2d, {**CONV, "groups": 2}, [r(1, 4, 5, 5), r(6, 2, 3, 3), r(6)]),
    ("conv2d_depthwise", ops.conv2d, {**CONV, "groups": 4}, [r(2, 4, 5, 5), r(4, 1, 3, 3)]),
    ("max_pool2d", ops.max_pool2d, POOL, [distinct(2, 2, 4, 4)]),
    ("max_pool2d_overlap", ops.max_pool2d, {**POOL, "kernel": (3, 3), "pads": (1, 1, 1, 1)}, [distinct(1, 2, 5, 5)]),
    ("avg_pool2d", ops.avg_pool2d, {**POOL, "pads": (1, 1, 1, 1), "count_include_pad": False}, [r(1, 2, 5, 5)]),
    ("avg_pool2d_incl", ops.avg_pool2d, {**POOL, "kernel": (3, 3), "pads": (1, 1, 1, 1), "count_include_pad": True,
                                         "ceil_mode": True}, [r(1, 2, 6, 6)]),
    ("global_avg_pool", ops.global_avg_pool, {}, [r(2, 3, 4, 4)]),
    ("reshape", ops.reshape, {"shape": (4, 6)}, [r(2, 3, 4)]),
    ("transpose", ops.transpose, {"perm": (2, 0, 1)}, [r(2, 3, 4)]),
    ("concat", ops.concat, {"axis": 1}, [r(2, 3), r(2, 2), r(2, 1)]),
    ("strided_slice", ops.strided_slice, {"begins": (1, 0), "ends": (5, 4), "strides": (2, 3)}, [r(6, 4)]),
    ("pad", ops.pad, {"pads": (1, 0, 2, 1), "value": 0.0}, [r(2, 3)]),
    ("take", ops.take, {"axis": 0}, [r(5, 3), lambda rng: np.array([[0, 2], [2, 4]], np.int64)]),
    ("broadcast_to", ops.broadcast_to, {"shape": (2, 3, 4)}, [r(3, 1)]),
    ("dropout_train", ops.dropout_train, {"p": 0.3}, [r(3, 4), lambda rng: rng.random((3, 4))]),
    ("softmax_cross_entropy", ops.softmax_cross_entropy, {"label_smoothing": 0.1, "ignore_index": 1},
     [r(4, 5), lambda rng: np.array([0, 1, 3, 4], np.int64)]),
    ("gelu", ops.gelu, {}, [r(3, 4, lo=-3.0, hi=3.0)]),
    ("gelu_tanh", ops.gelu, {"approximate": "tanh"}, [r(3, 4, lo=-3.0, hi=3.0)]),
]
NOT_DIFFERENTIATED = {"dropout_train": {1}}  # uniform samples: inputs, not variables


def _graph(op, attrs, arrays, diff):
    g = Graph("case")
    ins = [g.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    (y,) = g.add_node(op, ins, attrs)
    w = g.add_param("w", np.random.default_rng(1).uniform(-1, 1, y.type.shape).astype(y.type.dtype))
    (prod,) = g.add_node(ops.mul, [y, w])
    (loss,) = g.add_node(ops.reduce_sum, [prod], {"axes": tuple(range(y.type.rank)), "keepdims": True})
    grads = backward(g, loss, [ins[i] for i in diff])
    g.outputs = [loss] + [grads[ins[i]] for i in diff]
    g.verify()
    return g


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(case):
    name, op, attrs, gens = case
    rng = np.random.default_rng(0)
    arrays = [np.asarray(gen(rng)) for gen in gens]
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    diff = [i for i, a in enumerate(arrays) if a.dtype.kind == "f" and i not in NOT_DIFFERENTIATED.get(name, ())]
    g = _graph(op, attrs, arrays, diff)
    feeds = {f"x{i}": a for i, a in enumerate(arrays)}
    outs = interpret(g, feeds)
    h = 1e-6
    for k, i in enumerate(diff):
        analytic = outs[1 + k]
        numeric = np.zeros_like(arrays[i])
        for idx in np.ndindex(arrays[i].shape):
            plus, minus = dict(feeds), dict(feeds)
            plus[f"x{i}"] = arrays[i].copy()
            plus[f"x{i}"][idx] += h
            minus[f"x{i}"] = arrays[i].copy()
            minus[f"x{i}"][idx] -= h
            numeric[idx] = (interpret(g, plus)[0].sum() - interpret(g, minus)[0].sum()) / (2 * h)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7, err_msg=f"{name}: input {i}")


# ops with a rule but no finite-difference case here, and why
CHECKED_ELSEWHERE = {
    ops.floor: "zero almost everywhere", ops.ceil: "zero almost everywhere", ops.sign: "zero almost everywhere",
    ops.round: "zero almost everywhere", ops.dropout: "the identity (inference dropout)",
    ops.attention: "tests/ops/test_attention.py", ops.lstm_sequence: "tests/ops/test_rnn.py",
}


def test_every_op_with_a_rule_has_a_case():
    covered = {c[1] for c in CASES}
    missing = [op.name for op in ops.OPS.values()
               if callable(op.grad) and op not in covered and op not in CHECKED_ELSEWHERE]
    assert not missing, f"rules without a finite-difference case: {missing}"
    assert all(callable(op.grad) for op in covered), "a case for an op without a rule"


def test_op_without_rule_names_op_and_node():
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 1, 4, 4)))
    (y,) = g.add_node(ops.lrn, [x], {"size": 3}, name="my_lrn")
    (loss,) = g.add_node(ops.reduce_sum, [y], {"axes": (0, 1, 2, 3)})
    with pytest.raises(AutodiffError, match=r"no gradient rule for op lrn \(node my_lrn"):
        backward(g, loss, [x])


@pytest.mark.parametrize("attrs, fast", [
    (CONV, True),
    ({**CONV, "strides": (2, 2)}, True),  # dx: four stride-1 convs of dy, one per phase of dx's pixels
    ({**CONV, "pads": (3, 3, 3, 3)}, False),  # a pad wider than the window: dy would need negative padding
])
def test_conv_backward_reuses_forward_kernels(attrs, fast):
    """An ungrouped conv differentiates into a conv of dy (for stride 2, one per phase of dx's pixels, each with the
    taps reaching it) with the flipped weight and a matrix product with im2col(x), the ops whose CPU kernels are
    register-tiled; otherwise (a pad wider than the window) the gather-form ops."""
    g = Graph("conv")
    x = g.add_input("x", TensorType((2, 3, 6, 6)))
    w = g.add_input("w", TensorType((4, 3, 3, 3)))
    (y,) = g.add_node(ops.conv2d, [x, w], attrs)
    (loss,) = g.add_node(ops.reduce_sum, [y], {"axes": (0, 1, 2, 3), "keepdims": True})
    grads = backward(g, loss, [x, w])
    g.outputs = [grads[x], grads[w]]
    g.remove_unused()
    used = {n.op for n in g.nodes}
    assert ops.weight_grad_gemm in used and ops.im2col in used
    assert ops.conv2d_backward_weight not in used
    assert (ops.conv2d_weight_flip in used) == fast
    assert (ops.conv2d_backward_data in used) == (not fast)
    convs = [n for n in g.nodes if n.op is ops.conv2d]
    assert len(convs) == (4 if attrs.get("strides") == (2, 2) else 1 if fast else 0)
    assert all(n.attrs["strides"] == (1, 1) for n in convs)


def test_gradients_of_a_tensor_read_slice_by_slice_are_one_scatter():
    """A tensor read step by step (an RNN's precomputed gates): the slices' adjoints become one scatter_slices
    (not one full-size add per step), and the gradient still matches finite differences."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 5, 3))
    g = Graph("steps")
    x = g.add_input("x", TensorType((2, 5, 3), "float64"))
    acc = None
    for t in (0, 1, 3):  # step 2 and 4 unread: zero gradient there
        (s,) = g.add_node(ops.strided_slice, [x], {"begins": (0, t, 0), "ends": (2, t + 1, 3), "strides": (1, 1, 1)})
        (h,) = g.add_node(ops.tanh, [s])
        acc = h if acc is None else g.add_node(ops.mul, [acc, h])[0]
    (loss,) = g.add_node(ops.reduce_sum, [acc], {"axes": (0, 1, 2), "keepdims": True})
    g.outputs = [loss, backward(g, loss, [x])[x]]
    g.remove_unused()
    used = [n.op for n in g.nodes]
    assert used.count(ops.scatter_slices) == 1 and ops.strided_slice_grad not in used
    analytic = interpret(g, {"x": x0})[1]
    numeric = np.zeros_like(x0)
    for idx in np.ndindex(x0.shape):
        plus, minus = x0.copy(), x0.copy()
        plus[idx] += 1e-6
        minus[idx] -= 1e-6
        numeric[idx] = (interpret(g, {"x": plus})[0].sum() - interpret(g, {"x": minus})[0].sum()) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)
    assert not analytic[:, (2, 4)].any()


def test_a_long_weight_gradient_has_its_columns_padded_to_whole_tiles():
    """dW of a conv with C*KH*KW columns that are no multiple of 16 and a long reduction (N*OH*OW >= 4096 rows):
    the columns padded, the product on whole register tiles, the padding cut off; dW as PyTorch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x0, w0 = rng.uniform(-1, 1, (1, 3, 66, 66)), rng.uniform(-1, 1, (4, 3, 3, 3))
    g = Graph("conv")
    x = g.add_input("x", TensorType(x0.shape, "float64"))
    w = g.add_input("w", TensorType(w0.shape, "float64"))
    (y,) = g.add_node(ops.conv2d, [x, w], {**CONV, "pads": (0, 0, 0, 0)})
    (loss,) = g.add_node(ops.reduce_sum, [y], {"axes": (0, 1, 2, 3), "keepdims": True})
    grads = backward(g, loss, [w])
    g.outputs = [grads[w]]
    g.remove_unused()
    used = [n.op for n in g.nodes]
    assert ops.pad in used and ops.strided_slice in used and ops.weight_grad_gemm in used
    (dw,) = interpret(g, {"x": x0, "w": w0})
    tw = torch.tensor(w0, requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x0), tw).sum().backward()
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-10, atol=1e-10)
