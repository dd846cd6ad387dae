"""onnx's own operator conformance suite, run through our public API (`compile_model` + `run`).

`onnx.backend.test.case.node.collect_testcases()` yields ~1900 cases, each a small model (one node, or its
function body for the `_expanded` variants) with input and expected output arrays. Each case ends in one of:

  pass         every output matches (shape, dtype, values within tolerance)
  fail         it compiled and ran, but an output is wrong
  unsupported  we refused the model with a `FrontendError` (an `UnsupportedOpError`, or a converter that names
               what it cannot do): the clear error a user gets
  crash        any other exception: a bug to fix

Every input is fed at run time, as onnxruntime's runner feeds it. Some cases feed a tensor that decides an output
shape (Reshape's target, Unsqueeze's axes, Pad's pads, ...) or a sequence (a list of tensors): `compile_model` then
gives a `SpecializingModel` (compiler/specialize.py), which compiles on `run` for the values and sequence shapes it
is fed. Such passes are reported too (`specialized`, with the inputs compiled in); the runner itself specializes
nothing.

Tolerance: onnx's runner's, rtol 1e-3 and atol 1e-7 unless the case says otherwise. Float outputs may in addition
pass at atol 1e-5 (`FP32_ATOL`): fp32 kernels with vectorized transcendentals (exp, erf, tanh) and reassociated
sums differ from numpy's float64-computed expectations by a few ulps near zero, where atol 1e-7 is below one ulp of
the operands. Such cases count as passes. bfloat16 outputs are compared as float32 values at rtol 2^-7
(`BF16_RTOL`): one unit in the last place of a bf16 number, whose expected values are rounded to bf16 already, so a
kernel that rounds once at the end (fused) and a reference that rounds after each op differ by up to that.

Compilation is cached by the model's bytes: cases that differ only in data compile once (and a specializing model
keeps its specializations).

    python -m tests.frontends.onnx_conformance                 # run all cases, print a summary
    python -m tests.frontends.onnx_conformance -k test_lstm    # only names containing a substring
    python -m tests.frontends.onnx_conformance --write benchmarks/results/onnx_conformance.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from benchmarks.machine import describe_machine
from tensorforge.compiler.specialize import SpecializingModel
from tensorforge.runtime.errors import FrontendError

# the specializations compiled for the cases' values stay in memory, not in the user's on-disk cache
os.environ.setdefault("TENSORFORGE_CACHE_DIR", "off")

STATUSES = ("pass", "fail", "unsupported", "crash")
FP32_ATOL = 1e-5
BF16_RTOL = 2.0 ** -7  # one bfloat16 ulp (8 significant bits): the expected values are themselves rounded to bf16
REPORT = "benchmarks/results/onnx_conformance.md"
MACHINE_PREFIX = "Measured on: "  # the report's machine line, which differs from session to session

# The op types whose base cases must all pass (the CI test checks them; see `is_base_case`).
REQUIRED_OPS = (
    "Softmax Reshape Conv Concat ConstantOfShape Gemm Relu Add MaxPool Mul Constant Identity Transpose Shape MatMul "
    "Gather Unsqueeze Expand Flatten Where Cast Div AveragePool Equal LayerNormalization Pow And BatchNormalization "
    "Dropout GlobalAveragePool IsNaN Sqrt Slice Erf LRN ReduceMean Sigmoid Split Resize Squeeze Sum GreaterOrEqual "
    "LessOrEqual Clip Neg HardSwish Tanh ConvTranspose HardSigmoid LSTM GRU RNN LogSoftmax Sub Mod Abs Cos Less Log "
    "Min Max Sin GatherND Gelu Reciprocal Exp Einsum Pad TopK ArgMax ReduceSum ReduceMax Tile Range CumSum Trilu"
).split()


@dataclass
class Result:
    name: str
    op_type: str
    status: str  # one of STATUSES
    detail: str = ""
    specialized: tuple[str, ...] = ()  # inputs compiled in at run time (a SpecializingModel's value inputs)
    seconds: float = 0.0


def is_base_case(name: str) -> bool:
    """A base case is a one-node test of the op itself: not the `_expanded` function-body variants (those test
    the ops the function is made of)."""
    return "_expanded" not in name


def load_cases(names: Iterable[str] | None = None, contains: str | None = None) -> list:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = [c for c in collect_testcases() if c.kind == "node"]
    if names is not None:
        wanted = set(names)
        cases = [c for c in cases if c.name in wanted]
    if contains:
        cases = [c for c in cases if contains in c.name]
    return cases


def op_types(cases) -> dict[str, str]:
    """Case name -> the op type it tests; an `_expanded` case tests its base case's op."""
    base = {c.name: c.model.graph.node[0].op_type for c in cases if len(c.model.graph.node) == 1}
    out = {}
    for c in cases:
        root = c.name.split("_expanded")[0]
        out[c.name] = base.get(c.name) or base.get(root) or (c.model.graph.node[0].op_type if c.model.graph.node
                                                            else "?")
    return out


