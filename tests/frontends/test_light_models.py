"""The nine light models shipped with onnx, end to end: import, compile, save, load, run.

Each model is checked twice: as shipped (every weight one constant, so outputs are uniform) through the CLI
(`tensorforge compile`, `tensorforge run`) and the runtime API, against onnx's expected output file and
onnxruntime; and with random weights through `compile_model`, against onnxruntime and our reference interpreter,
which is the comparison that can tell a right answer from a wrong one.
"""

import numpy as np
import onnx
import pytest

from tensorforge import compile_model, runtime
from tensorforge.compiler.cli import main
from tensorforge.compiler.ir import interpret
from tensorforge.frontends.onnx import from_onnx
from tests.support import (LIGHT_MODELS, assert_close, light_expected, light_input, light_path, ort_run,
                           randomize_weights)

# The CLI round trip of the four biggest (8-14 s each) runs only with -m slow, to keep the default run under its
# 15-minute budget; all nine still run with random weights below, the check that can tell a wrong answer.
HEAVY = {"vgg19", "densenet121", "inception_v1", "inception_v2"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in LIGHT_MODELS])
def test_light_model_as_shipped(name, tmp_path):
    model = onnx.load(light_path(name))
    feeds = light_input(model)
    ((input_name, x),) = feeds.items()
    np.save(tmp_path / "x.npy", x)
    artifact = tmp_path / f"{name}.tfa"
    assert main(["compile", light_path(name), "-o", str(artifact)]) == 0
    assert main(["run", str(artifact), "--input", f"{input_name}={tmp_path / 'x.npy'}", "-o", str(tmp_path)]) == 0
    (output_name,) = [o.name for o in model.graph.output]
    out = np.load(tmp_path / (output_name.replace("/", "_") + ".npy"))
    assert_close(out, light_expected(name), rtol=1e-3, atol=1e-5, what=f"{name} vs expected output")
    assert_close(out, ort_run(model, feeds)[0], rtol=1e-3, atol=1e-5, what=f"{name} vs onnxruntime")
    np.testing.assert_array_equal(runtime.load(artifact).run(feeds)[0], out)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_random_weights(name):
    model = randomize_weights(onnx.load(light_path(name)), seed=hash(name) % 1000)
    feeds = light_input(model)
    rng = np.random.default_rng(0)
    feeds = {k: rng.uniform(0, 1, v.shape).astype(np.float32) for k, v in feeds.items()}
    out = compile_model(model).run(feeds)[0]
    expected = ort_run(model, feeds)[0]
    assert np.abs(expected).max() > 0 and np.std(expected) > 0  # a comparison that can fail
    assert_close(out, expected, rtol=1e-3, atol=1e-5, what=f"{name} vs onnxruntime")
    assert_close(interpret(from_onnx(model), feeds)[0], expected, rtol=1e-3, atol=1e-5, what=f"{name} reference")
