"""The ONNX frontend: `from_onnx(model, shapes=None) -> Graph`."""

from .importer import from_onnx, load_model, supported_ops  # noqa: F401
