"""Auto-tuning with MetaSchedule, and the tuning database that `compile_model` reads.

Layout of a database directory:
    DIR/<target key>/meta.json                     {"format", "target", "tvm_version"}: checked on every open
    DIR/<target key>/database_workload.json        MetaSchedule's JSON database (workloads: the canonical,
    DIR/<target key>/database_tuning_record.json    unscheduled PrimFunc of each kernel; records: schedule traces)
    DIR/<target key>/index.json                    our kernels: spec key -> name, trials, best time, GFLOP/s
One subdirectory per target: MetaSchedule's own lookup ignores the target, so a record tuned for one CPU must never
be found by a query for another. A database written by another TVM version is ignored with a warning. A record
applies only to a structurally equal workload: a changed kernel simply finds none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from tensorforge.runtime.artifact import atomic_write
from tensorforge.runtime.errors import CompileError

from .lower import KernelSpec, build_prim_func

log = logging.getLogger(__name__)
FORMAT = 1
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")  # the repository's own database


def target_key(target) -> str:
    """A directory name for a target: kind and CPU, plus a hash of the whole target."""
    cfg = target.export()
    readable = "-".join(str(cfg.get(k)) for k in ("kind", "mcpu", "arch") if cfg.get(k))
    digest = hashlib.sha256(_target_identity(target).encode()).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{readable}-{digest}")


def _target_identity(target) -> str:
    """What makes records valid: kind, triple, CPU and features, not the thread count."""
    cfg = target.export()
    return json.dumps({k: str(cfg.get(k)) for k in ("kind", "mtriple", "mcpu", "mattr", "arch") if cfg.get(k)},
                      sort_keys=True)


def parse_duration(text: str) -> float:
    """'30m' -> 1800.0; also '90s', '2h', '45' (seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass
class TuningDatabase:
    root: str
    target: object

    def __post_init__(self):
        import tvm

        self.dir = os.path.join(self.root, target_key(self.target))
        self.meta = {"format": FORMAT, "target": _target_identity(self.target), "tvm_version": tvm.__version__}
        self.usable = True
        self._ms = None
        meta_path = os.path.join(self.dir, "meta.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                found = json.load(f)
            if found.get("target") != self.meta["target"]:
                raise CompileError(f"tuning database {self.dir} holds records for {found.get('target')}, "
                                   f"not {self.meta['target']}: its directory name collides; move it away")
            if found.get("format") != FORMAT or found.get("tvm_version") != tvm.__version__:
                warnings.warn(f"tuning database {self.dir} was written by TVM {found.get('tvm_version')} "
                              f"(format {found.get('format')}); this is TVM {tvm.__version__}: its records are ignored",
                              stacklevel=2)
                self.usable = False

    # -- reading ------------------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.dir, "database_tuning_record.json"))

    def index(self) -> dict:
        path = os.path.join(self.dir, "index.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)

    def ms_database(self):
        from tvm.s_tir import meta_schedule as ms

        if self._ms is None:
            os.makedirs(self.dir, exist_ok=True)
            self._ms = ms.database.JSONDatabase(work_dir=self.dir)
        return self._ms

    def lookup(self, spec: KernelSpec, func=None):
        """The tuned PrimFunc for this kernel, or None. `func` is its canonical (unscheduled) PrimFunc, if built.
        A record that measured slower than our default schedule is not used."""
        entry = self.index().get(spec.key()) if self.usable and self.exists() else None
        if entry is None or not entry.get("best_us"):
            return None
        if entry.get("default_us") and entry["best_us"] >= entry["default_us"]:
            return None
        from tvm.s_tir import meta_schedule as ms

        func = func if func is not None else build_prim_func(spec, self.target)
        with _quiet():
            sch = ms.tir_integration.compile_tir(self.ms_database(), func, self.target)
        return None if sch is None else sch.mod["main"]

    # -- writing ------------------------------------------------------------------------------------------------------
    def write_index(self, index: dict) -> None:
        """Replace the index (and write meta.json): spec key -> {name, trials, best_us, default_us, gflops, ...}."""
        os.makedirs(self.dir, exist_ok=True)
        atomic_write(os.path.join(self.dir, "meta.json"), lambda f: f.write(json.dumps(self.meta, indent=1).encode()))
        atomic_write(os.path.join(self.dir, "index.json"), lambda f: f.write(json.dumps(index, indent=1).encode()))

    def commit(self, func, trace, run_secs: Sequence[float]) -> None:
        """Store a schedule `trace` of the unscheduled kernel `func` as a MetaSchedule record measured at
        `run_secs` (seconds); `lookup` replays it on a structurally equal kernel."""
        import tvm
        from tvm.s_tir import meta_schedule as ms

        with _quiet():
            wl = self.ms_database().commit_workload(tvm.IRModule({"main": func}))
            self.ms_database().commit_tuning_record(ms.database.TuningRecord(
                trace, wl, [float(x) for x in run_secs], self.target, ms.arg_info.ArgInfo.from_prim_func(func)))


class _quiet:
    """Silence MetaSchedule's loggers (it prints a table per task)."""

    def __enter__(self):
        self.levels = {}
        for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule", "tvm"):
            lg = logging.getLogger(name)
            self.levels[name] = lg.level
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def kernel_flops(func) -> float:
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:
        return 0.0


@dataclass
class TuneResult:
    tuned: int
    skipped: int
    remaining: int
    seconds: float


# MetaSchedule's own builder and runner give up on a candidate after 30 s: on a loaded 2-core machine every build of
# a small kernel took longer and tuning ended with no measurement at all. Ours wait this long (tensorforge tune
# --build-timeout); a hung build still ends.
BUILD_TIMEOUT_S = 600.0


def tune(specs: Sequence[KernelSpec], db: TuningDatabase, *, trials: int = 64, time_budget: float | None = None,
         retune: bool = False, progress: Callable | None = None, seed: int = 0,
         build_timeout: float = BUILD_TIMEOUT_S, remote=None, shard: tuple[int, int] = (0, 1)) -> TuneResult:
    """Tune every distinct kernel not yet in `db` (resumable: finished kernels are kept in the index after each one).

    `progress(done, total, name, info)` is called after each kernel; info has trials, best_us, gflops, left_s.
    `build_timeout`: seconds MetaSchedule's builder and runner may take per candidate batch. `remote` (a
    backend/remote.py RemoteServers): candidates measured on the tracker's servers (MetaSchedule's RPCRunner, one
    worker per server); `shard`: as for search_knobs."""
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    index = db.index()
    tasks = shard_kernels(distinct_kernels(specs), shard)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    runner = (ms.runner.LocalRunner(timeout_sec=build_timeout, evaluator_config=evaluator) if remote is None else
              ms.runner.RPCRunner(remote.rpc_config(), evaluator, max_workers=remote.count))
    todo = [s for s in tasks if retune or s.key() not in index]
    done = 0
    for i, spec in enumerate(todo):
        elapsed = time.perf_counter() - t0
        per_task = elapsed / done if done else 0.0
        if time_budget is not None and done and elapsed + per_task > time_budget:
            break
        func = build_prim_func(spec, db.target)
        flops = kernel_flops(func)
        with tempfile.TemporaryDirectory() as work, _quiet():
            ms.tune_tir(func, db.target, work_dir=work, max_trials_global=trials, max_trials_per_task=trials,
                        num_trials_per_iter=min(trials, 32), database=db.ms_database(),
                        builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=build_timeout),
                        runner=runner,
                        cost_model="random", num_tuning_cores=1, seed=seed)
        best = _best_seconds(db, func)
        default = default_schedule_seconds(func, db.target)
        index[spec.key()] = {"name": spec.name(), "trials": trials, "best_us": None if best is None else best * 1e6,
                             "default_us": None if default is None else default * 1e6,
                             "gflops": None if not best or not flops else flops / best / 1e9}
        db.write_index(index)
        done += 1
        if progress:
            elapsed = time.perf_counter() - t0
            left = (len(todo) - done) * elapsed / done
            if time_budget is not None:
                left = min(left, max(time_budget - elapsed, 0.0))
            progress(done, len(todo), spec.name(), {**index[spec.key()], "left_s": left})
    return TuneResult(done, len(tasks) - len(todo), len(todo) - done, time.perf_counter() - t0)


def distinct_kernels(specs: Sequence[KernelSpec]) -> list[KernelSpec]:
    """The specs with identical kernels (same key) once, in first-seen order."""
    first: dict = {}
    for s in specs:
        first.setdefault(s.key(), s)
    return list(first.values())


def default_schedule_seconds(func, target, repeat: int = 5) -> float | None:
    """Time the kernel with our default schedule (compiler/backend/cpu/rules.py) on random inputs."""
    import tvm

    from tensorforge.runtime.cpu_features import amx_permission

    from .cpu.prefetch import insert_prefetches
    from .cpu.rules import schedule_cpu

    amx_permission()  # bf16 kernels on AMX tiles fault without it (runtime/cpu_features.py)
    try:
        ex = tvm.compile(tvm.IRModule({"main": insert_prefetches(schedule_cpu(func, target))}), target=target)
        dev = tvm.cpu()
        args = _random_args(func, dev)
        timer = ex.mod.time_evaluator("main", dev, number=3, repeat=repeat, min_repeat_ms=20)
        return float(min(timer(*args).results))
    except Exception:  # a kernel we cannot time here is simply not compared
        return None


def _random_args(func, dev) -> list:
    """Tensors for a kernel's parameters: uniform [-1, 1) floats, zeros otherwise."""
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    args = []
    for param in func.params:  # buffer-typed vars in TVM 0.27
        shape = [int(d) for d in param.shape]
        dtype = str(param.dtype)
        data = rng.uniform(-1, 1, shape).astype(dtype) if dtype.startswith("float") else np.zeros(shape, dtype)
        args.append(tvm.runtime.tensor(data, dev))
    return args


def _best_seconds(db: TuningDatabase, func) -> float | None:
    import tvm

    with _quiet():
        recs = db.ms_database().get_top_k(db.ms_database().commit_workload(tvm.IRModule({"main": func})), 1)
    if not recs or not recs[0].run_secs:
        return None
    secs = [float(x) for x in recs[0].run_secs]
    return sum(secs) / len(secs)


def search_knobs(specs: Sequence[KernelSpec], db: TuningDatabase, *, rounds: int = 5, margin: float = 0.03,
                 retune: bool = False, progress: Callable | None = None, time_budget: float | None = None,
                 remote=None, shard: tuple[int, int] = (0, 1)) -> TuneResult:
    """Tune by searching our own schedules: every kernel whose rule has knobs (compiler/backend/cpu/) is
    scheduled once per combination of their candidates, all variants are built into one library and timed in interleaved
    rounds (median per variant); the best variant, if it beats the default by more than `margin` (a fraction; a
    negative margin stores a slower one, which `lookup` then ignores: tests use it), is stored as a
    MetaSchedule record (its schedule's trace) in `db`. The index keeps every searched kernel's default and best
    time, so `lookup` takes a record only where it won. Cheap enough for a 2-core machine (seconds per kernel),
    unlike MetaSchedule's search, which starts from a generic space. Resumable like `tune`.

    remote: a backend/remote.py RemoteServers: the variants are built here and timed on the servers registered
    with TVM's RPC tracker, one kernel per server at a time (a thread each). shard (i, n): only every n-th of the
    distinct kernels, from the i-th (identical machines tuning parts of a model; `merge_databases` joins them)."""
    import threading

    from tensorforge.runtime.cpu_features import amx_permission

    t0 = time.perf_counter()
    index = db.index()
    tasks = distinct_kernels(specs)
    cost = knob_costs(tasks, db.target) if remote is not None or shard[1] > 1 else {}
    tasks = shard_kernels(tasks, shard, cost)
    # the longest searches first: with several servers, none is left with a long one at the end
    todo = sorted((s for s in tasks if retune or s.key() not in index), key=lambda s: -cost.get(s.key(), 0))
    amx_permission()  # bf16 kernels on AMX tiles fault without it
    lock = threading.Lock()  # the database, the index and the counters
    state = {"done": 0, "next": 0}

    def take():
        with lock:
            elapsed = time.perf_counter() - t0
            if state["next"] >= len(todo) or (time_budget is not None and state["done"]
                                               and elapsed + elapsed / state["done"] > time_budget):
                return None
            state["next"] += 1
            return todo[state["next"] - 1]

    def work(measure) -> None:
        while (spec := take()) is not None:
            entry = _search_one(spec, db, measure, rounds, margin, lock)
            with lock:
                state["done"] += 1
                if entry is None:
                    continue
                index[spec.key()] = entry
                db.write_index(index)
                if progress:
                    elapsed = time.perf_counter() - t0
                    left = (len(todo) - state["done"]) * elapsed / state["done"]
                    progress(state["done"], len(todo), spec.name(), {**entry, "left_s": left})

    if remote is None:
        work(_LocalMeasure())
    else:
        from .build import run_threads

        def worker(i: int) -> None:  # one per server; a failure is raised after the other servers' kernels
            with remote.session(i) as measure:
                work(measure)

        run_threads(worker, remote.count, "tensorforge-rpc")
    done = state["done"]
    return TuneResult(done, len(tasks) - len(todo), len(todo) - done, time.perf_counter() - t0)


def shard_kernels(tasks: list, shard: tuple[int, int], cost: dict | None = None) -> list:
    """Shard i of n of the kernels: the same split on every machine, balanced by `cost` (key -> estimated work;
    equal without): the costliest first, each to the shard with the least work so far."""
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise CompileError(f"shard {i}/{n}: give i/n with 0 <= i < n")
    if n == 1:
        return tasks
    cost = cost or {}
    load, mine = [0.0] * n, []
    for s in sorted(tasks, key=lambda s: (-cost.get(s.key(), 1), s.key())):
        j = min(range(n), key=lambda b: (load[b], b))
        load[j] += cost.get(s.key(), 1)
        if j == i:
            mine.append(s)
    return mine


def knob_costs(tasks: list, target) -> dict:
    """key -> the knob search's work for each kernel: its variants and the default, each built and timed alike
    (0 where there is nothing to search)."""
    from .cpu.rules import knob_variants, schedule_cpu_traced

    out = {}
    for spec in tasks:
        try:
            sch, rule = schedule_cpu_traced(build_prim_func(spec, target), target)
        except Exception:  # noqa: BLE001 - a kernel we cannot schedule costs nothing to search
            sch, rule = None, None
        variants = len(knob_variants(rule)) if sch is not None else 0
        out[spec.key()] = variants + 1 if variants else 0
    return out


class _LocalMeasure:
    """Times variants on this machine."""

    def time(self, ex, syms: list[str], func, rounds: int) -> dict:
        import tvm

        return _time_variants(ex.mod, tvm.cpu(), syms, func, rounds)


def _time_variants(mod, dev, syms: list[str], func, rounds: int) -> dict:
    """{sym: [seconds per round]} of each variant that runs, timed in interleaved rounds on `dev`."""
    args = _random_args(func, dev)
    timers = {}
    for sym in syms:
        try:
            timers[sym] = mod.time_evaluator(sym, dev, number=1, repeat=1, min_repeat_ms=30)
            timers[sym](*args)  # warm-up (and a variant that fails to run is dropped here)
        except Exception as e:
            log.debug("knob variant %s dropped: %s", sym, e)
            timers.pop(sym, None)
    samples = {sym: [] for sym in timers}
    for _ in range(rounds):
        for sym, timer in timers.items():
            samples[sym].append(float(timer(*args).mean))
    return samples


def _variant_library(schedules: dict, target):
    """(one executable of every variant that builds, their symbols): all at once, else one by one."""
    import tvm

    from .cpu.prefetch import insert_prefetches

    def module(syms):
        return tvm.IRModule({sym: insert_prefetches(schedules[sym][0].mod["main"]).with_attr("global_symbol", sym)
                             for sym in syms})

    try:
        return tvm.compile(module(schedules), target=target), list(schedules)
    except Exception as e:  # one bad variant: find those that build alone
        log.debug("knob variants did not build together: %s", e)
    ok = []
    for sym in schedules:
        try:
            tvm.compile(module([sym]), target=target)
            ok.append(sym)
        except Exception as e:
            log.debug("knob variant %s dropped: %s", sym, e)
    return (tvm.compile(module(ok), target=target), ok) if ok else (None, [])


def _search_one(spec: KernelSpec, db: TuningDatabase, measure, rounds: int, margin: float, lock) -> dict | None:
    """Search one kernel's knobs; its index entry (the winner committed to `db` under `lock`), or None where there
    is nothing to search."""
    import numpy as np

    from .cpu.rules import knob_variants, knobs_record, schedule_cpu_traced

    func = build_prim_func(spec, db.target)
    sch0, rule = schedule_cpu_traced(func, db.target)
    variants = knob_variants(rule)
    if sch0 is None or not variants:
        return None  # nothing to search: the default rules apply, no index entry needed
    schedules = {"default": (sch0, None)}
    for i, knobs in enumerate(variants):
        sch, used = schedule_cpu_traced(func, db.target, knobs)
        if sch is not None and used is not None and used.name == rule.name:  # else it fell back: no variant
            schedules[f"v{i}"] = (sch, knobs)
    ex, syms = _variant_library(schedules, db.target)
    if "default" not in syms:
        return None
    samples = measure.time(ex, syms, func, rounds)
    if "default" not in samples:
        return None
    med = {sym: float(np.median(v)) for sym, v in samples.items()}
    variants_timed = [sym for sym in med if sym != "default"]
    if not variants_timed:
        return None
    best = min(variants_timed, key=med.get)
    flops = kernel_flops(func)
    won = med[best] < (1 - margin) * med["default"]
    if won:
        with lock:
            db.commit(func, schedules[best][0].trace, samples[best])
    chosen = best if won else "default"
    return {"name": spec.name(), "method": "knobs", "trials": len(samples), "best_us": med[chosen] * 1e6,
            "default_us": med["default"] * 1e6, **knobs_record(rule, schedules[chosen][1]),
            "gflops": flops / med[chosen] / 1e9 if flops else None}

