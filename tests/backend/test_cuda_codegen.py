"""CUDA codegen without a GPU: every op's kernel is scheduled for the GPU (dlight), has real device code, and nvcc
compiles it for sm_90 (SASS + PTX). Executing on a GPU is tested by the tests marked `gpu`, on the GPU machine."""

import shutil

import pytest

from tensorforge.compiler.driver import import_model, optimize
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.backend.cuda.build import build_cuda, check_device_code, cuda_target
from tensorforge.compiler.backend.lower import Kernel, partition
from tensorforge.compiler.passes import fuse, pass_name, pipeline
from tensorforge.runtime.errors import CompileError
from tests.ops.test_ops import CASES, single_op_graph
from tests.support import light_path

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit), no GPU")

# ops written as opaque sequential loops (scans, sort, scatter): no dlight rule binds them to GPU threads yet
GPU_UNSUPPORTED = {"cumsum", "cumprod", "topk", "scatter_elements"}
# the LSTM recurrence's kernels are CPU kernels: the CUDA pipeline unrolls the op first (test below)
# cached_attention: decoding on the CPU (compiler/decoding.py refuses the cuda target); all_reduce_mean: gloo's
# collectives, data-parallel training on the CPU (compiler/api.py refuses the cuda target)
CPU_ONLY = {"lstm_sequence", "lstm_sequence_grad", "cached_attention", "all_reduce_mean"}


def specs_of(g):
    return [s.spec for s in partition(fuse(g)) if isinstance(s, Kernel)]


def test_every_op_compiles_for_sm90(tmp_path):
    specs = [spec for opname, arrays, attrs, params in CASES if opname not in GPU_UNSUPPORTED | CPU_ONLY
             for spec in specs_of(single_op_graph(opname, arrays, attrs, params))]
    result = build_cuda(specs, cuda_target("sm_90"), str(tmp_path))
    assert len(result.kernel_names) > 60
    assert len(result.device_kernels) >= len(result.kernel_names)
    data = open(result.fatbin_path, "rb").read()
    assert len(data) > 10000


def test_kernel_without_device_code_is_refused(tmp_path):
    case = next(c for c in CASES if c[0] == "cumsum")
    with pytest.raises(CompileError, match=r"1 kernel\(s\) got no GPU code .*cumsum_"):
        build_cuda(specs_of(single_op_graph(*case)), cuda_target("sm_90"), str(tmp_path))
    with pytest.raises(CompileError, match="got no GPU code.*k_missing"):
        check_device_code(["k_missing"], "extern \"C\" __global__ void __launch_bounds__(64) other_kernel(float* x)")


def test_lstm_is_unrolled_for_cuda(tmp_path):
    from tensorforge.compiler.ops import OPS

    case = next(c for c in CASES if c[0] == "lstm_sequence")
    assert pass_name(pipeline(2, "cuda")[0]) == "unroll_lstm"
    g = optimize(single_op_graph(*case), CompileOptions(target="cuda"))
    assert not any(n.op in (OPS["lstm_sequence"], OPS["lstm_sequence_grad"]) for n in g.nodes)
    result = build_cuda(specs_of(g), cuda_target("sm_90"), str(tmp_path))
    assert len(result.device_kernels) >= len(result.kernel_names) > 0


def test_lstm_gradients_compile_for_cuda():
    """The gradient graph of an LSTM on cuda (compile_gradients): its weight-gradient sums got no GPU code when
    a dlight rule raised on them instead of declining, which stopped the rules after it (backend/cuda/build.py
    _first_rule)."""
    from tensorforge import compile_gradients
    from tests.test_driver import _lstm_onnx

    model = compile_gradients(_lstm_onnx(), target="cuda")  # compile only: the model sets up the GPU when run
    assert model.plan["device"]["device_kernels"] >= len({s["kernel"] for s in model.plan["steps"]})
    assert any(name.endswith(":grad") for name in (o["name"] for o in model.plan["outputs"]))


@pytest.mark.slow
def test_resnet50_compiles_for_cuda(tmp_path):
    assert "pack_weights" not in [pass_name(p) for p in pipeline(2, "cuda")]  # CPU weight layouts stay on the CPU
    g = optimize(import_model(light_path("resnet50")), CompileOptions(target="cuda"))
    result = build_cuda(specs_of(g), cuda_target("sm_90"), str(tmp_path))
    assert any(name.startswith("fused_conv2d_add_relu") for name in result.kernel_names)


def test_bad_arch():
    with pytest.raises(CompileError, match="not of the form sm_XY"):
        cuda_target("hopper")
