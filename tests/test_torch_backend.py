"""torch.compile(model, backend="tensorforge") (compiler/torch_backend.py): found through the entry point, inference
graphs compiled and matching eager, PyTorch running what is not compiled (with a warning) and gradients."""

from __future__ import annotations

import copy
from unittest import mock
import subprocess
import sys
import warnings

import numpy as np
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


def _capturing(model, **compile_kwargs):
    """torch.compile through our backend (with torch.compile's `compile_kwargs`), keeping each _Compiled it makes."""
    from tensorforge.compiler.torch_backend import tensorforge_backend

    made = []

    def backend(gm, example_inputs):
        made.append(tensorforge_backend(gm, example_inputs))
        return made[-1]

    torch._dynamo.reset()
    return torch.compile(model, backend=backend, **compile_kwargs), made


class _Odd(torch.nn.Module):
    """Linear layers around an op without a converter (and a second output reading past it)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.a(x))
        y = torch.special.bessel_j0(y) + y
        return self.b(y), y.sum()


def test_an_op_without_a_converter_runs_in_pytorch_between_compiled_pieces():
    torch.manual_seed(0)
    m = _Odd().eval()
    c, made = _capturing(m)
    x = torch.randn(3, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing falls back to PyTorch whole
        got = c(x)
        expected = m(x)
    (compiled,) = made
    assert compiled.model is None and compiled.pieces == (2, 0)
    assert "aten.special_bessel_j0.default" in compiled.runner.eager_ops
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_a_node_its_converter_refuses_runs_in_pytorch_and_the_rest_compiled():
    """avg_pool2d has a converter, but it refuses divisor_override: that node alone is left to PyTorch."""
    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 3 * 3, 2)

        def forward(self, x):
            y = torch.nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2, divisor_override=3)
            return self.fc(y.flatten(1))

    torch.manual_seed(3)
    m = Pool().eval()
    c, made = _capturing(m)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)
    assert made[0].pieces == (2, 0) and made[0].runner.eager_ops == ["aten.avg_pool2d.default"]


def test_train_mode_dropout_is_drawn_by_pytorch_and_batch_norm_updates_run_eager():
    """A module captured in train mode: its dropout runs in PyTorch (the same masks as eager for the same seed)
    between compiled pieces; a graph updating batch-norm statistics runs in PyTorch whole, with a warning, and
    the statistics move as in eager."""
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3)).train()
    for p in m.parameters():
        p.requires_grad_(False)
    c, made = _capturing(m)
    x = torch.randn(4, 8)
    with torch.no_grad():
        torch.manual_seed(5)
        got = c(x)
        torch.manual_seed(5)
        expected = m(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert made[0].pieces is not None and made[0].pieces[0] >= 1
    assert "aten.native_dropout.default" in made[0].runner.eager_ops

    bn = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).train()
    twin = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).train()
    twin.load_state_dict(bn.state_dict())
    c, made = _capturing(bn)
    with torch.no_grad(), pytest.warns(UserWarning, match="runs in PyTorch.*in place"):
        got = c(x)
    with torch.no_grad():
        expected = twin(x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(bn[1].running_mean, twin[1].running_mean)


def test_a_graph_break_gives_two_compiled_graphs():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 2)

        def forward(self, x):
            y = torch.tanh(self.a(x))
            print("", end="")  # dynamo breaks the graph here
            return self.b(y)

    torch.manual_seed(2)
    m = Broken().eval()
    c, made = _capturing(m)
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-5)
    assert len(made) == 2 and all(k.model is not None for k in made)


@pytest.mark.parametrize("name", ["transformer_encoder", "multihead_attention", "bidirectional_gru",
                                  "interpolate_bilinear_x2", "conv_transpose2d", "sdpa_causal"])
def test_standard_modules_through_torch_compile(name):
    from tests.frontends.test_torch_modules import CASES

    torch.manual_seed(0)
    m, inputs = CASES[name]()
    m.eval()
    c, made = _capturing(m)
    # dynamo leaves RNN modules to eager unless asked (torch._dynamo.config.allow_rnn)
    with torch.no_grad(), warnings.catch_warnings(), torch._dynamo.config.patch(allow_rnn=True):
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(assigned during export|TreeSpec|LeafSpec).*")
        got = c(*inputs)
        expected = m(*inputs)
    assert made and all(k.runner is not None and k.pieces is None for k in made), [k.failed for k in made]
    got, expected = (t if isinstance(t, tuple) else (t,) for t in (got, expected))
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_a_second_compile_of_the_same_graph_loads_it_from_the_disk_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TENSORFORGE_CACHE_DIR", str(tmp_path))
    m = _cnn()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        first = _compiled(m)(x)
        assert len(list(tmp_path.rglob("*.tfa"))) == 1
        import tensorforge.runtime

        loads, real = [], tensorforge.runtime.load
        monkeypatch.setattr(tensorforge.runtime, "load", lambda path, **kw: loads.append(kw) or real(path, **kw))
        with caplog.at_level("INFO", logger="tensorforge"):
            second = _compiled(m)(x)
        assert "loaded a cached compiled graph" in caplog.text
        assert loads == [{"map_params": True}]  # the cached file's parameters used where they lie
        torch.testing.assert_close(first, second)
        m[4].bias.add_(1.0)  # other constants: another entry, not the stale one
        torch.testing.assert_close(_compiled(m)(x), m(x), rtol=1e-4, atol=1e-5)
    assert len(list(tmp_path.rglob("*.tfa"))) == 2


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


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Linear(6, 32)
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def _train_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Dropout(0.2), torch.nn.Linear(8, 5))


def _losses(make, shape, compiled: bool, steps: int = 50):
    """The losses of `steps` Adam steps on random batches, and the trained module."""
    torch.manual_seed(0)
    m = make().train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    f = _capturing(m)[0] if compiled else m
    data = torch.Generator().manual_seed(1)
    torch.manual_seed(7)  # dropout's masks: drawn by PyTorch in both runs, in the same order
    losses = []
    for _ in range(steps):
        x, y = torch.randn(*shape, generator=data), torch.randint(0, 5, (shape[0],), generator=data)
        loss = torch.nn.functional.cross_entropy(f(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, m


@pytest.mark.parametrize("make, shape", [(_train_cnn, (16, 3, 8, 8)), (_Encoder, (4, 10, 6))],
                         ids=["cnn_batchnorm_dropout", "transformer_encoder"])
def test_fifty_adam_steps_match_eager(make, shape):
    """Training through aot_autograd: forward and backward graphs compiled (batch norm's training form, dropout and
    the CPU flash attention run in PyTorch between compiled pieces); the losses as eager's. (Not the weights: Adam
    turns the rounding noise of a gradient that is zero in exact arithmetic, such as a bias before batch norm or
    attention's key bias, into steps of lr either way.)"""
    expected, _ = _losses(make, shape, compiled=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got, _ = _losses(make, shape, compiled=True)
    assert not [str(w.message) for w in said if "runs in PyTorch" in str(w.message)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_backward_ops_convert_exactly():
    """convolution_backward (strided, grouped), max_pool2d_with_indices_backward (ties after a ReLU go where
    PyTorch sends them: the first maximum) and avg_pool2d_backward, compiled whole, gradients as eager's."""
    torch.manual_seed(4)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(6, 6, 3, padding=1, groups=3), torch.nn.AvgPool2d(2, padding=1),
                            torch.nn.Flatten(), torch.nn.Linear(6 * 2 * 2, 3))
    twin = _capturing(copy.deepcopy(m))[0]
    x = torch.randn(2, 3, 12, 12)
    m(x).square().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing runs in PyTorch
        twin(x).square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), twin._orig_mod.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("shape", [(5, 24), (2, 70, 24)], ids=["batch_5", "tokens_140"])
