"""Training: compiled gradients and optimizer trajectories against PyTorch, train-mode semantics, the
TrainingSession's state, checkpoints and ONNX export."""

import numpy as np
import onnx
import pytest
import torch

from tensorforge import compile_gradients, compiler
from tensorforge.frontends import nn
from tensorforge.runtime.errors import ArtifactError, CompileError
from tensorforge.runtime.training import learning_rate
from tests.autodiff.torch_models import (TorchRecurrentClassifier, TorchTransformerClassifier, RecurrentClassifier,
                                         TransformerClassifier, cnn, load_into_torch, mlp, torch_name)

MODELS = {
    "mlp": (lambda: mlp(), (8, 20), 5),
    "cnn_bn_pool": (lambda: cnn(), (4, 3, 16, 16), 4),
    "lstm": (lambda: (RecurrentClassifier("lstm", 6, 8, 3), TorchRecurrentClassifier("lstm", 6, 8, 3)), (4, 5, 6), 3),
    "gru": (lambda: (RecurrentClassifier("gru", 6, 8, 3), TorchRecurrentClassifier("gru", 6, 8, 3)), (4, 5, 6), 3),
    "transformer": (lambda: (TransformerClassifier(), TorchTransformerClassifier()), (2, 6, 16), 4),
}


def _data(shape, classes, seed=0, steps=None):
    rng = np.random.default_rng(seed)
    lead = (steps,) if steps else ()
    return (rng.standard_normal(lead + shape).astype(np.float32),
            rng.integers(0, classes, lead + (shape[0],)).astype(np.int64))


def _grad_scale(grads):
    return max(float(np.abs(g).max()) for g in grads.values())


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_match_torch_autograd(name):
    build, shape, classes = MODELS[name]
    net, tnet = build()
    params = net.init(0)
    load_into_torch(tnet, params)
    tnet.train()
    x, y = _data(shape, classes)
    model = compile_gradients(net, shapes={"x": shape}, params=params)
    feeds = {"x": x, "labels": y, **{k: v for k, v in params.items() if k in model.input_names}}
    outs = dict(zip(model.output_names, model.run(feeds)))
    loss = torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y))
    loss.backward()
    np.testing.assert_allclose(outs["loss"][0], loss.item(), rtol=1e-5)
    expected = {k: p.grad.numpy() for k, p in tnet.named_parameters()}
    # atol: gradients that are exactly zero in theory (a bias before batch norm) are float noise in both
    atol = 1e-6 * _grad_scale(expected)
    for k in params:
        if k + ":grad" in outs:
            np.testing.assert_allclose(outs[k + ":grad"], expected[torch_name(k)], rtol=1e-4, atol=atol, err_msg=k)


def _torch_optimizer(tnet, opt):
    o = dict(opt)
    name, lr = o.pop("name"), o.pop("lr")
    o.pop("clip_norm", None)
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return cls(tnet.parameters(), lr=lr, **o)


