"""The compiler's Python API: `compile_model(model, target="cpu", shapes=None) -> runtime.CompiledModel`,
`compile_training(model, loss, optimizer) -> runtime.TrainingSession` and `compile_gradients`. Thin: they check
their arguments and call the driver (compiler/driver.py)."""

from __future__ import annotations

import os
import time
import warnings
from typing import Mapping, Sequence

from tensorforge.compiler.disk_cache import fingerprint
from tensorforge.compiler.driver import (compile_graph, import_model, is_torch_module, optimize,  # noqa: F401
                                         training_graph)
from tensorforge.compiler.options import CompileOptions  # noqa: F401  (part of the API)
from tensorforge.compiler.segments import SegmentedModel, segmentable
from tensorforge.compiler.specialize import SpecializingModel, specializable
from tensorforge.runtime import CompiledModel
from tensorforge.runtime.errors import CompileError, FrontendError

_UNSET = object()


def compile_model(model, target: str = _UNSET, shapes: Mapping[str, Sequence[int]] | None = None, *,
                  opt_level: int = _UNSET, tuning_db: str | Sequence[str] | None = _UNSET,
                  options: CompileOptions | None = None, example_inputs=None, params=None,
                  arch: str | None = _UNSET, precision: str = _UNSET,
                  dynamic: Mapping[str, Mapping[int, tuple[int, int]]] | None = None
                  ) -> CompiledModel | SpecializingModel | SegmentedModel:
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
    widened to fp32 in the kernels (activations and sums stay fp32; compiler/passes/cpu/bf16_weights.py).
    options: a `CompileOptions` holding all of the above (and more); then none of target, opt_level, tuning_db, arch
    and precision may be given too. Defaults: target "cpu", opt_level 2, precision "fp32".
    An ONNX model with graph inputs whose values decide shapes (Reshape's shape, Pad's pads, a Reduce's axes, ...)
    or sequence inputs gives a `compiler.specialize.SpecializingModel`: it compiles on `run` for the values it is
    fed, and keeps each specialization (in memory and on disk).
    An ONNX model with ops whose output shapes depend on the data (NonZero, Unique, NonMaxSuppression, Compress)
    gives a `compiler.segments.SegmentedModel`: compiled segments with those ops run on the host between them.
    dynamic: {input: {axis: (low, high)}}, e.g. {"input_ids": {0: (1, 8), 1: (1, 512)}}: those dimensions may take
    any size in their range at run time; a `SpecializingModel` compiles each size met (the lower bounds at once). A
    PyTorch module is exported to ONNX for it (torch.onnx.export, its inputs named as forward's parameters).
    """
    given = {k: v for k, v in (("target", target), ("opt_level", opt_level), ("tuning_db", tuning_db),
                                ("arch", arch), ("precision", precision)) if v is not _UNSET}
    if options is None:
        options = CompileOptions(**{k: v for k, v in given.items() if not (k == "tuning_db" and v is None)})
    elif given:
        raise CompileError(f"compile_model: give either options= or {', '.join(given)}=, not both (options has "
                           f"{', '.join(f'{k}={getattr(options, k)!r}' for k in given)})")
    def compile_fn(proto, shapes_, memo=None, shared=None, kernels=None):  # one specialization of a model
        return _compile(proto, shapes_, options, memo=memo, shared=shared, kernels=kernels)

    if dynamic:
        proto = _onnx_proto(model)
        if proto is None and is_torch_module(model):
            proto = _torch_to_onnx(model, example_inputs, dynamic)
        if proto is None:
            raise CompileError(f"dynamic= is supported for ONNX models and PyTorch modules; this is a "
                               f"{type(model).__name__} (give its shapes instead)")
        spec = SpecializingModel(proto, shapes, compile_fn, dynamic=dynamic, fingerprint=fingerprint(options))
        spec.compile_lower_bounds()
        return spec
    failed = None
    with warnings.catch_warnings(record=True) as said:  # re-issued below unless the model specializes at run time
        warnings.simplefilter("always")
        try:
            compiled = _compile(model, shapes, options, example_inputs, params)
        except FrontendError as e:
            proto = _onnx_proto(model)
            if proto is not None and specializable(e, proto):  # its symbolic dims will be bound to the feeds'
                return SpecializingModel(proto, shapes, compile_fn, e, fingerprint=fingerprint(options))
            if proto is not None and not shapes and segmentable(e, proto):
                return SegmentedModel(proto, compile_fn, fingerprint(options))
            failed = e
    # outside the recording: re-issued inside it, each warning would be recorded again, without end
    _reissue(said)
    if failed is not None:
        raise failed
    return compiled


def _reissue(said) -> None:
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _torch_to_onnx(module, example_inputs, dynamic: Mapping):
    """A PyTorch module with `dynamic` dimensions, as ONNX: torch.onnx.export (the TorchScript exporter) with those
    axes symbolic, its inputs named as forward's parameters (the names `dynamic` uses)."""
    import inspect
    import io

    import onnx
    import torch

    if example_inputs is None:
        raise CompileError("compiling a PyTorch module needs example_inputs=(tensor, ...): with dynamic=, tensors of "
                           "any size in the ranges")
    example_inputs = tuple(example_inputs)
    names = list(inspect.signature(module.forward).parameters)[:len(example_inputs)]
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise CompileError(f"dynamic: {unknown} are not inputs of {type(module).__name__}.forward; its inputs are "
                           f"{names}")
    axes = {n: {int(a): f"{n}_{a}" for a in dynamic[n]} for n in dynamic}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, example_inputs, buf, dynamo=False, opset_version=17, input_names=names,
                              dynamic_axes=axes)
        except Exception as e:  # noqa: BLE001 - the exporter's own errors, named
            raise FrontendError(f"cannot export {type(module).__name__} with dynamic dimensions {axes} "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return onnx.load_from_string(buf.getvalue())


def _onnx_proto(model):
    """The ONNX ModelProto of `model`, or None if it is not an ONNX model."""
    if isinstance(model, (str, os.PathLike, bytes)) or type(model).__name__ == "ModelProto":
        from tensorforge.frontends.onnx.importer import load_model

        return load_model(model)
    return None


def _compile(model, shapes, options: CompileOptions, example_inputs=None, params=None, memo=None,
             shared=None, kernels=None) -> CompiledModel:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    g = import_model(model, shapes, example_inputs, params, memo=memo)
    t1 = time.perf_counter()
    g = optimize(g, options, timings=timings)
    t2 = time.perf_counter()
    compiled = compile_graph(g, options, timings=timings, shared=shared, kernels=kernels)
    timings.update({"import_s": t1 - t0, "optimize_s": t2 - t1, "total_s": time.perf_counter() - t0})
    compiled.compile_timings = timings
    return compiled


# -- training ---------------------------------------------------------------------------------------------------------
def compile_training(model, loss="cross_entropy", optimizer=None, target: str = "cpu", *,
                     shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                     trainable=None, frozen: Sequence[str] = (), lr_schedule: Mapping | None = None,
                     seed: int = 0, bn_momentum: float = 0.1, opt_level: int = 2,
                     num_threads: int | None = None, arch: str | None = None, precision: str = "fp32",
                     distributed=False, sync_batch_norm: bool = False):
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
    distributed: data-parallel training over torch.distributed (True: its default process group, initialized
    here from torchrun's environment if it is not yet; or a `torch.distributed` process group): each process steps
    on its own part of the batch, the gradients of all parameters are averaged between the processes in one
    all_reduce (gloo on the CPU) before the update, so that every process keeps the same parameters: the
    single-process step on the whole batch, to rounding. Batch-norm statistics stay local to each process (as
    PyTorch's DDP keeps them) unless `sync_batch_norm`: then they are the whole batch's, averaged over the
    processes inside the step (PyTorch's SyncBatchNorm; every process must step on a batch of the same size). Rank
    0 broadcasts the initial parameters and alone writes checkpoints.
    """
    from tensorforge.runtime.training import TrainingSession

    options = CompileOptions(target=target, opt_level=opt_level, num_threads=num_threads, arch=arch,
                             precision=precision)
    if distributed is not False and distributed is not None:
        return _data_parallel(model, loss, optimizer, options, distributed, shapes=shapes,
                              example_inputs=example_inputs, params=params, trainable=trainable, frozen=frozen,
                              lr_schedule=lr_schedule, seed=seed, bn_momentum=bn_momentum,
                              sync_batch_norm=sync_batch_norm)
    if sync_batch_norm:
        raise CompileError("sync_batch_norm averages batch-norm statistics over the processes of a data-parallel "
                           "run: it needs distributed=True (or a process group)")
    t = training_graph(model, loss, optimizer, options, shapes=shapes, example_inputs=example_inputs, params=params,
                       trainable=trainable, frozen=frozen, bn_momentum=bn_momentum)
    program, opt_spec = t.program, t.optimizer
    schedule = lr_schedule if lr_schedule is not None else t.schedule
    train = compile_graph(t.graph, options, state=program.state_bindings,
                          initial_state={s.name: s.initial for s in program.state})
    train.plan["stats"]["saved_activation_bytes"] = program.saved_activation_bytes
    evaluator = compile_graph(optimize(program.eval_graph, options, training=True), options)
    spec = {"inputs": program.inputs, "labels": program.labels, "scalars": program.scalars,
            "dropout": [[n, list(s)] for n, s in program.dropout], "seed": seed,
            "optimizer": {"name": opt_spec.name, "lr": opt_spec.lr, "betas": list(opt_spec.betas),
                          "weight_decay": opt_spec.weight_decay},
            "schedule": dict(schedule) if schedule else None,
            "state_kinds": {s.name: s.kind for s in program.state},
            "trainable": sorted(t.trainable), "onnx": t.onnx_source}
    return TrainingSession(train, evaluator, spec)


def _data_parallel(model, loss, optimizer, options: CompileOptions, group, *, lr_schedule, seed,
                   sync_batch_norm: bool, **kw):
    """compile_training(distributed=...): the gradient and update plans sharing their parameters' memory."""
    from tensorforge.compiler.driver import data_parallel_graphs
    from tensorforge.runtime.distributed import ProcessGroup
    from tensorforge.runtime.plan import SharedBuffers
    from tensorforge.runtime.training import TrainingSession

    if options.spec.is_cuda:
        raise CompileError("distributed training runs on the cpu target (gloo); CUDA with NCCL is not built yet")
    group = ProcessGroup(None if group is True else group)  # first: a missing process group fails before compiling
    t = data_parallel_graphs(model, loss, optimizer, options, sync_world=group.world_size if sync_batch_norm else None,
                             **kw)
    dp, opt_spec = t.program, t.optimizer
    shared = SharedBuffers()  # one buffer per parameter for both plans
    grads = compile_graph(t.grads, options, state=dp.grads.state_bindings,
                          initial_state={s.name: s.initial for s in dp.grads.state}, shared=shared)
    update = compile_graph(t.update, options, state=dp.update_bindings,
                           initial_state={s.name: s.initial for s in dp.update_state}, shared=shared)
    evaluator = compile_graph(optimize(dp.grads.eval_graph, options, training=True), options)
    if sync_batch_norm:
        _check_same_shapes(group, {n: grads.input_specs[n][0] for n in dp.grads.inputs})
    schedule = lr_schedule if lr_schedule is not None else t.schedule
    spec = {"inputs": dp.grads.inputs, "labels": dp.grads.labels, "scalars": dp.scalars,
            "dropout": [[n, list(s)] for n, s in dp.grads.dropout], "seed": seed,
            "optimizer": {"name": opt_spec.name, "lr": opt_spec.lr, "betas": list(opt_spec.betas),
                          "weight_decay": opt_spec.weight_decay},
            "schedule": dict(schedule) if schedule else None,
            "state_kinds": {s.name: s.kind for s in dp.grads.state + dp.update_state},
            "trainable": sorted(t.trainable), "onnx": t.onnx_source}
    return TrainingSession(grads, evaluator, spec, update=update, group=group)


def _check_same_shapes(group, shapes: Mapping[str, Sequence[int]]) -> None:
    """Synchronized batch norm averages each process's statistics as equals: every process must step on inputs of
    the same shapes. Checked in one collective (the mean of each dimension and of its square are the same on every
    process, so every process raises, or none)."""
    import numpy as np

    dims = np.array([d for n in sorted(shapes) for d in shapes[n]], np.float64)
    mean = group.average(np.concatenate([dims, dims * dims]))
    if not np.array_equal(mean[:dims.size] ** 2, mean[dims.size:]):
        raise CompileError(f"sync_batch_norm needs every process to step on inputs of the same shapes; this process "
                           f"(rank {group.rank}) has {dict(shapes)}, others differ")


def compile_gradients(model, loss="cross_entropy", target: str = "cpu", *,
                      shapes: Mapping[str, Sequence[int]] | None = None, example_inputs=None, params=None,
                      trainable=None, frozen: Sequence[str] = (), opt_level: int = 2) -> CompiledModel:
    """The training graph cut before the optimizer, compiled: inputs are the model's inputs, `labels` and the
    trainable parameters (and running statistics) by name; outputs `loss`, `logits`, then "<param>:grad" for each
    trainable parameter in the model's order. For checking gradients and for tools."""
    options = CompileOptions(target=target, opt_level=opt_level)
    t = training_graph(model, loss, None, options, gradients_only=True, shapes=shapes, example_inputs=example_inputs,
                       params=params, trainable=trainable, frozen=frozen)
    return compile_graph(t.graph, options)
