"""PyTorch -> TensorForge IR, through `torch.export` and its core-ATen decomposition.

The exported program's graph is walked in order; parameters, buffers and constants become known arrays (params
where a real op reads them), each call_function node goes to the converter registered for its ATen op overload
(converters.py). Shapes are static: those of the example inputs.
"""

from __future__ import annotations

import operator
from typing import Sequence

import numpy as np
import torch

from tensorforge.compiler.ir import Graph, TensorType, Value
from tensorforge.frontends.builder import Builder
from tensorforge.runtime.errors import FrontendError, IRError, UnsupportedOpError

from . import backward, fused, indexing, masks  # noqa: F401  (register their converters)
from .converters import CONVERTERS


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()  # (np.ascontiguousarray would make a 0-d tensor 1-d)


# nn.LSTM: one lstm_sequence op per layer and direction instead of ~10 ops per time step; resampling: one matrix
# product per axis (converters.py) instead of gathers of neighbours
KEEP_WHOLE = (torch.ops.aten.lstm.input, torch.ops.aten.upsample_linear1d.vec, torch.ops.aten.upsample_nearest1d.vec,
              torch.ops.aten.upsample_bilinear2d.vec, torch.ops.aten.upsample_nearest2d.vec,
              torch.ops.aten.upsample_trilinear3d.vec, torch.ops.aten.upsample_nearest3d.vec)


# Kept whole in training graphs (aot_autograd): with the CPU flash attention decomposed, its backward (which
# PyTorch runs) reads a logsumexp the decomposition does not give as the kernel would: gradients off by O(1)
# (measured on nn.TransformerEncoder, eager PyTorch under aot_autograd with this table).
KEEP_WHOLE_IN_TRAINING = (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,)


def decompositions(training: bool = False) -> dict:
    """torch.export's core-ATen decompositions, but for the ops with a converter of their own (KEEP_WHOLE) and, for
    training graphs, KEEP_WHOLE_IN_TRAINING."""
    table = torch.export.default_decompositions()
    for op in KEEP_WHOLE + (KEEP_WHOLE_IN_TRAINING if training else ()):
        table.pop(op, None)
    return table


