"""Tuning a whole model: `tune_model` (kernels into a tuning database, CPU knobs or MetaSchedule) and, for CUDA
without RPC, `prepare_model` (the model's kernels into a measurement bundle; see backend/cuda/bundle.py)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from tensorforge.compiler.driver import import_model, optimize
from tensorforge.compiler.options import CompileOptions
from tensorforge.compiler.backend.lower import Kernel, partition
from tensorforge.runtime.errors import CompileError


def tune_model(model, db_dir: str, shapes: Mapping[str, Sequence[int]] | None = None, *, trials: int = 64,
               time_budget: float | None = None, retune: bool = False, options: CompileOptions | None = None,
               progress=None, search: str = "knobs", build_timeout: float | None = None,
               rpc_tracker: str | None = None, rpc_key: str | None = None, shard: tuple[int, int] = (0, 1)):
    """Tune every kernel of `model` into the database at `db_dir` (see backend/tuning.py). search="knobs" varies
    our own schedules' tile parameters (seconds per kernel); search="metaschedule" runs MetaSchedule's search with
    `trials` candidates per kernel (CPU only here; minutes per kernel on a small machine).
    rpc_tracker ("HOST:PORT") and rpc_key: measure on the servers registered with TVM's RPC tracker
    (backend/remote.py), building here. shard (i, n): tune only every n-th distinct kernel from the i-th."""
    from tensorforge.compiler.backend.tuning import TuningDatabase, search_knobs, tune

    if search not in ("knobs", "metaschedule"):
        raise CompileError(f"unknown search {search!r}: use 'knobs' or 'metaschedule'")
    options = options or CompileOptions()
    target = options.spec.tvm()
    if target.kind.name == "cuda":
        _require_gpu_for_tuning(target)
    g = optimize(import_model(model, shapes), options)
    specs = [s.spec for s in partition(g) if isinstance(s, Kernel)]
    db = TuningDatabase(os.fspath(db_dir), target)
    remote = None
    if rpc_tracker or rpc_key:
        if not (rpc_tracker and rpc_key):
            raise CompileError("measuring over RPC needs both --rpc-tracker HOST:PORT and --rpc-key KEY")
        from tensorforge.compiler.backend.remote import RemoteServers

        remote = RemoteServers(rpc_tracker, rpc_key)
    if search == "knobs" and target.kind.name != "cuda":
        return search_knobs(specs, db, time_budget=time_budget, retune=retune, progress=progress, remote=remote,
                            shard=shard)
    extra = {} if build_timeout is None else {"build_timeout": float(build_timeout)}
    return tune(specs, db, trials=trials, time_budget=time_budget, retune=retune, progress=progress, remote=remote,
                shard=shard, **extra)


def _require_gpu_for_tuning(target) -> None:
    """MetaSchedule measures every candidate on the GPU: refuse at once, with the reason, where there is none."""
    from tensorforge.runtime.cuda import DeviceError, check_arch, gpu_info

    try:
        info = gpu_info(0)
        check_arch(str(target.export().get("arch")), info)
    except DeviceError as e:
        raise CompileError(f"tuning for CUDA builds candidates here but measures them on the GPU, and there is "
                           f"none usable: {e}") from None


def prepare_model(model, out_dir: str, shapes=None, *, options=None, candidates: int = 16, progress=None) -> dict:
    """`tensorforge tune MODEL --target cuda --prepare DIR`: the model's kernels (as compile_model would build them
    for options.arch and options.precision) into a measurement bundle."""
    from tensorforge.compiler.backend.cuda.bundle import prepare_bundle

    options = options or CompileOptions(target="cuda")
    g = optimize(import_model(model, shapes), options)
    specs = [s.spec for s in partition(g) if isinstance(s, Kernel)]
    return prepare_bundle(specs, os.fspath(out_dir), options.arch or "sm_90", candidates=candidates,
                          progress=progress)
