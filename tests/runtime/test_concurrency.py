"""Thread-safe runs (execution contexts) and TensorForge's own CPU thread pool (compiler/backend/cpu_pool.c,
runtime/cpu_pool.py). No timing is asserted: the pool's speed is measured in benchmarks/contention.py."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tensorforge import compile_model, runtime
from tensorforge.compiler.examples import small_cnn_onnx
from tensorforge.runtime import cpu_pool
from tensorforge.runtime.errors import InputError
from tests.support import single_op_model


@pytest.fixture(scope="module")
def cnn():
    return compile_model(small_cnn_onnx())


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    return compile_model(single_op_model("MatMul", {"x": np.zeros((16, 64), np.float32)}, const_inputs={"w": w}))


def images(n):
    return [np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(n)]


def hammer(jobs, threads=8, runs=50):
    """`threads` threads each make `runs` calls job(i) for i cycling through the jobs; returns the failures."""
    failures, lock = [], threading.Lock()
    start = threading.Barrier(threads)

    def worker(k):
        start.wait()
        for j in range(runs):
            i = (k * 7 + j) % len(jobs)
            try:
                ok = jobs[i]()
            except Exception as e:  # noqa: BLE001 - any exception is a failure to report
                ok = repr(e)
            if ok is not True:
                with lock:
                    failures.append((k, j, ok))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a caller hung"
    return failures


def test_concurrent_runs_on_one_model_are_correct(cnn):
    xs = images(8)
    expected = [cnn.run({"image": x})[0] for x in xs]
    jobs = [lambda x=x, e=e: bool(np.array_equal(cnn.run({"image": x})[0], e)) for x, e in zip(xs, expected)]
    assert hammer(jobs) == []  # 8 threads x 50 runs, every result equal to the sequential one
    assert 1 <= cnn.contexts <= cnn.max_concurrency


def test_concurrent_runs_on_two_models_are_correct(cnn, mlp):
    xs = images(4)
    ms = [np.random.default_rng(10 + i).standard_normal((16, 64)).astype(np.float32) for i in range(4)]
    expected_cnn = [cnn.run({"image": x})[0] for x in xs]
    expected_mlp = [mlp.run({"x": x})[0] for x in ms]
    jobs = [lambda x=x, e=e: bool(np.array_equal(cnn.run({"image": x})[0], e)) for x, e in zip(xs, expected_cnn)]
    jobs += [lambda x=x, e=e: bool(np.array_equal(mlp.run({"x": x})[0], e)) for x, e in zip(ms, expected_mlp)]
    assert hammer(jobs) == []


def test_loaded_artifact_is_thread_safe_and_bounded(cnn, tmp_path):
    cnn.save(tmp_path / "cnn.tfa")
    model = runtime.load(tmp_path / "cnn.tfa", max_concurrency=2)
    xs = images(4)
    expected = [cnn.run({"image": x})[0] for x in xs]
    jobs = [lambda x=x, e=e: bool(np.array_equal(model.run({"image": x})[0], e)) for x, e in zip(xs, expected)]
    assert hammer(jobs, threads=6, runs=20) == []
    assert model.contexts <= 2  # callers beyond the bound waited for a context instead of allocating one


def test_contexts_are_reused(cnn):
    x = images(1)[0]
    for _ in range(5):
        cnn.run({"image": x})
    before = cnn.contexts
    for _ in range(20):
        cnn.run({"image": x})
    assert cnn.contexts == before


def test_max_concurrency_must_be_positive(cnn, tmp_path):
    cnn.save(tmp_path / "m.tfa")
    with pytest.raises(InputError, match="max_concurrency"):
        runtime.load(tmp_path / "m.tfa", max_concurrency=0)


def test_pool_is_used_and_its_workers_are_not_pinned(cnn):
    assert cpu_pool.active()
    before = cpu_pool.stats()
    cnn.run({"image": images(1)[0]})
    after = cpu_pool.stats()
    assert after["loops"] + after["inline"] > before["loops"] + before["inline"]
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if allowed is None or len(allowed) < 2 or not os.path.isdir("/proc/self/task"):
        return
    def pinned() -> tuple[int, dict]:
        """(tf-pool workers, the pinned ones' affinity lines) now (TVM's own pool may have threads too)."""
        workers, lines = 0, {}
        for tid in os.listdir("/proc/self/task"):
            try:
                name = open(f"/proc/self/task/{tid}/comm").read().strip()
                status = open(f"/proc/self/task/{tid}/status").read()
            except OSError:
                continue
            if name != "tf-pool":
                continue
            workers += 1
            line = next(li for li in status.splitlines() if li.startswith("Cpus_allowed_list:"))
            if not ("," in line or "-" in line):
                lines[tid] = line
        return workers, lines

    # a worker leaving its caller's core narrows its affinity for a moment (cpu_pool.c leave_cpu), longer on a
    # loaded machine where the other core is busy: pinned means pinned in every look over a second
    deadline = time.monotonic() + 1.0
    workers, lines = pinned()
    while lines and time.monotonic() < deadline:
        time.sleep(0.01)
        workers, now = pinned()
        lines = {tid: line for tid, line in lines.items() if tid in now}
    assert not lines, f"workers pinned to one core: {lines}"
    assert workers == cpu_pool.threads() - 1


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="the pool has workers only with two or more cores")
def test_idle_workers_fall_asleep(cnn):
    cnn.run({"image": images(1)[0]})
    deadline = time.monotonic() + 5
    while cpu_pool.sleeping_workers() < cpu_pool.threads() - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cpu_pool.sleeping_workers() == cpu_pool.threads() - 1


def test_runs_stay_correct_with_a_core_kept_busy(cnn):
    """Another process spinning on a core: the results do not change (the speed is benchmarks/contention.py's)."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        xs = images(3)
        expected = [cnn.run({"image": x})[0] for x in xs]
        for _ in range(20):
            for x, e in zip(xs, expected):
                np.testing.assert_array_equal(cnn.run({"image": x})[0], e)
    finally:
        spinner.kill()
        spinner.wait()


def test_an_error_in_a_parallel_chunk_reaches_the_caller(tmp_path):
    """A kernel whose parallel loop fails an assertion on some chunk (a worker's or the caller's): the call raises
    with the kernel's own message, every time, and the pool keeps working."""
    import tvm
    from tvm.script import tirx as T

    from tensorforge.compiler.backend.build import cpu_pool_object, resolve_target
    from tensorforge.runtime.tvm_loader import load_kernels

    @T.prim_func
    def check(a: T.Buffer((4096,), "int32"), b: T.Buffer((4096,), "int32")):
        T.func_attr({"global_symbol": "check", "tirx.noalias": True})
        for i in T.parallel(4096):
            assert a[i] >= 0, "negative value found"
            b[i] = a[i] * 2

    ex = tvm.compile(tvm.IRModule({"check": check}), target=resolve_target("cpu"))
    path = str(tmp_path / "check.so")
    ex.export_library(path, addons=[cpu_pool_object()])
    mod = load_kernels(path)
    assert cpu_pool.adopt(path)
    import tvm_ffi

    a = np.arange(4096, dtype=np.int32)
    b = np.zeros(4096, np.int32)
    mod["check"](tvm_ffi.from_dlpack(a), tvm_ffi.from_dlpack(b))
    np.testing.assert_array_equal(b, a * 2)
    for where in (0, 1000, 2100, 4095):  # early chunks go to the caller, later ones often to a worker
        bad = a.copy()
        bad[where] = -1
        with pytest.raises(Exception, match="negative value found"):
            mod["check"](tvm_ffi.from_dlpack(bad), tvm_ffi.from_dlpack(b))
    mod["check"](tvm_ffi.from_dlpack(a), tvm_ffi.from_dlpack(b))  # still works afterwards
    np.testing.assert_array_equal(b, a * 2)


def test_thread_count_can_change(cnn):
    x = images(1)[0]
    expected = cnn.run({"image": x})[0]
    previous = cpu_pool.threads()
    try:
        cpu_pool.set_threads(1)
        np.testing.assert_array_equal(cnn.run({"image": x})[0], expected)
        cpu_pool.set_threads(3)
        assert cpu_pool.threads() == 3
        np.testing.assert_array_equal(cnn.run({"image": x})[0], expected)
    finally:
        cpu_pool.set_threads(previous)
