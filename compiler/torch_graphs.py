"""Core-ATen FX graphs compiled and run on torch tensors, for the torch.compile backend (torch_backend.py): one
CompiledModel for a graph whose every node converts (`Whole`), else the graph split into compiled pieces with
PyTorch running the rest (`Split`); outputs that are views of inputs made by PyTorch (`_OutputsInTorch`); inputs
laid out as in memory (`inputs_as_laid_out`, `Laid`). The kernels read the input tensors where they lie and write
output tensors torch allocates (DLPack: CompiledModel.run_dlpack), no copies either way.
"""

from __future__ import annotations

import logging
import warnings

import torch

log = logging.getLogger("tensorforge")


def aten_runner(gm, inputs: dict, constants: list, options, kernels=None, memo=None):
    """A core-ATen graph compiled: a Whole model where every node converts, else a Split graph. `inputs` as
    convert_graph's (each placeholder a Known value or an IR input's (name, type)); `constants` the placeholders'
    values in order (None for those the caller passes). `kernels` (backend.symbolic.SymbolicKernels) and `memo`
    (ir.ConstantMemo): the kernels over run-time sizes and the constants of the graph's builds at other sizes, for
    a Whole model."""
    from tensorforge.frontends.torch.importer import is_supported
    from tensorforge.runtime.errors import FrontendError

    out_node = [n for n in gm.graph.nodes if n.op == "output"][0]
    results = out_node.args[0]
    if isinstance(results, (tuple, list)) and any(not isinstance(r, torch.fx.Node) or _view_of_input(r)
                                                  for r in results):
        return _OutputsInTorch(gm, results, inputs, constants, options)
    if all(n.op != "call_function" or is_supported(n) for n in gm.graph.nodes):
        try:
            model = _compile_aten(gm, inputs, options, kernels, memo)
        except FrontendError as e:
            if getattr(e, "torch_node", None) is None:
                raise
            return Split(gm, inputs, constants, options, {e.torch_node})  # that node's converter refused it
        names = [inputs[n.name][0] for n in gm.graph.nodes if n.op == "placeholder" and isinstance(inputs[n.name],
                                                                                                   tuple)]
        return Whole(model, names, _output_strides(gm))
    return Split(gm, inputs, constants, options)


def inputs_as_laid_out(gm):
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


class Laid:
    """A runner fed its inputs permuted as inputs_as_laid_out laid them (views, no copies)."""

    def __init__(self, runner, perms: list):
        self.runner, self.perms = runner, perms
        self.model, self.pieces = getattr(runner, "model", None), getattr(runner, "pieces", None)

    def __call__(self, *args):
        return self.runner(*(a if p is None else a.permute(p) for a, p in zip(args, self.perms)))


def _compile_aten(gm, inputs: dict, options, kernels=None, memo=None):
    from tensorforge.compiler.api import _compile
    from tensorforge.frontends.torch.importer import convert_graph

    return _compile(convert_graph(gm, "torch_graph", inputs, memo), None, options, kernels=kernels)


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
        self.inner = aten_runner(gm, inputs, constants, options)
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
            env = {p.name: a for p, a in zip(self.placeholders, _with_constant_args(self.constants, args))}
            for i in self.views:
                out[i] = self._view(self.results[i], env)
        return tuple(out)


class Whole:
    """The whole graph as one CompiledModel; `names`: its input for each argument; `strides`: each output's strides
    as traced (None: any)."""

    def __init__(self, model, names: list[str], strides: list | None = None):
        self.model, self.names, self.strides = model, names, strides
        wanted = set(model.input_names)
        self._feed = [(i, n) for i, n in enumerate(names) if n in wanted]  # (inputs the model dropped: not fed)
        self._run = _runner(model)

    def __call__(self, *args):
        return tuple(_restrided(self._run({n: args[i] for i, n in self._feed}), self.strides))


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


def _runner(model):
    """A function running `model` on torch tensors by input name, giving torch tensors: read and written in place
    (DLPack, no copies) by a CompiledModel whose inputs and outputs are types torch has; through numpy otherwise."""
    program = getattr(model, "program", None)
    if hasattr(model, "run_dlpack") and all(program.buffers[b].dtype in _TORCH_DTYPES
                                            for _, b in program.inputs + program.outputs):
        names = model.input_names
        return lambda tensors: model.run_dlpack([tensors[n].detach() for n in names], _empty)
    return lambda tensors: [torch.from_numpy(o)
                            for o in model.run({n: t.detach().contiguous().numpy() for n, t in tensors.items()})]


