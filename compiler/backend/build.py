"""Build: schedule every kernel for the target and compile them all into one shared library."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tensorforge.runtime.errors import CompileError

from .lower import KernelSpec, build_prim_func

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")


def resolve_target(target, arch: str | None = None):
    """'cpu' (or 'llvm') -> the host CPU with its real ISA (plain 'llvm' would emit SSE-only code);
    'cuda' -> an NVIDIA GPU of architecture `arch` (default sm_90, Hopper), see backend/cuda/build.py."""
    import tvm
    from tvm.target import Target

    if isinstance(target, Target):
        return target
    if target == "cuda":
        from .cuda.build import DEFAULT_ARCH, cuda_target

        return cuda_target(arch or DEFAULT_ARCH)
    if arch is not None:
        raise CompileError(f"--arch {arch} applies to the cuda target only, not {target!r}")
    if target in ("cpu", "llvm", None):
        host = Target.from_device(tvm.cpu())
        from tensorforge.runtime.tvm_loader import default_num_threads

        return Target({**{k: v for k, v in host.export().items() if k in ("kind", "mtriple", "mcpu")},
                       "num-cores": default_num_threads()})
    raise CompileError(f"unknown target {target!r}; supported: 'cpu', 'cuda'")


def is_cuda(target) -> bool:
    return target.kind.name == "cuda"


@dataclass
class BuildResult:
    library_path: str
    kernel_names: list[str]  # global symbols, one per distinct kernel (`KernelSpec.name()`)
    timings: dict[str, float] = field(default_factory=dict)
    tuned: set[str] = field(default_factory=set)  # kernels whose schedule came from a tuning database
    device: dict | None = None  # CUDA: the plan's "device" entry (arch, fatbin member, source hash)
    extra_files: dict[str, str] = field(default_factory=dict)  # artifact member -> local file (the fatbin)


def build_kernels(specs: list[KernelSpec], target, out_dir: str, tuning: list = ()) -> BuildResult:
    """Schedule and compile each distinct spec; one library for all of them. A kernel found in one of the `tuning`
    databases (TuningDatabase, searched in order) takes its tuned schedule; the others get the default rules."""
    import tvm

    if is_cuda(target):
        from .cuda.build import build_cuda

        b = build_cuda(specs, target, out_dir, tuning)
        return BuildResult(b.library_path, b.kernel_names, b.timings, b.tuned, b.device,
                           {b.device["fatbin"]: b.fatbin_path})

    from .cpu.prefetch import insert_prefetches
    from .cpu.rules import schedule_cpu
    from .index_checks import insert_index_asserts, scalar_index_checks

    funcs = {}
    tuned = set()
    t0 = time.perf_counter()
    for spec in specs:
        name = spec.name()
        if name in funcs:
            continue
        func = build_prim_func(spec, target)
        found = next((f for f in (db.lookup(spec, func) for db in tuning) if f is not None), None)
        if found is not None:
            funcs[name] = insert_prefetches(found).with_attr("global_symbol", name)
            tuned.add(name)
            continue
        try:
            # run-time indices raise when out of range (index_checks.py)
            func = insert_prefetches(scalar_index_checks(schedule_cpu(insert_index_asserts(func), target)))
        except Exception as e:  # the scheduler promises not to raise; if it does, say where
            raise CompileError(f"scheduling kernel {name} (on {', '.join(map(str, spec.in_types))}) failed: "
                               f"{type(e).__name__}: {e}") from e
        funcs[name] = func.with_attr("global_symbol", name)
    t1 = time.perf_counter()
    try:
        path = os.path.join(out_dir, "kernels.so")
        compile_library(funcs, target, path, addons=[cpu_pool_object()])
    except Exception as e:
        raise CompileError(f"building {len(funcs)} kernels for {target} failed: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    t2 = time.perf_counter()
    return BuildResult(path, list(funcs), {"schedule_s": t1 - t0, "build_s": t2 - t1}, tuned)


BUILD_JOBS_ENV = "TENSORFORGE_BUILD_JOBS"
KERNELS_PER_JOB = 2  # fewer kernels than this per job: one job. BERT-base's 8 kernels: 0.65-0.99 s in one job,
#                      0.46-0.51 in two (2 cores); a 4-kernel MLP the same either way


def build_jobs(n_kernels: int) -> int:
    """Threads that lower and compile the kernels in parallel: one per available core (at most 4), or
    $TENSORFORGE_BUILD_JOBS; at least KERNELS_PER_JOB kernels each."""
    env = os.environ.get(BUILD_JOBS_ENV)
    if env:
        try:
            jobs = int(env)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise CompileError(f"${BUILD_JOBS_ENV} must be a positive integer, not {env!r}")
    else:
        jobs = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)
    return max(1, min(jobs, n_kernels // KERNELS_PER_JOB))


def compile_library(funcs: dict, target, path: str, addons: list[str] = ()) -> None:
    """Compile the scheduled kernels `funcs` (symbol -> PrimFunc) into the shared library `path`, linked with
    `addons` (object files). With several jobs the kernels are split into that many modules, each lowered and
    compiled to an object file in its own thread (TVM's passes and LLVM release the GIL), and the objects are
    linked into one library: DenseNet-121's 188 kernels took 8.0 s one after the other, 4.3 s on two cores."""
    import tvm
    from tvm.support import cc

    jobs = build_jobs(len(funcs))
    if jobs == 1:
        tvm.compile(tvm.IRModule(funcs), target=target).export_library(path, addons=list(addons))
        return
    names = sorted(funcs)
    parts = [names[i::jobs] for i in range(jobs)]
    work_dir = tempfile.mkdtemp(prefix="objects-", dir=os.path.dirname(path))
    objects = [os.path.join(work_dir, f"kernels{i}.o") for i in range(jobs)]

    def build(i: int) -> None:
        ex = tvm.compile(tvm.IRModule({n: funcs[n] for n in parts[i]}), target=target)
        ex.mod.write_to_file(objects[i])

    try:
        run_threads(build, jobs, "tensorforge-build")
        cc.create_shared(path, objects + list(addons))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_threads(fn, count: int, name: str) -> None:
    """fn(i) for i in range(count), each in a thread of its own; the first exception is raised here, once all
    have ended."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            fn(i)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


POOL_SOURCE = os.path.join(os.path.dirname(__file__), "cpu_pool.c")
_pool_object: str | None = None
_pool_lock = threading.Lock()


def cpu_pool_object() -> str:
    """TensorForge's CPU thread pool (cpu_pool.c) compiled once per process with the system C compiler (the one
    that links the kernel library), to be linked into every CPU kernel library (runtime/cpu_pool.py adopts it)."""
    global _pool_object
    with _pool_lock:
        if _pool_object is not None and os.path.exists(_pool_object):
            return _pool_object
        with open(POOL_SOURCE, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:16]
        directory = tempfile.mkdtemp(prefix="tensorforge-pool-")
        obj = os.path.join(directory, f"cpu_pool-{digest}.o")
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-O2", "-fPIC", "-std=c11", "-pthread", "-D_GNU_SOURCE", "-c", POOL_SOURCE, "-o", obj]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise CompileError(f"compiling the CPU thread pool with {cc!r} failed (a C compiler is needed to build "
                               f"CPU kernels): {detail.strip().splitlines()[-1] if detail.strip() else e}") from None
        _pool_object = obj
        return obj


def host_isa_flags(g=None) -> list[str]:
    """The CPU flags a CPU library built here requires: the host's vector ISA (AVX512-BF16 among them where the host
    has it), plus AMX where `g` has kernels on AMX tiles (the runtime then asks Linux for AMX state before it runs them)."""
    from tensorforge.compiler import ops
    from tensorforge.runtime.cpu_features import AMX_FLAGS, cpu_features

    have = cpu_features()
    flags = [f for f in ISA_FLAGS if f in have]
    if g is not None and any(n.attrs.get("unit") == "amx" and n.op in ops.BF16_UNIT_OPS for n in g.nodes):
        flags += list(AMX_FLAGS)
    return flags
