"""The TensorForge compiler: frontends -> IR -> passes -> TVM kernels -> a runtime.CompiledModel.

The API is loaded on first use (PEP 562), so that `import compiler.ir` (or any light submodule) does not import
TVM, ONNX or PyTorch."""

from tensorforge.runtime.errors import *  # noqa: F401,F403  (one exception hierarchy for compiler and runtime)

_LAZY = {
    "CompileOptions": "tensorforge.compiler.options",
    "TargetSpec": "tensorforge.compiler.options",
    "compile_model": "tensorforge.compiler.api",
    "compile_training": "tensorforge.compiler.api",
    "compile_gradients": "tensorforge.compiler.api",
    "import_model": "tensorforge.compiler.driver",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
