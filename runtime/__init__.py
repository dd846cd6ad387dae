"""TensorForge's runtime: loads a compiled artifact and runs it. Needs numpy and TVM's runtime library only; it never
imports the compiler, the frontends or `tvm` itself."""

from .errors import (ArtifactError, CompileError, DeviceError, FrontendError, InputError, IRError,  # noqa: F401
                     TensorForgeError, UnsupportedOpError)
from .model import CompiledModel, load  # noqa: F401
from .training import TrainingSession  # noqa: F401,E402