def _compiled_in(compiled) -> tuple[str, ...]:
    """The inputs a specializing model compiles in (values and sequence shapes); () for any other model."""
    if not isinstance(compiled, SpecializingModel):
        return ()
    return tuple(compiled.value_inputs) + tuple(compiled.sequence_inputs)


def _as_array(x):
    """Data-set values as arrays: numpy scalars become 0-d arrays, TensorProtos (types numpy lacks) are read."""
    if isinstance(x, np.generic):
        return np.asarray(x)
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    return x


def _compare(got: list, expected: list, rtol: float, atol: float) -> str:
    """'' when all outputs match, else what differs."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(got, expected)):
        if isinstance(e, list):  # a sequence: its tensors in order
            if not isinstance(a, list):
                return f"output {i}: expected a sequence, got a tensor"
            diff = _compare(a, e, rtol, atol)
            if diff:
                return f"output {i} (a sequence): {diff}"
            continue
        if not isinstance(e, np.ndarray):
            return f"output {i}: expected a {type(e).__name__}, not a tensor"
        a = np.asarray(a)
        if a.shape != e.shape:
            return f"output {i}: shape {a.shape}, expected {e.shape}"
        if a.dtype != e.dtype:
            return f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        bf16 = e.dtype.name == "bfloat16"
        if e.dtype.itemsize == 1 and e.dtype.kind in "Vf":  # float8, float4, int4, ...: exactly, NaN equal to NaN
            wide = a.astype(np.float32), e.astype(np.float32)
            same = (a.view(np.uint8) == e.view(np.uint8)) | (np.isnan(wide[0]) & np.isnan(wide[1]))
            if not same.all():
                return f"output {i}: {int((~same).sum())} of {e.size} values differ"
            continue
        if bf16:  # ml_dtypes' kind is "V": compare the values, NaN equal to NaN
            a, e = a.astype(np.float32), e.astype(np.float32)
        if e.dtype.kind in "fc":
            tol = (max(rtol, BF16_RTOL) if bf16 else rtol, max(atol, FP32_ATOL))
            if not np.allclose(a, e, rtol=tol[0], atol=tol[1], equal_nan=True):
                err = np.abs(a.astype(np.float64) - e.astype(np.float64))
                err = np.where(np.isnan(err), np.inf, err)
                return f"output {i}: max abs error {err.max():.3g} (rtol {rtol}, atol {tol[1]})"
        elif e.dtype.kind in "OUS":
            if not np.array_equal(a, e):
                return f"output {i}: values differ"
        elif not np.array_equal(a, e):
            return f"output {i}: {int((a != e).sum())} of {e.size} values differ"
    return ""


class Runner:
    """Runs cases; compiled models are cached by the model's bytes (specialization included)."""

    def __init__(self):
        self._compiled: dict[bytes, object] = {}

    def compile(self, model: onnx.ModelProto):
        from tensorforge import compiler
        key = model.SerializeToString()
        if key not in self._compiled:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._compiled[key] = compiler.compile_model(model)
        return self._compiled[key]

    def run_case(self, case, op_type: str) -> Result:
        t0 = time.perf_counter()
        res = Result(case.name, op_type, "pass")
        try:
            for inputs, expected in case.data_sets:
                status, detail, spec = self._run_data_set(case, inputs, expected)
                res.specialized = tuple(sorted(set(res.specialized) | set(spec)))
                if status != "pass":
                    res.status, res.detail = status, detail
                    break
        except Exception as e:  # noqa: BLE001 - a crash is a result here
            res.status, res.detail = "crash", f"{type(e).__name__}: {e}"
        res.detail = res.detail.splitlines()[0][:300] if res.detail else ""
        res.seconds = time.perf_counter() - t0
        return res

    def _run_data_set(self, case, inputs, expected):
        model = case.model
        names = [vi.name for vi in model.graph.input if vi.name not in {i.name for i in model.graph.initializer}]
        feeds = dict(zip(names, map(_as_array, inputs)))
        expected = [[_as_array(x) for x in e] if isinstance(e, list) else _as_array(e) for e in expected]
        for name, v in feeds.items():
            if not isinstance(v, (np.ndarray, list)):
                try:  # the compiler's own refusal, when it has one
                    self.compile(model)
                except FrontendError as e:
                    return "unsupported", f"{type(e).__name__}: {e}", ()
                return "unsupported", f"input {name!r} is a {type(v).__name__}, not a tensor", ()
        try:
            compiled = self.compile(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outs = compiled.run(feeds)
        except FrontendError as e:  # refused at compile time, or for the values a specializing model was fed
            return "unsupported", f"{type(e).__name__}: {e}", _compiled_in(self._compiled.get(model.SerializeToString()))
        spec = _compiled_in(compiled)
        # a specializing model regroups sequence outputs itself
        got = outs if isinstance(compiled, SpecializingModel) else _regroup(model, compiled.output_names, list(outs))
        diff = _compare(got, list(expected), case.rtol, case.atol)
        return ("fail", diff, spec) if diff else ("pass", "", spec)


def _regroup(model: onnx.ModelProto, names: list[str], got: list) -> list:
    """The compiled model's flat outputs as the ONNX graph's: a sequence output is the list of `name.i` outputs."""
    by_name = dict(zip(names, got))
    out = []
    for vi in model.graph.output:
        if vi.name in by_name:
            out.append(by_name[vi.name])
        else:
            items = [by_name[n] for n in sorted((n for n in names if n.startswith(vi.name + ".")
                                                 and n[len(vi.name) + 1:].isdigit()),
                                                key=lambda n: int(n[len(vi.name) + 1:]))]
            out.append(items)
    return out


def run_cases(cases, progress=None, jobs: int = 1) -> list[Result]:
    """Each case's Result, in order. jobs > 1: the cases dealt out to that many fresh processes (spawned: TVM's
    threads do not survive a fork), each loading its share by name; `progress` is then not called."""
    kinds = op_types(load_cases()) if cases and any("_expanded" in c.name for c in cases) else op_types(cases)
    if jobs > 1 and len(cases) > jobs:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        names = [c.name for c in cases]
        shards = [names[i::jobs] for i in range(jobs)]
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_run_shard, shards, [kinds] * jobs))
        by_name = {r.name: r for shard in done for r in shard}
        return [by_name[n] for n in names]
    runner = Runner()
    results = []
    with np.errstate(all="ignore"):
        for c in cases:
            results.append(runner.run_case(c, kinds.get(c.name, "?")))
            if progress:
                progress(results[-1])
    return results


