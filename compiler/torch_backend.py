"""`torch.compile(model, backend="tensorforge")`: the backend PyTorch's dynamo calls with each captured FX graph
(registered through the `torch_dynamo_backends` entry point in pyproject.toml, so nothing needs importing first).

Inference. The graph's parameters and buffers (dynamo hands them in as inputs) become the compiled model's
constants, the other inputs its inputs; the graph is exported to core ATen (frontends/torch/importer.export) and:
  * every op has a converter: the whole graph is one CompiledModel;
  * some have none: the ATen graph is split (torch.fx's CapabilityBasedPartitioner) into the largest pieces of
    supported ops, each compiled, and PyTorch runs the ops between them, so an op we lack never fails the model (a
    piece that still does not compile runs in PyTorch too, with a warning).
The kernels read a call's tensors where they lie and write output tensors allocated by torch (DLPack: no
copies either way, CompiledModel.run_dlpack). PyTorch runs the whole graph itself (eager), with a warning once per graph, where
this cannot be exact or is not built yet:
  * the graph updates buffers or inputs in place (batch norm in train mode, under no_grad);
  * the export fails.
The parameters changing since the compile (their version counters moved: a load_state_dict, an optimizer step)
compiles the graph again; when they change a second time (a model evaluated between training steps) the graph is
compiled once more with them as inputs (its weights packed at run time), and their changes cost nothing after.
A graph with symbolic sizes (torch.compile(dynamic=True), or dynamo marking a size dynamic after a second one) is
compiled for each call's sizes on first sight and kept per sizes (16 at most), the builds sharing their kernels
over run-time sizes (compiler/backend/symbolic.py) and their constants (a ConstantMemo: each weight packed once);
the module's float attributes that dynamic=True passes as
tensors (eps) are compiled in like the sizes. The IR's shapes are static (issue 17's symbolic dims would compile it
once).

Training. A graph captured with gradients wanted (grad mode on, a parameter or input requiring grad) goes through
aot_autograd: its forward and backward are core-ATen graphs whose inputs are the parameters, inputs, saved
activations and incoming gradients, each compiled as above (whole, or split: dropout and the CPU flash attention
run in PyTorch between compiled pieces). PyTorch's autograd calls them, so `loss.backward()` and any torch.optim
optimizer work unchanged. Outputs that are views of inputs (the saved `t(weight)`) are made by PyTorch as views,
the others laid out with the strides traced; inputs traced as permuted views are fed as laid out in memory.

Compiled graphs are kept in the on-disk cache (compiler/disk_cache.py, `specializations/torch/`), keyed by the FX
graph's code, the inputs' shapes and types, the constants' bytes, the options, the host CPU and the versions: a
second process loads them instead of compiling.
`options={...}` (torch.compile's) are CompileOptions fields: precision, opt_level, tuning_db, num_threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Mapping, Sequence

import torch  # loaded by dynamo, which calls this backend, anyway

from tensorforge.compiler.torch_graphs import Laid, Whole, aten_runner, inputs_as_laid_out, tensor_type

log = logging.getLogger("tensorforge")


def tensorforge_backend(gm, example_inputs: Sequence, options: Mapping | None = None, **_):
    """dynamo's compiler_fn: a callable with gm's signature (see the module docstring)."""
    options = dict(options or {})
    if torch.is_grad_enabled() and any(getattr(x, "requires_grad", False) for x in example_inputs):
        return _training(gm, list(example_inputs), options)
    return _Compiled(gm, list(example_inputs), options)


def _compile_options(options: dict):
    from tensorforge.compiler.options import CompileOptions

    try:
        return CompileOptions(**options)
    except TypeError as e:
        raise TypeError(f"torch.compile(backend='tensorforge', options=...): {e}") from None


def _training(gm, example_inputs: list, options: dict):
    """A graph captured with gradients wanted: aot_autograd traces its forward and backward as two core-ATen
    graphs (parameters, saved activations and gradients as their inputs and outputs), and each is compiled here
    (whole, or split where ops lack converters: aten_runner). PyTorch's autograd calls them, so
    `loss.backward()` and any torch.optim optimizer work unchanged."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from tensorforge.frontends.torch.importer import decompositions

    compile_options = _compile_options(options)

    def compiler(gm_aten, example):
        try:
            gm_laid, perms = inputs_as_laid_out(gm_aten)
            inputs = {n.name: (n.name, tensor_type(n.meta.get("val")))
                      for n in gm_laid.graph.nodes if n.op == "placeholder"}
            runner = Laid(aten_runner(gm_laid, inputs, [None] * len(inputs), compile_options), perms)
        except Exception as e:  # noqa: BLE001 - anything: PyTorch runs this graph
            warnings.warn(f"tensorforge: a training graph of {len(gm_aten.graph.nodes)} nodes runs in PyTorch: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", stacklevel=2)
            return make_boxed_func(gm_aten.forward)
        return make_boxed_func(runner)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler, decompositions=decompositions(training=True))(
        gm, example_inputs)


