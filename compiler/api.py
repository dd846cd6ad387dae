"""The compiler's Python API: `compile_model(model, target="cpu", shapes=None) -> runtime.CompiledModel` and
`compile_training(model, loss, optimizer) -> runtime.TrainingSession`."""

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
from compiler.passes.order_updates import order_updates_last
from runtime import CompiledModel
from runtime.errors import CompileError


@dataclass
class CompileOptions:
    target: str = "cpu"  # "cpu" (the host CPU) or "cuda" (an NVIDIA GPU of architecture `arch`)
    arch: str | None = None  # cuda: "sm_90" (the default, Hopper), "sm_80", ...; SASS for it plus PTX
    precision: str = "fp32"  # "fp16" / "bf16": matmul/dense/conv operands in half precision, fp32 accumulation;
    # on the cpu target "bf16" stores the dense/conv weights as bfloat16 instead (activations and sums in fp32)
    training: bool = False  # set by compile_training: the cpu bf16 mode is for inference (weights are params)
    opt_level: int = 2
    verify_each_pass: bool = True
    dump_after: frozenset[str] = frozenset()
    disabled_passes: frozenset[str] = frozenset()
    num_threads: int | None = None
    max_concurrency: int | None = None  # concurrent runs of the compiled model at most (default: the CPUs)
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


def passes_for(options: CompileOptions) -> list:
    """The pass list: the pipeline of the optimization level and target, plus mixed precision if asked for: on the
    cpu target, bf16 inference stores the packed weights as bfloat16 (passes/pack_weights.py); otherwise (CUDA,
    fp16, training) the products read operands rounded to half precision (passes/mixed_precision.py)."""
    from compiler.passes.mixed_precision import half_dtype, insert_mixed_precision
    from compiler.passes.pack_weights import insert_bf16_weights

    passes = pipeline(options.opt_level, options.target)
    if half_dtype(options.precision) == "bfloat16" and options.target in ("cpu", "llvm") and not options.training:
        return insert_bf16_weights(passes)
    return insert_mixed_precision(passes, options.precision)


