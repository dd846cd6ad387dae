"""onnx's node conformance suite through compile_model + run (see tests/frontends/onnx_conformance.py).

The whole suite runs once per session, in two processes (~2 minutes on 2 cores: each model compiles in ~0.05 s). The tests check
that nothing crashes, that the pass count stays at or above PASS_FLOOR, that every base case of the ops in
REQUIRED_OPS passes (except the exclusions below, grouped by reason, which must be refused with a clear error),
and that the generated report is up to date.
"""

import os
import re

import pytest

from tests.frontends import onnx_conformance as conf

PASS_FLOOR = 1587  # raise it as support grows (1587 at the last count, every input fed at run time)

# Cases that still crash, with the reason; the test fails if others crash.
KNOWN_CRASHES: set[str] = set()

# Base cases of REQUIRED_OPS outside our scope, by reason (regex on the case name). They must be `unsupported`.
EXCLUDED: dict[str, str] = {}
# Base cases of REQUIRED_OPS that still give wrong numbers (known, to fix).
KNOWN_FAILURES: set[str] = set()


@pytest.fixture(scope="module")
def results():
    return conf.run_cases(conf.load_cases(), jobs=min(2, os.cpu_count() or 1))  # the default run's longest setup


def test_no_case_crashes(results):
    crashed = {r.name: r.detail for r in results if r.status == "crash"}
    new = {k: v for k, v in crashed.items() if k not in KNOWN_CRASHES}
    assert not new, "crashes (bugs: an error that is not a FrontendError):\n" + "\n".join(
        f"{k}: {v}" for k, v in sorted(new.items()))


def test_pass_count_floor(results):
    passed = sum(r.status == "pass" for r in results)
    assert passed >= PASS_FLOOR, conf.summary(results)


def test_required_ops_pass_their_base_cases(results):
    excluded = re.compile("|".join(f"(?:{p})" for p in EXCLUDED.values()) or r"(?!)")  # none: matches nothing
    problems = []
    for r in results:
        if r.op_type not in conf.REQUIRED_OPS or not conf.is_base_case(r.name) or r.name in KNOWN_CRASHES:
            continue
        if excluded.search(r.name):
            if r.status != "unsupported":
                problems.append(f"{r.name}: excluded, so it must be refused clearly, but it is {r.status}")
        elif r.name in KNOWN_FAILURES:
            continue
        elif r.status != "pass":
            problems.append(f"{r.name} ({r.op_type}): {r.status}: {r.detail}")
    assert not problems, "\n".join(problems)


def test_every_required_op_has_cases(results):
    assert set(conf.REQUIRED_OPS) <= {r.op_type for r in results}


def test_report_is_up_to_date(results):
    path = os.path.join(os.path.dirname(__file__), "..", "..", conf.REPORT)

    def without_machine(text):
        return "".join(line for line in text.splitlines(True) if not line.startswith(conf.MACHINE_PREFIX))

    with open(path) as f:
        assert without_machine(f.read()) == without_machine(conf.markdown(results)), \
            f"regenerate it: python -m tests.frontends.onnx_conformance --write {conf.REPORT}"