def _constant_inputs(gm, example_inputs) -> list[int]:
    """The positions of the graph inputs that are the module's parameters and buffers (dynamo passes them in)."""
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, (name, x) in enumerate(zip(names, example_inputs))
            if isinstance(x, torch.nn.Parameter) or "_buffers_" in str(name)]


def _symbolic(x) -> bool:
    return isinstance(x, torch.SymInt) or isinstance(x, torch.Tensor) and any(
        isinstance(d, torch.SymInt) for d in x.shape)


class _Compiled:
    """dynamo's graph for inference. A graph with symbolic sizes (torch.compile(dynamic=True), or dynamo's own
    after a second shape) is compiled on each call's first sight of its sizes (the sizes baked in) and kept per
    sizes; otherwise at once. Anything failing runs the graph in PyTorch, with a warning, never failing the call."""

    MAX_SPECIALIZATIONS = 16  # per graph with symbolic sizes; past it PyTorch runs the new sizes
    # parameter changes compiled in before the graph takes its parameters as inputs instead (packed at run time):
    # a model evaluated between training steps changes them before every evaluation
    CHANGES_COMPILED_IN = 1

    def __init__(self, gm, example_inputs: list, options: dict):
        self.gm, self.options = gm, options
        self.constants = _constant_inputs(gm, example_inputs)
        self.sized = [i for i, x in enumerate(example_inputs) if isinstance(x, (int, torch.SymInt))]
        # a module's float attributes (a layer norm's eps, an embedding's norm_type): with dynamic=True dynamo passes
        # each as a 0-dim tensor the graph reads with .item(); torch.export cannot trace an op on such a value (a
        # data-dependent float): compiled in, like the sizes, and compiled again for other values
        self.scalars = _scalar_inputs(gm, example_inputs, set(self.constants))
        self.symbolic = any(_symbolic(x) for x in example_inputs) or bool(self.scalars)
        self.runner = None  # a callable on the non-constant tensor inputs, giving a tuple of tensors
        self.pieces = None  # (compiled, in PyTorch) piece counts where the graph is split
        self.versions = None
        self.failed: str | None = None
        self._by_sizes: dict[tuple, tuple] = {}  # sizes -> (runner, versions, failed): graphs with symbolic sizes
        # ... whose builds share their kernels over run-time sizes (compiler/backend/symbolic.py)
        # ... and their constants (read once, transposed and packed once for every size: compiler/ir/constants.py)
        self._kernels = self._memo = None
        if self.symbolic:
            from tensorforge.compiler.backend.symbolic import SymbolicKernels
            from tensorforge.compiler.ir import ConstantMemo

            self._kernels, self._memo = SymbolicKernels(), ConstantMemo()
        self.changes = 0  # times the parameters changed after a compile
        self._inputs = len(example_inputs)
        # the inputs compiled in as constants: the parameters and buffers, until they change more than
        # CHANGES_COMPILED_IN times; and the inputs the runner takes
        self._bake(set(self.constants))
        if not self.symbolic:
            self._compile(example_inputs)

    @property
    def model(self):
        """The CompiledModel of the whole graph, if it compiled whole (else None)."""
        return getattr(self.runner, "model", None)

    def _bake(self, baked: set) -> None:
        self.baked = baked
        self._fed = [i for i in range(self._inputs) if i not in baked | set(self.sized) | set(self.scalars)]

    def _compile(self, inputs: list) -> None:
        const = self.baked
        self.versions = [inputs[i]._version for i in self.constants]
        try:
            options = _compile_options(self.options)
            gm, kept = _with_ints(self.gm, {i: int(inputs[i]) for i in self.sized},
                                  {i: float(inputs[i]) for i in self.scalars})
            position = {old: new for new, old in enumerate(kept)}
            example = tuple(inputs[i] for i in kept if i not in const)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.runner = _build(gm, {position[i]: inputs[i] for i in const}, example, options, self._kernels,
                                     self._memo)
        except Exception as e:  # noqa: BLE001 - anything (a TensorForgeError, an export's own error): PyTorch runs it
            self.runner, self.failed = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"tensorforge: a graph of {len(self.gm.graph.nodes)} nodes runs in PyTorch: {self.failed}",
                          stacklevel=3)
            return
        self.failed = None
        self.pieces = getattr(self.runner, "pieces", None)

    def _sizes(self, args) -> tuple:
        return tuple(int(a) if i in self.sized else float(a) if i in self.scalars else tuple(a.shape)
                     if isinstance(a, torch.Tensor) else None for i, a in enumerate(args))

    def __call__(self, *args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.gm.forward(*args)  # (dynamo guards on grad mode: a graph wanting gradients is _training's)
        if self.symbolic:
            sizes = self._sizes(args)
            if sizes in self._by_sizes:
                self.runner, self.versions, self.failed = self._by_sizes[sizes]
            elif len(self._by_sizes) < self.MAX_SPECIALIZATIONS:
                log.info("tensorforge: compiling the graph for sizes %s", sizes)
                self._compile(list(args))
                self._by_sizes[sizes] = (self.runner, self.versions, self.failed)
            else:
                return self.gm.forward(*args)
        if self.runner is None:
            return self.gm.forward(*args)
        if self.baked and [args[i]._version for i in self.constants] != self.versions:
            self.changes += 1
            if self._memo is not None:  # the old constants' copies and what was made of them: not needed again
                from tensorforge.compiler.ir import ConstantMemo

                self._memo = ConstantMemo()
            if self.changes > self.CHANGES_COMPILED_IN:
                log.info("tensorforge: parameters changed again; the graph takes them as inputs from now on")
                self._bake(set())
                self._by_sizes.clear()  # runners of other sizes take no parameters
            else:
                log.info("tensorforge: parameters changed since the compile; compiling the graph again")
            self._compile(list(args))
            if self.symbolic:
                self._by_sizes[self._sizes(args)] = (self.runner, self.versions, self.failed)
            if self.runner is None:
                return self.gm.forward(*args)
        return self.runner(*(args[i] for i in self._fed))


def _scalar_inputs(gm, example_inputs, constants: set) -> list[int]:
    """The positions of the inputs that are 0-dim float tensors the graph reads only through .item()."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return [i for i, (n, x) in enumerate(zip(placeholders, example_inputs))
            if i not in constants and isinstance(x, torch.Tensor) and x.dim() == 0 and x.dtype.is_floating_point
            and n.users and all(u.op == "call_method" and u.target == "item" for u in n.users)]


def _with_ints(gm, values: Mapping[int, int], scalars: Mapping[int, float] | None = None):
    """(gm with the integer placeholders at `values` (position -> size) replaced by those numbers, and the .item()
    of the scalar tensor placeholders at `scalars` (position -> value) by those values; the positions of the
    placeholders kept). No copy where there are none."""
    scalars = dict(scalars or {})
    if not values and not scalars:
        return gm, list(range(len([n for n in gm.graph.nodes if n.op == "placeholder"])))
    import copy

    g = copy.deepcopy(gm.graph)
    placeholders = [n for n in g.nodes if n.op == "placeholder"]

    def replace(node, value):
        for user in list(node.users):
            user.args = torch.fx.node.map_arg(user.args, lambda a, node=node, value=value: value if a is node else a)
            user.kwargs = torch.fx.node.map_arg(user.kwargs,
                                                lambda a, node=node, value=value: value if a is node else a)
        g.erase_node(node)

    for i, value in values.items():
        replace(placeholders[i], value)
    for i, value in scalars.items():
        for item in list(placeholders[i].users):
            replace(item, value)
        g.erase_node(placeholders[i])
    kept = [i for i in range(len(placeholders)) if i not in values and i not in scalars]
    return torch.fx.GraphModule(gm, g), kept


def _build(gm, constants: Mapping[int, object], example: tuple, options, kernels=None, memo=None):
    """The runner for dynamo's graph `gm` with `constants` (position -> tensor) baked in: a Whole model or a
    Split graph. TensorForgeError where neither can be made (the export fails, the graph mutates state).
    `kernels`, `memo`: the SymbolicKernels and ConstantMemo of the graph's builds at other sizes."""
    key = _cache_key(gm.code, constants, example, options)
    cached = _load(key)  # (neither TVM nor the compiler imported on the way: a cache hit loads in the runtime alone)
    if cached is not None:
        return Whole(cached, list(cached.input_names))
    from tensorforge.frontends.torch.importer import trace_graph
    from tensorforge.runtime.errors import FrontendError

    aten, inputs, flat, mutated = trace_graph(_with_constants(gm, constants), example, memo)
    if mutated:
        raise FrontendError(f"the graph updates {mutated} in place (a module in train mode?): not compiled")
    runner = aten_runner(aten, inputs, flat, options, kernels, memo)
    if isinstance(runner, Whole):
        _store(key, runner.model)
    return runner


def _with_constants(gm, constants: Mapping[int, object]):
    """A copy of `gm` whose placeholders at `constants` (position -> tensor) read buffers holding those tensors."""
    import copy

    g = copy.deepcopy(gm.graph)
    module = torch.nn.Module()
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    for i, value in constants.items():
        node = placeholders[i]
        name = f"_tf_const_{i}"
        module.register_buffer(name, value.detach())  # read in place: a graph mutating it is refused in _build
        with g.inserting_before(node):
            attr = g.get_attr(name)
        node.replace_all_uses_with(attr)
        g.erase_node(node)
    return torch.fx.GraphModule(module, g)


# -- the on-disk cache --------------------------------------------------------------------------------------------
def _cache_key(code: str, constants: Mapping[int, object], example: tuple, options) -> str:
    """What a compiled graph depends on: the FX code, the constants' values, the inputs' shapes and types, the
    options, the host CPU and the versions."""
    from concurrent.futures import ThreadPoolExecutor

    from tensorforge.compiler.disk_cache import fingerprint

    def digest(i: int) -> bytes:  # hashlib lets go of the GIL over large buffers: the constants hash in parallel
        t = constants[i].detach().contiguous()
        h = hashlib.sha256(repr((i, tuple(t.shape), str(t.dtype))).encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        return h.digest()

    h = hashlib.sha256(code.encode())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for d in pool.map(digest, sorted(constants)):
            h.update(d)
    h.update(repr([(tuple(x.shape), str(x.dtype)) for x in example]).encode())
    h.update(fingerprint(options, torch.__version__).encode())
    return h.hexdigest()[:32]


def _path(key: str) -> str | None:
    from tensorforge.compiler.disk_cache import cache_dir

    root = cache_dir()
    return None if root is None else os.path.join(root, "specializations", "torch", key + ".tfa")


def _load(key: str):
    from tensorforge.compiler.disk_cache import load_cached

    return load_cached(_path(key), "compiled graph")


def _store(key: str, model) -> None:
    from tensorforge.compiler.disk_cache import store_cached

    store_cached(_path(key), model, "compiled graph")