TRAJECTORIES = [
    ("mlp", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    ("mlp", {"name": "adam", "lr": 0.01}),
    ("mlp", {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "clip_norm": 0.5}),
    ("cnn_bn_pool", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    ("cnn_bn_pool", {"name": "adamw", "lr": 0.01, "weight_decay": 0.1}),
    ("cnn_bn_pool", {"name": "adam", "lr": 0.01}),
    ("lstm", {"name": "sgd", "lr": 0.1, "momentum": 0.9}),  # the lstm_sequence kernels, forward and backward
    ("lstm", {"name": "adam", "lr": 0.01}),
    ("gru", {"name": "sgd", "lr": 0.1, "momentum": 0.9}),
    ("gru", {"name": "adam", "lr": 0.01}),
    ("transformer", {"name": "sgd", "lr": 0.05, "momentum": 0.9}),
    ("transformer", {"name": "adam", "lr": 0.005}),
]


@pytest.mark.parametrize("name,opt", TRAJECTORIES, ids=[f"{m}-{o['name']}-{i}" for i, (m, o) in
                                                          enumerate(TRAJECTORIES)])
def test_losses_track_torch_for_50_steps(name, opt):
    build, shape, classes = MODELS[name]
    net, tnet = build()
    params = net.init(0)
    load_into_torch(tnet, params)
    tnet.train()
    xs, ys = _data(shape, classes, steps=50)
    session = compiler.compile_training(net, shapes={"x": shape}, params=params, optimizer=opt)
    topt = _torch_optimizer(tnet, opt)
    for x, y in zip(xs, ys):
        ours = session.step({"x": x}, y)
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        if opt.get("clip_norm"):
            torch.nn.utils.clip_grad_norm_(tnet.parameters(), opt["clip_norm"])
        topt.step()
        assert abs(ours - loss.item()) <= 1e-3 * abs(loss.item())
    if name == "cnn_bn_pool":  # running statistics follow PyTorch's momentum and unbiased variance
        sd = tnet.state_dict()
        got = session.parameters()
        np.testing.assert_allclose(got["1.running_var"], sd["1.running_var"].numpy(), rtol=1e-4, atol=1e-5)


def test_state_is_updated_in_place_and_outside_the_arena():
    net, _ = mlp()
    session = compiler.compile_training(net, shapes={"x": (8, 20)}, optimizer={"name": "sgd", "lr": 0.1,
                                                                             "momentum": 0.9})
    model = session.train_model
    plan = model.plan
    state_buffers = {s["buffer"] for s in plan["state"]}
    assert all("arena_offset" not in plan["buffers"][b] for b in state_buffers)
    assert not state_buffers & {i["buffer"] for i in plan["inputs"]}
    assert [o["name"] for o in plan["outputs"]] == ["loss", "logits"]
    live = model.state["0.weight"]
    before = live.copy()
    x, y = _data((8, 20), 5)
    session.step({"x": x}, y)
    assert model.state["0.weight"] is live or np.shares_memory(model.state["0.weight"], live)
    assert not np.array_equal(live, before)  # written by the update kernel itself
    # every update kernel runs after the last reader of the value it overwrites (checked at compile time too)
    update_steps = [i for i, s in enumerate(plan["steps"]) if state_buffers & set(s["args"][-1:])]
    assert update_steps and min(update_steps) > 0


def test_losses_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    net = nn.Sequential(nn.Linear(5, 5))
    params = net.init(0)
    tnet = torch.nn.Sequential(torch.nn.Linear(5, 5))
    load_into_torch(tnet, params)
    logits = tnet(torch.from_numpy(x))
    labels = np.array([0, 1, 4, 2, 1, 3])
    target = rng.uniform(0, 1, (6, 5)).astype(np.float32)
    F = torch.nn.functional
    cases = [
        ({"name": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 1}, labels,
         F.cross_entropy(logits, torch.from_numpy(labels), label_smoothing=0.1, ignore_index=1)),
        ({"name": "cross_entropy", "reduction": "sum"}, labels,
         F.cross_entropy(logits, torch.from_numpy(labels), reduction="sum")),
        ({"name": "mse"}, target, F.mse_loss(logits, torch.from_numpy(target))),
        ({"name": "l1", "reduction": "sum"}, target, F.l1_loss(logits, torch.from_numpy(target), reduction="sum")),
        ({"name": "bce_with_logits"}, target, F.binary_cross_entropy_with_logits(logits, torch.from_numpy(target))),
    ]
    for loss, lab, expected in cases:
        model = compile_gradients(net, loss, shapes={"x": (6, 5)}, params=params)
        outs = dict(zip(model.output_names, model.run({"x": x, "labels": lab.astype(model.input_specs["labels"][1]),
                                                        **params})))
        (wgrad,) = torch.autograd.grad(expected, tnet[0].weight, retain_graph=True)
        np.testing.assert_allclose(outs["loss"][0], expected.item(), rtol=1e-5, err_msg=str(loss))
        np.testing.assert_allclose(outs["0.weight:grad"], wgrad.numpy(), rtol=1e-4, atol=1e-6, err_msg=str(loss))


def test_learning_rate_schedules_match_torch():
    p = [torch.nn.Parameter(torch.zeros(1))]
    for schedule, make in [
        ({"name": "step", "step_size": 3, "gamma": 0.5}, lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
        ({"name": "cosine", "total_steps": 10, "min_lr": 0.01},
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 10, eta_min=0.01)),
    ]:
        opt = torch.optim.SGD(p, lr=0.1)
        sched = make(opt)
        for step in range(10):
            assert learning_rate(0.1, schedule, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
            opt.step()
            sched.step()
    assert [learning_rate(1.0, {"name": "linear_warmup", "warmup_steps": 4}, s) for s in range(5)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0]


class _DropNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, t, x):
        return self.fc(t, self.drop(t, x))


def test_dropout_draws_a_fresh_seeded_mask_each_step_and_eval_is_deterministic():
    x, y = _data((16, 10), 4)
    opt = {"name": "sgd", "lr": 0.0}
    a = compiler.compile_training(_DropNet(), shapes={"x": (16, 10)}, optimizer=opt, seed=7)
    losses = [a.step({"x": x}, y) for _ in range(3)]
    assert len(set(losses)) == 3  # lr 0: only the masks differ
    b = compiler.compile_training(_DropNet(), shapes={"x": (16, 10)}, optimizer=opt, seed=7)
    assert [b.step({"x": x}, y) for _ in range(3)] == losses
    (e1,), (e2,) = a.eval({"x": x}), a.eval({"x": x})
    np.testing.assert_array_equal(e1, e2)
    p = a.parameters()
    np.testing.assert_allclose(e1, x @ p["fc.weight"].T + p["fc.bias"], rtol=1e-5, atol=1e-6)


def test_checkpoint_resume_gives_the_same_losses(tmp_path):
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))
    xs, ys = _data((16, 10), 4, steps=8)
    opt = {"name": "adam", "lr": 0.01}
    shapes = {"x": (16, 10)}
    straight = compiler.compile_training(net, shapes=shapes, optimizer=opt)
    expected = [straight.step({"x": x}, y) for x, y in zip(xs, ys)]
    first = compiler.compile_training(net, shapes=shapes, optimizer=opt)
    for x, y in zip(xs[:4], ys[:4]):
        first.step({"x": x}, y)
    first.save_checkpoint(tmp_path / "ckpt")
    resumed = compiler.compile_training(net, shapes=shapes, optimizer=opt)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert [resumed.step({"x": x}, y) for x, y in zip(xs[4:], ys[4:])] == expected[4:]
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(ArtifactError, match="damaged"):
        resumed.load_checkpoint(tmp_path / "bad")