def optimize(g: Graph, options: CompileOptions) -> Graph:
    pm = PassManager(passes_for(options), verify_each=options.verify_each_pass,
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


def tuning_databases(options: CompileOptions, target) -> list:
    from compiler.backend.tuning import SHIPPED, TuningDatabase

    roots = list(options.tuning_db) + ([SHIPPED] if options.use_shipped_tuning else [])
    return [db for db in (TuningDatabase(r, target) for r in roots) if db.exists()]


def compile_graph(g: Graph, options: CompileOptions, state: Mapping[str, str] | None = None,
                  initial_state: Mapping | None = None):
    """Build `g`'s kernels and plan. `state` (training graphs): output name -> input name of each persistent
    state that kernels update in place, with `initial_state` its values at load (see backend/plan.py).
    Returns a `runtime.CompiledModel`, or for the cuda target a `runtime.cuda.CudaModel` that sets up the GPU only
    when it first runs (so that compiling needs no GPU)."""
    from compiler.backend.build import build_kernels, host_isa_flags, is_cuda, resolve_target
    from compiler.backend.lower import Kernel, partition
    from compiler.backend.plan import make_plan

    target = resolve_target(options.target, options.arch)
    out_dir = tempfile.mkdtemp(prefix="tensorforge-build-")
    try:
        steps = partition(g)
        result = build_kernels([s.spec for s in steps if isinstance(s, Kernel)], target, out_dir,
                               tuning_databases(options, target))
        options.timings.update(result.timings)
        cuda = is_cuda(target)
        # a CUDA library's host code is plain x86-64 (backend/cuda.py): no CPU features to require
        plan, params = make_plan(g, target, [] if cuda else host_isa_flags(), steps, state, initial_state)
        for step in plan["steps"]:
            step["tuned"] = step["kernel"] in result.tuned
        plan["stats"]["tuned_kernels"] = sum(step["tuned"] for step in plan["steps"])
        plan["ir"] = print_graph(g)
        plan["fusion"] = fusion_report(g, steps)
        plan["precision"] = options.precision
        if cuda:
            from runtime.cuda import CudaModel

            plan["device"] = result.device
            return CudaModel(plan, result.library_path, params, owned_dir=out_dir, defer=True)
        return CompiledModel(plan, result.library_path, params, owned_dir=out_dir, num_threads=options.num_threads,
                             max_concurrency=options.max_concurrency)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def compile_model(model, target: str = "cpu", shapes: Mapping[str, Sequence[int]] | None = None, *,
                  opt_level: int = 2, tuning_db: str | Sequence[str] | None = None,
                  options: CompileOptions | None = None, example_inputs=None, params=None,
                  arch: str | None = None, precision: str = "fp32") -> CompiledModel:
    """Compile a model for `target` and return a runnable `runtime.CompiledModel`.

    model: an ONNX file path, ONNX bytes, an `onnx.ModelProto`, a `torch.nn.Module` (with `example_inputs`, a tuple
    of tensors that fixes the shapes), a builder-API `frontends.nn.Module` (with `shapes` and optionally `params`,
    else `model.init()`), or an IR `Graph`.
    shapes: binds inputs with symbolic dimensions, e.g. {"x": (1, 3, 224, 224)}; unbound ones default to 1.
    tuning_db: a directory (or several) written by `tensorforge tune`; matching kernels use their tuned schedules.
    target "cuda": kernels for an NVIDIA GPU of architecture `arch` (default "sm_90"), device code compiled here
    with nvcc; the result (a `runtime.cuda.CudaModel`) saves without a GPU and runs where there is one.
    precision: "fp32", or "fp16"/"bf16" for half-precision matmul/dense/conv operands with fp32 accumulation
    (compiler/passes/mixed_precision.py); on the cpu target "bf16" stores the dense and conv weights as bfloat16,
    widened to fp32 in the kernels (activations and sums stay fp32; compiler/passes/pack_weights.py).
    """
    if options is None:
        dbs = (tuning_db,) if isinstance(tuning_db, (str, os.PathLike)) else tuple(tuning_db or ())
        options = CompileOptions(target=target, opt_level=opt_level, tuning_db=tuple(map(os.fspath, dbs)),
                                 arch=arch, precision=precision)
    t0 = time.perf_counter()
    g = import_model(model, shapes, example_inputs, params)
    t1 = time.perf_counter()
    g = optimize(g, options)
    t2 = time.perf_counter()
    compiled = compile_graph(g, options)
    options.timings.update({"import_s": t1 - t0, "optimize_s": t2 - t1, "total_s": time.perf_counter() - t0})
    compiled.compile_timings = dict(options.timings)
    return compiled


# -- training ---------------------------------------------------------------------------------------------------------
def _trainable_names(model, g: Graph, trainable, frozen) -> set[str]:
    """Which params train: the builder's trainable specs, an ONNX model's float initializers, a torch module's
    parameters, every float param of a Graph; or the names given; minus `frozen`."""
    from frontends.nn import Module as BuilderModule

    float_params = {p.name for p in g.params if p.type.dtype.startswith("float")}
    if trainable is not None:
        names = set(trainable)
    elif isinstance(model, BuilderModule):
        names = {k for k, spec in model.named_param_specs() if spec.trainable}
    elif isinstance(model, onnx.ModelProto):
        names = {i.name for i in model.graph.initializer} & float_params
    elif hasattr(model, "named_parameters"):
        names = {k for k, _ in model.named_parameters()} & float_params
    else:
        names = float_params
    return (names & {p.name for p in g.params}) - set(frozen)


def compile_training(model, loss="cross_entropy", optimizer=None, target: str = "cpu", *,
                     shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                     trainable=None, frozen: Sequence[str] = (), lr_schedule: Mapping | None = None,
                     seed: int = 0, bn_momentum: float = 0.1, opt_level: int = 2,
                     num_threads: int | None = None, arch: str | None = None, precision: str = "fp32"):
    """Compile a model for training and return a `runtime.TrainingSession`.

    model: as for `compile_model` (ONNX, builder-API module with `shapes`, torch module with `example_inputs`, or
    Graph); its first output is the prediction the loss reads. The batch size is fixed by the shapes.
    loss: "cross_entropy" (integer labels), "mse", "l1", "bce_with_logits", or a dict with "name" and any of
    "reduction" ("mean"/"sum"), "label_smoothing", "ignore_index".
    optimizer: {"name": "sgd"|"adam"|"adamw", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps",
    "clip_norm"} (PyTorch's semantics); lr_schedule: see `runtime.training.learning_rate`.
    frozen: parameter names not to train.
    target: "cpu" or "cuda" (with `arch`); precision: "fp32", or "fp16"/"bf16" (mixed precision: the products of
    forward and backward read half-precision operands and accumulate in fp32; parameters, gradients' sums and
    optimizer state stay fp32; no loss scaling).
    """
    from compiler.autodiff.training import LossSpec, OptimizerSpec, build_training_program
    from runtime.training import TrainingSession

    loss_spec = LossSpec(**({"name": loss} if isinstance(loss, str) else dict(loss)))
    opt = dict(optimizer or {"name": "sgd", "lr": 0.01})
    schedule = lr_schedule if lr_schedule is not None else opt.pop("schedule", None)
    opt.pop("schedule", None)
    if "betas" in opt:
        opt["betas"] = tuple(opt["betas"])
    opt_spec = OptimizerSpec(**opt)
    onnx_source = None
    if isinstance(model, (str, os.PathLike, bytes)):
        from frontends.onnx.importer import load_model

        model = load_model(model)
    if isinstance(model, onnx.ModelProto):
        onnx_source = model.SerializeToString()
    fwd = import_model(model, shapes, example_inputs, params)
    if target == "cuda":  # the backward is then built from the per-step ops (passes/unroll_lstm.py)
        from compiler.passes import unroll_lstm

        fwd = unroll_lstm(fwd)
    names = _trainable_names(model, fwd, trainable, frozen)
    program = build_training_program(fwd, names, loss_spec, opt_spec, bn_momentum)
    options = CompileOptions(target=target, opt_level=opt_level, num_threads=num_threads, arch=arch,
                             precision=precision, training=True)
    bindings = program.state_bindings
    g = optimize(program.graph, options)
    new_values = {v for v, name in zip(g.outputs, g.output_names) if name in bindings}
    g = order_updates_last(g, new_values)
    initial = {s.name: s.initial for s in program.state}
    train = compile_graph(g, options, state=bindings, initial_state=initial)
    train.plan["stats"]["saved_activation_bytes"] = program.saved_activation_bytes
    eval_options = CompileOptions(target=target, opt_level=opt_level, num_threads=num_threads, arch=arch,
                                  precision=precision, training=True)
    evaluator = compile_graph(optimize(program.eval_graph, eval_options), eval_options)
    spec = {"inputs": program.inputs, "labels": program.labels, "scalars": program.scalars,
            "dropout": [[n, list(s)] for n, s in program.dropout], "seed": seed,
            "optimizer": {"name": opt_spec.name, "lr": opt_spec.lr, "betas": list(opt_spec.betas),
                          "weight_decay": opt_spec.weight_decay},
            "schedule": dict(schedule) if schedule else None,
            "state_kinds": {s.name: s.kind for s in program.state},
            "trainable": sorted(names), "onnx": onnx_source}
    return TrainingSession(train, evaluator, spec)


def compile_gradients(model, loss="cross_entropy", target: str = "cpu", *,
                      shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                      trainable=None, frozen: Sequence[str] = (), opt_level: int = 2) -> CompiledModel:
    """The training graph cut before the optimizer, compiled: inputs are the model's inputs, `labels` and the
    trainable parameters (and running statistics) by name; outputs `loss`, `logits`, then "<param>:grad" for each
    trainable parameter in the model's order. For checking gradients and for tools."""
    from compiler.autodiff.training import LossSpec, build_training_program

    loss_spec = LossSpec(**({"name": loss} if isinstance(loss, str) else dict(loss)))
    if isinstance(model, (str, os.PathLike, bytes)):
        from frontends.onnx.importer import load_model

        model = load_model(model)
    fwd = import_model(model, shapes, example_inputs, params)
    program = build_training_program(fwd, _trainable_names(model, fwd, trainable, frozen), loss_spec, None)
    options = CompileOptions(target=target, opt_level=opt_level)
    return compile_graph(optimize(program.graph, options), options)
