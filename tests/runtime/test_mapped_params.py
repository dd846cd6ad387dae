"""Parameters read in place: an artifact stores them 64-byte aligned, a reader hashes them from a mapping of the
file, and `load(path, map_params=True)` runs on the file's pages themselves (the on-disk cache loads that way)."""

import mmap
import struct
import zipfile

import numpy as np
import pytest

from tensorforge import compile_model, runtime
from tensorforge.runtime import artifact
from tensorforge.runtime.errors import ArtifactError

from .test_artifact_damage import X, flipped, rewrite, tiny_onnx


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("mapped") / "tiny.tfa"
    compile_model(tiny_onnx()).save(path)
    return path


def _root(a):
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def _file_params(model):
    return [model._shared[p.buffer] for p in model.program.params if p.file]


def test_parameters_lie_aligned_in_the_file(good):
    raw = good.read_bytes()
    with zipfile.ZipFile(good) as z:
        members = [i for i in z.infolist() if i.filename.startswith("params/")]
        assert members
        for info in members:
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            at = info.header_offset + 30 + name_len + extra_len
            header = 10 + struct.unpack("<H", raw[at + 8:at + 10])[0]  # .npy version 1.0
            assert raw[at:at + 6] == b"\x93NUMPY", info.filename
            assert at % artifact.DATA_ALIGNMENT == 0 and (at + header) % artifact.DATA_ALIGNMENT == 0, info.filename


def test_a_mapped_model_runs_on_the_files_pages(good):
    copied, mapped = runtime.load(good), runtime.load(good, map_params=True)
    for a, b in zip(copied.run({"x": X}), mapped.run({"x": X})):
        np.testing.assert_array_equal(a, b)
    assert all(isinstance(_root(p), mmap.mmap) for p in _file_params(mapped))
    assert not any(isinstance(_root(p), mmap.mmap) for p in _file_params(copied))


def test_an_unaligned_artifact_is_copied_under_map_params(good, tmp_path):
    """Members written without padding (an older writer, a zip tool): parameters are copied into aligned memory."""
    bad = rewrite(good, tmp_path / "unaligned.tfa")
    with zipfile.ZipFile(bad) as z:
        offsets = [i.header_offset + 30 + len(i.filename) + len(i.extra) for i in z.infolist()
                   if i.filename.startswith("params/")]
    model = runtime.load(bad, map_params=True)
    want = runtime.load(good).run({"x": X})
    for a, b in zip(want, model.run({"x": X})):
        np.testing.assert_array_equal(a, b)
    for p, at in zip(_file_params(model), offsets):
        assert p.ctypes.data % artifact.DATA_ALIGNMENT == 0
        assert isinstance(_root(p), mmap.mmap) == (at % artifact.DATA_ALIGNMENT == 0)


def test_state_is_copied_never_mapped(good, tmp_path):
    """Persistent state is written in place by its model: under map_params it still gets memory of its own, and
    writing it leaves the file as it was."""
    kernels_dir = tmp_path / "k"
    kernels_dir.mkdir()
    plan, kernels, params = artifact.read_artifact(str(good), str(kernels_dir))
    first = next(e for e in plan["params"] if "file" in e)
    plan["state"] = [{"name": "w", "buffer": first["buffer"]}]
    path = tmp_path / "state.tfa"
    artifact.write_artifact(str(path), plan, kernels, [p() if callable(p) else None for p in params])
    before = path.read_bytes()
    model = runtime.load(path, map_params=True)
    assert not isinstance(_root(model.state["w"]), mmap.mmap)
    model.write_state("w", np.zeros_like(model.state["w"]))
    assert (model.read_state("w") == 0).all()
    assert path.read_bytes() == before and not (runtime.load(path).read_state("w") == 0).all()


def test_a_flipped_parameter_byte_is_found_by_the_mapped_reader(good, tmp_path):
    raw = good.read_bytes()
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("params/1.npy")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 3
    bad = tmp_path / "bad.tfa"
    bad.write_bytes(flipped(raw, at))
    for map_params in (False, True):
        with pytest.raises(ArtifactError, match="member params/1.npy does not match its SHA-256"):
            runtime.load(bad, map_params=map_params)



def test_a_file_system_that_cannot_map_reads_through_the_zip(good, monkeypatch):
    mapped_type = mmap.mmap

    def refuse(*_, **__):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)
    model = runtime.load(good, map_params=True)
    np.testing.assert_array_equal(model.run({"x": X})[0], compile_model(tiny_onnx()).run({"x": X})[0])
    assert not any(isinstance(_root(p), mapped_type) for p in _file_params(model))
