"""`training_report` (compiler/report.py): the inspect report of a training program."""

import pytest

from tensorforge.compiler.report import REPORT_KEYS, training_report
from tensorforge.frontends import nn

SHAPES = {"x": (4, 1, 8, 8)}


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


@pytest.mark.parametrize("optimizer, moments", [({"name": "sgd", "lr": 0.1, "momentum": 0.9}, 1),
                                                ({"name": "adam", "lr": 1e-3}, 2)])
def test_report_counts_state_saved_activations_and_fused_kernels(optimizer, moments):
    net = small_cnn()
    params = net.init(0)
    g, plan = training_report(net, "cross_entropy", optimizer, shapes=SHAPES, params=params)
    stats = plan["stats"]
    assert set(REPORT_KEYS) <= set(stats)
    trainable = {k for k, spec in net.named_param_specs() if spec.trainable}
    param_bytes = sum(params[k].nbytes for k in trainable)
    running = sum(v.nbytes for k, v in params.items() if k not in trainable)  # batch-norm running statistics
    assert stats["state_bytes"] == (1 + moments) * param_bytes + running
    # the backward reads at least the conv's input and output and the pooled activations
    assert stats["saved_activation_bytes"] >= 4 * (1 * 8 * 8 + 4 * 8 * 8 + 4 * 4 * 4) * 4
    assert stats["live_lower_bound_bytes"] <= stats["arena_bytes"]
    assert stats["kernels"] == len(plan["steps"]) < stats["ops"] == len(g.nodes)
    assert stats["params_bytes"] < param_bytes  # the parameters are state (inputs), not constants
    updates = [e for e in plan["fusion"] if any(name.endswith(".update.grad") for _, name in e["nodes"])]
    assert updates and all(len(e["nodes"]) > 1 for e in updates)  # every update is fused


def test_report_of_an_onnx_file(tmp_path):
    torch = pytest.importorskip("torch")
    tnet = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(tnet, (torch.zeros(5, 6),), str(path), input_names=["x"], dynamo=False)
    _, plan = training_report(str(path), "cross_entropy", {"name": "sgd", "lr": 0.1})
    assert plan["stats"]["state_bytes"] == (6 * 8 + 8 + 8 * 3 + 3) * 4
    assert plan["stats"]["saved_activation_bytes"] >= 5 * (6 + 8) * 4  # the input and the hidden layer