def test_linear_weight_gradients_are_weight_grad_products(shape):
    """aot's mm(t(dy), x) for a linear layer's weight gradient runs on the weight-gradient kernel, reading both
    operands in place (140 rows: its blocked form); gradients as eager's."""
    from tensorforge.compiler import torch_graphs

    torch.manual_seed(5)
    m = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Tanh(), torch.nn.Linear(40, 7))
    twin = _capturing(copy.deepcopy(m))[0]
    x = torch.randn(*shape)
    m(x).square().sum().backward()
    models = []
    real = torch_graphs._compile_aten
    with mock.patch.object(torch_graphs, "_compile_aten", lambda *a: models.append(real(*a)) or models[-1]):
        twin(x).square().sum().backward()
    ops = [s["op"] for model in models for s in model.plan["steps"]]
    assert ops.count("weight_grad_gemm") == 2, ops
    for (name, p), q in zip(m.named_parameters(), twin._orig_mod.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


ZOO_FAST = ["mlp", "bert_small", "lstm_classifier"]  # the default run's time: the rest behind the slow marker
ZOO_SLOW = ["gpt2_tiny", "vit_tiny", "llama_block", "gru_classifier", "mobilenet_v2", "resnet50", "hf_bert", "hf_vit",
            "hf_distilbert", "hf_convnext"]


@pytest.mark.parametrize("name", ZOO_FAST + [pytest.param(n, marks=pytest.mark.slow) for n in ZOO_SLOW])
def test_the_network_zoo_through_torch_compile(name):
    """Each of the zoo's PyTorch modules compiles as one graph, whole (no piece left to PyTorch), matching eager."""
    from benchmarks.models import MODELS

    if name.startswith("hf_"):
        pytest.importorskip("transformers")
    module, x = MODELS[name](1)
    module.eval()
    c, made = _capturing(module)
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=True):
        got, expected = c(x), module(x)
    got, expected = (getattr(t, "logits", t) for t in (got, expected))
    got, expected = (t[0] if isinstance(t, tuple) else t for t in (got, expected))
    assert len(made) == 1 and made[0].model is not None, (made[0].failed, made[0].pieces)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def test_outputs_that_are_views_of_inputs_and_parameters():
    """A graph output that is a view of an input or of a parameter is made by PyTorch as that view; the rest is
    compiled."""
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3))

        def forward(self, x):
            return self.w.t(), x.transpose(0, 1), torch.tanh(x @ self.w)

    torch.manual_seed(5)
    m = Views().eval()
    c, made = _capturing(m)
    x = torch.randn(2, 4)
    with torch.no_grad():
        got, expected = c(x), m(x)
    assert made[0].runner is not None and made[0].failed is None
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_evaluating_between_training_steps_stops_compiling_the_parameters_in(monkeypatch):
    """An inference graph compiles the parameters in; an optimizer step changes them, and the next call compiles
    again. The second time they change the graph takes them as inputs instead (packed at run time): evaluations
    between training steps then compile nothing, and match eager after every step."""
    from tensorforge.compiler import torch_backend

    builds = []
    build = torch_backend._build
    monkeypatch.setattr(torch_backend, "_build", lambda *a, **k: builds.append(1) or build(*a, **k))
    torch.manual_seed(8)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    c, made = _capturing(m)
    x = torch.randn(5, 8)
    for step in range(5):
        with torch.no_grad():
            torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-6)
        m(x).square().mean().backward()  # the training step in eager: only the inference graph is ours
        opt.step()
        opt.zero_grad()
    assert len(made) == 1 and made[0].runner is not None and not made[0].baked
    assert len(builds) == 3  # the first compile, one recompile, then once with the parameters as inputs


