"""Tensor cores without a GPU: with half-precision operands, the fuse pass makes each widening cast its matmul's
prologue (the kernel loads float16), and the CUDA backend schedules dense, matmul and batch matmul with dlight's
tensor-core rule; the generated CUDA and the PTX nvcc makes from it hold wmma/mma instructions. The float32 build
of the same graph has none. Whether the kernels run right is for the GPU tests (tests/runtime/test_cuda_gpu.py)."""

import shutil

import numpy as np
import pytest

from compiler import ops
from compiler.api import CompileOptions, optimize
from compiler.backend.cuda import build_cuda, cuda_target, tensor_core_kernels
from compiler.backend.lower import Kernel, partition
from compiler.ir import Graph, TensorType

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit), no GPU")


def products():
    """dense + bias + GELU, a dense reading its output, a 2-D matmul, and attention's per-head batch matmuls
    (BERT-base shapes per head: K = 64, then N = 64)."""
    rng = np.random.default_rng(0)
    g = Graph("products")
    x = g.add_input("x", TensorType((128, 256), "float32"))
    q = g.add_input("q", TensorType((4, 128, 64), "float32"))
    k = g.add_input("k", TensorType((4, 64, 128), "float32"))
    w = g.add_param("w", rng.standard_normal((256, 256)).astype(np.float32))
    b = g.add_param("b", rng.standard_normal(256).astype(np.float32))
    (h,) = g.add_node(ops.dense, [x, w, b], name="fc1")
    (h,) = g.add_node(ops.gelu, [h], name="gelu")
    (y,) = g.add_node(ops.dense, [h, w], name="fc2")
    (m,) = g.add_node(ops.matmul, [y, w], name="mm")
    (s,) = g.add_node(ops.matmul, [q, k], name="scores")
    (c,) = g.add_node(ops.matmul, [s, q], name="context")
    g.outputs = [m, c]
    return g


def build(precision, arch, tmp_path):
    tmp_path.mkdir()
    g = optimize(products(), CompileOptions(target="cuda", precision=precision))
    kernels = [s for s in partition(g) if isinstance(s, Kernel)]
    return kernels, build_cuda([s.spec for s in kernels], cuda_target(arch), str(tmp_path))


def anchor_kernels(kernels):
    return {s.spec.name() for s in kernels if any(n.op in (ops.dense, ops.matmul) for n in s.nodes)}


def test_fp16_products_use_tensor_cores_sm90(tmp_path):
    from tvm.support import nvcc

    kernels, result = build("fp16", "sm_90", tmp_path / "fp16")
    anchors = anchor_kernels(kernels)
    assert len(anchors) == 5
    for s in kernels:
        if s.spec.name() in anchors:  # the widening casts are prologues: the kernel reads float16 operands
            assert [n.op.name for n in s.nodes][:1] == ["cast"]
            assert all(t.dtype == "float16" for t in s.spec.in_types[:2]), s.spec.in_types
    assert {k.removesuffix("_kernel") for k in result.tensor_core_kernels} == anchors
    assert "nvcuda::wmma" in result.source and "wmma::mma_sync" in result.source
    assert result.source.encode() in open(result.library_path, "rb").read()  # what the artifact's library embeds
    with cuda_target("sm_90"):
        ptx = nvcc.compile_cuda(result.source, target_format="ptx", arch="sm_90", compiler="nvcc").decode()
    assert "wmma.mma.sync" in ptx or "mma.sync" in ptx
    assert "wmma.load.a.sync" in ptx or "ldmatrix" in ptx


def test_fp32_needs_no_tensor_cores_and_sm80_gets_them(tmp_path):
    kernels, result = build("fp32", "sm_90", tmp_path / "fp32")
    assert len(anchor_kernels(kernels)) == 5
    assert result.tensor_core_kernels == [] and len(result.device_kernels) >= len(result.kernel_names)
    kernels, result = build("fp16", "sm_80", tmp_path / "sm80")
    assert {k.removesuffix("_kernel") for k in result.tensor_core_kernels} == anchor_kernels(kernels)


def test_tensor_core_kernels_reads_each_kernel_body():
    source = ('extern "C" __global__ void __launch_bounds__(128) a_kernel(half* x) { wmma::mma_sync(c, a, b, c); }\n'
              'extern "C" __global__ void b_kernel(float* y) { y[0] = 1.f; }\n')
    assert tensor_core_kernels(source) == ["a_kernel"]

