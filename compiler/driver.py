"""The compiler's one straight path: import -> passes -> partition -> build -> plan, and the one training flow.

    import_model(model, ...)            any supported model form -> IR Graph
    optimize(g, options, ...)           the pipeline of passes/pipeline.py over it
    training_graph(model, loss, ...)    forward -> training program -> optimized graph (compile_training,
                                        compile_gradients and analyze_training all go through here)
    compile_graph(g, options, ...)      kernels + plan -> a runtime model
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Mapping, Sequence

from tensorforge.compiler.ir import Graph
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.passes import PassManager, check_pass_names, pipeline, unroll_lstm
from tensorforge.runtime.errors import CompileError


def load_if_onnx(model):
    """An ONNX path or bytes loaded into an onnx.ModelProto (checked and with its external data); else `model`."""
    if isinstance(model, (str, os.PathLike, bytes)):
        from tensorforge.frontends.onnx.importer import load_model

        return load_model(model)
    return model


def is_torch_module(model) -> bool:
    """Is `model` a PyTorch module (told without importing torch)?"""
    return type(model).__module__.startswith("torch") or hasattr(model, "_modules")


def import_model(model, shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None,
                 params=None, keep_params: bool = False, memo=None) -> Graph:
    """Any supported model form -> IR graph. ONNX: a path, bytes or onnx.ModelProto; a torch.nn.Module with
    `example_inputs`; a builder-API module (frontends.nn) with `shapes` for its inputs and optional `params`;
    or an IR Graph (copied). keep_params (training): the model's parameters stay params of their own, in their own
    layout, instead of being folded at import. memo (ONNX): a compiler.ir.ConstantMemo shared by the imports of
    one model at several shapes: its constants read and folded once."""
    from tensorforge.frontends.nn import Module as BuilderModule

    if isinstance(model, BuilderModule):
        if not shapes:
            raise CompileError("compiling a builder-API module needs shapes={input name: shape}")
        return model.to_graph(shapes, params)
    if is_torch_module(model):
        if example_inputs is None:
            raise CompileError("compiling a PyTorch module needs example_inputs=(tensor, ...) to fix its shapes")
        from tensorforge.frontends.torch import from_torch

        return from_torch(model, example_inputs, keep_params)
    if isinstance(model, Graph):
        model.verify()
        return model.copy()  # passes edit graphs in place; the caller's graph stays as it was
    if isinstance(model, (str, os.PathLike, bytes)) or type(model).__name__ == "ModelProto":
        from tensorforge.frontends.onnx import from_onnx

        return from_onnx(model, shapes, keep_params, memo)
    raise CompileError(f"cannot compile a {type(model).__name__}: pass an ONNX file path, onnx.ModelProto or Graph")


def passes_for(options: CompileOptions, training: bool = False, state_outputs=None, decoding: bool = False) -> list:
    """The pass list (passes/pipeline.py) for `options`; for a training graph, `training` and its `state_outputs`;
    for a decoder with its cache in place (compiler/decoding.py), `decoding`."""
    return pipeline(options.opt_level, options.target, options.precision, training, state_outputs, decoding)


def optimize(g: Graph, options: CompileOptions, *, training: bool = False, state_outputs=None,
             timings: dict | None = None, check_names: bool = True, decoding: bool = False) -> Graph:
    """Run the pipeline for `options` (and for a training graph: `training`, with its `state_outputs`) over `g`.
    Pass times go into `timings` as "pass:<name>" -> seconds."""
    passes = passes_for(options, training, state_outputs, decoding)
    if check_names:
        check_pass_names(passes, options.disabled_passes, options.dump_after)
    pm = PassManager(passes, verify_each=options.verify_each_pass, dump_after=options.dump_after,
                     disabled=options.disabled_passes)
    g = pm.run(g)
    if timings is not None:
        for name, secs in pm.timings:
            timings[f"pass:{name}"] = secs
    return g


# -- training -----------------------------------------------------------------------------------------------------------
@dataclass
class TrainingGraph:
    program: object  # autodiff.training.TrainingProgram: the unoptimized graphs, state, inputs, labels, scalars
    graph: Graph  # the training (or gradient) graph after the passes
    trainable: set[str]
    optimizer: object | None  # OptimizerSpec; None for the gradient graph
    schedule: Mapping | None  # the learning-rate schedule given inside the optimizer dict
    onnx_source: bytes | None  # the ONNX model it came from, for checkpoints that export back


def loss_spec(loss):
    from tensorforge.compiler.autodiff.training import LossSpec

    return LossSpec(**({"name": loss} if isinstance(loss, str) else dict(loss)))


def optimizer_spec(optimizer: Mapping | None):
    """(OptimizerSpec, learning-rate schedule or None) from the user's optimizer dict."""
    from tensorforge.compiler.autodiff.training import OptimizerSpec

    opt = dict(optimizer or {"name": "sgd", "lr": 0.01})
    schedule = opt.pop("schedule", None)
    if "betas" in opt:
        opt["betas"] = tuple(opt["betas"])
    return OptimizerSpec(**opt), schedule


def training_graph(model, loss, optimizer: Mapping | None, options: CompileOptions, *, gradients_only=False,
                   shapes=None, example_inputs=None, params=None, trainable=None, frozen: Sequence[str] = (),
                   bn_momentum: float = 0.1, timings: dict | None = None) -> TrainingGraph:
    """The one training flow: import the forward graph; on CUDA unroll LSTMs first (the backward is built from the
    per-step ops, passes/unroll_lstm.py); pick the trainable params; build the training program (forward, loss,
    backward and, unless `gradients_only`, the optimizer's updates); run the training pipeline over it."""
    from tensorforge.compiler.autodiff.training import build_training_program

    fwd, names, onnx_source = _forward(model, options, shapes, example_inputs, params, trainable, frozen)
    opt_spec, schedule = (None, None) if gradients_only else optimizer_spec(optimizer)
    program = build_training_program(fwd, names, loss_spec(loss), opt_spec, bn_momentum)
    state_outputs = None if gradients_only else set(program.state_bindings)
    g = optimize(program.graph, options, training=True, state_outputs=state_outputs, timings=timings)
    return TrainingGraph(program, g, names, opt_spec, schedule, onnx_source)


