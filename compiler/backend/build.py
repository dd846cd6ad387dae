"""Build: schedule every kernel for the target and compile them all into one shared library."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tensorforge.runtime.errors import CompileError

from .lower import KernelSpec, build_prim_func

log = logging.getLogger("tensorforge")

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
    symbols: dict[str, str] = field(default_factory=dict)  # kernel name -> the symbolic kernel that runs it


def build_kernels(specs: list[KernelSpec], target, out_dir: str, tuning: list = (), symbolic=None) -> BuildResult:
    """Schedule and compile each distinct spec; one library for all of them. A kernel found in one of the `tuning`
    databases (TuningDatabase, searched in order) takes its tuned schedule; the others get the default rules.
    `symbolic` (a backend.symbolic.SymbolicKernels, CPU): a dynamic model's kernels over run-time sizes, reused
    and extended by this build."""
    import tvm

    if is_cuda(target):
        from .cuda.build import build_cuda

        b = build_cuda(specs, target, out_dir, tuning)
        return BuildResult(b.library_path, b.kernel_names, b.timings, b.tuned, b.device,
                           {b.device["fatbin"]: b.fatbin_path})

    from .cpu.prefetch import insert_prefetches
    from .cpu.rules import schedule_cpu_traced
    from .index_checks import insert_index_asserts, scalar_index_checks

    def scheduled(func):
        func = insert_index_asserts(func)  # run-time indices raise when out of range (index_checks.py)
        sch, rule = schedule_cpu_traced(func, target)
        return insert_prefetches(scalar_index_checks(func if sch is None else sch.mod["main"])), rule

    funcs = {}
    tuned = set()
    symbols: dict[str, str] = {}
    linked: dict[str, str] = {}   # symbolic kernels compiled by an earlier build: symbol -> object file
    new: dict[str, tuple] = {}    # ... and by this one: symbol -> (func, template)
    exact: dict[str, dict] = {}   # the exact kernels a new symbolic one stands for: symbol -> {name: func}
    t0 = time.perf_counter()
    for spec in specs:
        name = spec.name()
        if name in funcs or name in symbols:
            continue
        func = build_prim_func(spec, target)
        found = next((f for f in (db.lookup(spec, func) for db in tuning) if f is not None), None)
        if found is not None:
            funcs[name] = insert_prefetches(found).with_attr("global_symbol", name)
            tuned.add(name)
            continue
        if symbolic is not None:
            built = symbolic.find(spec)
            if built is not None:
                symbols[name] = built.template.symbol()
                linked[symbols[name]] = built.object_path
                continue
        try:
            func, rule = scheduled(func)
        except Exception as e:  # the scheduler promises not to raise; if it does, say where
            raise CompileError(f"scheduling kernel {name} (on {', '.join(map(str, spec.in_types))}) failed: "
                               f"{type(e).__name__}: {e}") from e
        func = func.with_attr("global_symbol", name)
        template = symbolic.candidate(spec) if symbolic is not None else None
        if template is not None:
            symbol = template.symbol()
            if symbol not in new:
                try:
                    generic, generic_rule = scheduled(template.prim_func(target))
                except Exception as e:  # an op whose lowering or schedule needs its sizes: built exactly
                    log.debug("no symbolic kernel for %s: %s", name, e)
                    generic_rule = None
                if generic_rule is not rule or rule is None:  # only as fast a schedule as the exact kernel's
                    symbolic.refuse(template)
                    funcs[name] = func
                    continue
                new[symbol] = (generic.with_attr("global_symbol", symbol), template)
            symbols[name] = symbol
            exact.setdefault(symbol, {})[name] = func
            continue
        funcs[name] = func
    t1 = time.perf_counter()
    objects = {symbolic.object_path(t): {symbol: f} for symbol, (f, t) in new.items()}
    path = os.path.join(out_dir, "kernels.so")
    try:
        try:
            compile_library(funcs, target, path, addons=[cpu_pool_object(), *sorted(set(linked.values()))],
                            objects=objects)
        except Exception as e:
            if not new:
                raise
            # a symbolic kernel that does not compile: every kernel of this build exactly, as without them
            log.debug("symbolic kernels failed to compile, built exactly: %s", e)
            for symbol, (_, template) in new.items():
                symbolic.refuse(template)
                funcs.update(exact[symbol])
            symbols = {n: sym for n, sym in symbols.items() if sym not in new}
            new, objects = {}, {}
            compile_library(funcs, target, path, addons=[cpu_pool_object(), *sorted(set(linked.values()))])
    except Exception as e:
        raise CompileError(f"building {len(funcs) + len(new)} kernels for {target} failed: {type(e).__name__}: "
                           f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
    t2 = time.perf_counter()
    if symbolic is not None:
        for (symbol, (_, template)), obj in zip(new.items(), objects):
            symbolic.add(template, obj)
        symbolic.remember(specs)
    return BuildResult(path, list(funcs) + sorted(set(symbols.values())),
                       {"schedule_s": t1 - t0, "build_s": t2 - t1}, tuned, symbols=symbols)


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


def compile_library(funcs: dict, target, path: str, addons: list[str] = (), objects: dict | None = None) -> None:
    """Compile the scheduled kernels `funcs` (symbol -> PrimFunc) into the shared library `path`, linked with
    `addons` (object files). `objects`: object file -> kernels ({symbol: PrimFunc}) compiled into it, kept where
    it is (a symbolic kernel that later libraries link, backend/symbolic.py) and linked too. With several jobs the
    kernels are split into that many modules, each lowered and compiled to an object file in its own thread (TVM's
    passes and LLVM release the GIL), and the objects are linked into one library: DenseNet-121's 188 kernels took
    8.0 s one after the other, 4.3 s on two cores."""
    import tvm
    from tvm.support import cc

    objects = dict(objects or {})
    jobs = build_jobs(len(funcs) + sum(len(f) for f in objects.values()))
    if not objects and (jobs == 1 or not funcs):
        tvm.compile(tvm.IRModule(funcs), target=target).export_library(path, addons=list(addons))
        return
    names = sorted(funcs)
    parts = [p for p in (names[i::jobs] for i in range(jobs)) if p]
    work_dir = tempfile.mkdtemp(prefix="objects-", dir=os.path.dirname(path))
    units = [(os.path.join(work_dir, f"kernels{i}.o"), {n: funcs[n] for n in part}) for i, part in enumerate(parts)]
    units += list(objects.items())
    threads = max(1, min(jobs, len(units)))

    def build(i: int) -> None:
        for obj, unit in units[i::threads]:
            tmp = obj[:-2] + ".part.o"
            tvm.compile(tvm.IRModule(unit), target=target).mod.write_to_file(tmp)
            os.replace(tmp, obj)

    try:
        run_threads(build, threads, "tensorforge-build")
        cc.create_shared(path, [obj for obj, _ in units] + list(addons))
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
