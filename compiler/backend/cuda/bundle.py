"""CUDA tuning without RPC: candidates built here, measured on the GPU machine, records committed here.

MetaSchedule's own loop builds and measures in one process, so for CUDA it needs the GPU where it compiles. We split
it in three steps that share nothing but files:

1. `prepare_bundle` (here: full TVM + nvcc, no GPU): for every distinct kernel, MetaSchedule's CUDA design space
   (post-order-apply, tensor-core rules included) is sampled into `candidates` schedules (ReplayTrace), each a
   function of the task's kernel library next to our default schedule (backend/cuda/build.py, "default"); each task's
   library is compiled with nvcc into a fatbin. The bundle holds manifest.json (tasks, argument shapes, symbols),
   the libraries and fatbins, the traces (for step 3) and measure.py (backend/cuda/measure.py).
2. `python BUNDLE/measure.py BUNDLE` on the GPU machine (TVM runtime + CUDA driver only) writes results.json.
3. `ingest_results` (here): each measured candidate becomes a MetaSchedule tuning record (its trace, run times)
   in the tuning database under the bundle's CUDA target (backend/tuning.py: one directory per target, TVM version
   checked), and the index gets the best and the default time, so `compile_model(target="cuda", tuning_db=DIR)`
   takes a candidate only where it beat our default on that GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Callable, Sequence

from tensorforge.runtime.artifact import atomic_write
from tensorforge.runtime.errors import CompileError

from ..lower import KernelSpec, build_prim_func
from ..tuning import TuningDatabase, _quiet, distinct_kernels, kernel_flops
from .build import (_last_line, check_device_code, cuda_target, load_tensor_intrinsics, nvcc_fatbin, schedule_cuda,
                    source_digest)

BUNDLE_FORMAT = 1
MEASURE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measure.py")


def _candidates(func, target, count: int, seed: int) -> list:
    """Up to `count` distinct MetaSchedule schedules of `func` for `target`: [(scheduled PrimFunc, trace)]."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    load_tensor_intrinsics()  # the CUDA space's tensor-core rules import them: the fast way first
    with _quiet():
        ctx = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target, space_generator="post-order-apply",
                             search_strategy=ms.search_strategy.ReplayTrace(), task_name="task", num_threads=1,
                             rand_state=seed)
        spaces = ctx.generate_design_space()
        ctx.search_strategy.pre_tuning(count, count, spaces, None, None)
        found = ctx.search_strategy.generate_measure_candidates() or []
        ctx.search_strategy.post_tuning()
    out, seen = [], set()
    for c in found:
        f = c.sch.mod["main"]
        h = tvm_ffi.structural_hash(f)
        if h not in seen:
            seen.add(h)
            out.append((f, c.sch.trace))
    return out


def _compiles(funcs: dict, target):
    """tvm.compile of {symbol: PrimFunc}; None where it fails (a candidate TVM cannot lower)."""
    import tvm

    try:
        return tvm.compile(tvm.IRModule(funcs), target=target)
    except Exception:
        return None


