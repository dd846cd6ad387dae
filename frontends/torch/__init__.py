"""The PyTorch frontend: `from_torch(module, example_inputs) -> Graph` (torch.export, core ATen)."""

from .importer import from_torch  # noqa: F401