def export(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]):
    """torch.export in eval mode; the caller's module is left in the mode it was in."""
    was_training = module.training
    try:
        with torch.no_grad():
            ep = torch.export.export(module.eval(), tuple(example_inputs))
            return ep.run_decompositions(decompositions())
    except Exception as e:
        raise FrontendError(f"torch.export could not capture the module: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        module.train(was_training)


def trace_graph(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], memo=None):
    """An FX graph module (dynamo's graph, its constants as buffers) traced to core ATen in one pass
    (aot_export_module with `decompositions()`): (the ATen graph module, convert_graph's inputs, each placeholder's
    constant tensor or None where the caller passes it, the buffers and inputs the graph updates in place).
    torch.export followed by run_decompositions traced it twice: BERT-base's graph 2.1-2.6 s against 0.9-1.1 s.
    The composite ops KEEP_WHOLE stay whole as run_decompositions keeps them (its own two private helpers, the
    composite ops' table split out of the decompositions and put in place while tracing); a torch without them
    takes the two passes. `memo` (a compiler.ir.ConstantMemo shared by the traces of one graph at several sizes):
    the constants are read-only views of the tensors, known by their storage, version, shape and type, so that what
    the compile derives from them (transposes, packed weights) is made once for every size. (A tensor changed in
    place moves its version: the backend then compiles again with a new memo.)"""
    helpers = _one_pass_helpers()
    if helpers is None:
        return _exported_graph(module, example_inputs)
    aot_export, ignore_backend_decompositions, keep_composites, split_composites = helpers
    composite, table = split_composites(decompositions())
    try:
        with torch.no_grad(), ignore_backend_decompositions(), keep_composites(composite):
            gm, sig = aot_export(module, tuple(example_inputs), trace_joint=False, decompositions=table)
    except Exception as e:
        raise FrontendError(f"torch could not trace the graph to ATen: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    mutated = sorted(set(sig.buffers_to_mutate.values()) | set(sig.user_inputs_to_mutate.values()))
    users = iter(example_inputs)
    inputs: dict[str, object] = {}
    flat: list = []
    for node in (n for n in gm.graph.nodes if n.op == "placeholder"):
        target = sig.inputs_to_parameters.get(node.name) or sig.inputs_to_buffers.get(node.name)
        if target is not None:
            t = state[target]
            array = _np(t) if memo is None else memo.constant(
                ("torch", t.data_ptr(), t._version, tuple(t.shape), t.stride(), str(t.dtype)), lambda t=t: _frozen(t))
            inputs[node.name] = Known(array, target)
            flat.append(t)
            continue
        x = next(users)
        inputs[node.name] = (node.name if len(example_inputs) > 1 else "input",
                             TensorType(tuple(x.shape), str(_np(x).dtype)))
        flat.append(None)
    return gm, inputs, flat, mutated


def _frozen(t: torch.Tensor) -> np.ndarray:
    a = _np(t).view()
    a.flags.writeable = False
    return a


def _one_pass_helpers():
    """(aot_export_module, and torch.export's private helpers that keep composite ops whole), or None where this
    torch lacks them."""
    try:
        from torch._functorch.aot_autograd import aot_export_module
        from torch.export._trace import _ignore_backend_decomps
        from torch.export.exported_program import (
            _override_composite_implicit_decomp, _split_decomp_table_to_cia_and_python_decomp)
    except ImportError:
        return None
    return (aot_export_module, _ignore_backend_decomps, _override_composite_implicit_decomp,
            _split_decomp_table_to_cia_and_python_decomp)


def _exported_graph(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor]):
    """`trace_graph`'s answer through torch.export and run_decompositions."""
    ep = export(module, example_inputs)
    mutated = [s.target for s in ep.graph_signature.output_specs if s.kind.name != "USER_OUTPUT"]
    state = exported_state(ep)
    flat = [state[s.target] if s.kind.name != "USER_INPUT" else None for s in ep.graph_signature.input_specs]
    return ep.graph_module, exported_inputs(ep, example_inputs), flat, mutated


def from_torch(module: torch.nn.Module, example_inputs: Sequence[torch.Tensor], keep_params: bool = False) -> Graph:
    """Convert an nn.Module (inference) to a verified IR graph, with shapes fixed by `example_inputs`.
    keep_params (training): the module's parameters stay graph params in their own names and layouts, read by run-time
    ops rather than folded into new constants (an LSTM's two biases are not merged into one, its recurrent weight
    is packed at run time)."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    ep = export(module, example_inputs)
    check_supported(ep.graph_module)
    return convert_graph(ep.graph_module, type(module).__name__, exported_inputs(ep, example_inputs, keep_params))


def exported_state(ep) -> dict:
    """The exported program's parameters, buffers and constant tensors, by their targets."""
    return {**ep.state_dict, **getattr(ep, "constants", {})}


def exported_inputs(ep, example_inputs: Sequence[torch.Tensor], keep_params: bool = False) -> dict:
    """`convert_graph`'s inputs for the exported program `ep`: its parameters, buffers and constants as `Known`
    values, its user inputs named as their placeholders ("input" if there is one) with the example inputs' types."""
    sig = ep.graph_signature
    state = exported_state(ep)
    user_inputs = iter(example_inputs)
    inputs: dict[str, object] = {}
    for spec in sig.input_specs:
        name = spec.arg.name
        kind = spec.kind.name
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            inputs[name] = Known(_np(state[spec.target]), spec.target, keep_params and kind == "PARAMETER")
        elif kind == "USER_INPUT":
            x = next(user_inputs)
            inputs[name] = (name if len(example_inputs) > 1 else "input", TensorType(tuple(x.shape), str(_np(x).dtype)))
        else:
            raise FrontendError(f"unsupported exported input kind {kind} ({name})")
    return inputs


