"""Reports without building kernels: `analyze` (the optimized graph and its plan, for `tensorforge inspect`) and
`analyze_training` / `training_report` (the same for a training program, `tensorforge inspect --train`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from tensorforge.compiler.backend.lower import partition
from tensorforge.compiler.backend.plan import make_plan
from tensorforge.compiler.driver import import_model, optimize, training_graph
from tensorforge.compiler.ir import Graph
from tensorforge.compiler.options import CompileOptions


def analyze(model, shapes: Mapping[str, Sequence[int]] | None = None, options: CompileOptions | None = None
            ) -> tuple[Graph, dict]:
    """Import and optimize a model and plan its memory, without building kernels: (graph, plan without kernels)."""
    options = options or CompileOptions()
    g = optimize(import_model(model, shapes), options)
    plan, _ = make_plan(g, options.spec.tvm(), [], partition(g))
    return g, plan


def analyze_training(model, loss="cross_entropy", optimizer=None, *,
                     shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                     trainable=None, frozen: Sequence[str] = (), options: CompileOptions | None = None
                     ) -> tuple[Graph, dict]:
    """`analyze` for the training graph (the one compile_training builds): (optimized training graph, plan without
    kernels) with the fusion report and memory statistics, `saved_activation_bytes` among them."""
    options = options or CompileOptions()
    t = training_graph(model, loss, optimizer, options, shapes=shapes, example_inputs=example_inputs, params=params,
                       trainable=trainable, frozen=frozen)
    plan, _ = make_plan(t.graph, options.spec.tvm(), [], partition(t.graph), t.program.state_bindings,
                        {s.name: s.initial for s in t.program.state})
    plan["stats"]["saved_activation_bytes"] = t.program.saved_activation_bytes
    return t.graph, plan


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
