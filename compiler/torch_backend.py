"""`torch.compile(model, backend="tensorforge")`: the backend PyTorch's dynamo calls with each captured FX graph
(registered through the `torch_dynamo_backends` entry point in pyproject.toml, so nothing needs importing first).

Inference. The graph's parameters and buffers (dynamo hands them in as inputs) become the compiled model's
constants, the other inputs its inputs; the graph is exported to core ATen (frontends/torch/importer.export) and:
  * every op has a converter: the whole graph is one CompiledModel;
  * some have none: the ATen graph is split (torch.fx's CapabilityBasedPartitioner) into the largest pieces of
    supported ops, each compiled, and PyTorch runs the ops between them, so an op we lack never fails the model (a
    piece that still does not compile runs in PyTorch too, with a warning).
A call converts the tensors to numpy without copies where they are contiguous CPU tensors and hands back torch
tensors over the outputs' arrays. PyTorch runs the whole graph itself (eager), with a warning once per graph, where
this cannot be exact or is not built yet:
  * the graph updates buffers or inputs in place (batch norm in train mode, under no_grad);
  * the export fails.
The parameters changing since the compile (their version counters moved, e.g. after an optimizer step) compiles the
graph again, once per change.

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
    (whole, or split where ops lack converters: _aten_runner). PyTorch's autograd calls them, so
    `loss.backward()` and any torch.optim optimizer work unchanged."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from tensorforge.frontends.torch.importer import decompositions

    compile_options = _compile_options(options)

    def compiler(gm_aten, example):
        try:
            gm_laid, perms = _inputs_as_laid_out(gm_aten)
            inputs = {n.name: (n.name, _tensor_type(n.meta.get("val")))
                      for n in gm_laid.graph.nodes if n.op == "placeholder"}
            runner = _Laid(_aten_runner(gm_laid, inputs, [None] * len(inputs), compile_options), perms)
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


class _Compiled:
    def __init__(self, gm, example_inputs: list, options: dict):
        self.gm, self.options = gm, options
        self.constants = _constant_inputs(gm, example_inputs)
        self.runner = None  # a callable on the non-constant inputs' tensors, giving a tuple of tensors
        self.pieces = None  # (compiled, in PyTorch) piece counts where the graph is split
        self.versions = None
        self.failed: str | None = None
        self._compile(example_inputs)

    @property
    def model(self):
        """The CompiledModel of the whole graph, if it compiled whole (else None)."""
        return getattr(self.runner, "model", None)

    def _compile(self, inputs: list) -> None:
        from tensorforge.runtime.errors import TensorForgeError

        const = set(self.constants)
        self.versions = [inputs[i]._version for i in self.constants]
        options = _compile_options(self.options)
        example = tuple(x for i, x in enumerate(inputs) if i not in const)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.runner = _build(self.gm, {i: inputs[i] for i in const}, example, options)
        except TensorForgeError as e:
            self.runner, self.failed = None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"tensorforge: a graph of {len(self.gm.graph.nodes)} nodes runs in PyTorch: {self.failed}",
                          stacklevel=3)
            return
        self.pieces = getattr(self.runner, "pieces", None)

    def __call__(self, *args):
        if self.runner is None:
            return self.gm.forward(*args)
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return self.gm.forward(*args)  # (dynamo guards on grad mode: a graph wanting gradients is _training's)
        if [args[i]._version for i in self.constants] != self.versions:
            log.info("tensorforge: parameters changed since the compile; compiling the graph again")
            self._compile(list(args))
            if self.runner is None:
                return self.gm.forward(*args)
        const = set(self.constants)
        return self.runner(*(a for i, a in enumerate(args) if i not in const))


def _build(gm, constants: Mapping[int, object], example: tuple, options):
    """The runner for dynamo's graph `gm` with `constants` (position -> tensor) baked in: a _Whole model or a
    _Split graph. TensorForgeError where neither can be made (the export fails, the graph mutates state)."""
    key = _cache_key(gm.code, constants, example, options)
    cached = _load(key)  # (neither TVM nor the compiler imported on the way: a cache hit loads in the runtime alone)
    if cached is not None:
        return _Whole(cached, list(cached.input_names))
    from tensorforge.frontends.torch.importer import export, exported_inputs
    from tensorforge.runtime.errors import FrontendError

    module = _with_constants(gm, constants)
    ep = export(module, example)
    mutated = [s.target for s in ep.graph_signature.output_specs if s.kind.name != "USER_OUTPUT"]
    if mutated:
        raise FrontendError(f"the graph updates {mutated} in place (a module in train mode?): not compiled")
    state = {**ep.state_dict, **getattr(ep, "constants", {})}
    flat = [state[s.target] if s.kind.name != "USER_INPUT" else None for s in ep.graph_signature.input_specs]
    runner = _aten_runner(ep.graph_module, exported_inputs(ep, example), flat, options)
    if isinstance(runner, _Whole):
        _store(key, runner.model)
    return runner


def _aten_runner(gm, inputs: dict, constants: list, options):
    """A core-ATen graph compiled: a _Whole model where every node converts, else a _Split graph. `inputs` as
    convert_graph's (each placeholder a Known value or an IR input's (name, type)); `constants` the placeholders'
    values in order (None for those the caller passes)."""
    from tensorforge.frontends.torch.importer import is_supported
    from tensorforge.runtime.errors import FrontendError

    out_node = [n for n in gm.graph.nodes if n.op == "output"][0]
    results = out_node.args[0]
    if isinstance(results, (tuple, list)) and any(not isinstance(r, torch.fx.Node) or _view_of_input(r)
                                                  for r in results):
        return _OutputsInTorch(gm, results, inputs, constants, options)
    if all(n.op != "call_function" or is_supported(n) for n in gm.graph.nodes):
        try:
            model = _compile_aten(gm, inputs, options)
        except FrontendError as e:
            if getattr(e, "torch_node", None) is None:
                raise
            return _Split(gm, inputs, constants, options, {e.torch_node})  # that node's converter refused it
        names = [inputs[n.name][0] for n in gm.graph.nodes if n.op == "placeholder" and isinstance(inputs[n.name],
                                                                                                   tuple)]
        return _Whole(model, names, _output_strides(gm))
    return _Split(gm, inputs, constants, options)


def _inputs_as_laid_out(gm):
    """(a copy of gm whose inputs are as laid out in memory, the permutation of each: None where it is row-major).
    An input traced as a permuted view of row-major storage (the backward's saved `t(weight)`, a view of the
    weight: see _view_of_input) becomes an input of the storage's order followed by a permute in the graph, so that
    it is fed without a copy and the permute folds into its reader (a transposed weight into dense's packing)."""
    import copy

    gm = copy.deepcopy(gm)
    perms = []
    for node in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        val = node.meta.get("val")
        perm = None
        if isinstance(val, torch.Tensor) and val.dim() > 1 and not val.is_contiguous():
            order = sorted(range(val.dim()), key=lambda d: (-val.stride()[d], d))
            laid = val.permute(order)
            if laid.is_contiguous():
                perm = order
        perms.append(perm)
        if perm is None:
            continue
        inverse = [perm.index(d) for d in range(len(perm))]
        users = list(node.users)
        with gm.graph.inserting_after(node):
            view = gm.graph.call_function(torch.ops.aten.permute.default, (node, inverse))
        for u in users:
            u.replace_input_with(node, view)
        view.meta["val"] = val
        node.meta = {**node.meta, "val": val.permute(perm)}
    gm.recompile()
    return gm, perms


class _Laid:
    """A runner fed its inputs permuted as _inputs_as_laid_out laid them (views, no copies)."""

    def __init__(self, runner, perms: list):
        self.runner, self.perms = runner, perms
        self.model, self.pieces = getattr(runner, "model", None), getattr(runner, "pieces", None)

    def __call__(self, *args):
        return self.runner(*(a if p is None else a.permute(p) for a, p in zip(args, self.perms)))


def _compile_aten(gm, inputs: dict, options):
    from tensorforge.compiler.api import compile_model
    from tensorforge.frontends.torch.importer import convert_graph

    return compile_model(convert_graph(gm, "torch_graph", inputs), options=options)


_VIEWS = {torch.ops.aten.permute.default, torch.ops.aten.t.default, torch.ops.aten.view.default,
          torch.ops.aten.transpose.int, torch.ops.aten.expand.default, torch.ops.aten.alias.default,
          torch.ops.aten.unsqueeze.default, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims,
          torch.ops.aten.slice.Tensor, torch.ops.aten.select.int}


def _view_of_input(node) -> bool:
    """Is `node` a graph input, or a chain of view ops on one (aot_autograd's forward saves `t(weight)` for the
    backward): PyTorch makes such an output as a view, without a copy."""
    while node.op == "call_function" and node.target in _VIEWS:
        node = node.args[0]
    return node.op == "placeholder"


class _OutputsInTorch:
    """A graph some of whose outputs are no tensors it computes (a backward graph's None for an input that wants
    no gradient) or views of its inputs: the rest compiled, those made by PyTorch (views, no copies) and put in
    place."""

    def __init__(self, gm, results, inputs: dict, constants: list, options):
        import copy

        self.results = list(results)
        self.placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.constants = constants
        self.computed = [i for i, r in enumerate(results) if isinstance(r, torch.fx.Node) and not _view_of_input(r)]
        self.views = [i for i, r in enumerate(results) if isinstance(r, torch.fx.Node) and _view_of_input(r)]
        gm = copy.deepcopy(gm)
        out_node = [n for n in gm.graph.nodes if n.op == "output"][0]
        out_node.args = (tuple(out_node.args[0][i] for i in self.computed),)
        gm.graph.eliminate_dead_code()
        gm.recompile()
        self.inner = _aten_runner(gm, inputs, constants, options)
        self.model, self.pieces = getattr(self.inner, "model", None), getattr(self.inner, "pieces", None)
        self.eager_ops = getattr(self.inner, "eager_ops", [])

    def _view(self, node, env):
        if node.op == "placeholder":
            return env[node.name]
        x = self._view(node.args[0], env)
        return node.target(x, *node.args[1:], **node.kwargs)

    def __call__(self, *args):
        out = list(self.results)
        if self.computed:
            for i, y in zip(self.computed, self.inner(*args)):
                out[i] = y
        if self.views:
            it = iter(args)
            flat = [c if c is not None else next(it) for c in self.constants]
            env = {p.name: a for p, a in zip(self.placeholders, flat)}
            for i in self.views:
                out[i] = self._view(self.results[i], env)
        return tuple(out)


class _Whole:
    """The whole graph as one CompiledModel; `names`: its input for each argument; `strides`: each output's strides
    as traced (None: any)."""

    def __init__(self, model, names: list[str], strides: list | None = None):
        self.model, self.names, self.strides = model, names, strides

    def __call__(self, *args):
        return tuple(_restrided(_run(self.model, args, self.names), self.strides))


def _output_strides(gm) -> list:
    """The strides the traced graph's outputs have (node.meta["val"]), None where unknown. aot_autograd's backward
    graphs read saved forward outputs as laid out when traced (as_strided views), so outputs are given the same."""
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    vals = [getattr(r, "meta", {}).get("val") for r in (out if isinstance(out, (tuple, list)) else [out])]
    return [tuple(v.stride()) if isinstance(v, torch.Tensor) else None for v in vals]


def _restrided(tensors: list, strides: list | None) -> list:
    """Each tensor in the strides given (a copy where they are not its own, row-major ones)."""
    if strides is None:
        return tensors
    out = []
    for t, st in zip(tensors, strides):
        if st is not None and t.dim() and tuple(t.stride()) != st:
            laid = torch.empty_strided(t.shape, st, dtype=t.dtype)
            laid.copy_(t)
            t = laid
        out.append(t)
    return out


def _run(model, args, names=None) -> list:
    """model run on torch tensors (numpy views where they are contiguous CPU tensors), torch tensors back.
    `names`: the model's input for each argument (default: its inputs in order); inputs it dropped are not fed."""
    wanted = set(model.input_names)
    feeds = {name: a.detach().contiguous().numpy()
             for name, a in zip(names or model.input_names, args) if name in wanted}
    return [torch.from_numpy(o) for o in model.run(feeds)]


class _Split:
    """A core-ATen graph split into pieces of supported ops (each a CompiledModel) with PyTorch running the ops
    between them: the graph module, its fused submodules swapped for _Piece modules. `constants`: each
    placeholder's value, or None for those passed in a call (in order)."""

    # a piece whose conversion fails at a node is split again without that node, this many times at most
    MAX_RETRIES = 8

    def __init__(self, gm, inputs: dict, constants: list, options, excluded: set[str] = frozenset()):
        self.constants = constants
        excluded = set(excluded)
        for _ in range(self.MAX_RETRIES):
            refused = self._split(gm, inputs, options, excluded)
            if refused is None:
                break
            excluded.add(refused)
        else:
            self._split(gm, inputs, options, excluded, last=True)
        compiled, eager = self.pieces
        log.info("tensorforge: graph split into %d compiled piece(s) (%d in PyTorch); PyTorch runs %s", compiled,
                 eager, self.eager_ops)

    def _split(self, gm, inputs: dict, options, excluded: set[str], last: bool = False) -> str | None:
        """Partition and compile; the name of a node whose converter refused it (to exclude and split again)
        unless `last`, else None."""
        import copy

        from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
        from torch.fx.passes.operator_support import OperatorSupportBase

        from tensorforge.frontends.torch.importer import Known, is_supported
        from tensorforge.runtime.errors import TensorForgeError

        class Support(OperatorSupportBase):
            def is_node_supported(self, submodules, node) -> bool:
                return node.op == "call_function" and node.name not in excluded and is_supported(node)

        gm = copy.deepcopy(gm)
        partitioner = CapabilityBasedPartitioner(gm, Support(), allows_single_node_partition=True)
        gm = partitioner.fuse_partitions(partitioner.propose_partitions())
        compiled, eager = 0, 0
        for node in list(gm.graph.nodes):
            if node.op != "call_module":
                continue
            sub = getattr(gm, node.target)
            placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
            sub_inputs = {}
            for ph, arg in zip(placeholders, node.args):
                given = inputs.get(arg.name) if arg.op == "placeholder" else None
                sub_inputs[ph.name] = given if isinstance(given, Known) else (ph.name, _tensor_type(arg.meta.get("val")))
            try:
                model = _compile_aten(sub, sub_inputs, options)
            except TensorForgeError as e:
                if getattr(e, "torch_node", None) is not None and not last:
                    return e.torch_node
                eager += 1
                warnings.warn(f"tensorforge: a piece of {len(sub.graph.nodes)} nodes runs in PyTorch: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", stacklevel=5)
                continue
            compiled += 1
            out = [n for n in sub.graph.nodes if n.op == "output"][0].args[0]
            keep = [i for i, ph in enumerate(placeholders) if not isinstance(sub_inputs[ph.name], Known)]
            setattr(gm, node.target, _Piece(model, keep, isinstance(out, (tuple, list)), _output_strides(sub)))
        self.gm = gm
        self.pieces = (compiled, eager)
        self.eager_ops = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return None

    def __call__(self, *args):
        it = iter(args)
        flat = [c if c is not None else next(it) for c in self.constants]
        with torch.no_grad():
            out = self.gm(*flat)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _tensor_type(val):
    from tensorforge.compiler.ir import TensorType
    from tensorforge.frontends.torch.converters import _np_dtype
    from tensorforge.runtime.errors import FrontendError

    if val is None or not hasattr(val, "shape"):
        raise FrontendError("a piece's input has no recorded shape")
    return TensorType(tuple(int(d) for d in val.shape), _np_dtype(val.dtype))


class _Piece(torch.nn.Module):
    """A compiled piece of a _Split graph, in place of the fused submodule: reads the inputs at `keep` (the others
    are constants compiled in) and gives one tensor, or a tuple where the submodule gave several (`many`)."""

    def __init__(self, model, keep: list[int], many: bool, strides: list | None = None):
        super().__init__()
        self.model, self.keep, self.many, self.strides = model, keep, many, strides

    def forward(self, *args):
        out = _restrided(_run(self.model, [args[i] for i in self.keep]), self.strides)
        return tuple(out) if self.many else out[0]


def _with_constants(gm, constants: Mapping[int, object]):
    """A copy of `gm` whose placeholders at `constants` (position -> tensor) read buffers holding those tensors."""
    import copy

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


# -- the on-disk cache --------------------------------------------------------------------------------------------
def _cache_key(code: str, constants: Mapping[int, object], example: tuple, options) -> str:
    """What a compiled graph depends on: the FX code, the constants' values, the inputs' shapes and types, the
    options, the host CPU and the versions."""
    from concurrent.futures import ThreadPoolExecutor

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
    h.update(_fingerprint(options).encode())
    return h.hexdigest()[:32]


def _fingerprint(options) -> str:
    """The options, the host CPU's features and the versions, without importing TVM (its version from the
    installed distribution's metadata): a cache hit then costs no TVM import (1.4-3 s here)."""
    from importlib.metadata import PackageNotFoundError, version

    from tensorforge import __version__
    from tensorforge.runtime.cpu_features import cpu_features

    try:
        tvm_version = version("apache-tvm")
    except PackageNotFoundError:
        import tvm

        tvm_version = tvm.__version__
    return repr((repr(options), sorted(cpu_features()), __version__, tvm_version, torch.__version__))


def _path(key: str) -> str | None:
    from tensorforge.compiler.disk_cache import cache_dir

    root = cache_dir()
    return None if root is None else os.path.join(root, "specializations", "torch", key + ".tfa")


def _load(key: str):
    path = _path(key)
    if path is None or not os.path.exists(path):
        return None
    from tensorforge.runtime import load

    try:
        model = load(path)
    except Exception as e:  # noqa: BLE001 - a damaged or stale file is compiled again
        log.warning("ignoring the cached graph %s (%s: %s); compiling it again", path, type(e).__name__, e)
        return None
    try:
        os.utime(path)  # recently used: trimmed last
    except OSError:
        pass
    log.info("tensorforge: loaded a compiled graph from %s", path)
    return model


def _store(key: str, model) -> None:
    from tensorforge.compiler.disk_cache import trim_cache
    from tensorforge.runtime.errors import ArtifactError

    path = _path(key)
    if path is None or not hasattr(model, "save"):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save(path)  # atomic (runtime/artifact.py)
    except (OSError, ArtifactError) as e:
        log.warning("cannot keep the compiled graph in %s: %s", path, e)
        return
    trim_cache(keep=path)