def check_supported(gm) -> None:
    """An UnsupportedOpError listing the ATen ops of `gm` that no converter takes, with their nodes."""
    unsupported: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and not is_supported(node):
            unsupported.setdefault(str(node.target), []).append(node.name)
    if unsupported:
        lines = [f"  {op}: {', '.join(names[:8])}" for op, names in unsupported.items()]
        raise UnsupportedOpError(f"the module uses {len(unsupported)} unsupported ATen op(s):\n" + "\n".join(lines),
                                 [(op, 0, names) for op, names in unsupported.items()])


def is_supported(node) -> bool:
    """Has the call_function `node` a converter (getitem always has)?"""
    return node.target is operator.getitem or node.target in CONVERTERS


class Known:
    """A graph input whose value is known when converting (a parameter, buffer or constant): `name` names it in
    the IR, `run_time` keeps it a param that run-time ops read (training, see `from_torch`)."""

    def __init__(self, array: np.ndarray, name: str, run_time: bool = False):
        self.array, self.name, self.run_time = array, name, run_time


def convert_graph(gm, name: str, inputs: dict, memo=None) -> Graph:
    """Convert the core-ATen FX graph `gm` to a verified IR graph. `inputs` maps each placeholder's name to a `Known`
    value or to (the IR input's name, its TensorType). `memo`: the ConstantMemo of the graph's compiles at several
    sizes (see `trace_graph`)."""
    g = Graph(name)
    g.memo = memo
    b = Builder(g, "torch")
    env: dict[str, object] = {}
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        if node.name not in inputs:
            raise FrontendError(f"the graph's input {node.name!r} is not given")
        given = inputs[node.name]
        if isinstance(given, Known):
            env[node.name] = given.array
            b.names[id(given.array)] = given.name
            if given.run_time:
                b.keep_at_run_time(given.array)
        else:
            env[node.name] = g.add_input(*given)

    def arg(a):
        if isinstance(a, torch.fx.Node):
            v = env[a.name]
            if v is None:
                raise b.error(f"input {a.name} is an output we do not compute")
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    for node in gm.graph.nodes:
        if node.op == "get_attr":
            raise FrontendError(f"the graph reads the attribute {node.target!r}: give it as an input")
        if node.op != "call_function":
            continue
        b.at(node.name, str(node.target), node)
        if node.target is operator.getitem:
            src, i = arg(node.args[0]), node.args[1]
            env[node.name] = src[i]
            continue
        try:
            try:
                out = CONVERTERS[node.target](b, *arg(node.args), **{k: arg(v) for k, v in node.kwargs.items()})
            except IRError as e:
                raise b.error(str(e)) from None
        except FrontendError as e:
            e.torch_node = getattr(e, "torch_node", None) or node.name  # torch.compile leaves that node to PyTorch
            raise
        env[node.name] = out
        if isinstance(out, Value) and out.producer is not None and g.is_free(node.name):
            g.rename(out, node.name)
        _check_meta(b, node, out)
    outputs = []
    (out_node,) = [n for n in gm.graph.nodes if n.op == "output"]
    results = out_node.args[0]
    results = results if isinstance(results, (list, tuple)) else [results]
    for r in results:
        b.node_name = "output"
        outputs.append(b.value(arg(r)))
    g.outputs = outputs
    g.output_names = [f"output{i}" if len(outputs) > 1 else "output" for i in range(len(outputs))]
    g.remove_unused()
    g.verify()
    return g


def _check_meta(b, node, out) -> None:
    """Cross-check our type rule with the shape torch.export recorded."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and isinstance(out, (Value, np.ndarray)):
        got = tuple(out.type.shape) if isinstance(out, Value) else out.shape
        if tuple(val.shape) != got:
            raise b.error(f"converted to shape {got}, but torch.export recorded {tuple(val.shape)}")