def _run_shard(names: list[str], kinds: dict) -> list[Result]:
    """run_cases in a worker process: its share of the cases, by name."""
    runner = Runner()
    with np.errstate(all="ignore"):
        return [runner.run_case(c, kinds.get(c.name, "?")) for c in load_cases(names)]


def per_op(results: list[Result]) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for r in results:
        table.setdefault(r.op_type, Counter())[r.status] += 1
    return dict(sorted(table.items()))


def summary(results: list[Result]) -> str:
    c = Counter(r.status for r in results)
    spec = sum(1 for r in results if r.specialized and r.status == "pass")
    return (f"{len(results)} cases: " + ", ".join(f"{c[s]} {s}" for s in STATUSES)
            + f" ({spec} passes specialized at run time)")


def markdown(results: list[Result]) -> str:
    lines = [
        "# ONNX operator conformance",
        "",
        "The node test cases that ship with onnx (`onnx.backend.test.case.node.collect_testcases()`, onnx "
        f"{onnx.__version__}), each compiled with `compiler.compile_model` and run, against the expected outputs.",
        "Generated by `python -m tests.frontends.onnx_conformance --write " + REPORT + "`; the CI test "
        "(`tests/frontends/test_onnx_conformance.py`) checks that no case crashes.",
        "",
        f"{MACHINE_PREFIX}{describe_machine()} (the test compares this report without this line).",
        "",
        f"**{summary(results)}.**",
        "",
        "*unsupported*: refused at compile time with a clear `FrontendError` (an op, attribute or dtype we do not "
        "convert). *specialized*: passes of a model compiled on its first run for the values of its shape-deciding "
        "inputs (axes, pads, a target shape) and the lengths of its sequence inputs, every input fed at run time "
        "(`compiler.specialize.SpecializingModel`). *expanded*: the `_expanded` cases run the op's function "
        "body (other ops) and are counted under the op they expand.",
        "",
        "| op type | cases | passed | failed | unsupported | crashed | specialized | base cases passed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_op: dict[str, list[Result]] = {}
    for r in results:
        by_op.setdefault(r.op_type, []).append(r)
    for op, rs in sorted(by_op.items()):
        c = Counter(r.status for r in rs)
        base = [r for r in rs if is_base_case(r.name)]
        spec = sum(1 for r in rs if r.specialized and r.status == "pass")
        lines.append(f"| {op} | {len(rs)} | {c['pass']} | {c['fail']} | {c['unsupported']} | {c['crash']} | "
                     f"{spec} | {sum(r.status == 'pass' for r in base)}/{len(base)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", dest="contains", help="only cases whose name contains this")
    p.add_argument("--write", metavar="PATH", help=f"write the per-op markdown table (e.g. {REPORT})")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case that does not pass")
    args = p.parse_args(argv)
    cases = load_cases(contains=args.contains)

    def progress(r):
        if args.verbose and r.status != "pass":
            print(f"{r.status:12s} {r.name}: {r.detail}", flush=True)

    t0 = time.perf_counter()
    results = run_cases(cases, progress)
    print(summary(results), f"in {time.perf_counter() - t0:.0f} s")
    if args.write:
        with open(args.write, "w") as f:
            f.write(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
