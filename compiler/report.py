"""Reports without building kernels: `analyze` (the optimized graph and its plan, for `tensorforge inspect`) and
`analyze_training` / `training_report` (the same for a training program, `tensorforge inspect --train`)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from compiler.api import CompileOptions, _trainable_names, fusion_report, import_model, optimize
from compiler.backend.build import resolve_target
from compiler.backend.lower import partition
from compiler.backend.plan import make_plan
from compiler.ir import Graph
from compiler.passes.order_updates import order_updates_last


def analyze(model, shapes: Mapping[str, Sequence[int]] | None = None, options: CompileOptions | None = None
            ) -> tuple[Graph, dict]:
    """Import and optimize a model and plan its memory, without building kernels: (graph, plan without kernels)."""
    options = options or CompileOptions()
    g = optimize(import_model(model, shapes), options)
    steps = partition(g)
    plan, _ = make_plan(g, resolve_target(options.target, options.arch), [], steps)
    plan["fusion"] = fusion_report(g, steps)
    return g, plan


def analyze_training(model, loss="cross_entropy", optimizer=None, *,
                     shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                     trainable=None, frozen: Sequence[str] = (), options: CompileOptions | None = None
                     ) -> tuple[Graph, dict]:
    """`analyze` for the training graph: (optimized training graph, plan without kernels) with the fusion report
    and memory statistics, `saved_activation_bytes` among them."""
    from compiler.autodiff.training import LossSpec, OptimizerSpec, build_training_program

    options = options or CompileOptions()
    loss_spec = LossSpec(**({"name": loss} if isinstance(loss, str) else dict(loss)))
    opt = dict(optimizer or {"name": "sgd", "lr": 0.01})
    opt.pop("schedule", None)
    if isinstance(model, (str, os.PathLike, bytes)):
        from frontends.onnx.importer import load_model

        model = load_model(model)
    fwd = import_model(model, shapes, example_inputs, params)
    program = build_training_program(fwd, _trainable_names(model, fwd, trainable, frozen), loss_spec,
                                     OptimizerSpec(**opt))
    bindings = program.state_bindings
    g = optimize(program.graph, options)
    g = order_updates_last(g, {v for v, name in zip(g.outputs, g.output_names) if name in bindings})
    steps = partition(g)
    plan, _ = make_plan(g, resolve_target(options.target, options.arch), [], steps, bindings,
                        {s.name: s.initial for s in program.state})
    plan["stats"]["saved_activation_bytes"] = program.saved_activation_bytes
    plan["fusion"] = fusion_report(g, steps)
    return g, plan


REPORT_KEYS = ("ops", "kernels", "arena_bytes", "live_lower_bound_bytes", "unplanned_bytes", "params_bytes",
               "saved_activation_bytes", "state_bytes")


def training_report(model, loss="cross_entropy", optimizer=None, *, shapes=None, example_inputs=None, params=None,
                    trainable=None, frozen=(), options=None) -> tuple[Graph, dict]:
    """`tensorforge inspect --train`: the training program (forward, loss, backward, update) optimized and planned
    without building kernels. Returns (graph, plan); plan["stats"] holds the inference report's keys (ops, kernels,
    arena_bytes, live_lower_bound_bytes, unplanned_bytes, params_bytes: the constants only, since the parameters
    are state) plus saved_activation_bytes (forward values the backward reads) and state_bytes (parameters,
    optimizer moments and running statistics, kept across steps); plan["fusion"] is the fusion report."""
    g, plan = analyze_training(model, loss, optimizer, shapes=shapes, example_inputs=example_inputs, params=params,
                               trainable=trainable, frozen=frozen, options=options)
    buffers = plan["buffers"]
    plan["stats"]["state_bytes"] = int(sum(
        np.prod(buffers[s["buffer"]]["shape"], dtype=np.int64) * np.dtype(buffers[s["buffer"]]["dtype"]).itemsize
        for s in plan.get("state", [])))
    return g, plan
