"""`tensorforge opt` (compiler/opt.py): IR text in, IR text out. Every tests/passes/golden/NAME.ir names its passes on
its first line (`// tensorforge opt -p ...`); the output must equal NAME.expected.ir and compute what the input
computes (reference interpreter)."""

import pathlib

import numpy as np
import pytest

from tensorforge.compiler.cli import main
from tensorforge.compiler.ir import interpret, parse_graph
from tensorforge.compiler.opt import parse_pass_spec
from tensorforge.compiler.passes import pass_name
from tensorforge.runtime.errors import InputError

GOLDEN = pathlib.Path(__file__).parent / "golden"
CASES = sorted(p for p in GOLDEN.glob("*.ir") if not p.name.endswith(".expected.ir"))
RUN = "// tensorforge opt -p "


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_golden(path, capsys):
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith(RUN), f"{path.name}: the first line must be '{RUN}PASSES'"
    assert main(["opt", str(path), "-p", first[len(RUN):]]) == 0
    out = capsys.readouterr().out
    assert out == (GOLDEN / f"{path.stem}.expected.ir").read_text()
    before, after = parse_graph(text), parse_graph(out)
    feeds = {v.name: np.random.default_rng(0).uniform(-2, 2, v.type.shape).astype(v.type.dtype)
             for v in before.inputs}
    for a, b in zip(interpret(after, feeds), interpret(before, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_options_set_dataclass_fields():
    (fuse,) = parse_pass_spec("fuse{max_group_size=2}")
    assert pass_name(fuse) == "fuse" and fuse.max_group_size == 2
    folds = parse_pass_spec(" fold_constants{max_elements=8}, mixed_precision{dtype=bfloat16},dce_2")
    assert [pass_name(p) for p in folds] == ["fold_constants", "mixed_precision", "dce_2"]
    assert folds[0].max_elements == 8 and folds[1].dtype == "bfloat16"


@pytest.mark.parametrize("spec, message", [
    ("fsue", r"no pass named 'fsue'; passes: .*fuse"),
    ("fuse{max_size=2}", r"'max_size=2' is no option of 'fuse'; its options: cast_prologues, max_group_size"),
    ("simplify{x=1}", r"pass 'simplify' takes no options"),
    ("fuse{", r"cannot read a pass spec"),
    ("", r"no passes given"),
])
def test_bad_specs_name_what_is_wrong(spec, message):
    with pytest.raises(InputError, match=message):
        parse_pass_spec(spec)


def test_cli_errors_and_list(tmp_path, capsys):
    assert main(["opt", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert "fuse{max_group_size=32, cast_prologues=False}" in listed and "dce_3" in listed
    assert main(["opt", str(tmp_path / "missing.ir"), "-p", "dce"]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.ir"
    bad.write_text("graph g(%x: f32[2]) {\n  %y = nosuchop(%x) : f32[2]\n  return %y\n}\n")
    assert main(["opt", str(bad), "-p", "dce"]) == 1
    assert "unknown op 'nosuchop'" in capsys.readouterr().err


def test_params_travel_beside_the_text(tmp_path, capsys):
    w = np.arange(32, dtype=np.float32).reshape(4, 8)
    text = ("graph g(%x: f32[2,8]) {\n  %w = param f32[4,8]\n  %t = transpose(%w) {perm=(1, 0)} : f32[8,4]\n"
            "  %y = matmul(%x, %t) : f32[2,4]\n  return %y\n}\n")
    (tmp_path / "in.ir").write_text(text)
    np.savez(tmp_path / "in.npz", w=w)
    out_ir, out_npz = tmp_path / "out.ir", tmp_path / "out.npz"
    assert main(["opt", str(tmp_path / "in.ir"), "--params", str(tmp_path / "in.npz"), "-p", "fold_constants,dce",
                 "-o", str(out_ir), "--params-out", str(out_npz)]) == 0
    with np.load(out_npz) as z:
        params = {k: z[k] for k in z.files}
    g = parse_graph(out_ir.read_text(), params)
    assert "transpose" not in {n.op.name for n in g.nodes}
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(interpret(g, {"x": x})[0], x @ w.T)
