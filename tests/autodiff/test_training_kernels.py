"""The CPU schedule rules written for training kernels (compiler/backend/cpu/): each applies to its
kernel (vectorized, register-tiled) and the kernel computes what the ops' numpy references compute."""

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.target import Target

from tensorforge.compiler import ops
from tensorforge.compiler.backend.cpu.rules import schedule_cpu

TARGET = Target.from_device(tvm.cpu())
rng = np.random.default_rng(0)


def build(inputs, outputs):
    """Scheduled script and a runner of the kernel over `inputs` (te placeholders) -> `outputs`."""
    func = schedule_cpu(te.create_prim_func(inputs + outputs), TARGET)
    fn = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]

    def run(*arrays):
        outs = [np.zeros([int(d) for d in o.shape], "float32") for o in outputs]
        args = [tvm.runtime.tensor(a) for a in arrays] + [tvm.runtime.tensor(o) for o in outs]
        fn(*args)
        return [a.numpy() for a in args[len(arrays):]]

    return func.script(), run


@pytest.mark.parametrize("op, axes", [(ops.reduce_sum, (0, 2, 3)), (ops.reduce_mean, (0, 2, 3)),
                                      (ops.reduce_sum, (0, 3))])
def test_per_channel_reduction_is_vectorized(op, axes):
    """A batch norm's backward sums over (N, H, W): vector partial sums over the contiguous trailing axes."""
    shape = (4, 6, 4, 32)
    x, y = (te.placeholder(shape, "float32", name=n) for n in "xy")
    script, run = build([x, y], [op.lower(ops.mul.lower(x, y), axes=axes, keepdims=True)])
    assert "rf" in script and "T.vectorized" in script
    a, b = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    (got,) = run(a, b)
    np.testing.assert_allclose(got, op.reference(a * b, axes=axes, keepdims=True), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, transpose_rows, batch", [((16, 3, 3, 3), False, 40), ((20, 70), True, 40),
                                                         ((24, 128), True, 512)])  # the last: blocked over the batch
def test_weight_gradient_is_a_register_tiled_product(shape, transpose_rows, batch):
    r = int(np.prod(shape[1:]))
    rows_shape = (batch, shape[0]) if transpose_rows else (shape[0], batch)
    rows, cols = te.placeholder(rows_shape, "float32", name="rows"), te.placeholder((batch, r), "float32", name="c")
    out = ops.weight_grad_gemm.lower(rows, cols, shape=shape, transpose_rows=transpose_rows)
    script, run = build([rows, cols], [out])
    assert "matmul_local" in script and "T.unroll" in script  # accumulators in registers
    if batch >= 2 * 32:
        # 512 batch rows in 16 blocks of 32; per block, its [32 x 128] column slice copied to a buffer of its own
        # (its rows are 128 floats apart in place), then 2 x 3 register tiles of 4 x 64 step through it
        assert "for ax2_0 in range(16)" in script and "T.grid(32, 8)" in script, script
        assert "T.grid(2, 3, 32)" in script and "c_global[v_rk, v_j]" in script, script
    a, b = rng.standard_normal(rows_shape).astype(np.float32), rng.standard_normal((batch, r)).astype(np.float32)
    (got,) = run(a, b)
    np.testing.assert_allclose(got, ops.weight_grad_gemm.reference(a, b, shape=shape, transpose_rows=transpose_rows),
                               rtol=1e-4, atol=1e-4)


def test_dense_weight_pack_reads_rows_contiguously():
    w = te.placeholder((40, 48), "float32", name="w")
    script, run = build([w], [ops.dense_weight_pack.lower(w, block=16)])
    assert "T.vectorized(16)" in script and "T.unroll(16)" in script
    a = rng.standard_normal((40, 48)).astype(np.float32)
    np.testing.assert_array_equal(run(a)[0], ops.dense_weight_pack.reference(a, block=16))


@pytest.mark.parametrize("shape, kernel, strides, pads", [((4, 8, 10, 12), (3, 3), (1, 1), (1, 1, 1, 1)),
                                                          ((4, 6, 23, 19), (3, 2), (2, 1), (1, 0, 2, 1))])
