"""The compiler's Python API: `compile_model(model, target="cpu", shapes=None) -> runtime.CompiledModel`."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import onnx

from compiler.ir import Graph, print_graph
from compiler.passes import PassManager, pipeline
from runtime import CompiledModel
from runtime.errors import CompileError


@dataclass
class CompileOptions:
    target: str = "cpu"
    opt_level: int = 2
    verify_each_pass: bool = True
    dump_after: frozenset[str] = frozenset()
    disabled_passes: frozenset[str] = frozenset()
    num_threads: int | None = None
    tuning_db: tuple[str, ...] = ()  # the user's tuning databases, searched before the shipped one
    use_shipped_tuning: bool = True  # the repository's own records (compiler/backend/tuned) for matching targets
    timings: dict[str, float] = field(default_factory=dict)  # filled in: stage -> seconds


def import_model(model, shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None,
                 params=None) -> Graph:
    """Any supported model form -> IR graph. ONNX: a path, bytes or onnx.ModelProto; a torch.nn.Module with
    `example_inputs`; a builder-API module (frontends.nn) with `shapes` for its inputs and optional `params`;
    or an IR Graph (copied)."""
    from frontends.nn import Module as BuilderModule

    if isinstance(model, BuilderModule):
        if not shapes:
            raise CompileError("compiling a builder-API module needs shapes={input name: shape}")
        return model.to_graph(shapes, params)
    if type(model).__module__.startswith("torch") or hasattr(model, "_modules"):
        if example_inputs is None:
            raise CompileError("compiling a PyTorch module needs example_inputs=(tensor, ...) to fix its shapes")
        from frontends.torch import from_torch

        return from_torch(model, example_inputs)
    if isinstance(model, Graph):
        model.verify()
        return model.copy()  # passes edit graphs in place; the caller's graph stays as it was
    if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto)):
        from frontends.onnx import from_onnx

        return from_onnx(model, shapes)
    raise CompileError(f"cannot compile a {type(model).__name__}: pass an ONNX file path, onnx.ModelProto or Graph")


def optimize(g: Graph, options: CompileOptions) -> Graph:
    pm = PassManager(pipeline(options.opt_level, options.target), verify_each=options.verify_each_pass,
                     dump_after=options.dump_after, disabled=options.disabled_passes)
    g = pm.run(g)
    for name, secs in pm.timings:
        options.timings[f"pass:{name}"] = secs
    return g


def fusion_report(g: Graph, steps) -> list[dict]:
    """One entry per step: its kernel and nodes, and for an op left on its own, why the fuse pass left it."""
    from compiler.backend.lower import Kernel

    report = []
    for s in steps:
        nodes = s.nodes if isinstance(s, Kernel) else [s.node]
        entry = {"kernel": s.spec.name() if isinstance(s, Kernel) else None,
                 "nodes": [[n.op.name, n.name] for n in nodes]}
        if len(nodes) == 1:
            entry["reason"] = g.fusion_reasons.get(nodes[0], "fusion is off at this optimization level")
        report.append(entry)
    return report


def tune_model(model, db_dir: str, shapes: Mapping[str, Sequence[int]] | None = None, *, trials: int = 64,
               time_budget: float | None = None, retune: bool = False, options: CompileOptions | None = None,
               progress=None):
    """Tune every kernel of `model` with MetaSchedule into the database at `db_dir` (see backend/tuning.py)."""
    from compiler.backend.build import resolve_target
    from compiler.backend.lower import Kernel, partition
    from compiler.backend.tuning import TuningDatabase, tune

    options = options or CompileOptions()
    g = optimize(import_model(model, shapes), options)
    specs = [s.spec for s in partition(g) if isinstance(s, Kernel)]
    db = TuningDatabase(os.fspath(db_dir), resolve_target(options.target))
    return tune(specs, db, trials=trials, time_budget=time_budget, retune=retune, progress=progress)


def analyze(model, shapes: Mapping[str, Sequence[int]] | None = None, options: CompileOptions | None = None
            ) -> tuple[Graph, dict]:
    """Import and optimize a model and plan its memory, without building kernels: (graph, plan without kernels)."""
    from compiler.backend.build import resolve_target
    from compiler.backend.lower import partition
    from compiler.backend.package import make_plan

    options = options or CompileOptions()
    g = optimize(import_model(model, shapes), options)
    steps = partition(g)
    plan, _ = make_plan(g, resolve_target(options.target), [], steps)
    plan["fusion"] = fusion_report(g, steps)
    return g, plan


def tuning_databases(options: CompileOptions, target) -> list:
    from compiler.backend.tuning import SHIPPED, TuningDatabase

    roots = list(options.tuning_db) + ([SHIPPED] if options.use_shipped_tuning else [])
    return [db for db in (TuningDatabase(r, target) for r in roots) if db.exists()]


def compile_graph(g: Graph, options: CompileOptions) -> CompiledModel:
    from compiler.backend.build import build_kernels, host_isa_flags, resolve_target
    from compiler.backend.lower import Kernel, partition
    from compiler.backend.package import make_plan

    target = resolve_target(options.target)
    out_dir = tempfile.mkdtemp(prefix="tensorforge-build-")
    try:
        steps = partition(g)
        result = build_kernels([s.spec for s in steps if isinstance(s, Kernel)], target, out_dir,
                               tuning_databases(options, target))
        options.timings.update(result.timings)
        plan, params = make_plan(g, target, host_isa_flags(), steps)
        for step in plan["steps"]:
            step["tuned"] = step["kernel"] in result.tuned
        plan["stats"]["tuned_kernels"] = sum(step["tuned"] for step in plan["steps"])
        plan["ir"] = print_graph(g)
        plan["fusion"] = fusion_report(g, steps)
        return CompiledModel(plan, result.library_path, params, owned_dir=out_dir, num_threads=options.num_threads)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def compile_model(model, target: str = "cpu", shapes: Mapping[str, Sequence[int]] | None = None, *,
                  opt_level: int = 2, tuning_db: str | Sequence[str] | None = None,
                  options: CompileOptions | None = None, example_inputs=None, params=None) -> CompiledModel:
    """Compile a model for `target` and return a runnable `runtime.CompiledModel`.

    model: an ONNX file path, ONNX bytes, an `onnx.ModelProto`, a `torch.nn.Module` (with `example_inputs`, a tuple
    of tensors that fixes the shapes), a builder-API `frontends.nn.Module` (with `shapes` and optionally `params`,
    else `model.init()`), or an IR `Graph`.
    shapes: binds inputs with symbolic dimensions, e.g. {"x": (1, 3, 224, 224)}; unbound ones default to 1.
    tuning_db: a directory (or several) written by `tensorforge tune`; matching kernels use their tuned schedules.
    """
    if options is None:
        dbs = (tuning_db,) if isinstance(tuning_db, (str, os.PathLike)) else tuple(tuning_db or ())
        options = CompileOptions(target=target, opt_level=opt_level, tuning_db=tuple(map(os.fspath, dbs)))
    t0 = time.perf_counter()
    g = import_model(model, shapes, example_inputs, params)
    t1 = time.perf_counter()
    g = optimize(g, options)
    t2 = time.perf_counter()
    compiled = compile_graph(g, options)
    options.timings.update({"import_s": t1 - t0, "optimize_s": t2 - t1, "total_s": time.perf_counter() - t0})
    compiled.compile_timings = dict(options.timings)
    return compiled