def test_dynamic_sizes_with_float_module_attributes_compile():
    """With dynamic=True dynamo passes a module's float attributes (a layer norm's eps, an embedding's norm_type)
    as 0-dim tensors read through .item(), which torch.export cannot trace: they are compiled in (the graph ran in
    PyTorch before), and a changed value compiles again."""
    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.norm = torch.nn.LayerNorm(16)

        def forward(self, ids):
            return self.norm(self.emb(ids))

    torch.manual_seed(7)
    m = Tokens().eval()
    c, made = _capturing(m, dynamic=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a graph falling back to PyTorch warns
        for seq in (3, 9):
            ids = torch.randint(0, 50, (2, seq))
            torch.testing.assert_close(c(ids), m(ids), rtol=1e-5, atol=1e-5)
        assert made[0].scalars and all(runner is not None for runner, _, _ in made[0]._by_sizes.values())
        m.norm.eps = 10.0  # another value: another compile, not the old answer
        ids = torch.randint(0, 50, (2, 9))
        torch.testing.assert_close(c(ids), m(ids), rtol=1e-5, atol=1e-5)


def test_dynamic_sizes_compile_per_size_and_never_fail_the_call(monkeypatch):
    """torch.compile(dynamic=True) hands the backend a graph with symbolic sizes: it is compiled for each call's
    sizes on first sight (kept per sizes), matching eager; reshapes by a symbolic size included. The builds share
    their kernels over run-time sizes and their constants: the weight is packed once for every size."""
    from tensorforge.compiler.ops import packed

    packs = []
    pack = packed.pack_dense_weight
    monkeypatch.setattr(packed, "pack_dense_weight", lambda *a, **k: packs.append(1) or pack(*a, **k))
    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(torch.relu(x).reshape(x.shape[0], -1))

    torch.manual_seed(6)
    m = Flat().eval()
    c, made = _capturing(m, dynamic=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for batch in (2, 5, 2, 3):
            x = torch.randn(batch, 3, 4)
            torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-6)
    assert len(made) == 1 and made[0].symbolic
    shapes = sorted(next(s for s in key if isinstance(s, tuple) and len(s) == 3) for key in made[0]._by_sizes)
    assert shapes == [(2, 3, 4), (3, 3, 4), (5, 3, 4)]
    assert all(runner is not None for runner, _, _ in made[0]._by_sizes.values())
    assert made[0]._kernels.reused > 0  # batch 3 linked the kernels over run-time sizes that batch 5 made
    assert len(packs) == 1


def test_one_pass_tracing_gives_what_torch_export_and_its_decompositions_give(monkeypatch):
    """trace_graph (aot_export_module with the decompositions, the kept composite ops preserved) gives the ATen ops,
    inputs and constants of torch.export + run_decompositions, in one pass; a torch without the private helpers it
    uses takes the two passes."""
    from tensorforge.frontends.torch import importer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.norm = torch.nn.LayerNorm(16)
            self.lstm = torch.nn.LSTM(16, 8, batch_first=True)

        def forward(self, x):
            y = torch.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear")
            return (self.lstm(self.norm(y.flatten(1, 2)))[0],)  # a tuple, as dynamo's graphs return

    torch.manual_seed(9)
    net, x = Net().eval(), torch.randn(1, 3, 8, 8)

    def ops(gm):
        return sorted(str(n.target) for n in gm.graph.nodes if n.op == "call_function")

    one = importer.trace_graph(net, (x,))
    monkeypatch.setattr(importer, "_one_pass_helpers", lambda: None)
    two = importer.trace_graph(net, (x,))
    assert ops(one[0]) == ops(two[0]) and "aten.lstm.input" in ops(one[0])
    assert "aten.upsample_bilinear2d.vec" in ops(one[0])  # composite ops kept whole, as run_decompositions keeps them
    assert [type(v).__name__ for v in one[1].values()] == [type(v).__name__ for v in two[1].values()]
    assert [None if t is None else tuple(t.shape) for t in one[2]] == [None if t is None else tuple(t.shape)
                                                                       for t in two[2]]
    assert one[3] == two[3] == []
