"""What a compilation is asked to do: `CompileOptions`, frozen, with no outputs (timings come back in the compiled
model's `compile_timings`), and `TargetSpec`, the target checked once: its kind, its CUDA architecture, the TVM
target it stands for."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tensorforge.runtime.errors import CompileError

TARGETS = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class TargetSpec:
    kind: str  # "cpu" (the host CPU) or "cuda"
    arch: str | None = None  # cuda: "sm_90", "sm_80", ...; None is the default architecture

    @staticmethod
    def parse(target: str | None, arch: str | None = None) -> "TargetSpec":
        kind = {"llvm": "cpu", None: "cpu"}.get(target, target)
        if kind not in TARGETS:
            raise CompileError(f"unknown target {target!r}; supported: 'cpu', 'cuda'")
        if arch is not None and kind != "cuda":
            raise CompileError(f"--arch {arch} applies to the cuda target only, not {target!r}")
        return TargetSpec(kind, arch)

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def tvm(self):
        """The TVM target: the host CPU with its real ISA, or the CUDA architecture (backend/build.py)."""
        from tensorforge.compiler.backend.build import resolve_target

        return resolve_target(self.kind, self.arch)


@dataclass(frozen=True)
class CompileOptions:
    target: str = "cpu"  # "cpu" (the host CPU) or "cuda" (an NVIDIA GPU of architecture `arch`)
    arch: str | None = None  # cuda: "sm_90" (the default, Hopper), "sm_80", ...; SASS for it plus PTX
    precision: str = "fp32"  # "fp16" / "bf16": matmul/dense/conv operands in half precision, fp32 accumulation;
    # on the cpu target "bf16" computes dense and blocked-conv products in bf16 on AMX tiles where the CPU has
    # AMX-BF16 (fp32 sums), and elsewhere stores the dense/conv weights as bfloat16 (activations and sums fp32)
    opt_level: int = 2
    verify_each_pass: bool = True
    dump_after: frozenset[str] = frozenset()  # pass names after which the IR is printed
    disabled_passes: frozenset[str] = frozenset()
    num_threads: int | None = None
    max_concurrency: int | None = None  # concurrent runs of the compiled model at most (default: the CPUs)
    tuning_db: tuple[str, ...] = ()  # the user's tuning databases, searched before the shipped one
    use_shipped_tuning: bool = True  # the repository's own records (compiler/backend/tuned) for matching targets
    spec: TargetSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        spec = TargetSpec.parse(self.target, self.arch)
        if self.precision not in PRECISIONS:
            raise CompileError(f"unknown precision {self.precision!r}; supported: {', '.join(PRECISIONS)}")
        if self.opt_level not in (0, 1, 2):
            raise CompileError(f"unknown optimization level {self.opt_level!r}; supported: 0, 1, 2")
        set_ = object.__setattr__  # normalize what callers may pass as lists or a single path
        set_(self, "target", spec.kind)
        set_(self, "spec", spec)
        set_(self, "dump_after", frozenset(self.dump_after))
        set_(self, "disabled_passes", frozenset(self.disabled_passes))
        dbs = (self.tuning_db,) if isinstance(self.tuning_db, (str, os.PathLike)) else tuple(self.tuning_db)
        set_(self, "tuning_db", tuple(map(os.fspath, dbs)))
