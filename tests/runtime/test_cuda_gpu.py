"""On an NVIDIA GPU (marker `gpu`, left out of the default run): CUDA artifacts run and match the CPU; zero-copy
inputs from PyTorch, outputs left on the GPU, save/load, training steps matching CPU losses.

    python -m pytest -m gpu tests/runtime/test_cuda_gpu.py      # on a machine with a GPU, nvcc and full TVM
"""

import numpy as np
import pytest

from tensorforge import compile_model, compile_training, runtime
from tensorforge.compiler.examples import small_cnn_onnx
from tensorforge.runtime.cuda import CudaModel, DeviceError, gpu_info

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    try:
        info = gpu_info(0)
    except DeviceError as e:
        pytest.skip(str(e))
    return info


def image(batch=1):
    return np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def test_cnn_matches_cpu_and_round_trips(gpu, tmp_path):
    model = compile_model(small_cnn_onnx(), target="cuda", arch=gpu.arch)
    cpu = compile_model(small_cnn_onnx())
    x = {"image": image()}
    (got,), (want,) = model.run(x), cpu.run(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m.tfa")
    loaded = runtime.load(tmp_path / "m.tfa")
    assert isinstance(loaded, CudaModel)
    np.testing.assert_allclose(loaded.run(x)[0], want, rtol=1e-4, atol=1e-5)
    assert min(loaded.benchmark(x, repeat=5)) > 0 and len(loaded.profile(x, repeat=2)) == loaded.num_kernels


def test_zero_copy_torch_inputs_and_device_outputs(gpu):
    torch = pytest.importorskip("torch")
    model = compile_model(small_cnn_onnx(), target="cuda", arch=gpu.arch)
    x = image()
    want = model.run({"image": x})[0]
    tx = torch.from_numpy(x).cuda()
    (out,) = model.run({"image": tx}, device_outputs=True)
    t = torch.from_dlpack(out)
    assert t.is_cuda
    np.testing.assert_allclose(t.cpu().numpy(), want, rtol=1e-6, atol=1e-6)


def test_fp16_close_to_fp32(gpu):
    x = {"image": image()}
    fp32 = compile_model(small_cnn_onnx(), target="cuda", arch=gpu.arch).run(x)[0]
    fp16 = compile_model(small_cnn_onnx(), target="cuda", arch=gpu.arch, precision="fp16").run(x)[0]
    assert np.abs(fp16 - fp32).max() / np.abs(fp32).max() < 2e-3


@pytest.mark.parametrize("which", ["cnn", "transformer"])
def test_training_steps_match_cpu(gpu, which):
    from tensorforge.frontends import nn
    from tests.autodiff.torch_models import TransformerClassifier

    if which == "cnn":
        net, shape = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Flatten(), nn.Linear(16 * 16 * 16, 10)), (8, 3, 32, 32)
    else:
        net, shape = TransformerClassifier(64, 4, 128, 2, 10), (4, 16, 64)
    params = net.init(0)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal(shape).astype(np.float32), rng.integers(0, 10, shape[0])) for _ in range(4)]
    losses = {}
    for target in ("cpu", "cuda"):
        s = compile_training(net, shapes={"x": shape}, params=params, target=target,
                             optimizer={"name": "adam", "lr": 1e-3})
        losses[target] = [s.step({"x": x}, y) for x, y in batches]
        if target == "cuda":
            assert s.parameters() and s.eval({"x": batches[0][0]})[0].shape == (shape[0], 10)
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-4, atol=1e-5)
