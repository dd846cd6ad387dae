"""What every frontend's converters emit IR through: `Builder`, and the element types a frontend may hand it.

Values are either IR `Value`s or numpy arrays known at compile time; `Builder.emit` folds an op whose inputs are all
known through the op's numpy reference, which evaluates shape-computing subgraphs (Shape -> Gather -> Concat ->
Reshape) at compile time. Known arrays become graph params only where a real op reads them. The importer walking a
model points the builder at the node it converts (`Builder.at`), which names that node's params and errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, Value
from tensorforge.compiler.ir.types import STORAGE_DTYPES
from tensorforge.compiler.ops import OpDef
from tensorforge.runtime.errors import FrontendError, IRError


@dataclass(frozen=True)
class TensorSequence:
    """An ONNX sequence of tensors whose length is known at compile time (a sequence graph input, given with
    shapes={name: [shape, ...]}): its tensors are inputs and outputs of their own, named `name.0`, `name.1`, ...
    Only converters registered with `sequences=True` (Identity) receive one."""

    items: tuple


Ref = Value | np.ndarray | TensorSequence | None  # what a converter receives for each input


# The element types our kernels compute in, plus the storage-only types (float8, float4, 4- and 2-bit integers:
# moved and cast, never computed on; see onnx/converters/cast.py); the others (strings, float8e8m0, complex) are
# refused with a FrontendError naming the type. bfloat16 and the storage types are ml_dtypes' (what numpy_helper
# gives).
SUPPORTED_DTYPES = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                              "float16", "bfloat16", "float32", "float64"}) | STORAGE_DTYPES

# The largest tensor we build at compile time (ConstantOfShape, Range, folded ops): 2^28 elements, 1 GiB of float32.
# Beyond it a model almost surely has a wrong shape (a garbage int64), and numpy would fail with a MemoryError.
MAX_CONSTANT_ELEMENTS = 1 << 28


def is_string_array(x) -> bool:
    """Strings (onnx's numpy_helper gives object arrays of str) exist only at compile time: ops on constant strings
    fold (Equal), and a string that a kernel would read is refused (`Builder.value`)."""
    return isinstance(x, np.ndarray) and x.dtype.kind in "OUS"


def check_array_dtype(x: np.ndarray, what: str) -> np.ndarray:
    if str(x.dtype) not in SUPPORTED_DTYPES and not is_string_array(x):
        raise FrontendError(f"{what} has the unsupported element type {x.dtype}; supported: "
                            f"{', '.join(sorted(SUPPORTED_DTYPES))}")
    return x


class Builder:
    """What converters use to emit IR into `graph`. `source` names the frontend in errors ("ONNX node 'conv1'
    (Conv): ..."); `node_name` and `op_type` are the node being converted (set with `at`), `node` the frontend's
    own node object for converters that read it (an onnx.NodeProto's outputs, a torch.fx.Node)."""

    def __init__(self, graph: Graph, source: str):
        self.graph = graph
        self.source = source
        self.node: Any = None
        self.node_name = ""
        self.op_type = ""
        self._params: dict[int, tuple[Value, np.ndarray]] = {}  # id(array) -> param: one array, one param
        self.names: dict[int, str] = {}  # id(array) -> its name in the model (initializers, constant outputs)
        self._keep: list[np.ndarray] = []
        self._run_time: set[int] = set()  # ids of known arrays that ops read at run time (see `keep_at_run_time`)
        self.memo = graph.memo  # folds of read-only constants made once for every import of the model (ir.constants)

    def at(self, name: str, op_type: str, node: Any = None) -> None:
        """Convert the node `name` of type `op_type` next."""
        self.node, self.node_name, self.op_type = node, name, op_type

    def error(self, msg: str) -> FrontendError:
        return FrontendError(f"{self.source} node {self.node_name!r} ({self.op_type}): {msg}")

    def type(self, x: Ref) -> TensorType:
        return TensorType.of(x) if isinstance(x, np.ndarray) else x.type

    def const(self, x: Ref, what: str) -> np.ndarray:
        """The compile-time value of input `x`; fails clearly if it is only known at run time."""
        if isinstance(x, np.ndarray):
            return x
        err = self.error(f"input {what!r} must be known at compile time (a constant or computed from shapes), "
                         f"but it is the run-time value %{x.name}; make it an initializer (specialized at compile "
                         f"time) or rewrite the model so that it is constant")
        err.needs_constant = x.name  # compile_model compiles for a graph input's fed value (compiler/specialize.py)
        raise err

    def value(self, x: Ref) -> Value:
        """An IR value for `x`, turning a known array into a param."""
        if isinstance(x, Value):
            return x
        if is_string_array(x):
            raise self.error("string tensors exist only at compile time (ops on constant strings are folded); "
                             "this one would have to be computed on at run time or be a graph output, which we "
                             "do not support")
        if id(x) not in self._params:
            name = self.names.get(id(x), self.node_name + ".const")
            self._params[id(x)] = (self.graph.add_param(name, x), x)
        return self._params[id(x)][0]

    def keep_at_run_time(self, x: np.ndarray) -> None:
        """Ops on `x` are not folded: a trained parameter must stay a graph param in the model's own layout, so
        that training updates it (one Adam state per parameter, as PyTorch keeps) and returns it under its name.
        Converters may still read its value with `const`."""
        self._run_time.add(id(x))
        self._keep.append(x)

    def derive(self, new: np.ndarray, source: np.ndarray | None) -> np.ndarray:
        """Record that `new` was computed from `source` at compile time: it inherits its name."""
        if source is not None and id(source) in self.names and id(new) not in self.names:
            self.names[id(new)] = self.names[id(source)]
            self._keep.append(new)  # ids are only unique while the arrays live
        return new

    def computed(self, kind, srcs: Sequence[np.ndarray], make):
        """`make()`, a compile-time transform `kind` (hashable, None: not memoizable) of the constant arrays `srcs`:
        made once for every import of the model where the graph has a memo (a dynamic model's specializations)."""
        if self.memo is None or kind is None or not srcs:
            return make()
        return self.memo.derived(kind, tuple(srcs), make)

    def emit(self, op: OpDef, inputs: Sequence[Ref], **attrs: Any):
        """Apply `op`. Folds to an array when every input is known; returns one result or a list if several."""
        stored = sorted({self.type(x).dtype for x in inputs if x is not None} & STORAGE_DTYPES)
        if op is ops.cast and attrs.get("to") in STORAGE_DTYPES:
            stored = [attrs["to"]]  # converting to one takes onnx/converters/cast.py's tables, not a kernel's cast
        if stored and not op.movement:
            raise self.error(f"{op.name} would compute on {', '.join(stored)} values, which we only move, reshape "
                             f"and Cast: cast them to a computing type (e.g. float32) first")
        try:
            if all(isinstance(x, np.ndarray) for x in inputs) and not any(id(x) in self._run_time for x in inputs):
                attrs = op.check_attrs(attrs, where=self.node_name)
                for t in op.infer_types([TensorType.of(x) for x in inputs], attrs, where=self.node_name):
                    if t.numel > MAX_CONSTANT_ELEMENTS:
                        raise self.error(f"folding {op.name} at compile time would build a constant of {t.numel} "
                                         f"elements ({t}), more than the limit of {MAX_CONSTANT_ELEMENTS}")
                key = _attrs_key(attrs)
                outs = self.computed(None if key is None else ("fold", op.name, key), inputs,
                                     lambda: _fold(op, inputs, attrs))
                for o in outs:  # a folded weight (transposed, reshaped) keeps its source's name
                    self.derive(o, next((x for x in inputs if id(x) in self.names), None))
            else:
                outs = self.graph.add_node(op, [self.value(x) for x in inputs], attrs, name=self.node_name)
        except IRError as e:
            raise self.error(str(e)) from None
        return outs[0] if len(outs) == 1 else outs


def _fold(op: OpDef, inputs: Sequence[np.ndarray], attrs: dict) -> list[np.ndarray]:
    """`op` on constants, each result in C order; but a transpose stays a view of its input where that view is C or
    Fortran contiguous (a 2-D weight's transpose, aot_autograd's `t(weight)`): graph params keep either order, and
    the weight packers read either. Copying it (and the dense converter copying it back) cost BERT-base ~1 s."""
    if op is ops.transpose:
        view = np.transpose(inputs[0], attrs["perm"])
        if view.flags.c_contiguous or view.flags.f_contiguous:
            return [view]
    return [np.asarray(o, order="C") for o in op.evaluate(*inputs, **attrs)]


def _attrs_key(attrs: dict):
    """A hashable key for an op's attributes, or None where their repr may elide elements (an array's "...")."""
    key = repr(sorted(attrs.items()))
    return None if "..." in key else key
