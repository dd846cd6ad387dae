"""compile_model on ONNX models whose run-time inputs decide shapes (compiler/specialize.py): a SpecializingModel
compiles on run for the values it is fed, keeps each specialization, and refuses what it cannot do clearly."""

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorforge import compile_model, runtime
from tensorforge.compiler import disk_cache, specialize
from tensorforge.compiler.specialize import SpecializingModel
from tensorforge.runtime.errors import CompileError, FrontendError, InputError


def _model(nodes, inputs, outputs, opset=17):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                             opset_imports=[helper.make_opsetid("", opset)])


def reshape_model(rows="2"):
    """relu(reshape(x, shape)): `shape` decides the output's shape; x's first dimension may be symbolic."""
    dims = [rows if not rows.isdigit() else int(rows), 6]
    return _model([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
                   helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


def slice_model():
    """x[starts:ends] along axis 0, then * 2: two inputs decide the shape (the importer asks for them in turn)."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    g = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"]),
                           helper.make_node("Add", ["s", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 3]),
                           helper.make_tensor_value_info("starts", TensorProto.INT64, [1]),
                           helper.make_tensor_value_info("ends", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_shape_input_is_compiled_in_on_first_sight_and_kept():
    m = compile_model(reshape_model())
    assert isinstance(m, SpecializingModel) and m.value_inputs == ["shape"]
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    for shape, count in (([3, 4], 1), ([4, 3], 2), ([3, 4], 2), ([-1, 2], 3)):
        (y,) = m.run({"x": x, "shape": np.array(shape, np.int64)})
        np.testing.assert_array_equal(y, np.maximum(x.reshape(shape), 0))
        assert m.specializations == count


def test_inputs_the_importer_asks_for_in_turn_are_all_compiled_in():
    m = compile_model(slice_model())
    x = np.arange(24, dtype=np.float32).reshape(8, 3)
    for start, end in ((1, 5), (0, 8), (6, 7)):
        (y,) = m.run({"x": x, "starts": np.array([start]), "ends": np.array([end])})
        np.testing.assert_array_equal(y, x[start:end] * 2)
    assert m.value_inputs == ["ends", "starts"] and m.specializations == 3


def test_a_specialization_is_an_ordinary_compiled_model_that_saves(tmp_path):
    m = compile_model(reshape_model())
    feeds = {"x": np.ones((2, 6), np.float32), "shape": np.array([4, 3], np.int64)}
    one = m.specialize(feeds)
    assert one.input_names == ["x"] and one is m.specialize(feeds)
    one.save(tmp_path / "r.tfa")
    (y,) = runtime.load(tmp_path / "r.tfa").run({"x": feeds["x"]})
    np.testing.assert_array_equal(y, np.ones((4, 3), np.float32))


def test_the_specializations_save_as_one_bundle_the_runtime_chooses_from(tmp_path):
    from tensorforge.runtime.bundle import BundleModel

    m = compile_model(reshape_model())
    with pytest.raises(CompileError, match=r"nothing to save yet.*\['shape'\].*model\.specialize\(feeds\)"):
        m.save(tmp_path / "none.tfa")
    x = np.arange(12, dtype=np.float32).reshape(2, 6) - 5
    for shape in ([3, 4], [6, 2]):
        m.specialize({"x": x, "shape": np.array(shape, np.int64)})
    m.save(tmp_path / "r.tfa")
    b = runtime.load(tmp_path / "r.tfa")
    assert isinstance(b, BundleModel) and b.value_inputs == ["shape"] and len(b.specializations) == 2
    for shape in ([6, 2], [3, 4]):
        (y,) = b.run({"x": x, "shape": np.array(shape, np.int64)})
        np.testing.assert_array_equal(y, np.maximum(x.reshape(shape), 0))
    with pytest.raises(InputError, match=r"no specialization for \{'x': \[2, 6\], 'shape': \[4, 3\]\}"):
        b.run({"x": x, "shape": np.array([4, 3], np.int64)})
    with pytest.raises(InputError, match=r"missing input\(s\) \['shape'\]"):
        b.run({"x": x})


def test_a_dynamic_bundle_holds_the_shapes_compiled(tmp_path):
    m = compile_model(batch_model(), dynamic={"x": {0: (1, 8)}})
    m.specialize({"x": np.zeros((4, 6), np.float32)})
    m.save(tmp_path / "b.tfa")
    b = runtime.load(tmp_path / "b.tfa")
    assert sorted(s["shapes"]["x"][0] for s in b.specializations) == [1, 4]
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(b.run({"x": x})[0], np.maximum(x, 0) * 2)
    with pytest.raises(InputError, match="no specialization"):
        b.run({"x": np.zeros((3, 6), np.float32)})


def test_a_damaged_bundle_is_refused(tmp_path):
    from tensorforge.runtime.errors import ArtifactError

    m = compile_model(batch_model(), dynamic={"x": {0: (1, 8)}})
    m.save(tmp_path / "b.tfa")
    data = bytearray((tmp_path / "b.tfa").read_bytes())
    at = data.find(b'"inputs"')
    data[at + 2] ^= 0x20  # one flipped bit in bundle.json
    (tmp_path / "bad.tfa").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="is damaged: member"):
        runtime.load(tmp_path / "bad.tfa")
    # truncated: not even a zip any more, so it is read (and refused) as an artifact
    (tmp_path / "cut.tfa").write_bytes(bytes(data[:len(data) // 2]))
    with pytest.raises(ArtifactError, match="damaged|truncated"):
        runtime.load(tmp_path / "cut.tfa")


def test_symbolic_dimensions_take_the_fed_sizes(recwarn):
    m = compile_model(reshape_model("batch"))
    assert not [w for w in recwarn if "binding them to 1" in str(w.message)]
    for rows in (1, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 6)).astype(np.float32)
        (y,) = m.run({"x": x, "shape": np.array([rows * 2, 3], np.int64)})
        np.testing.assert_array_equal(y, np.maximum(x.reshape(rows * 2, 3), 0))


def test_bad_feeds_get_clear_errors():
    m = compile_model(reshape_model())
    x = np.ones((2, 6), np.float32)
    with pytest.raises(InputError, match="missing input 'shape'.*decides shapes"):
        m.run({"x": x})
    with pytest.raises(InputError, match=r"unknown input\(s\) \['z'\]"):
        m.run({"x": x, "shape": np.array([3, 4]), "z": x})
    with pytest.raises(FrontendError, match="Reshape"):  # 12 values cannot be 5 x 5
        m.run({"x": x, "shape": np.array([5, 5], np.int64)})
    with pytest.raises(InputError, match=r"input 'x' has shape \(3, 6\), but the model declares \[2, 6\]"):
        m.run({"x": np.ones((3, 6), np.float32), "shape": np.array([3, 6], np.int64)})


def test_sequence_inputs_are_fed_as_lists():
    seq = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    model = _model([helper.make_node("Identity", ["seq"], ["out"])],
                   [helper.make_value_info("seq", seq)], [helper.make_value_info("out", seq)], opset=18)
    m = compile_model(model)
    assert isinstance(m, SpecializingModel)
    for parts in ([np.full((1, 2), 1, np.float32), np.full((3,), 3, np.float32)], [np.ones((2, 2), np.float32)]):
        (ys,) = m.run({"seq": parts})
        assert len(ys) == len(parts) and all(np.array_equal(a, b) for a, b in zip(ys, parts))
    assert m.sequence_inputs == ["seq"] and m.specializations == 2
    with pytest.raises(InputError, match="'seq' is a sequence: feed it as a list"):
        m.run({"seq": parts[0]})


def test_specializations_are_bounded(monkeypatch):
    monkeypatch.setattr(specialize, "MAX_SPECIALIZATIONS", 2)
    m = compile_model(reshape_model())
    x = np.ones((2, 6), np.float32)
    for shape in ([3, 4], [4, 3], [6, 2]):
        m.run({"x": x, "shape": np.array(shape, np.int64)})
    assert m.specializations == 2


def test_threads_share_the_specializations():
    m = compile_model(reshape_model())
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    shapes = [[3, 4], [4, 3]] * 8
    errors = []

    def work(shape):
        try:
            (y,) = m.run({"x": x, "shape": np.array(shape, np.int64)})
            np.testing.assert_array_equal(y, np.maximum(x.reshape(shape), 0))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in shapes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and m.specializations == 2


def test_a_value_computed_inside_the_graph_specializes_on_the_inputs_it_comes_from():
    """The importer needs abs(shape), an op's output: the model is compiled per value of `shape`."""
    model = _model([helper.make_node("Abs", ["shape"], ["a"]), helper.make_node("Reshape", ["x", "a"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                    helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = compile_model(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = m.run({"x": x, "shape": np.array([-3, 4], np.int64)})
    np.testing.assert_array_equal(y, x.reshape(3, 4))
    assert m.value_inputs == ["shape"]


def test_a_shape_computed_from_float_data_is_still_refused_clearly():
    """A shape that comes from a float tensor's values: specializing on the data would compile per input."""
    model = _model([helper.make_node("Cast", ["s"], ["c"], to=TensorProto.INT64),
                    helper.make_node("Reshape", ["x", "c"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(FrontendError, match="must be known at compile time"):
        compile_model(model)


def test_models_with_constant_shapes_compile_as_before():
    model = reshape_model()
    model.graph.input.pop()
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "shape"))
    assert isinstance(compile_model(model), runtime.CompiledModel)


def batch_model(op="Relu"):
    """op(x) * 2 on x [batch, 6]: the batch is symbolic."""
    return _model([helper.make_node(op, ["x"], ["r"]), helper.make_node("Add", ["r", "r"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])])


def test_a_dynamic_dimension_takes_any_size_in_its_range():
    m = compile_model(batch_model(), dynamic={"x": {0: (1, 4)}})
    assert isinstance(m, SpecializingModel) and m.specializations == 1  # the lower bound, compiled at once
    for rows in (1, 3, 4, 3):
        x = np.random.default_rng(rows).standard_normal((rows, 6)).astype(np.float32)
        (y,) = m.run({"x": x})
        np.testing.assert_array_equal(y, np.maximum(x, 0) * 2)
    assert m.specializations == 3
    with pytest.raises(InputError, match=r"input 'x' dimension 0 is 5, outside its dynamic range \[1, 4\]"):
        m.run({"x": np.zeros((5, 6), np.float32)})
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 7\), but the model declares \['\?', 6\]"):
        m.run({"x": np.zeros((2, 7), np.float32)})


@pytest.mark.parametrize("dynamic, message", [
    ({"y": {0: (1, 4)}}, r"dynamic: 'y' is not an input of the model; its inputs are \['x'\]"),
    ({"x": {2: (1, 4)}}, r"axis 2 is not an axis of its 2 dimensions"),
    ({"x": {0: (0, 4)}}, r"the range \(0, 4\) must have 1 <= low <= high"),
    ({"x": {0: (5, 3)}}, r"the range \(5, 3\) must have 1 <= low <= high"),
    ({"x": {0: 4}}, r"give a \(low, high\) range of sizes, got 4"),
    ({"x": {1: (1, 8)}}, r"dynamic\['x'\]\[1\]: the model fixes that dimension at 6"),
    ({"x": [0]}, r"must map axes to \(low, high\) ranges"),
])
def test_bad_dynamic_ranges_are_refused(dynamic, message):
    with pytest.raises(CompileError, match=message):
        compile_model(batch_model(), dynamic=dynamic)


def test_a_dynamic_model_the_compiler_refuses_is_refused_at_once():
    with pytest.raises(FrontendError, match="NoSuchOp"):
        compile_model(batch_model("NoSuchOp"), dynamic={"x": {0: (1, 4)}})
    from tensorforge.compiler.ir import parse_graph

    g = parse_graph("graph g(%x: f32[2]) {\n  %y = relu(%x) : f32[2]\n  return %y\n}\n")
    with pytest.raises(CompileError, match="dynamic= is supported for ONNX models and PyTorch modules; this is a "
                                           "Graph"):
        compile_model(g, dynamic={"x": {0: (1, 4)}})


def test_specializations_are_kept_on_disk_for_the_next_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path))
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32),
             "shape": np.array([3, 4], np.int64)}
    (want,) = compile_model(reshape_model()).run(feeds)
    (saved,) = list(tmp_path.glob("specializations/*/*.tfa"))
    m = compile_model(reshape_model())  # as a new process would: nothing in memory

    def no_compile(*_, **__):
        raise AssertionError("compiled again")

    m._compile = no_compile
    with caplog.at_level("INFO", logger="tensorforge"):
        (got,) = m.run(feeds)
    np.testing.assert_array_equal(got, want)
    assert "loaded a cached specialization" in caplog.text
    with pytest.raises(AssertionError, match="compiled again"):  # other values: not in the cache
        m.run({**feeds, "shape": np.array([4, 3], np.int64)})
    # a damaged file is compiled again, and replaced
    saved.write_bytes(b"not an artifact")
    (got,) = compile_model(reshape_model()).run(feeds)
    np.testing.assert_array_equal(got, want)
    assert saved.read_bytes() != b"not an artifact"


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(disk_cache.CACHE_ENV, "off")
    assert disk_cache.cache_dir() is None
    monkeypatch.delenv(disk_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert disk_cache.cache_dir() == str(tmp_path / "tensorforge")


def test_runs_of_built_specializations_do_not_wait_for_a_compile():
    m = compile_model(reshape_model())
    x = np.ones((2, 6), np.float32)
    m.run({"x": x, "shape": np.array([3, 4], np.int64)})
    started, release = threading.Event(), threading.Event()
    compile_fn = m._compile

    def slow_compile(*args, **kw):
        started.set()
        assert release.wait(30)
        return compile_fn(*args, **kw)

    m._compile = slow_compile
    other = threading.Thread(target=m.run, args=({"x": x, "shape": np.array([4, 3], np.int64)},))
    other.start()
    assert started.wait(30)
    (y,) = m.run({"x": x, "shape": np.array([3, 4], np.int64)})  # while the other shape compiles
    release.set()
    other.join()
    assert y.shape == (3, 4) and m.specializations == 2


def test_a_specializing_model_benchmarks_profiles_and_lists_its_inputs():
    m = compile_model(reshape_model("batch"), dynamic={"x": {0: (1, 4)}})
    assert m.input_specs == {"x": ((None, 6), "float32"), "shape": ((2,), "int64")}
    feeds = {"x": np.ones((2, 6), np.float32), "shape": np.array([3, 4], np.int64)}
    assert len(m.benchmark(feeds, repeat=2, warmup=1)) == 2
    assert [r["op"] for r in m.profile(feeds, repeat=2)] == [s["op"] for s in m.specialize(feeds).plan["steps"]]


def test_a_dynamic_model_with_value_inputs_waits_for_real_values():
    """The lower-bound compile feeds zeros; zeros as a Reshape target (with allowzero) cannot be compiled, so the
    model compiles on its first run instead of failing compile_model."""
    model = reshape_model("batch")
    model.graph.node[0].attribute.append(helper.make_attribute("allowzero", 1))
    model.opset_import[0].version = 18
    m = compile_model(model, dynamic={"x": {0: (1, 4)}})
    assert m.specializations == 0 and m.value_inputs == ["shape"]
    x = np.arange(18, dtype=np.float32).reshape(3, 6)
    (y,) = m.run({"x": x, "shape": np.array([9, 2], np.int64)})
    np.testing.assert_array_equal(y, np.maximum(x.reshape(9, 2), 0))


def test_a_bundle_stores_the_weights_its_specializations_share_once_on_disk_and_in_memory(tmp_path):
    import zipfile

    w = np.random.default_rng(4).standard_normal((64, 32)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])])
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    m = compile_model(model, dynamic={"x": {0: (1, 64)}})
    for rows in (16, 48):
        m.specialize({"x": np.zeros((rows, 64), np.float32)})
    m.save(tmp_path / "b.tfa")
    m.specialize({"x": np.zeros((1, 64), np.float32)}).save(tmp_path / "one.tfa")
    with zipfile.ZipFile(tmp_path / "b.tfa") as z:
        params = [n for n in z.namelist() if n.startswith("params/")]
    with zipfile.ZipFile(tmp_path / "one.tfa") as z:
        assert len(params) == len([n for n in z.namelist() if n.startswith("params/")]) >= 1
    b = runtime.load(tmp_path / "b.tfa")
    for rows in (1, 16, 48):
        x = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
        np.testing.assert_allclose(b.run({"x": x})[0], x @ w, rtol=1e-4, atol=1e-4)
    weights = [{id(a) for a in m._shared if a is not None and a.size == w.size} for m in b.models]
    assert len(b.models) == 3 and weights[0] and weights[0] == weights[1] == weights[2]  # one array for all


def test_specializations_read_pack_and_hold_the_weights_once(monkeypatch):
    """A dynamic model's specializations share its constants (compiler/ir/constants.py): each initializer read
    from the ONNX model once, each weight transposed and packed once, and one copy of the packed weight in
    memory for all of them; the answers those of a static compile at each shape."""
    from onnx import numpy_helper

    rng = np.random.default_rng(5)
    w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((64, 48), (48, 32)))
    model = _model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("MatMul", ["r", "w2"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 32])])
    model.graph.initializer.extend([numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    reads, to_array = [], numpy_helper.to_array
    monkeypatch.setattr(numpy_helper, "to_array", lambda t, *a, **k: reads.append(t.name) or to_array(t, *a, **k))
    m = compile_model(model, dynamic={"x": {0: (1, 4), 1: (1, 64)}})
    shapes = [(1, 5, 64), (1, 17, 64), (1, 64, 64)]
    models = [m.specialize({"x": np.zeros(s, np.float32)}) for s in shapes]
    assert sorted(reads) == ["w1", "w2"]  # once each, for four compiles
    for s in shapes:
        x = rng.standard_normal(s).astype(np.float32)
        (got,) = m.run({"x": x})
        np.testing.assert_allclose(got, np.maximum(x @ w1, 0) @ w2, rtol=1e-4, atol=1e-4)
        (static,) = compile_model(model, shapes={"x": s}).run({"x": x})
        np.testing.assert_array_equal(got, static)
    big = [{id(a) for a in c._shared if a is not None and a.size == w1.size} for c in models]
    assert big[0] and big[0] == big[1] == big[2]  # the packed w1: one array in memory for every shape


def test_the_constant_memo_hands_out_frozen_arrays_and_trusts_only_those():
    from tensorforge.compiler.ir import ConstantMemo

    memo = ConstantMemo()
    made = []
    w = memo.constant("w", lambda: np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not w.flags.writeable and memo.constant("w", lambda: made.append(1)) is w and not made
    with pytest.raises(ValueError):
        w[0, 0] = 5  # a memoized constant cannot change under the transforms made of it
    t = memo.derived("T", (w,), lambda: made.append("T") or np.ascontiguousarray(w.T))
    assert memo.derived("T", (w,), lambda: made.append("T") or w.T.copy()) is t and made == ["T"]
    assert not t.flags.writeable
    mutable = np.ones(3, np.float32)  # a writable source: recomputed every time, never trusted
    a = memo.derived("neg", (mutable,), lambda: -mutable)
    mutable[0] = 7
    assert memo.derived("neg", (mutable,), lambda: -mutable)[0] == -7 and a[0] == -1


def test_the_disk_cache_keeps_within_its_bound(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path))
    m = compile_model(reshape_model())
    x = np.ones((2, 6), np.float32)
    for shape in ([3, 4], [4, 3]):
        m.run({"x": x, "shape": np.array(shape, np.int64)})
    files = disk_cache.cached_files()
    assert len(files) == 2
    one = files[-1][1]
    monkeypatch.setenv(disk_cache.CACHE_MAX_ENV, str(one * 1.5 / 2**20))  # room for one file
    m.run({"x": x, "shape": np.array([6, 2], np.int64)})
    left = disk_cache.cached_files()
    assert len(left) == 1 and left[0][0] != files[0][0] and left[0][0] != files[1][0]  # the newest kept
    monkeypatch.setenv(disk_cache.CACHE_MAX_ENV, "lots")
    with pytest.raises(InputError, match="TENSORFORGE_CACHE_MAX_MB='lots': give a size in MB"):
        disk_cache.cache_limit_bytes()


def test_a_pytorch_module_with_dynamic_dimensions():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, tokens):
            return torch.relu(self.fc(tokens)).sum(dim=1)

    net = Net().eval()
    m = compile_model(net, example_inputs=(torch.randn(2, 5, 8),), dynamic={"tokens": {0: (1, 4), 1: (1, 16)}})
    for shape in ((1, 3, 8), (4, 16, 8)):
        x = torch.randn(*shape)
        with torch.no_grad():
            want = net(x).numpy()
        np.testing.assert_allclose(m.run({"tokens": x.numpy()})[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(CompileError, match=r"dynamic: \['x'\] are not inputs of Net.forward; its inputs are "
                                           r"\['tokens'\]"):
        compile_model(net, example_inputs=(torch.randn(2, 5, 8),), dynamic={"x": {0: (1, 4)}})
