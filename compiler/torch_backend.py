"""`torch.compile(model, backend="tensorforge")`: the backend PyTorch's dynamo calls with each captured FX graph
(registered through the `torch_dynamo_backends` entry point in pyproject.toml, so nothing needs importing first).

This first version covers inference: the graph's parameters and buffers (dynamo hands them in as inputs) become the
compiled model's constants, the other inputs its inputs; a call converts the tensors to numpy without copies where
they are contiguous CPU float tensors, runs the CompiledModel and hands back torch tensors over its outputs. PyTorch
runs the graph itself (eager) where this cannot be exact or is not built yet, with a warning once per graph:
  * the graph does not compile (an op the torch frontend lacks, ...): no partitioning of a graph into compiled and
    PyTorch parts yet;
  * a call with gradients wanted (grad mode on and a parameter or input requiring grad): training through
    aot_autograd is not built yet;
  * the parameters changed since the compile (their version counters moved, e.g. after an optimizer step): the
    graph is compiled again, once per change.
`options={...}` (torch.compile's) are CompileOptions fields: precision, opt_level, tuning_db, num_threads.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping, Sequence

log = logging.getLogger("tensorforge")


def tensorforge_backend(gm, example_inputs: Sequence, options: Mapping | None = None, **_):
    """dynamo's compiler_fn: a callable with gm's signature (see the module docstring)."""
    return _Compiled(gm, list(example_inputs), dict(options or {}))


def _constant_inputs(gm, example_inputs) -> list[int]:
    """The positions of the graph inputs that are the module's parameters and buffers (dynamo passes them in)."""
    import torch

    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, (name, x) in enumerate(zip(names, example_inputs))
            if isinstance(x, torch.nn.Parameter) or "_buffers_" in str(name)]


class _Compiled:
    def __init__(self, gm, example_inputs: list, options: dict):
        self.gm, self.options = gm, options
        self.constants = _constant_inputs(gm, example_inputs)
        self.model = None
        self.versions = None
        self.failed: str | None = None
        self._compile(example_inputs)

    def _compile(self, inputs: list) -> None:
        import torch

        from tensorforge import compile_model
        from tensorforge.compiler.options import CompileOptions
        from tensorforge.runtime.errors import TensorForgeError

        const = set(self.constants)
        module = _with_constants(self.gm, {i: inputs[i] for i in const})
        example = tuple(x for i, x in enumerate(inputs) if i not in const)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = compile_model(module, example_inputs=example, options=CompileOptions(**self.options))
        except (TensorForgeError, TypeError) as e:
            self.model, self.failed = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"tensorforge: a graph of {len(self.gm.graph.nodes)} nodes runs in PyTorch: {self.failed}",
                          stacklevel=3)
            return
        self.versions = [inputs[i]._version for i in self.constants]

    def __call__(self, *args):
        import torch

        if self.model is None:
            return self.gm.forward(*args)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.gm.forward(*args)  # training: not compiled yet
        if [args[i]._version for i in self.constants] != self.versions:
            log.info("tensorforge: parameters changed since the compile; compiling the graph again")
            self._compile(list(args))
            if self.model is None:
                return self.gm.forward(*args)
        const = set(self.constants)
        feeds = {name: args[i].detach().contiguous().numpy()
                 for name, i in zip(self.model.input_names, (i for i in range(len(args)) if i not in const))}
        return tuple(torch.from_numpy(o) for o in self.model.run(feeds))


def _with_constants(gm, constants: Mapping[int, object]):
    """A copy of `gm` whose placeholders at `constants` (position -> tensor) read buffers holding those tensors."""
    import copy

    import torch

    g = copy.deepcopy(gm.graph)
    module = torch.nn.Module()
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    for i, value in constants.items():
        node = placeholders[i]
        name = f"_tf_const_{i}"
        module.register_buffer(name, value.detach().clone())
        with g.inserting_before(node):
            attr = g.get_attr(name)
        node.replace_all_uses_with(attr)
        g.erase_node(node)
    return torch.fx.GraphModule(module, g)
