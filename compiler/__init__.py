"""The TensorForge compiler: frontends -> IR -> passes -> TVM kernels -> a runtime.CompiledModel.

The API (compile_model, compile_training, compile_gradients, import_model, CompileOptions) is the top package's,
loaded on first use (PEP 562), so that `import tensorforge.compiler.ir` (or any light submodule) does not import
TVM, ONNX or PyTorch."""

from tensorforge.runtime.errors import *  # noqa: F401,F403  (one exception hierarchy for compiler and runtime)

_API = ("CompileOptions", "compile_model", "compile_training", "compile_gradients", "import_model")


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'tensorforge.compiler' has no attribute {name!r}")
    import tensorforge

    return getattr(tensorforge, name)
