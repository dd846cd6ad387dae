"""ONNX element types -> our dtype names, for the importer (graph inputs and outputs) and the converters whose
attributes name a type (Cast's `to`, QuantizeLinear's `output_dtype`, Attention's `softmax_precision`)."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tensorforge.frontends.builder import SUPPORTED_DTYPES
from tensorforge.runtime.errors import FrontendError


def onnx_dtype(elem_type: int, what: str = "") -> str:
    """Our dtype name for an ONNX element type; `what` (e.g. "graph input 'x'") prefixes the error."""
    try:
        name = str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:
        name = None
    if name not in SUPPORTED_DTYPES:
        raise FrontendError(f"{what + ': ' if what else ''}unsupported ONNX element type "
                            f"{helper.tensor_dtype_to_string(elem_type)}; supported: "
                            f"{', '.join(sorted(SUPPORTED_DTYPES))}")
    return name
