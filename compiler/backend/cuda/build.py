"""The CUDA backend: GPU schedules (TVM's dlight rules), a check that every kernel really has device code, and
ahead-of-time compilation of the device code with nvcc into a fatbin (SASS for the chosen architecture plus PTX,
which the driver can compile for newer GPUs).

TVM 0.27 embeds CUDA *source* in the host library and compiles it when the module is loaded (NVRTC, or nvcc via
`tvm_callback_cuda_compile`). Deployment machines have neither, so the artifact carries the fatbin compiled here and
the runtime answers TVM's compile callback with it, after checking that the source is the one it was built from
(runtime/cuda.py). On-device execution is verified only where a GPU was available (see the tests marked `gpu`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from tensorforge.runtime.errors import CompileError

from ..lower import KernelSpec, build_prim_func
from .intrin import TENSOR_CORE_SM, load_tensor_intrinsics, tensorize_matmul  # noqa: F401 (re-exported)

DEFAULT_ARCH = "sm_90"
_KERNEL = re.compile(r'__global__\s+void\s+(?:__launch_bounds__\(\d+\)\s+)?(\w+)\s*\(')


def cuda_target(arch: str = DEFAULT_ARCH):
    import tvm
    from tvm.target import Target

    if not re.fullmatch(r"sm_\d+a?", arch):
        raise CompileError(f"CUDA architecture {arch!r} is not of the form sm_XY (e.g. sm_90 for Hopper, sm_80 for "
                           f"Ampere)")
    # the host code only unpacks arguments and launches kernels: compile it for the plain x86-64 triple (no -mcpu),
    # so that an artifact built here runs next to a GPU whatever that machine's CPU is
    triple = Target.from_device(tvm.cpu()).export().get("mtriple")
    host = {"kind": "llvm", **({"mtriple": triple} if triple else {})}
    return Target({"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152,
                   "max_threads_per_block": 1024, "thread_warp_size": 32}, host=host)


def target_arch(target) -> str:
    return str(target.export().get("arch", DEFAULT_ARCH))


HALF = ("float16", "bfloat16")
TENSOR_CORE_MIN = {"m": 64, "n": 64, "k": 32}  # smaller products pad too much of a 128x128x64 tensor-core tile


def _exact_in(value: float, dtype: str) -> bool:
    import ml_dtypes
    import numpy as np

    half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    return float(np.asarray(value, dtype=half)) == value


def _moved_half(expr) -> set | None:
    """The half-precision dtypes that `expr` only moves: it is made of widened half-precision loads
    (`f32(x[...])`), `if_then_else`/`select` around them (padding, masking) and constants exact in half precision.
    None where it computes anything else."""
    from tvm import ir, tirx

    if isinstance(expr, tirx.Cast):
        source = getattr(expr.value, "source", None)  # a load (`TensorLoad`): its buffer
        dtype = str(getattr(source, "dtype", ""))
        return {dtype} if str(expr.ty) == "float32" and dtype in HALF else None
    if isinstance(expr, tirx.FloatImm):
        return set() if str(expr.ty) == "float32" else None
    if isinstance(expr, tirx.Select):
        branches = (expr.true_value, expr.false_value)
    elif isinstance(expr, ir.Call) and getattr(expr.op, "name", "").endswith("if_then_else"):
        branches = tuple(expr.args[1:])
    else:
        return None
    found = [_moved_half(b) for b in branches]
    if any(f is None for f in found):
        return None
    dtypes = set().union(*found)
    constants = [b.value for b in branches if isinstance(b, tirx.FloatImm)]
    return dtypes if all(_exact_in(c, d) for c in constants for d in dtypes) else None


def inline_widening_casts(func):
    """Give the matmul/conv of a kernel that reads half-precision inputs half-precision operands:
    - inline the blocks that only widen a half-precision input to float32 (the prologues the fuse pass gives a
      matmul on CUDA) into their readers: the matmul block then reads the float16 buffer itself, with the cast in its
      body, `C[i, j] += f32(A[i, k]) * f32(B[j, k])`, which is what the tensor-core rule matches;
    - compute the stages that only move such data (a conv's zero padding, `pad_temp = if_then_else(.., f32(x[..]),
      0)`, transposes) in the half-precision dtype: exact (they copy values that were half precision, or write
      constants exact in it), and their readers see `f32(pad_temp[..])`, so padded (3x3) convs get the tensor-core
      schedule like 1x1 convs."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import get_root_block

    sch = s_tir.Schedule(func)
    changed = False
    for block in sch.get_child_blocks(get_root_block(sch)):
        body = sch.get(block).body
        # a load is a `TensorLoad` in TVM 0.27 (`tirx.BufferLoad` is a constructor function), its buffer `.source`
        cast = body.value if isinstance(body, tirx.BufferStore) else None
        source = getattr(getattr(cast, "value", None), "source", None) if isinstance(cast, tirx.Cast) else None
        if source is not None and str(body.buffer.dtype) == "float32" and str(getattr(source, "dtype", "")) in HALF:
            try:
                sch.compute_inline(block)
                changed = True
            except Exception:  # e.g. the cast writes an output of the kernel: leave it as it is
                pass
    root = get_root_block(sch)
    intermediates = list(sch.get(root).alloc_buffers)
    for block in sch.get_child_blocks(root):  # in order: a chain of movements (transpose -> reshape) goes half
        stmt = sch.get(block)
        body = stmt.body
        if (not isinstance(body, tirx.BufferStore) or stmt.init is not None or str(body.buffer.dtype) != "float32"
                or not any(body.buffer.same_as(b) for b in intermediates)
                or any(int(v.iter_type) != 0 for v in stmt.iter_vars)):  # spatial (data-parallel) blocks only
            continue
        dtypes = _moved_half(body.value)
        if dtypes is not None and len(dtypes) == 1:
            sch.unsafe_set_dtype(block, 0, dtypes.pop())
            changed = True
    return sch.mod["main"] if changed else func


def _tensor_core_rule():
    """A dlight rule: a tensor-core matmul (wmma 16x16x16; float16 operands on sm_70+, bfloat16 on sm_80+; float32
    sums, or float16 ones for a float16 product) for matmul-like kernels whose M, N and K reach TENSOR_CORE_MIN
    (cuda_intrin.tensorize_matmul). dlight's own Matmul rule tries its float16-only tensor-core schedule only when
    every extent exceeds 64, which leaves out attention's per-head products (K = 64 in BERT-base and GPT-2)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
    from tvm.s_tir.dlight.gpu.matmul import get_in_out_dtypes, get_index_map, get_reduction_blocks

    class TensorCoreMatmul(GPUScheduleRule):
        def apply(self, func, target, tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            if target.kind.name != "cuda":
                return None
            sch = s_tir.Schedule(func)
            reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
            if reductions is None:
                return None
            main = reductions[0]
            in_dtype, out_dtype = get_in_out_dtypes(sch.get(main))
            stmt = sch.get(main)  # both operands in in_dtype (the wmma fragments of A and B share it)
            if any(str(r.source.dtype) != in_dtype for r in stmt.reads if not r.source.same_as(stmt.writes[0].source)):
                return None
            sm = int(re.sub(r"\D", "", str(target.attrs.get("arch", ""))) or -1)  # sm_90a -> 90
            if in_dtype not in TENSOR_CORE_SM or sm < TENSOR_CORE_SM[in_dtype] or out_dtype not in (
                    "float32", in_dtype if in_dtype == "float16" else "float32"):
                return None
            # normalize to C[S, I, J] += A[S, I, K] * B[S, J, K] as dlight does, to read M, N and K
            try:
                for buffer in (("read", 0), ("read", 1), ("write", 0)):
                    sch.reindex(main, buffer)
                maps = get_index_map(sch.get(main))
                if maps is None:
                    return None
                sch.transform_block_layout(main, maps[0])
            except Exception:
                return None
            extents = [v.dom.extent for v in sch.get(main).iter_vars]
            if len(extents) != 4 or not all(isinstance(e, tirx.IntImm) for e in extents[1:]):
                return None
            m, n, k = (int(e) for e in extents[1:])
            if m < TENSOR_CORE_MIN["m"] or n < TENSOR_CORE_MIN["n"] or k < TENSOR_CORE_MIN["k"]:
                return None
            try:
                return tensorize_matmul(func, in_dtype)
            except Exception:  # a schedule step the kernel's shape does not allow: the next rule takes it
                return None

    return TensorCoreMatmul()


TENSOR_CORE_CODE = ("wmma::mma_sync", "mma.sync", "wmma.mma", "ldmatrix")  # CUDA C (nvcuda::wmma) and PTX forms


def tensor_core_kernels(source: str) -> list[str]:
    """The `__global__` kernels of CUDA source whose body uses tensor-core instructions (wmma / mma / ldmatrix)."""
    starts = [(m.start(), m.group(1)) for m in _KERNEL.finditer(source)] + [(len(source), None)]
    found = [name for (a, name), (b, _) in zip(starts, starts[1:]) if any(t in source[a:b] for t in TENSOR_CORE_CODE)]
    return list(dict.fromkeys(found))


def schedule_cuda(mod, target):
    """dlight's GPU rules, the first that applies wins: tensor-core matmul (float16/bfloat16 operands), matmul/conv
    (implicit GEMM), GEMV, reductions, the rest. Half-precision operands' widening casts are inlined first and their
    padding/movement stages computed in half precision, so the matmul reads float16/bfloat16. Returns (scheduled module, {kernel: why it could not be scheduled})."""
    import tvm
    from tvm.s_tir import dlight as dl

    rules = [_tensor_core_rule(), dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Reduction(),
             dl.gpu.GeneralReduction(), dl.gpu.Transpose(), dl.gpu.Fallback()]
    # dlight's Transpose stages a bfloat16 tile in shared memory that TVM 0.27's bf16 legalization then breaks
    # ("dtype mismatch on BufferStore: buffer's dtype is uint16 ... RHS's dtype is bfloat16"): not for bf16 kernels
    no_transpose = [r for r in rules if not isinstance(r, dl.gpu.Transpose)]
    out, failed = {}, {}
    for gv, func in mod.functions.items():
        half = any(str(p.dtype) in HALF for p in func.params)
        if half:
            func = inline_widening_casts(func)
        bf16 = any(str(p.dtype) == "bfloat16" for p in func.params) or "bfloat16" in func.script()
        out[gv.name_hint], why = _first_rule(no_transpose if bf16 else rules, gv.name_hint, func, target)
        if why is not None:
            failed[gv.name_hint] = why
    return tvm.IRModule(out), failed


def _first_rule(rules: list, name: str, func, target):
    """(func scheduled by the first rule that applies, None), as dlight's ApplyDefaultSchedule does, except that a
    rule raising on a kernel it does not handle (an assertion inside the rule) passes it on to the next rule instead
    of failing the kernel; (func unscheduled, why) when no rule applies, e.g. scans and sorts written as opaque
    loops."""
    import tvm
    from tvm.s_tir import dlight as dl

    errors = []
    for rule in rules:
        try:
            with target:
                got = dl.ApplyDefaultSchedule(rule)(tvm.IRModule({name: func}))[name]
        except Exception as e:
            errors.append(f"{type(rule).__name__}: {type(e).__name__}: {_last_line(e)}")
            continue
        if got.attrs is not None and "tirx.is_scheduled" in got.attrs:
            return got, None
    return func, "; ".join(errors) or "no rule applies"


def _last_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[-1] if text else ""


def device_kernels(source: str) -> list[str]:
    return _KERNEL.findall(source)


def check_device_code(names: list[str], source: str, why: dict[str, str] | None = None) -> None:
    """TVM silently compiles a kernel it could not bind to GPU threads as host code: refuse that."""
    kernels = device_kernels(source)
    missing = [n for n in names if not any(k == n or k.startswith(n + "_kernel") for k in kernels)]
    if missing:
        detail = "; ".join(f"{n}" + (f" ({why[n]})" if why and n in why else "") for n in missing[:10])
        raise CompileError(f"{len(missing)} kernel(s) got no GPU code (no schedule bound them to GPU threads): "
                           f"{detail}")


def nvcc_fatbin(source: str, arch: str) -> bytes:
    """Compile CUDA source to a fatbin holding SASS for `arch` and PTX for newer GPUs."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        raise CompileError("nvcc was not found: the CUDA target compiles device code ahead of time with nvcc "
                           "(install the CUDA toolkit or put nvcc on PATH)")
    compute = "compute_" + arch[3:]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, "kernels.fatbin")
        with open(src, "w") as f:
            f.write(source)
        cmd = [nvcc, "--fatbin", "-O3", f"-gencode=arch={compute},code={arch}",
               f"-gencode=arch={compute.rstrip('a')},code={compute.rstrip('a')}", "-o", out, src]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"nvcc failed for {arch}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}")
        with open(out, "rb") as f:
            return f.read()


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


@dataclass
class CudaBuild:
    library_path: str
    fatbin_path: str
    source_sha256: str
    kernel_names: list[str]
    device_kernels: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    tuned: set[str] = field(default_factory=set)  # kernels whose schedule came from a tuning database
    arch: str = DEFAULT_ARCH
    tensor_core_kernels: list[str] = field(default_factory=list)  # device kernels that use wmma/mma
    source: str = field(default="", repr=False)  # the CUDA source nvcc compiled

    @property
    def device(self) -> dict:
        """The plan's "device" entry (runtime/cuda.py reads it)."""
        return {"kind": "cuda", "arch": self.arch, "fatbin": "kernels.fatbin", "source_sha256": self.source_sha256,
                "device_kernels": len(self.device_kernels), "tensor_core_kernels": len(self.tensor_core_kernels)}


def build_cuda(specs: list[KernelSpec], target, out_dir: str, tuning: list = ()) -> CudaBuild:
    """Schedule (a tuning record where one of the `tuning` databases has it, else dlight), generate CUDA, check
    every kernel has device code, compile the device code with nvcc and export the host library."""
    import tvm

    arch = target_arch(target)
    t0 = time.perf_counter()
    funcs, tuned = {}, {}
    for spec in specs:
        name = spec.name()
        if name in funcs or name in tuned:
            continue
        func = build_prim_func(spec, target)
        found = next((f for f in (db.lookup(spec, func) for db in tuning) if f is not None), None)
        if found is not None:
            tuned[name] = found.with_attr("global_symbol", name)
        else:
            funcs[name] = func.with_attr("global_symbol", name)
    mod, unscheduled = schedule_cuda(tvm.IRModule(funcs), target) if funcs else (tvm.IRModule({}), {})
    mod = tvm.IRModule({**{gv.name_hint: f for gv, f in mod.functions.items()}, **tuned})
    funcs = {**funcs, **tuned}
    t1 = time.perf_counter()
    retried: set[str] = set()
    while True:
        try:
            ex = tvm.compile(mod, target=target)
            break
        except Exception as e:
            # a dlight rule may match a kernel that TVM then cannot lower (e.g. GeneralReduction on a reduction
            # without a known reducer identity): schedule that kernel with the plain Fallback rule and try again
            bad = re.search(r'GlobalVar\("(\w+)"\)', str(e))
            name = bad.group(1) if bad else None
            if name is None or name in retried or name not in funcs or name in tuned:
                raise CompileError(f"building {len(funcs)} CUDA kernels failed: {type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from e
            retried.add(name)
            from tvm.s_tir import dlight as dl

            try:
                with target:
                    fixed = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(tvm.IRModule({name: funcs[name]}))[name]
            except Exception as e2:
                unscheduled[name] = f"{type(e2).__name__}: {_last_line(e2)}"
                fixed = funcs[name]
            mod = tvm.IRModule({**{gv.name_hint: f for gv, f in mod.functions.items() if gv.name_hint != name},
                                name: fixed})
    source = ex.mod.imports[0].inspect_source() if ex.mod.imports else ""
    check_device_code(list(funcs), source, unscheduled)
    t2 = time.perf_counter()
    fatbin = nvcc_fatbin(source, arch)
    t3 = time.perf_counter()
    lib = os.path.join(out_dir, "kernels.so")
    ex.export_library(lib)
    fat = os.path.join(out_dir, "kernels.fatbin")
    with open(fat, "wb") as f:
        f.write(fatbin)
    return CudaBuild(lib, fat, source_digest(source), list(funcs), device_kernels(source),
                     {"schedule_s": t1 - t0, "codegen_s": t2 - t1, "nvcc_s": t3 - t2}, set(tuned), arch,
                     tensor_core_kernels(source), source)