def _forward(model, options, shapes, example_inputs, params, trainable, frozen):
    """(the forward graph to train, the names of its trainable params, the ONNX source's bytes or None)."""
    from tensorforge.frontends.trainable import default_trainable

    model = load_if_onnx(model)
    onnx_source = model.SerializeToString() if type(model).__name__ == "ModelProto" else None
    fwd = import_model(model, shapes, example_inputs, params, keep_params=True)
    if options.spec.is_cuda:
        fwd = unroll_lstm(fwd)
    names = set(trainable) if trainable is not None else default_trainable(model, fwd)
    return fwd, (names & {p.name for p in fwd.params}) - set(frozen), onnx_source


@dataclass
class DataParallelGraphs:
    program: object  # autodiff.training.DataParallelProgram: the two unoptimized graphs and their state
    grads: Graph  # forward, loss, backward -> loss, logits, every gradient in one flat buffer (after the passes)
    update: Graph  # that buffer (averaged over the processes) -> the optimizer's update (after the passes)
    trainable: set[str]
    optimizer: object
    schedule: Mapping | None
    onnx_source: bytes | None


def data_parallel_graphs(model, loss, optimizer: Mapping | None, options: CompileOptions, *, shapes=None,
                         example_inputs=None, params=None, trainable=None, frozen: Sequence[str] = (),
                         bn_momentum: float = 0.1, sync_world: int | None = None) -> DataParallelGraphs:
    """The training flow of `training_graph`, the step cut in two for data-parallel training: the gradients,
    then the update (autodiff/training.py build_data_parallel_program), each through the training pipeline;
    `sync_world`: batch norm's statistics averaged over that many processes."""
    from tensorforge.compiler.autodiff.training import build_data_parallel_program

    fwd, names, onnx_source = _forward(model, options, shapes, example_inputs, params, trainable, frozen)
    opt_spec, schedule = optimizer_spec(optimizer)
    dp = build_data_parallel_program(fwd, names, loss_spec(loss), opt_spec, bn_momentum, sync_world)
    grads = optimize(dp.grads.graph, options, training=True, state_outputs=set(dp.grads.state_bindings))
    update = optimize(dp.update, options, training=True, state_outputs=set(dp.update_bindings))
    return DataParallelGraphs(dp, grads, update, names, opt_spec, schedule, onnx_source)


# -- kernels and plan ---------------------------------------------------------------------------------------------------
def tuning_databases(options: CompileOptions, target) -> list:
    from tensorforge.compiler.backend.tuning import SHIPPED, TuningDatabase

    roots = list(options.tuning_db) + ([SHIPPED] if options.use_shipped_tuning else [])
    return [db for db in (TuningDatabase(r, target) for r in roots) if db.exists()]


def compile_graph(g: Graph, options: CompileOptions, state: Mapping[str, str] | None = None,
                  initial_state: Mapping | None = None, timings: dict | None = None, shared=None, kernels=None):
    """Build `g`'s kernels and plan. `state` (training graphs): output name -> input name of each persistent
    state that kernels update in place, with `initial_state` its values at load (see backend/plan.py).
    Returns a `runtime.CompiledModel`, or for the cuda target a `runtime.cuda.CudaModel` that sets up the GPU only
    when it first runs (so that compiling needs no GPU). `shared` (a runtime.model.SharedBuffers): CPU models
    holding their equal parameters and their state in common with others built with it. `kernels` (a
    backend.symbolic.SymbolicKernels): the CPU kernels over run-time sizes of a dynamic model's builds."""
    from tensorforge.compiler.backend.build import build_kernels, host_isa_flags
    from tensorforge.compiler.backend.lower import Kernel, partition
    from tensorforge.compiler.backend.plan import make_plan
    from tensorforge.runtime import CompiledModel

    target = options.spec.tvm()
    out_dir = tempfile.mkdtemp(prefix="tensorforge-build-")
    try:
        steps = partition(g)
        result = build_kernels([s.spec for s in steps if isinstance(s, Kernel)], target, out_dir,
                               tuning_databases(options, target), symbolic=kernels)
        if timings is not None:
            timings.update(result.timings)
        cuda = options.spec.is_cuda
        # a CUDA library's host code is plain x86-64 (backend/cuda/build.py): no CPU features to require
        plan, params = make_plan(g, target, [] if cuda else host_isa_flags(g), steps, state, initial_state,
                                 tuned=result.tuned, precision=options.precision, device=result.device,
                                 symbols=result.symbols)
        if cuda:
            from tensorforge.runtime.cuda import CudaModel

            return CudaModel(plan, result.library_path, params, owned_dir=out_dir, defer=True)
        # packed weights made by this compile for this model alone run where they lie, not copied (runtime/model.py)
        adopt = [i for i, d in enumerate(params) if g.owned.get(id(d)) is d]
        if g.memo is not None:  # a dynamic model's packed weights: lent by its memo, one buffer for every shape
            for i, d in enumerate(params):
                lent = g.memo.lent(d)
                if lent is not None:
                    params[i] = lent
                    adopt.append(i)
                    if shared is not None:
                        shared.constant(lent)
        return CompiledModel(plan, result.library_path, params, owned_dir=out_dir, num_threads=options.num_threads,
                             max_concurrency=options.max_concurrency, shared=shared, adopt=adopt)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise

