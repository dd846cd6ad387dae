"""Tensor types: a static shape and a dtype. Every SSA value in the graph has one."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

# Our dtype names are numpy's; the IR text uses the short spelling. One table, both directions.
DTYPE_SHORT = {
    "float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16",
    "int64": "i64", "int32": "i32", "int16": "i16", "int8": "i8",
    "uint64": "u64", "uint32": "u32", "uint16": "u16", "uint8": "u8", "bool": "i1",
}
SHORT_DTYPE = {v: k for k, v in DTYPE_SHORT.items()}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


def normalize_dtype(dtype) -> str:
    """Return our canonical dtype name for a numpy dtype, a dtype name or a short IR spelling."""
    if isinstance(dtype, str) and dtype in SHORT_DTYPE:
        return SHORT_DTYPE[dtype]
    name = str(np.dtype(dtype)) if not (isinstance(dtype, str) and dtype == "bfloat16") else "bfloat16"
    if name not in DTYPE_SHORT:
        raise TypeError(f"unsupported dtype {dtype!r}")
    return name


@dataclass(frozen=True)
class TensorType:
    """A tensor's static shape and element type. Shapes are fully static: symbolic dims are bound at import."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {self.shape}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def __str__(self) -> str:
        return f"{DTYPE_SHORT[self.dtype]}[{','.join(map(str, self.shape))}]"

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(array.shape, str(array.dtype))
