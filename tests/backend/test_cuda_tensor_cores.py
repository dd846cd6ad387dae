"""Tensor cores without a GPU: with half-precision operands, the fuse pass makes each widening cast its matmul's
prologue (the kernel loads float16/bfloat16), and the CUDA backend schedules dense, matmul, batch matmul and convs
(1x1 and padded 3x3) with a wmma tensor-core schedule (float16 from sm_70, bfloat16 with our own intrinsics from
sm_80); the generated CUDA and the PTX nvcc makes from it hold wmma/mma instructions. The float32 build of the same
graph has none. Whether the kernels run right is for the GPU tests (tests/runtime/test_cuda_gpu.py)."""

import shutil

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.driver import optimize
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.backend.cuda.build import build_cuda, cuda_target, tensor_core_kernels
from tensorforge.compiler.backend.lower import Kernel, partition
from tensorforge.compiler.ir import Graph, TensorType

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


def ptx_of(source, arch):
    from tvm.support import nvcc

    with cuda_target(arch):
        return nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc").decode()


def test_bf16_products_use_tensor_cores_sm90_sm80(tmp_path):
    """TVM 0.27 has no bf16 tensor-core intrinsics; ours (backend/cuda/intrin.py) give bf16 wmma fragments, which
    nvcc turns into `wmma.mma.sync ... .bf16.bf16.f32` for sm_90 and sm_80; sm_75 has no bf16 tensor cores."""
    for arch in ("sm_90", "sm_80"):
        kernels, result = build("bf16", arch, tmp_path / arch)
        anchors = anchor_kernels(kernels)
        assert len(anchors) == 5
        for s in kernels:
            if s.spec.name() in anchors:
                assert all(t.dtype == "bfloat16" for t in s.spec.in_types[:2]), s.spec.in_types
        assert {k.removesuffix("_kernel") for k in result.tensor_core_kernels} == anchors
        assert "nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, nv_bfloat16" in result.source
        mma = [line.strip() for line in ptx_of(result.source, arch).splitlines() if "mma.sync" in line]
        assert mma and all(".bf16.bf16.f32" in line for line in mma), mma[:3]
    kernels, result = build("bf16", "sm_75", tmp_path / "sm_75")
    assert result.tensor_core_kernels == []


def resnet_3x3_convs():
    """ResNet-50's 3x3 convs (padding 1, batch 1): 64 channels (at 28x28 here instead of 56x56, to keep the build
    short), 128 with stride 2 (the first of stage 2, 28 -> 14 here), 256 at 14x14 and 512 at 7x7, each with a bias
    and a ReLU."""
    rng = np.random.default_rng(0)
    g = Graph("convs3x3")
    outs = []
    for i, (c, hw, stride) in enumerate([(64, 28, 1), (128, 28, 2), (256, 14, 1), (512, 7, 1)]):
        cin = c if stride == 1 else c // 2
        x = g.add_input(f"x{i}", TensorType((1, cin, hw, hw), "float32"))
        w = g.add_param(f"w{i}", rng.standard_normal((c, cin, 3, 3)).astype(np.float32))
        b = g.add_param(f"b{i}", rng.standard_normal(c).astype(np.float32))
        (y,) = g.add_node(ops.conv2d, [x, w, b], {"strides": (stride, stride), "pads": (1, 1, 1, 1),
                                                  "dilations": (1, 1), "groups": 1}, name=f"conv{i}")
        (y,) = g.add_node(ops.relu, [y], name=f"relu{i}")
        outs.append(y)
    g.outputs = outs
    return g


def test_padded_3x3_convs_use_tensor_cores(tmp_path):
    """The padding stage of a conv that reads fp16 data is computed in fp16 (exact: it copies fp16 values and
    writes zeros), so 3x3 convs get the tensor-core schedule like 1x1 convs: wmma in the CUDA source and PTX. The
    7x7 one (M = 49 output pixels) is below TENSOR_CORE_MIN and stays on CUDA cores."""
    g = optimize(resnet_3x3_convs(), CompileOptions(target="cuda", precision="fp16"))
    kernels = [s for s in partition(g) if isinstance(s, Kernel)]
    tmp_path.mkdir(exist_ok=True)
    result = build_cuda([s.spec for s in kernels], cuda_target("sm_90"), str(tmp_path))
    convs = [s.spec.name() for s in kernels if any(n.op is ops.conv2d for n in s.nodes)]
    assert len(convs) == 4
    assert {k.removesuffix("_kernel") for k in result.tensor_core_kernels} == set(convs[:3])
    ptx = ptx_of(result.source, "sm_90")
    assert "wmma.load.a.sync.aligned.row.m16n16k16.shared.f16" in ptx  # PTX names only D's and C's types here
    assert "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32" in ptx


def test_half_padding_is_exact():
    """inline_widening_casts turns `pad = if_then_else(c, f32(x_f16), 0)` into a float16 stage, whose reader widens
    it; a padding value that float16 cannot hold keeps the stage float32."""
    from tvm import s_tir, te, topi

    from tensorforge.compiler.backend.cuda.build import inline_widening_casts

    def pad_dtype(value):
        x = te.placeholder((1, 8, 6, 6), "float16", name="x")
        wide = te.compute(x.shape, lambda *i: x(*i).astype("float32"), name="wide")
        p = topi.nn.pad(wide, (0, 0, 1, 1), (0, 0, 1, 1), value)
        y = te.compute(p.shape, lambda *i: p(*i) * 2.0, name="y")
        func = inline_widening_casts(te.create_prim_func([x, y]))
        sch = s_tir.Schedule(func)
        return str(sch.get(sch.get_sblock("PadInput")).writes[0].source.dtype)

    assert pad_dtype(0.0) == "float16"
    assert pad_dtype(0.1) == "float32"


def test_tensor_core_kernels_reads_each_kernel_body():
    source = ('extern "C" __global__ void __launch_bounds__(128) a_kernel(half* x) { wmma::mma_sync(c, a, b, c); }\n'
              'extern "C" __global__ void b_kernel(float* y) { y[0] = 1.f; }\n')
    assert tensor_core_kernels(source) == ["a_kernel"]