def test_onnx_model_trains_and_exports_its_initializers(tmp_path):
    net, tnet = mlp((6, 8, 3))
    tnet.eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(tnet, (torch.zeros(4, 6),), str(path), input_names=["x"], dynamo=False)
    x, y = _data((4, 6), 3)
    session = compiler.compile_training(str(path), optimizer={"name": "sgd", "lr": 0.5})
    assert set(session.spec["trainable"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    losses = [session.step({"x": x}, y) for _ in range(10)]
    assert losses[-1] < losses[0]
    session.export_onnx(tmp_path / "trained.onnx")
    trained = onnx.load(str(tmp_path / "trained.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in trained.graph.initializer}
    np.testing.assert_array_equal(inits["0.weight"], session.parameters()["0.weight"])
    import onnxruntime as ort

    (out,) = ort.InferenceSession(str(tmp_path / "trained.onnx")).run(None, {"x": x})
    np.testing.assert_allclose(out, session.eval({"x": x})[0], rtol=1e-4, atol=1e-5)


def test_torch_module_trains():
    _, tnet = mlp((6, 8, 3))
    x, y = _data((4, 6), 3)
    session = compiler.compile_training(tnet, example_inputs=(torch.from_numpy(x),),
                                        optimizer={"name": "sgd", "lr": 0.5})
    assert session.spec["trainable"]
    losses = [session.step({"input": x}, y) for _ in range(10)]
    assert losses[-1] < losses[0]


def test_op_without_gradient_rule_fails_naming_it():
    net = nn.Sequential(nn.Linear(4, 4))
    g = net.to_graph({"x": (2, 4)})
    from tensorforge.compiler import ops

    out = g.outputs[0]
    (r,) = g.add_node(ops.reshape, [out], {"shape": (2, 4, 1, 1)})
    (l,) = g.add_node(ops.lrn, [r], {"size": 3}, name="the_lrn", out_names=["the_lrn"])
    (f,) = g.add_node(ops.reshape, [l], {"shape": (2, 4)})
    g.outputs = [f]
    with pytest.raises(CompileError, match=r"no gradient rule for op lrn \(node .*%the_lrn\)"):
        compiler.compile_training(g, optimizer={"name": "sgd", "lr": 0.1})


def test_training_graph_report_fuses_updates_and_counts_saved_activations():
    from tensorforge.compiler.report import analyze_training

    net, _ = mlp()
    g, plan = analyze_training(net, optimizer={"name": "adam", "lr": 0.01}, shapes={"x": (8, 20)})
    stats = plan["stats"]
    assert stats["saved_activation_bytes"] > 0
    assert stats["kernels"] < stats["ops"]  # backward and update chains fuse
    state = {s["buffer"] for s in plan["state"]}
    writers = [s for s in plan["steps"] if s["args"][-1] in state]
    # Adam's update of each parameter (moments, bias corrections, step) is fused: one kernel per state tensor
    # at most, never one per elementwise op
    assert 0 < len(writers) <= len(state)
    assert any("+" in s["op"] for s in writers)


def test_cli_train_example_learns(tmp_path):
    from tensorforge.compiler.cli import main

    ckpt = tmp_path / "example.ckpt"
    assert main(["train", "--steps", "120", "--quiet", "--checkpoint", str(ckpt)]) == 0
    assert ckpt.exists()


class _TorchRNNClassifier(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](16, 32, batch_first=True)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_rnn_trains_with_adam_like_pytorch_and_returns_its_own_parameters(cell):
    """A torch nn.LSTM/GRU trains through the lstm_sequence kernels (forward and backward) with one Adam state per
    PyTorch parameter: bias_ih and bias_hh are not merged at import (merged, each Adam step moved the sum half as
    far as PyTorch's two steps did, and 20 steps drifted 4.6e-3 away). parameters() gives PyTorch's names and
    layouts, so the trained weights load back with load_state_dict."""
    torch.manual_seed(0)
    tnet = _TorchRNNClassifier(cell)
    ref = _TorchRNNClassifier(cell)
    ref.load_state_dict(tnet.state_dict())
    xs, ys = _data((8, 12, 16), 5, steps=20)
    session = compiler.compile_training(tnet, example_inputs=(torch.from_numpy(xs[0]),),
                                        optimizer={"name": "adam", "lr": 0.01})
    assert tnet.training  # importing for training leaves the caller's module in its mode
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for x, y in zip(xs, ys):
        ours = session.step({"input": x}, y)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        opt.step()
        assert abs(ours - loss.item()) <= 1e-5 * abs(loss.item())
    got = session.parameters()
    tnet.load_state_dict({k: torch.from_numpy(got[k]) for k in tnet.state_dict()})
    for k, v in ref.state_dict().items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-3, atol=1e-4, err_msg=k)


def test_compile_model_leaves_the_module_in_training_mode():
    tnet = _TorchRNNClassifier("lstm").train()
    compiler.compile_model(tnet, example_inputs=(torch.zeros(2, 3, 16),))
    assert tnet.training
