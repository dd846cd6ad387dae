"""The TensorForge compiler: frontends -> IR -> passes -> TVM kernels -> a runtime.CompiledModel."""

from runtime.errors import *  # noqa: F401,F403  (one exception hierarchy for compiler and runtime)

from .api import CompileOptions, compile_model, compile_training, import_model  # noqa: F401
