"""A batch run as slices of a smaller batch's compiled model (compiler/batch_loop.py, runtime/bundle.py LoopedModel,
compiler/specialize.py): the proof refuses every model that lets samples meet, and a looped run equals onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model, runtime
from tensorforge.compiler.batch_loop import loop_proof, worth_looping
from tensorforge.compiler.driver import import_model

RNG = np.random.default_rng(0)


def _model(nodes, inits=(), in_dims=("batch", 4), out_dims=None):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
                              [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _proof(model, b: int = 3, rest=(4,)):
    small = import_model(model, {"x": (1, *rest)})
    big = import_model(model, {"x": (b, *rest)})
    return loop_proof(small, big, {"x"}, 1, b)


def _conv_model():
    w = RNG.standard_normal((8, 8, 3, 3)).astype(np.float32)
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"]),
                   helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                   helper.make_node("Flatten", ["p"], ["y"])], [("w", w)], ("batch", 8, 16, 16))


SHAPE = np.array([1, -1], np.int64)
MIXING = {  # each lets samples meet; the proof must say no
    "sum over the batch": [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
    "softmax over the batch": [helper.make_node("Softmax", ["x"], ["y"], axis=0)],
    "transpose of the batch": [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
    "every sample in one row": [helper.make_node("Reshape", ["x", "shape"], ["y"])],
    "divided by the batch size": [helper.make_node("Shape", ["x"], ["s"]),
                                  helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
                                  helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                                  helper.make_node("Div", ["x", "bf"], ["y"])],
    "a row appended to the batch": [helper.make_node("Concat", ["x", "row"], ["y"], axis=0)],
    "samples against each other": [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
                                   helper.make_node("MatMul", ["x", "t"], ["y"])],
}
INITS = [("axes", np.array([0], np.int64)), ("shape", SHAPE), ("zero", np.array(0, np.int64)),
         ("row", np.ones((1, 4), np.float32))]


@pytest.mark.parametrize("case", sorted(MIXING))
def test_models_that_mix_samples_are_refused(case):
    nodes = MIXING[case]
    used = {i for n in nodes for i in n.input}
    model = _model(nodes, [(n, a) for n, a in INITS if n in used])
    why = _proof(model)
    assert why is not None, case


def test_per_sample_models_are_proven():
    w = RNG.standard_normal((4, 6)).astype(np.float32)
    mlp = _model([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=1)],
                 [("w", w)])
    assert _proof(mlp) is None
    assert _proof(_conv_model(), rest=(8, 16, 16)) is None
    assert _proof(mlp, b=4) is None
    small = import_model(mlp, {"x": (2, 4)})
    assert "multiple" in loop_proof(small, import_model(mlp, {"x": (3, 4)}), {"x"}, 2, 3)


def test_a_larger_batch_runs_as_slices_and_saves_in_the_bundle(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _conv_model()
    assert worth_looping(import_model(model, {"x": (1, 8, 16, 16)}))
    m = compile_model(model, dynamic={"x": {0: (1, 8)}})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in (3, 8):
        x = RNG.standard_normal((b, 8, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(m.run({"x": x})[0], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
        assert type(m.specialize({"x": x})).__name__ == "LoopedModel"
    assert m.specializations == 3  # batch 1 compiled, 3 and 8 its slices
    m.save(tmp_path / "b.tfa")
    loaded = runtime.load(tmp_path / "b.tfa")
    assert len(loaded.models) == 1 and len(loaded.specializations) == 3
    x = RNG.standard_normal((8, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(loaded.run({"x": x})[0], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(runtime.InputError, match="no specialization"):
        loaded.run({"x": x[:5]})  # 5 was never proven: the runtime alone does not slice it
    assert [s.get("slices") for s in loaded.specializations] == [None, {"of": 0, "times": 3}, {"of": 0, "times": 8}]


def test_inspect_says_which_batches_run_as_slices(tmp_path, capsys):
    from tensorforge.compiler.cli import main

    m = compile_model(_conv_model(), dynamic={"x": {0: (1, 8)}})
    m.specialize({"x": np.zeros((4, 8, 16, 16), np.float32)})
    m.save(tmp_path / "b.tfa")
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "b.tfa")]) == 0
    out = capsys.readouterr().out
    assert "2 specialization(s)" in out and "1 compiled" in out and "4 slices of compiled specialization 0" in out


def test_little_arithmetic_per_weight_compiles_the_batch():
    w = RNG.standard_normal((4, 512)).astype(np.float32)
    mlp = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("w", w)])
    assert not worth_looping(import_model(mlp, {"x": (1, 4)}))
    m = compile_model(mlp, dynamic={"x": {0: (1, 8)}})
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    np.testing.assert_allclose(m.run({"x": x})[0], x @ w, rtol=1e-4, atol=1e-5)
    assert type(m.specialize({"x": x})).__name__ == "CompiledModel"


def test_bundles_of_version_1_still_load(tmp_path):
    import json
    import zipfile

    from tensorforge.runtime import artifact

    m = compile_model(_conv_model(), dynamic={"x": {0: (1, 8)}})
    m.save(tmp_path / "b.tfa")
    with zipfile.ZipFile(tmp_path / "b.tfa") as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["bundle.json"])
    meta["version"] = 1
    members["bundle.json"] = json.dumps(meta).encode()
    import hashlib

    digests = {n: (hashlib.sha256(d).hexdigest(), len(d)) for n, d in members.items() if n != artifact.MANIFEST}
    with zipfile.ZipFile(tmp_path / "v1.tfa", "w") as z:
        for n, d in members.items():
            z.writestr(n, artifact.manifest_json(digests) if n == artifact.MANIFEST else d)
    x = RNG.standard_normal((1, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(runtime.load(tmp_path / "v1.tfa").run({"x": x})[0], m.run({"x": x})[0])


del onnx  # imported for helper's types only
