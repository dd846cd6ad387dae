"""Artifacts that cannot lie: a damaged artifact is refused with an ArtifactError naming the member, plan field,
step or buffer, at both layers (the manifest of the zip's members, then the plan itself: runtime/plan_check.py);
paths that are not artifact files are refused without hanging; saves clean up after crashed writers."""

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model, runtime
from tensorforge.runtime import artifact
from tensorforge.runtime.errors import ArtifactError
from tensorforge.runtime.plan_check import DTYPE_SIZES, validate_plan


def tiny_onnx():
    """x -> matmul+relu -> matmul -> softmax -> reshape (a view) = y; plus c = Shape(x), a constant output."""
    f = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8), "w1"),
             numpy_helper.from_array(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "w2"),
             numpy_helper.from_array(np.array([8, 4], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["m"]), helper.make_node("Softmax", ["m"], ["s"], axis=-1),
             helper.make_node("Reshape", ["s", "shape"], ["y"]), helper.make_node("Shape", ["x"], ["c"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", f, [4, 4])],
                          [helper.make_tensor_value_info("y", f, [8, 4]),
                           helper.make_tensor_value_info("c", TensorProto.INT64, [2])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


X = np.linspace(-2, 2, 16, dtype=np.float32).reshape(4, 4)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("damage") / "tiny.tfa"
    compile_model(tiny_onnx()).save(path)
    return path


@pytest.fixture(scope="module")
def plan(good):
    with zipfile.ZipFile(good) as z:
        return json.loads(z.read("plan.json"))


def rewrite(src, dst, edit_plan=None, drop=(), replace=None, add=None, reseal=True):
    """A copy of artifact `src` at `dst`: plan edited, members dropped, replaced or added; its manifest sealed again
    over the result (reseal=True: the plan checker's layer) or kept as it was (the manifest's layer)."""
    replace, add = dict(replace or {}), dict(add or {})
    digests = {}
    with zipfile.ZipFile(src) as z_in, zipfile.ZipFile(dst, "w") as z_out:
        members = [(i.filename, z_in.read(i.filename)) for i in z_in.infolist()] + list(add.items())
        for name, data in members:
            if name in drop or (reseal and name == artifact.MANIFEST):
                continue
            if name == "plan.json" and edit_plan:
                p = json.loads(data)
                edit_plan(p)
                data = json.dumps(p).encode()
            data = replace.get(name, data)
            z_out.writestr(name, data)
            digests[name] = (hashlib.sha256(data).hexdigest(), len(data))
        if reseal:
            z_out.writestr(artifact.MANIFEST, artifact.manifest_json(digests))
    return dst


def load_error(path) -> str:
    with pytest.raises(ArtifactError) as info:
        runtime.load(path)
    return str(info.value)


def test_the_artifact_loads_and_runs(good):
    y, c = runtime.load(good).run({"x": X})
    assert y.shape == (8, 4) and np.allclose(y.reshape(4, 8).sum(1), 1, atol=1e-5)
    assert list(c) == [4, 4]  # an output that is a parameter: legal (a constant output)


def test_manifest_lists_every_member(good):
    with zipfile.ZipFile(good) as z:
        manifest = json.loads(z.read(artifact.MANIFEST))
        assert manifest["format"] == "tensorforge-manifest"
        assert set(manifest["members"]) == set(z.namelist()) - {artifact.MANIFEST}
        for name, m in manifest["members"].items():
            data = z.read(name)
            assert m == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


# -- the manifest's layer: members changed behind its back -------------------------------------------------------------
def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("member", ["kernels.so", "params/1.npy", "plan.json"])
def test_member_changed_under_the_manifest(good, tmp_path, member):
    with zipfile.ZipFile(good) as z:
        data = z.read(member)
    bad = rewrite(good, tmp_path / "bad.tfa", replace={member: flipped(data, len(data) // 2)}, reseal=False)
    assert f"is damaged: member {member} does not match its SHA-256 in the manifest" in load_error(bad)


def test_flipped_byte_in_the_file(good, tmp_path):
    """A bit flipped on disk: the zip's own CRC or the manifest names the member."""
    data = good.read_bytes()
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("kernels.so")
    bad = tmp_path / "bad.tfa"
    bad.write_bytes(flipped(data, info.header_offset + 30 + len(info.filename) + 500))
    assert re.search(r"is damaged: member kernels.so (cannot be read \(BadZipFile: Bad CRC-32|does not match)",
                     load_error(bad))


def test_plan_edited_without_the_manifest(good, tmp_path):
    bad = rewrite(good, tmp_path / "bad.tfa", lambda p: p["steps"].pop(), reseal=False)
    assert re.search(r"is damaged: member plan.json (has \d+ bytes, the manifest says \d+|does not match)",
                     load_error(bad))


@pytest.mark.parametrize("change, message", [
    (dict(drop=("params/0.npy",)), "is damaged: params/0.npy is missing (the manifest lists it)"),
    (dict(add={"extra.bin": b"surprise"}), "is damaged: member extra.bin is not in the manifest"),
    (dict(replace={"manifest.json": b"{not json"}), "is damaged: manifest.json cannot be read"),
    (dict(drop=("manifest.json",)), "has no manifest.json: it was written by an older TensorForge or is damaged; "
                                    "recompile the model"),
])
def test_member_set_must_match_the_manifest(good, tmp_path, change, message):
    assert message in load_error(rewrite(good, tmp_path / "bad.tfa", reseal=False, **change))


# -- the plan's layer: a plan sealed by a valid manifest, damaged all the same -----------------------------------------
def _drop_middle_step(p):
    del p["steps"][1]


def _swap_first_and_last_arg(p):
    args = p["steps"][0]["args"]
    args[0], args[-1] = args[-1], args[0]


def _overlap(p):
    m = next(b for b in p["buffers"] if b["name"] == "m")  # alive at steps 1-2, beside r (0-1) and s (2-3)
    m["arena_offset"] = 0


def _drop_param_entry(p):
    del p["params"][1]


def _buffer(name):
    return lambda p: next(i for i, b in enumerate(p["buffers"]) if b["name"] == name)


PLAN_DAMAGE = [
    ("steps removed", _drop_middle_step,
     r"buffer 4 \('r'\) is written at step 0 and last used at step 0, but the memory plan recorded \(128, 0, 1\) "
     r"for it \(bytes, first, last\): steps were removed, added or reordered"),
    ("steps removed, no memory record", lambda p: (p["steps"].pop(0), p.pop("memory")),
     r"step 0 \(kernel dense_packed_\w+, node MatMul_2\) reads buffer 4 \('r'\) before any step writes it"),
    ("no steps", lambda p: p.update(steps=[]), r"output 'y' is buffer 7 \('y'\), which no step writes"),
    ("steps field missing", lambda p: p.pop("steps"), r"field 'steps' is missing"),
    ("negative arg", lambda p: p["steps"][0]["args"].__setitem__(0, -1),
     r"step 0 \(kernel fused_dense_packed_relu_\w+, node Relu_1\) args\[0\] is -1, not a buffer index \(0\.\.7\)"),
    ("arg out of range", lambda p: p["steps"][2]["args"].__setitem__(0, 99), r"step 2 .* args\[0\] is 99"),
    ("swapped args", _swap_first_and_last_arg,
     r"step 0 \(kernel \w+, node Relu_1\) writes buffer 0 \('x'\), which is input 'x'"),
    ("kernel writes a parameter", lambda p: p["steps"][1]["args"].__setitem__(2, 3),
     r"step 1 .* writes buffer 3 \('w2.packed'\), which is parameter 2"),
    ("output out of range", lambda p: p["outputs"][0].update(buffer=42),
     r"outputs\[0\] \('y'\).buffer is 42, not a buffer index"),
    ("missing parameter entry", _drop_param_entry,
     r"buffer 2 \('w1.packed'\) is not an input, parameter or state buffer, not a view and not in the arena"),
    ("parameter twice", lambda p: p["params"].append(dict(p["params"][0])),
     r"buffer 1 \('c'\) has two parameter entries \(params\[3\] is the second\)"),
    ("parameter with file and splat", lambda p: p["params"][0].update(splat=1.0),
     r"params\[0\] \(for buffer 1 \('c'\)\) has \['file', 'splat'\] of file/splat/external; expected exactly one"),
    ("input that is a parameter", lambda p: p["inputs"].append({"name": "w", "buffer": 2}),
     r"buffer 2 \('w1.packed'\) is both input 'w' and parameter 1"),
    ("overlapping live arena buffers", _overlap,
     r"buffer 4 \('r'\) \(steps 0-1\) and buffer 5 \('m'\) \(steps 1-2\) are alive together and share arena bytes"),
    ("misaligned arena offset", lambda p: p["buffers"][5].update(arena_offset=8),
     r"buffer 5 \('m'\) has arena_offset 8, expected a multiple of 64"),
    ("outside the arena", lambda p: p.update(arena_bytes=128), r"buffer 5 \('m'\) \[128, 256\) lies outside the arena"),
    ("bad shape", lambda p: p["buffers"][0].update(shape=[4, -4]), r"buffers\[0\] has shape \[4, -4\]"),
    ("unknown dtype", lambda p: p["buffers"][0].update(dtype="object"),
     r"buffers\[0\] has dtype 'object', which this runtime does not know"),
    ("view of another size", lambda p: p["buffers"][7].update(shape=[8, 8]),
     r"buffer 7 \('y'\) \(float32\[8, 8\]\) is a view of buffer 6 \('s'\) \(float32\[4, 8\]\), which holds other"),
    ("view of a later buffer", lambda p: p["buffers"][7].update(view_of=7), r"buffer 7 \('y'\) is a view of buffer 7"),
    ("memory plan disagrees", lambda p: p["memory"]["tensors"][0].__setitem__(3, 2),
     r"buffer 4 \('r'\) is written at step 0 and last used at step 1, but the memory plan recorded"),
]


@pytest.mark.parametrize("case, edit, message", PLAN_DAMAGE, ids=[c[0] for c in PLAN_DAMAGE])
def test_damaged_plan_is_refused(good, tmp_path, case, edit, message):
    err = load_error(rewrite(good, tmp_path / "bad.tfa", edit))
    assert "has a damaged plan (plan.json): " in err
    assert re.search(message, err), err


def test_plan_checker_on_the_plan_itself(plan):
    validate_plan(plan, "the plan")
    with pytest.raises(ArtifactError, match=r"^the plan has a damaged plan \(plan.json\): field 'buffers' is a str"):
        validate_plan({**plan, "buffers": "x"}, "the plan")


def test_plan_dtypes_are_the_compilers():
    """runtime/plan_check.py's dtype table and compiler/ir/types.py's: one fact, pinned."""
    from tensorforge.compiler.ir.types import DTYPE_SHORT, TensorType

    assert set(DTYPE_SIZES) == set(DTYPE_SHORT)
    assert all(DTYPE_SIZES[d] == TensorType((1,), d).itemsize for d in DTYPE_SHORT)


def test_training_plans_pass_the_checker(tmp_path):
    """State buffers are written in place by the update kernels: legal in a training plan only."""
    import onnx

    from tensorforge.compiler.options import CompileOptions
    from tensorforge.compiler.report import training_report
    from tensorforge.compiler.examples import small_cnn_onnx

    onnx.save(small_cnn_onnx(), str(tmp_path / "cnn.onnx"))
    _, p = training_report(str(tmp_path / "cnn.onnx"), "cross_entropy", {"name": "adam", "lr": 0.01}, shapes={},
                           options=CompileOptions())
    validate_plan(p, "train")
    state = {s["buffer"] for s in p["state"]}
    writer = next(s for s in p["steps"] if s["args"][-1] in state)
    bare = {**p, "state": []}  # the same plan, its state buffers plain parameters
    with pytest.raises(ArtifactError, match=rf"writes buffer {writer['args'][-1]} .*, which is parameter"):
        validate_plan(bare, "train")


# -- paths that are not artifact files ---------------------------------------------------------------------------------
def load_with_timeout(path, seconds=60):
    """runtime.load(path) in a thread: a regression that blocks (opening a FIFO) fails instead of hanging."""
    result = {}

    def target():
        try:
            runtime.load(path)
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if stat.S_ISFIFO(os.stat(path).st_mode):  # let the blocked open return
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"runtime.load({path}) blocked")
    return result.get("error")


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.tfa"
    os.mkfifo(fifo)
    err = load_with_timeout(fifo)
    assert isinstance(err, ArtifactError) and "is a FIFO (named pipe), not an artifact file" in str(err)


def test_directory_and_device_are_refused(tmp_path):
    err = load_with_timeout(tmp_path)
    assert isinstance(err, ArtifactError) and "is a directory, not an artifact file" in str(err)
    err = load_with_timeout(os.devnull)
    assert isinstance(err, ArtifactError) and "is a device, not an artifact file" in str(err)


def test_onnx_file_is_named_as_such(tmp_path):
    data = tiny_onnx().SerializeToString()
    for name in ("model.onnx", "model.tfa"):  # by its extension, or by its first byte (ir_version's tag)
        (tmp_path / name).write_bytes(data)
        err = load_error(tmp_path / name)
        stem = str(tmp_path / "model")
        assert f"is an ONNX model; compile it first: tensorforge compile {tmp_path / name} -o {stem}" in err, err
        assert "BadZipFile" not in err


def test_empty_file(tmp_path):
    (tmp_path / "empty.tfa").write_bytes(b"")
    assert "is empty" in load_error(tmp_path / "empty.tfa")


# -- writing: permissions and crashed writers' leftovers ---------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_removes_stale_temporaries(tmp_path):
    path = tmp_path / "model.bin"
    old = time.time() - 3600
    stale = tmp_path / f"model.bin.{_dead_pid()}.abcd1234.tmp"  # a writer killed with -9, an hour ago
    fresh = tmp_path / f"model.bin.{_dead_pid()}.efgh5678.tmp"  # as young as a writer on another machine's
    alive = tmp_path / f"model.bin.{os.getpid()}.ijkl9012.tmp"  # a writer that still runs
    other = tmp_path / f"other.bin.{_dead_pid()}.mnop3456.tmp"  # another file's
    for f in (stale, fresh, alive, other):
        f.write_bytes(b"partial")
    for f in (stale, alive, other):
        os.utime(f, (old, old))
    artifact.atomic_write(str(path), lambda f: f.write(b"done"))
    assert path.read_bytes() == b"done"
    assert sorted(os.listdir(tmp_path)) == sorted(["model.bin", fresh.name, alive.name, other.name])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_get_the_umask_permissions(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        artifact.atomic_write(str(tmp_path / "f.bin"), lambda f: f.write(b"x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "f.bin").st_mode) == mode


def test_saved_artifact_is_not_private(good):
    umask = artifact._umask()
    assert stat.S_IMODE(os.stat(good).st_mode) == 0o666 & ~umask


def test_save_onto_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="is a directory; give a file name"):
        artifact.atomic_write(str(tmp_path), lambda f: f.write(b"x"))