_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                 "bfloat16": torch.bfloat16, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
                 "int64": torch.int64, "uint8": torch.uint8, "bool": torch.bool}  # what crosses by DLPack


def _empty(shape: tuple, dtype: str):
    return torch.empty(shape, dtype=_TORCH_DTYPES[dtype])


class Split:
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
        """Partition, convert and compile; the name of a node whose converter refused it (to exclude and split again)
        unless `last`, else None."""
        import copy

        from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
        from torch.fx.passes.operator_support import OperatorSupportBase

        from tensorforge.compiler.api import compile_model
        from tensorforge.frontends.torch.importer import Known, convert_graph, is_supported
        from tensorforge.runtime.errors import TensorForgeError

        class Support(OperatorSupportBase):
            def is_node_supported(self, submodules, node) -> bool:
                return node.op == "call_function" and node.name not in excluded and is_supported(node)

        gm = copy.deepcopy(gm)
        partitioner = CapabilityBasedPartitioner(gm, Support(), allows_single_node_partition=True)
        gm = partitioner.fuse_partitions(partitioner.propose_partitions())
        # every piece converted first: a node its converter refuses is split out again before any compile is spent
        converted = []  # (fused node, its submodule, IR graph or None, its inputs, why not converted)
        for node in [n for n in gm.graph.nodes if n.op == "call_module"]:
            sub = getattr(gm, node.target)
            sub_inputs = {}
            for ph, arg in zip(_placeholders(sub), node.args):
                given = inputs.get(arg.name) if arg.op == "placeholder" else None
                sub_inputs[ph.name] = given if isinstance(given, Known) else (ph.name, tensor_type(arg.meta.get("val")))
            try:
                converted.append((node, sub, convert_graph(sub, "torch_graph", sub_inputs), sub_inputs, None))
            except TensorForgeError as e:
                if getattr(e, "torch_node", None) is not None and not last:
                    return e.torch_node
                converted.append((node, sub, None, sub_inputs, e))
        compiled, eager = 0, 0
        for node, sub, graph, sub_inputs, error in converted:
            if error is None:
                try:
                    model = compile_model(graph, options=options)
                except TensorForgeError as e:
                    error = e
            if error is not None:
                eager += 1
                warnings.warn(f"tensorforge: a piece of {len(sub.graph.nodes)} nodes runs in PyTorch: "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                              stacklevel=5)
                continue
            compiled += 1
            out = [n for n in sub.graph.nodes if n.op == "output"][0].args[0]
            keep = [i for i, ph in enumerate(_placeholders(sub)) if not isinstance(sub_inputs[ph.name], Known)]
            setattr(gm, node.target, _Piece(model, keep, isinstance(out, (tuple, list)), _output_strides(sub)))
        self.gm = gm
        self.pieces = (compiled, eager)
        self.eager_ops = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return None

    def __call__(self, *args):
        with torch.no_grad():
            out = self.gm(*_with_constant_args(self.constants, args))
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _placeholders(gm) -> list:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _with_constant_args(constants: list, args) -> list:
    """Every placeholder's value: the constant where there is one, else the next of the call's `args`."""
    it = iter(args)
    return [c if c is not None else next(it) for c in constants]


def tensor_type(val):
    from tensorforge.compiler.ir import TensorType
    from tensorforge.frontends.torch.converters import _np_dtype
    from tensorforge.runtime.errors import FrontendError

    if val is None or not hasattr(val, "shape"):
        raise FrontendError("a piece's input has no recorded shape")
    return TensorType(tuple(int(d) for d in val.shape), _np_dtype(val.dtype))


class _Piece(torch.nn.Module):
    """A compiled piece of a Split graph, in place of the fused submodule: reads the inputs at `keep` (the others
    are constants compiled in) and gives one tensor, or a tuple where the submodule gave several (`many`)."""

    def __init__(self, model, keep: list[int], many: bool, strides: list | None = None):
        super().__init__()
        self.model, self.keep, self.many, self.strides = model, keep, many, strides
        self._run = _runner(model)

    def forward(self, *args):
        out = _restrided(self._run({n: args[i] for i, n in zip(self.keep, self.model.input_names)}), self.strides)
        return tuple(out) if self.many else out[0]
