"""What this CPU can do, and the one permission a kernel may need from the kernel: AMX tile state.

Linux gives a process AMX state only when asked (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux 5.16
and later); without it the first tile instruction of a kernel kills the process with SIGILL. The permission is
per process and covers threads started before and after it. Plans whose kernels use AMX list `amx_tile` and
`amx_bf16` in their `cpu_features`; the runtime asks once before it runs them.
"""

from __future__ import annotations

import ctypes
import functools
import threading

from .errors import ArtifactError

AMX_FLAGS = ("amx_tile", "amx_bf16")
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18

_amx_lock = threading.Lock()
_amx_granted: bool | None = None


@functools.cache
def _cpuinfo_field(name: str) -> str:
    """The value of the first `name` line of Linux's /proc/cpuinfo (read once per field); empty if unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU flags of this machine (Linux /proc/cpuinfo, read once); empty if unknown."""
    return frozenset(_cpuinfo_field("flags").split())


def cpu_vendor() -> str:
    """This machine's CPU vendor as Linux names it ("GenuineIntel", "AuthenticAMD"); empty if unknown."""
    return _cpuinfo_field("vendor_id")


def has_amx() -> bool:
    """This CPU has AMX tiles with bf16 products."""
    return all(f in cpu_features() for f in AMX_FLAGS)


def amx_permission() -> bool:
    """Ask Linux for AMX tile state for this process (once); True where it is granted."""
    global _amx_granted
    with _amx_lock:
        if _amx_granted is None:
            granted = False
            if has_amx():
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    granted = libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
                except (OSError, AttributeError):
                    granted = False
            _amx_granted = granted
        return _amx_granted


def request_amx() -> None:
    """Make AMX usable by this process, or raise ArtifactError saying why it is not."""
    if not amx_permission():
        why = "this CPU has no AMX-BF16" if not has_amx() else "Linux refused AMX state (arch_prctl; kernel < 5.16?)"
        raise ArtifactError(f"this model's kernels use AMX tiles, but {why}; recompile it here (tensorforge "
                            f"compile), where the bf16 kernels use the CPU's other units")
