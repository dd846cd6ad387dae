"""A damaged or mismatched checkpoint is refused before anything is overwritten; a session shared between threads
runs one call at a time."""

import io
import json
import threading
import time
import zipfile

import numpy as np
import pytest

from tensorforge import compiler
from tensorforge.frontends import nn
from tensorforge.runtime.errors import ArtifactError


@pytest.fixture(scope="module")
def session_and_checkpoint(tmp_path_factory):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    session = compiler.compile_training(net, shapes={"x": (4, 6)}, optimizer={"name": "adam", "lr": 0.01})
    rng = np.random.default_rng(0)
    for _ in range(3):
        session.step({"x": rng.standard_normal((4, 6)).astype(np.float32)}, rng.integers(0, 3, 4))
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    session.save_checkpoint(path)
    for _ in range(2):  # the session moves on: a refused checkpoint must leave it here, not at the checkpoint
        session.step({"x": rng.standard_normal((4, 6)).astype(np.float32)}, rng.integers(0, 3, 4))
    return session, path


def edited(src, dst, meta=None, arrays=None, drop=()):
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w") as z_out:
        m = json.loads(z_in.read("meta.json"))
        if meta:
            meta(m)
        z_out.writestr("meta.json", json.dumps(m))
        for name in z_in.namelist():
            if name == "meta.json" or name in drop:
                continue
            data = z_in.read(name)
            if arrays and name in arrays:
                buf = io.BytesIO()
                np.save(buf, arrays[name], allow_pickle=False)
                data = buf.getvalue()
            z_out.writestr(name, data)
    return dst


def snapshot(session):
    return ({k: v.copy() for k, v in session.parameters().items()}, session.step_count,
            session._rng.bit_generator.state)


CASES = [
    ("negative step", dict(meta=lambda m: m.update(step=-1)),
     r"meta.json field 'step' is -1, expected a non-negative integer"),
    ("step not a number", dict(meta=lambda m: m.update(step="7")), r"meta.json field 'step' is '7'"),
    ("rng of another generator", dict(meta=lambda m: m["rng"].update(bit_generator="MT19937")),
     r"meta.json field 'rng' is not a PCG64 state"),
    ("rng not a state", dict(meta=lambda m: m.update(rng=[1, 2])), r"meta.json field 'rng' is not a PCG64 state"),
    ("wrong shape", dict(arrays={"state/0.npy": np.zeros((2, 2), np.float32)}),
     r"state/0.npy \(state '[^']+'\) is float32\[2, 2\], the session expects float32\["),
    ("wrong dtype", "dtype", r"state/0.npy \(state '[^']+'\) is float64\[.*\], the session expects float32"),
    ("missing state member", dict(drop=("state/1.npy",)), r"is damaged: state/1.npy \(state '[^']+'\) is missing"),
    ("other state names", dict(meta=lambda m: m["names"].__setitem__(0, "nope")), r"holds state \['nope'"),
    ("not a checkpoint", dict(meta=lambda m: m.update(format="zip")), r"is not a TensorForge checkpoint"),
]


@pytest.mark.parametrize("case, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_checkpoint_changes_nothing(session_and_checkpoint, tmp_path, case, change, message):
    session, good = session_and_checkpoint
    if change == "dtype":
        with zipfile.ZipFile(good) as z:
            first = np.lib.format.read_array(io.BufferedReader(z.open("state/0.npy")))
        change = dict(arrays={"state/0.npy": first.astype(np.float64)})
    bad = edited(good, tmp_path / "bad.ckpt", **change)
    params, step, rng = snapshot(session)
    with pytest.raises(ArtifactError, match=message):
        session.load_checkpoint(bad)
    after, step_after, rng_after = snapshot(session)
    assert step_after == step and rng_after == rng
    assert all(np.array_equal(params[k], after[k]) for k in params)


def test_good_checkpoint_restores(session_and_checkpoint):
    session, good = session_and_checkpoint
    session.load_checkpoint(good)
    assert session.step_count == 3


def test_checkpoint_that_is_a_directory(session_and_checkpoint, tmp_path):
    session, _ = session_and_checkpoint
    with pytest.raises(ArtifactError, match="is not a regular file"):
        session.load_checkpoint(tmp_path)


def test_concurrent_steps_run_one_at_a_time(session_and_checkpoint, monkeypatch):
    session, _ = session_and_checkpoint
    inside, most = [0], [0]
    run = session.train_model.run

    def watched(feeds):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.005)  # give another thread the chance to come in
        try:
            return run(feeds)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(session.train_model, "run", watched)
    before = session.step_count
    x = np.ones((4, 6), np.float32)
    errors = []

    def worker():
        try:
            for _ in range(5):
                session.step({"x": x}, np.array([0, 1, 2, 0]))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and most[0] == 1 and session.step_count == before + 20