def prepare_bundle(specs: Sequence[KernelSpec], out_dir: str, arch: str = "sm_90", *, candidates: int = 16,
                   seed: int = 0, progress: Callable | None = None) -> dict:
    """Build every distinct kernel's candidates into a bundle directory for measure.py; returns the manifest."""
    import tvm

    target = cuda_target(arch)
    tasks = distinct_kernels(specs)
    if not tasks:
        raise CompileError("the model has no kernels to tune")
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, "arch": arch, "target": str(target), "tvm_version": tvm.__version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "tasks": []}
    traces: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, spec in enumerate(tasks):
        func = build_prim_func(spec, target)
        default, failed = schedule_cuda(tvm.IRModule({"main": func}), target)
        funcs = {} if failed else {"default": default["main"].with_attr("global_symbol", "default")}
        trace_of = {}
        for j, (f, trace) in enumerate(_candidates(func, target, candidates, seed + i)):
            sym = f"ms{j}"
            if _compiles({sym: f.with_attr("global_symbol", sym)}, target) is not None:
                funcs[sym] = f.with_attr("global_symbol", sym)
                trace_of[sym] = trace
        ex = _compiles(funcs, target) if funcs else None
        if ex is None or not trace_of:
            if progress:
                progress(i + 1, len(tasks), spec.name(), {"candidates": 0})
            continue
        source = ex.mod.imports[0].inspect_source() if ex.mod.imports else ""
        check_device_code(list(funcs), source)
        lib, fat = f"task{i}.so", f"task{i}.fatbin"
        with open(os.path.join(out_dir, fat), "wb") as f:
            f.write(nvcc_fatbin(source, arch))
        ex.export_library(os.path.join(out_dir, lib))
        args = [[[int(d) for d in p.shape], str(p.dtype)] for p in func.params]
        manifest["tasks"].append({"key": spec.key(), "name": spec.name(), "library": lib, "fatbin": fat,
                                  "source_sha256": source_digest(source), "args": args, "flops": kernel_flops(func),
                                  "candidates": [{"symbol": s, "kind": "default" if s == "default" else
                                                  "metaschedule"} for s in funcs]})
        # each candidate as a MetaSchedule record without run times (its trace); ingest adds the GPU's times
        from tvm.s_tir import meta_schedule as ms

        workload = ms.database.Workload(tvm.IRModule({"main": func}))
        args_info = ms.arg_info.ArgInfo.from_prim_func(func)
        traces[spec.key()] = {"workload": tvm.ir.save_json(func), "traces": {
            s: tvm.ir.save_json(ms.database.TuningRecord(t, workload, None, target, args_info).as_json())
            for s, t in trace_of.items()}}
        if progress:
            progress(i + 1, len(tasks), spec.name(), {"candidates": len(funcs), "s": time.perf_counter() - t0})
    if not manifest["tasks"]:
        raise CompileError("no kernel got a candidate schedule that compiles for CUDA")
    manifest["id"] = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:16]
    atomic_write(os.path.join(out_dir, "traces.json"), lambda f: f.write(json.dumps(traces).encode()))
    atomic_write(os.path.join(out_dir, "manifest.json"), lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    shutil.copyfile(MEASURE_SCRIPT, os.path.join(out_dir, "measure.py"))
    return manifest


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CompileError(f"cannot read the {what} {path}: {_last_line(e) or type(e).__name__}") from None


def ingest_results(bundle_dir: str, results_path: str, db_root: str) -> dict:
    """Commit a bundle's measured candidates into the tuning database at `db_root`, under the bundle's CUDA target.
    Returns {spec key: index entry} for the tasks that got a measurement."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from .measure import RESULTS_FORMAT, median, rank

    manifest = _load_json(os.path.join(bundle_dir, "manifest.json"), "tuning bundle manifest")
    results = _load_json(results_path, "measurement results")
    traces = _load_json(os.path.join(bundle_dir, "traces.json"), "tuning bundle traces")
    if results.get("format") != RESULTS_FORMAT or results.get("bundle_id") != manifest.get("id"):
        raise CompileError(f"{results_path} holds measurements of bundle {results.get('bundle_id')}, not of "
                           f"{bundle_dir} ({manifest.get('id')}): measure this bundle with its measure.py")
    if results.get("arch") != manifest["arch"]:
        raise CompileError(f"the bundle was built for {manifest['arch']} but measured on {results.get('gpu')} "
                           f"({results.get('arch')}): records must come from the GPU they are for; prepare a bundle "
                           f"with --arch {results.get('arch')}")
    if manifest.get("tvm_version") != tvm.__version__:
        raise CompileError(f"the bundle was built with TVM {manifest.get('tvm_version')}, this is TVM "
                           f"{tvm.__version__}: its traces may not replay; prepare it again")
    target = cuda_target(manifest["arch"])
    db = TuningDatabase(os.fspath(db_root), target)
    ms_db = db.ms_database()
    index = db.index()
    done = {}
    for task in manifest["tasks"]:
        measured = results["tasks"].get(task["key"], {})
        best = rank(measured)
        stored = traces.get(task["key"])
        if not best or stored is None:
            continue
        func = tvm.ir.load_json(stored["workload"])
        with _quiet():
            workload = ms_db.commit_workload(tvm.IRModule({"main": func}))
            args_info = ms.arg_info.ArgInfo.from_prim_func(func)
            for sym, secs in best:
                if sym not in stored["traces"]:
                    continue  # the default schedule: compared against, never stored as a record
                unmeasured = ms.database.TuningRecord.from_json(tvm.ir.load_json(stored["traces"][sym]), workload)
                rec = ms.database.TuningRecord(unmeasured.trace, workload, [float(x) for x in measured[sym]["secs"]],
                                               target, args_info)
                ms_db.commit_tuning_record(rec)
        tuned = [(s, t) for s, t in best if s in stored["traces"]]
        default = measured.get("default", {}).get("secs")
        entry = {"name": task["name"], "trials": len(tuned), "measured_on": results.get("gpu"),
                 "best_us": tuned[0][1] * 1e6 if tuned else None,
                 "default_us": median(default) * 1e6 if default else None,
                 "gflops": task["flops"] / tuned[0][1] / 1e9 if tuned and task.get("flops") else None}
        index[task["key"]] = done[task["key"]] = entry
    db.write_index(index)
    return done
