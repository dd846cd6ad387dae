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
    # storage-only types (see STORAGE_DTYPES)
    "float8_e4m3fn": "f8e4m3fn", "float8_e4m3fnuz": "f8e4m3fnuz", "float8_e5m2": "f8e5m2",
    "float8_e5m2fnuz": "f8e5m2fnuz", "float8_e8m0fnu": "f8e8m0fnu", "float4_e2m1fn": "f4e2m1fn", "int4": "i4", "uint4": "u4", "int2": "i2",
    "uint2": "u2",
}
SHORT_DTYPE = {v: k for k, v in DTYPE_SHORT.items()}
FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})

# Storage-only element types: ONNX's float8, float4 and 4-/2-bit integers, one element per byte as ml_dtypes holds
# them. No kernel computes on them: values of these types are moved (reshape, transpose, ...) and re-typed by the
# `bitcast` view, and kernels see their bytes as uint8 (`kernel_dtype`). Conversions to and from them are built of
# ordinary ops (frontends/onnx/converters/cast.py).
STORAGE_DTYPES = frozenset({"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
                            "float4_e2m1fn", "int4", "uint4", "int2", "uint2"})
_ML_DTYPES = STORAGE_DTYPES | {"bfloat16"}  # the names numpy knows once ml_dtypes is imported


def normalize_dtype(dtype) -> str:
    """Return our canonical dtype name for a numpy dtype, a dtype name or a short IR spelling."""
    if isinstance(dtype, str) and dtype in DTYPE_SHORT:
        return dtype  # canonical already (most calls: every TensorType built from another's dtype)
    if isinstance(dtype, str) and dtype in SHORT_DTYPE:
        return SHORT_DTYPE[dtype]
    if isinstance(dtype, str) and dtype in _ML_DTYPES:
        return dtype  # before np.dtype: without ml_dtypes imported numpy does not know these names
    name = str(np.dtype(dtype))
    if name not in DTYPE_SHORT:
        raise TypeError(f"unsupported dtype {dtype!r}")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of one of our dtype names (bfloat16 and the storage types are ml_dtypes')."""
    if name in _ML_DTYPES:
        import ml_dtypes  # noqa: F401  (registers the names with numpy)
    return np.dtype(name)


def kernel_dtype(name: str) -> str:
    """The element type a TVM kernel sees: a storage-only type's bytes as uint8, every other type as itself."""
    return "uint8" if name in STORAGE_DTYPES else name


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
        return 2 if self.dtype == "bfloat16" else 1 if self.dtype in STORAGE_DTYPES else np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize

    def __str__(self) -> str:
        return f"{DTYPE_SHORT[self.dtype]}[{','.join(map(str, self.shape))}]"

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(array.shape, str(array.dtype))
