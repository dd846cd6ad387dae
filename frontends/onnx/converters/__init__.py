"""ONNX converters, one module per op family; importing the package registers them all in CONVERTERS."""

from . import attention, cast, elementwise, lp_norm, nn, quantize, rnn, scatter, shape  # noqa: F401  (registration)
from .base import CONVERTERS, converter, lookup_converter  # noqa: F401
