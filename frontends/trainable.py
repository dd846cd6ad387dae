"""Which parameters a model trains unless told otherwise: the frontends know the model kinds, so they decide.

The caller applies its own choices on top (compile_training's `trainable=` replaces this set, `frozen=` is taken
out of it).
"""

from __future__ import annotations

import onnx

from tensorforge.compiler.ir import Graph
from tensorforge.frontends.nn import Module


def default_trainable(model, graph: Graph) -> set[str]:
    """The names of `graph`'s params (`graph` imported from `model`) that train by default:
    - a builder-API module (frontends.nn): its params declared trainable (not e.g. batch-norm running statistics);
    - an onnx.ModelProto: its float initializers (not constants computed in the graph);
    - a torch module (anything with `named_parameters`): its parameters (not its buffers), those that are float;
    - anything else (an IR Graph): every float param.
    An ONNX file path or bytes counts as "anything else": load it first (frontends.onnx.importer.load_model)."""
    params = {p.name for p in graph.params}
    float_params = {p.name for p in graph.params if p.type.dtype.startswith("float")}
    if isinstance(model, Module):
        names = {k for k, spec in model.named_param_specs() if spec.trainable}
    elif isinstance(model, onnx.ModelProto):
        names = {i.name for i in model.graph.initializer} & float_params
    elif hasattr(model, "named_parameters"):
        names = {k for k, _ in model.named_parameters()} & float_params
    else:
        names = float_params
    return names & params
