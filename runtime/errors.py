"""TensorForge's exception hierarchy.

It lives in the runtime package because the runtime must not import the compiler, while the compiler may import
the runtime: one hierarchy serves both. Every error a user can trigger is one of these, with a message that names
what was wrong (the op, the ONNX node, the input name, the expected and actual shape).
"""

from __future__ import annotations

__all__ = ["TensorForgeError", "FrontendError", "UnsupportedOpError", "IRError", "ParseError", "VerifyError",
           "PassError", "CompileError", "AutodiffError", "ArtifactError", "DeviceError", "InputError"]


class TensorForgeError(Exception):
    """Base class of every error TensorForge raises on purpose."""


# -- model import ---------------------------------------------------------------------------------------------------
class FrontendError(TensorForgeError):
    """A model could not be read or converted (corrupt file, bad attribute, inconsistent shapes)."""


class UnsupportedOpError(FrontendError):
    """The model uses ops we cannot convert; `unsupported` lists (op_type, opset, [node names])."""

    def __init__(self, message: str, unsupported: list[tuple[str, int, list[str]]]):
        super().__init__(message)
        self.unsupported = unsupported


# -- IR ---------------------------------------------------------------------------------------------------------------
class IRError(TensorForgeError):
    """The IR is malformed: a type rule failed, a value is used before its definition, ..."""


class ParseError(IRError):
    """The textual IR could not be parsed; the message gives line and column."""


class VerifyError(IRError):
    """The verifier found a broken invariant."""


class PassError(TensorForgeError):
    """A compiler pass failed; the message names the pass and the passes that ran before it."""


# -- backend ----------------------------------------------------------------------------------------------------------
class CompileError(TensorForgeError):
    """Lowering, scheduling or building kernels failed."""


class AutodiffError(CompileError):
    """The graph cannot be differentiated (an op without a gradient rule on the path to the loss, ...)."""


# -- runtime ----------------------------------------------------------------------------------------------------------
class ArtifactError(TensorForgeError):
    """A compiled artifact is missing, damaged, or was built for another machine or format version."""


class DeviceError(ArtifactError, RuntimeError):
    """The GPU a CUDA artifact needs is not usable here: no driver, no GPU, too old a GPU, or no CUDA runtime."""


class InputError(TensorForgeError, ValueError):
    """A run was given a wrong input: unknown or missing name, wrong shape or dtype."""
