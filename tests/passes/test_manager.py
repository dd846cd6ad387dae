"""The pass manager and the pipelines: verification after each pass, timing, dumps, disabling, -O levels."""

import numpy as np
import pytest

from tensorforge import compile_model
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.ir import parse_graph
from tensorforge.compiler.passes import PassManager, pipeline, pass_name
from tensorforge.runtime.errors import PassError

TEXT = """graph g(%x: f32[4]) {
  %one = param f32[1] = [1.0]
  %a = mul(%x, %one) : f32[4]
  %b = relu(%a) : f32[4]
  return %b
}"""


def breaks_types(g):
    g.nodes[0].outputs[0].type = g.nodes[0].outputs[0].type.__class__((5,))
    return g


def crashes(g):
    raise RuntimeError("boom")


def test_failure_names_the_pass_and_those_before_it():
    from tensorforge.compiler.passes import cse, simplify

    with pytest.raises(PassError, match=r"pass 'breaks_types' produced invalid IR: .* \(passes run before it: "
                                        r"simplify, cse\)"):
        PassManager([simplify, cse, breaks_types]).run(parse_graph(TEXT))
    with pytest.raises(PassError, match=r"pass 'crashes' failed: boom \(passes run before it: none\)"):
        PassManager([crashes]).run(parse_graph(TEXT))


def test_timing_dump_and_disable():
    from tensorforge.compiler.passes import cse, simplify

    dumps = []
    pm = PassManager([simplify, cse], dump_after=frozenset({"simplify"}), disabled=frozenset({"cse"}),
                     dump=dumps.append)
    g = pm.run(parse_graph(TEXT))
    assert [name for name, _ in pm.timings] == ["simplify"]
    assert len(dumps) == 1 and dumps[0].startswith("// IR after simplify") and "mul" not in dumps[0]
    assert [n.op.name for n in g.nodes] == ["relu"]


def test_levels():
    names = lambda level: [pass_name(p) for p in pipeline(level)]  # noqa: E731
    assert names(0) == ["pack_weights"]
    assert "simplify" in names(1) and "fuse" not in names(1)
    assert names(2)[-1] == "fuse" and "fold_scale_shift" in names(2)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_every_level_computes_the_same(level):
    from tensorforge.compiler.examples import small_cnn_onnx
    from tests.support import assert_close, ort_run

    model = small_cnn_onnx()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    compiled = compile_model(model, options=CompileOptions(opt_level=level))
    assert_close(compiled.run({"image": x})[0], ort_run(model, {"image": x})[0])
    if level == 2:
        assert compiled.num_kernels <= 8
