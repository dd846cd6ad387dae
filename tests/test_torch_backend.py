"""torch.compile(model, backend="tensorforge") (compiler/torch_backend.py): found through the entry point, inference
graphs compiled and matching eager, PyTorch running what is not compiled (with a warning) and gradients."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")


def _cnn():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
    return m


def _compiled(model):
    torch._dynamo.reset()
    return torch.compile(model, backend="tensorforge")


def test_the_backend_is_registered_by_name_without_importing_tensorforge():
    code = ("import torch._dynamo as d; import sys; "
            "print('tensorforge' in d.list_backends(exclude_tags=()), 'tensorforge' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_inference_matches_eager_and_runs_compiled():
    from tensorforge.compiler.torch_backend import _Compiled

    m = _cnn()
    c = _compiled(m)
    x = torch.randn(2, 3, 8, 8)
    calls = []
    real = _Compiled.__call__

    def spy(self, *args):
        calls.append(self.model is not None)
        return real(self, *args)

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        _Compiled.__call__ = spy
        try:
            y = c(x)
        finally:
            _Compiled.__call__ = real
    assert calls == [True]
    torch.testing.assert_close(y, m(x).detach(), rtol=1e-4, atol=1e-5)


def test_new_weights_recompile_and_gradients_run_in_pytorch():
    m = _cnn()
    c = _compiled(m)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        c(x)
        m[4].weight.mul_(2.0)  # an in-place update: the compiled constants are stale
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)
    y = c(x)  # grad mode, parameters requiring grad: PyTorch runs it, the gradient flows
    y.sum().backward()
    assert m[4].weight.grad is not None and y.grad_fn is not None


def test_a_graph_that_does_not_compile_runs_in_pytorch_with_a_warning():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return torch.special.bessel_j0(x) + 1  # no converter for it

    m = Odd()
    x = torch.randn(3, 4)
    with torch.no_grad(), pytest.warns(UserWarning, match="runs in PyTorch"):
        y = _compiled(m)(x)
    torch.testing.assert_close(y, m(x))


def test_an_unsupported_op_fails_at_once_with_warnings_recorded():
    """compile_model re-issued the warnings it recorded while still recording them: with a torch module that warns
    on export and then fails, the list grew without end (24 GB before the kernel killed the test run)."""
    from tensorforge import UnsupportedOpError, compile_model

    class Warns(torch.nn.Module):
        def forward(self, x):
            warnings.warn("a warning during export")
            return torch.special.bessel_j0(x)

    with pytest.raises(UnsupportedOpError, match="bessel"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compile_model(Warns(), example_inputs=(torch.randn(2, 2),))
