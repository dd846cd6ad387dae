"""Property test: random graphs of elementwise, broadcast, reduction, matmul and conv ops compute the same through
the reference interpreter before and after the full pipeline, and through the compiled runtime."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorforge import compile_model

from tensorforge.compiler import ops
from tensorforge.compiler.driver import optimize
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.ir import Graph, TensorType, interpret
from tests.support import assert_close

C, H = 8, 6  # every conv-shaped value is (1, C, H, H); every matrix-shaped value is (H*H, C)


@st.composite
def graphs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    g = Graph("random")
    img = [g.add_input("x", TensorType((1, C, H, H)))]
    mats = []

    def param(shape, positive=False):
        data = rng.uniform(0.5, 1.5, shape) if positive else rng.uniform(-1, 1, shape)
        return g.add_param("p", data.astype(np.float32))

    for _ in range(draw(st.integers(2, 9))):
        choice = draw(st.sampled_from(["conv", "bn", "unary", "binary", "scale", "pool", "to_mat", "dense",
                                       "matmul", "softmax", "mat_unary"]))
        x = draw(st.sampled_from(img))
        if choice == "conv":
            k = draw(st.sampled_from([1, 3]))
            groups = draw(st.sampled_from([1, 2, C]))
            w = param((C, C // groups, k, k))
            (y,) = g.add_node(ops.conv2d, [x, w, param((C,))], {"pads": (k // 2,) * 4, "groups": groups})
            img.append(y)
        elif choice == "bn":
            (y,) = g.add_node(ops.batch_norm, [x, param((C,), True), param((C,)), param((C,)), param((C,), True)])
            img.append(y)
        elif choice == "unary":
            op = draw(st.sampled_from([ops.relu, ops.tanh, ops.sigmoid, ops.neg, ops.abs]))
            img.append(g.add_node(op, [x])[0])
        elif choice == "binary":
            other = draw(st.sampled_from(img + [param((C, 1, 1)), param((1, 1, 1, H))]))
            op = draw(st.sampled_from([ops.add, ops.mul, ops.sub, ops.maximum]))
            img.append(g.add_node(op, [x, other])[0])
        elif choice == "scale":
            img.append(g.add_node(ops.mul, [x, param((1, C, 1, 1))])[0])
        elif choice == "pool":
            (p,) = g.add_node(ops.max_pool2d, [x], {"kernel": (3, 3), "pads": (1, 1, 1, 1)})
            img.append(p)
        elif choice == "to_mat":
            (t,) = g.add_node(ops.transpose, [x], {"perm": (0, 2, 3, 1)})
            mats.append(g.add_node(ops.reshape, [t], {"shape": (H * H, C)})[0])
        elif choice == "dense" and mats:
            m = draw(st.sampled_from(mats))
            mats.append(g.add_node(ops.dense, [m, param((C, C)), param((C,))])[0])
        elif choice == "matmul" and mats:
            m = draw(st.sampled_from(mats))
            mats.append(g.add_node(ops.matmul, [m, g.add_node(ops.relu, [param((C, C))])[0]])[0])
        elif choice == "softmax" and mats:
            mats.append(g.add_node(ops.softmax, [draw(st.sampled_from(mats))], {"axis": 1})[0])
        elif choice == "mat_unary" and mats:
            mats.append(g.add_node(ops.exp, [g.add_node(ops.clip, [draw(st.sampled_from(mats))],
                                                        {"min": -3.0, "max": 3.0})[0]])[0])
    outs = [img[-1]] + ([mats[-1]] if mats else [])
    (r,) = g.add_node(ops.global_avg_pool, [outs[0]])
    g.outputs = [r] + outs[1:] + ([img[1]] if len(img) > 2 and draw(st.booleans()) else [])
    return g


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(0, 1000))
def test_pipeline_preserves_semantics(g, seed):
    g.verify()
    feeds = {"x": np.random.default_rng(seed).standard_normal((1, C, H, H)).astype(np.float32)}
    want = interpret(g, feeds)
    optimized = optimize(g.copy(), CompileOptions())
    for a, b in zip(interpret(optimized, feeds), want):
        assert_close(a, b, rtol=1e-4, atol=1e-5, what="optimized graph")
    for a, b in zip(compile_model(g).run(feeds), want):
        assert_close(a, b, rtol=1e-4, atol=1e-5, what="compiled")
