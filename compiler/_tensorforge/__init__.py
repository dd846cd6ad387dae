"""TensorForge: a deep-learning compiler. ONNX files, PyTorch modules and builder-API networks in; TVM kernels for the
CPU or an NVIDIA GPU and a thin runtime out.

    import tensorforge
    model = tensorforge.compile_model("model.onnx")      # -> CompiledModel
    outputs = model.run({"input": x})
    model.save("model.tfa"); model = tensorforge.load("model.tfa")
    session = tensorforge.compile_training(net, loss="cross_entropy", optimizer={"name": "adam", "lr": 1e-3})
    decoder = tensorforge.compile_decoder("gpt2.onnx", max_length=1024)   # key/value cache written in place
    tokens = tensorforge.generate(decoder, prompt_ids, max_new_tokens=128)

The everyday API lives here; the layers are `tensorforge.compiler` (IR, ops, passes, backend), `tensorforge.frontends`
and `tensorforge.runtime` (which never imports the compiler). Every error derives from `TensorForgeError`.
The compiler is loaded on first use (PEP 562): `import tensorforge` stays light.

(This folder, compiler/_tensorforge, is the `tensorforge` package itself: pyproject.toml maps it, and compiler/,
frontends/ and runtime/ below it.)
"""

from tensorforge.runtime.errors import (ArtifactError, AutodiffError, CompileError, DeviceError,  # noqa: F401
                                        FrontendError, InputError, IRError, ParseError, PassError, TensorForgeError,
                                        UnsupportedOpError, VerifyError)

__version__ = "0.1.0"

_LAZY = {
    "compile_model": "tensorforge.compiler.api",
    "compile_training": "tensorforge.compiler.api",
    "compile_gradients": "tensorforge.compiler.api",
    "compile_decoder": "tensorforge.compiler.decoding",
    "generate": "tensorforge.runtime.generate",
    "import_model": "tensorforge.compiler.driver",
    "CompileOptions": "tensorforge.compiler.options",
    "load": "tensorforge.runtime",
    "CompiledModel": "tensorforge.runtime",
    "TrainingSession": "tensorforge.runtime",
}

__all__ = sorted(_LAZY) + ["ArtifactError", "AutodiffError", "CompileError", "DeviceError", "FrontendError",
                           "InputError", "IRError", "ParseError", "PassError", "TensorForgeError",
                           "UnsupportedOpError", "VerifyError"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tensorforge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