def test_im2col_rows_and_columns_are_split(shape, kernel, strides, pads):
    """A conv weight gradient's im2col: rows split into (n, oh, ow), columns into (c, kh, kw) (the index
    arithmetic's divisions fold into the loops), parallel over (n, oh), kh and kw unrolled."""
    x = te.placeholder(shape, "float32", name="x")
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "dilations": (1, 1)}
    script, run = build([x], [ops.im2col.lower(x, **attrs)])
    assert f"T.parallel({shape[0] * -(-(shape[2] + pads[0] + pads[2] - kernel[0] + 1) // strides[0])})" in script
    assert f"T.unroll({kernel[0]})" in script and f"T.unroll({kernel[1]})" in script
    a = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(run(a)[0], ops.im2col.reference(a, **attrs))


def test_layer_norm_grad_is_one_task_per_block_of_rows():
    """layer_norm_grad's schedule (backend/cpu/layer_norm_grad.py): per task of 16 rows, the row sums as vector
    partials, dx, and the block's partial column sums of dscale (vector adds over the rows), all under one parallel
    loop; the partials' sum after it."""
    shape = (512, 48)
    x, s, dy = (te.placeholder(sh, "float32", name=n) for sh, n in ((shape, "x"), (shape[1:], "s"), (shape, "dy")))
    script, run = build([x, s, dy], list(ops.layer_norm_grad.lower(x, s, dy, epsilon=1e-5)))
    assert script.count("T.parallel(") == 1 and "T.parallel(32)" in script, script  # 512 rows in 32 blocks
    assert "ln_grad_sum_rf" in script and "ln_grad_part" in script
    a, c = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    b = rng.uniform(0.5, 2, shape[1:]).astype(np.float32)
    got = run(a, b, c)
    for g, want in zip(got, ops.layer_norm_grad.reference(a, b, c, epsilon=1e-5)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mcpu, whole_k", [("znver4", True), ("skylake-avx512", False)])
def test_long_weight_gradient_tiles_by_cpu(mcpu, whole_k):
    """A weight gradient over 256 batch rows: on AMD Zen whole-k register tiles of 8 x 32 (48 does not divide 64
    columns), elsewhere k blocks of 32 with the column slice copied (backend/cpu/training.py _full_k_tiles)."""
    target = Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    rows, cols = te.placeholder((16, 256), "float32", name="rows"), te.placeholder((256, 64), "float32", name="c")
    out = ops.weight_grad_gemm.lower(rows, cols, shape=(16, 64), transpose_rows=False)
    func = schedule_cpu(te.create_prim_func([rows, cols, out]), target)
    script = func.script()
    if whole_k:
        assert "c_global" not in script and "for ax2 in range(256)" in script and "T.unroll(8)" in script, script
    else:
        assert "c_global" in script and "for ax2_0 in range(8)" in script, script
    fn = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]
    a, b = rng.standard_normal((16, 256)).astype(np.float32), rng.standard_normal((256, 64)).astype(np.float32)
    got = tvm.runtime.tensor(np.zeros((16, 64), np.float32))
    fn(tvm.runtime.tensor(a), tvm.runtime.tensor(b), got)
    np.testing.assert_allclose(got.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_short_weight_gradient_prefetches_its_tile():
    """Over 40 batch rows a task stores its 4 x 64 tile after 40 steps: its 4 x 4 cache lines are prefetched (for
    writing) when it starts (backend/cpu/prefetch.py), the mark is gone, and the kernel computes the same."""
    from tensorforge.compiler.backend.cpu.prefetch import PREFETCH_TILE, insert_prefetches

    rows, cols = te.placeholder((8, 40), "float32", name="rows"), te.placeholder((40, 128), "float32", name="c")
    out = ops.weight_grad_gemm.lower(rows, cols, shape=(8, 128), transpose_rows=False)
    marked = schedule_cpu(te.create_prim_func([rows, cols, out]), TARGET)
    assert PREFETCH_TILE in marked.script()
    func = insert_prefetches(marked)
    script = func.script()
    assert script.count("llvm.prefetch") == 16 and PREFETCH_TILE not in script, script
    fn = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)["main"]
    a, b = rng.standard_normal((8, 40)).astype(np.float32), rng.standard_normal((40, 128)).astype(np.float32)
    got = tvm.runtime.tensor(np.full((8, 128), np.nan, np.float32))
    fn(tvm.runtime.tensor(a), tvm.runtime.tensor(b), got)
    np.testing.assert_allclose(got.numpy(), a @ b, rtol=1e-4, atol=1e-4)
