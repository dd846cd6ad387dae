"""Data-parallel training (compile_training(distributed=...), runtime/distributed.py): two processes on
127.0.0.1 with gloo, launched as torchrun would, match one process stepping on the whole batch."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import distributed_worker as worker
from tensorforge import compile_training
from tensorforge.runtime.errors import CompileError, InputError

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: str, what: str) -> list:
    """tests/distributed_worker.py `what` in two processes, as torchrun starts them; each rank's results."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "distributed_worker.py"), out, what],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    for p in procs:
        text, _ = p.communicate(timeout=600)
        assert p.returncode == 0, text[-3000:]
    return [np.load(f"{out}.rank{r}.npz") for r in range(2)]


def test_two_processes_with_gloo_match_one_process_on_the_whole_batch(tmp_path):
    out = str(tmp_path / "run")
    ranks = _launch(out, "mlp")
    for opt in worker.OPTIMIZERS:
        want_losses, want_params = worker.train(opt)  # one process, the whole batch
        for got in ranks:
            np.testing.assert_allclose(got[f"{opt}:losses"], want_losses, rtol=1e-5)
            for name, value in want_params.items():
                np.testing.assert_allclose(got[f"{opt}:{name}"], value, rtol=1e-4, atol=1e-6, err_msg=name)
        assert want_losses[-1] < want_losses[0] * 0.8  # it learned something
        # rank 0 alone wrote the checkpoint, which a single-process session loads
        assert os.path.exists(f"{out}.{opt}.ckpt")
    for name in ("w1", "b2"):  # both processes hold the same parameters
        np.testing.assert_array_equal(ranks[0][f"adam:{name}"], ranks[1][f"adam:{name}"])


def test_synchronized_batch_norm_matches_one_process_on_the_whole_batch(tmp_path):
    """sync_batch_norm: the statistics averaged between the two processes inside the step (forward and backward)
    are the whole batch's, so the run equals one process on the whole batch, running statistics included; with
    each process's own statistics (DDP's way) it does not."""
    ranks = _launch(str(tmp_path / "run"), "bn")
    want_losses, want_state = worker.train_bn()  # one process, the whole batch
    assert want_losses[-1] < want_losses[0]
    for got in ranks:
        np.testing.assert_allclose(got["True:losses"], want_losses, rtol=1e-5)
        for name, value in want_state.items():
            np.testing.assert_allclose(got[f"True:{name}"], value, rtol=1e-4, atol=1e-5, err_msg=name)
        # local statistics: another computation (the check above could fail)
        assert np.abs(got["False:losses"] - want_losses).max() > 1e-3
    running = [k for k in want_state if "running" in k]
    assert running
    for name in running:  # synchronized, both processes hold the same running statistics; local, they do not
        np.testing.assert_array_equal(ranks[0][f"True:{name}"], ranks[1][f"True:{name}"])
    assert any(not np.array_equal(ranks[0][f"False:{n}"], ranks[1][f"False:{n}"]) for n in running)


def test_sync_batch_norm_over_batches_of_different_sizes_is_refused_by_every_process(tmp_path):
    for r, got in enumerate(_launch(str(tmp_path / "run"), "uneven")):
        assert "error" in got.files, f"rank {r} compiled"
        assert "same shapes" in str(got["error"]) and f"rank {r}" in str(got["error"])


def test_sync_batch_norm_needs_a_data_parallel_run():
    with pytest.raises(CompileError, match="sync_batch_norm .* needs distributed=True"):
        compile_training(worker.mlp_onnx(4), "cross_entropy", {"name": "sgd", "lr": 0.1}, sync_batch_norm=True)


def test_without_a_process_group_the_error_says_how_to_launch(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(InputError, match="launch with torchrun"):
        compile_training(worker.mlp_onnx(4), "cross_entropy", {"name": "sgd", "lr": 0.1}, distributed=True)


def test_a_one_process_group_steps_like_the_plain_session(tmp_path, monkeypatch):
    """World size 1 (torchrun --nproc_per_node 1): the split step itself equals the one-plan step, checkpoints
    and evaluation included."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    import torch.distributed as dist

    try:
        losses, params = worker.train("adam", distributed=True, checkpoint=str(tmp_path / "a.ckpt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    want_losses, want_params = worker.train("adam")
    np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
    for name, value in want_params.items():
        np.testing.assert_allclose(params[name], value, rtol=1e-5, atol=1e-7)
    plain = compile_training(worker.mlp_onnx(16), "cross_entropy", worker.OPTIMIZERS["adam"])
    plain.load_checkpoint(tmp_path / "a.ckpt")  # the split session's checkpoint: same state names
    assert plain.step_count == worker.STEPS
    for name, value in params.items():
        np.testing.assert_array_equal(plain.parameters()[name], value)
