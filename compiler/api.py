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
    timings: dict[str, float] = field(default_factory=dict)  # filled in: stage -> seconds


def import_model(model, shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Any supported model form -> IR graph. ONNX: a path, bytes or onnx.ModelProto; or an IR Graph as is."""
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


def compile_graph(g: Graph, options: CompileOptions) -> CompiledModel:
    from compiler.backend.build import build_kernels, host_isa_flags, resolve_target
    from compiler.backend.lower import Kernel, partition
    from compiler.backend.package import make_plan

    target = resolve_target(options.target)
    out_dir = tempfile.mkdtemp(prefix="tensorforge-build-")
    try:
        steps = partition(g)
        result = build_kernels([s.spec for s in steps if isinstance(s, Kernel)], target, out_dir)
        options.timings.update(result.timings)
        plan, params = make_plan(g, target, host_isa_flags(), steps)
        plan["ir"] = print_graph(g)
        plan["fusion"] = fusion_report(g, steps)
        return CompiledModel(plan, result.library_path, params, owned_dir=out_dir, num_threads=options.num_threads)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def compile_model(model, target: str = "cpu", shapes: Mapping[str, Sequence[int]] | None = None, *,
                  opt_level: int = 2, options: CompileOptions | None = None) -> CompiledModel:
    """Compile a model for `target` and return a runnable `runtime.CompiledModel`.

    model: an ONNX file path, ONNX bytes, an `onnx.ModelProto`, or an IR `Graph`.
    shapes: binds inputs with symbolic dimensions, e.g. {"x": (1, 3, 224, 224)}; unbound ones default to 1.
    """
    options = options or CompileOptions(target=target, opt_level=opt_level)
    t0 = time.perf_counter()
    g = import_model(model, shapes)
    t1 = time.perf_counter()
    g = optimize(g, options)
    t2 = time.perf_counter()
    compiled = compile_graph(g, options)
    options.timings.update({"import_s": t1 - t0, "optimize_s": t2 - t1, "total_s": time.perf_counter() - t0})
    compiled.compile_timings = dict(options.timings)
    return compiled
