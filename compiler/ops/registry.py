"""The op registry: one `OpDef` per op, holding everything about it in one place.

An op is an object (`ops.relu`), never a string: tables are keyed by the object, typos fail at import, and grep
finds every use. A declaration gives
  * the attribute schema (typed, with defaults),
  * `infer`: the type rule (input types + attrs -> output types); errors raise `IRError` naming the op,
  * `reference`: a numpy implementation, the oracle for tests and for constant folding,
  * `lower`: the TVM TE lowering (te tensors + attrs -> te tensors), or None for ops the runtime does without a
    kernel (views such as reshape),
  * `grad`: the gradient rule for reverse-mode autodiff (declared beside the op, JAX style), `NOT_DIFFERENTIABLE`,
    or `NO_RULE_YET`; one of the three, never left out,
  * `kind`: the fusion kind, ordered as TVM's pattern kinds so that a fuser can compare them,
and the facts the passes and analyses read from the op instead of keeping tables of op names:
  * `flops`: node -> floating-point operations (default: one per output element, none for views),
  * `channel_axis_agnostic`: computes each output element from the same element of each (broadcast) input, so that
    it may run on any memory layout of its operands (`alter_layout`); by default true for elementwise and broadcast
    ops; false for those that still see the channel axis or draw random numbers,
  * `half_operands`: the operand slots the op multiplies, which `mixed_precision` may round to half precision,
  * `bf16_weight`: its weight (input 1), packed at compile time, may be stored as bfloat16 (`bf16_weights`),
  * `bf16_input`: it reads its activation (input 0) as bfloat16 as well as float32, rounding a float32 one to bfloat16
    itself (the bf16 products of passes/cpu/amx.py); `bf16_activations` may hand it a bfloat16 one where its type
    rule takes one with the node's attributes (the Winograd conv only in its bf16 form),
  * `widens_input`: an anchor whose kernel may read its input 0 through a widening cast (bfloat16 -> float32) fused
    in as its prologue: `bf16_activations` may store that input as bfloat16 (`fuse` keeps the cast with it),
  * `in_place`: an opaque op whose output is its input 0 with some elements rewritten, and whose kernel writes those
    alone, into input 0's own buffer (ops/cache.py): the plan must give the output that buffer (a persistent state
    updated in place), which backend/plan.py checks,
  * `per_sample(node, carries)`: given which inputs carry a batch along axis 0 (`carries`, one bool per input),
    whether the output carries it too, its sample i computed from the carrying inputs' samples i alone (the others
    read whole): what lets a model compiled for a small batch run a larger one in slices (compiler/batch_loop.py).
    None: not known, never sliced. Elementwise and broadcast ops default to `broadcast_per_sample`.
`missing_facts(op)` lists what a declaration lacks; tests/ops/test_ops.py runs it over every op.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from tensorforge.runtime.errors import IRError

from tensorforge.compiler.ir.types import TensorType


class FusionKind(enum.IntEnum):
    """How an op may fuse with its neighbours (TVM's OpPatternKind)."""

    ELEMWISE = 0  # out[i] = f(in[i]) with all shapes equal
    BROADCAST = 1  # elementwise with broadcasting of some inputs
    INJECTIVE = 2  # each output element reads a computable set of input elements (transpose, concat, pad)
    REDUCTION = 3  # reduces some axes (softmax, pooling, mean)
    OUT_ELEMWISE_FUSABLE = 4  # heavy anchor whose output can take elementwise epilogues (conv, dense, matmul)
    OPAQUE = 8  # never fused


class _GradMark:
    """An explicit statement in place of a gradient rule."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


# no gradient by nature (argmax, comparisons, masks, bit operations): reverse mode passes nothing through it
NOT_DIFFERENTIABLE = _GradMark("NOT_DIFFERENTIABLE")
# differentiable, but the rule is not written (yet): reverse mode reports the op if a gradient must pass through it
NO_RULE_YET = _GradMark("NO_RULE_YET")
GRAD_MARKS = (NOT_DIFFERENTIABLE, NO_RULE_YET)


def per_element_flops(n) -> int:
    """The default FLOP count of a node: one per output element; a view (reshape) costs none."""
    return 0 if n.op.is_view else n.outputs[0].type.numel


REQUIRED = object()  # attribute default meaning "must be given"

ATTR_KINDS = ("int", "float", "str", "bool", "ints", "floats")


@dataclass(frozen=True)
class Attr:
    kind: str  # one of ATTR_KINDS
    default: Any = REQUIRED

    def coerce(self, value: Any) -> Any:
        """Convert `value` to this attribute's canonical Python type (tuples for lists), or raise TypeError."""
        k = self.kind
        if k == "int":
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"expected an int, got {value!r}")
            return int(value)
        if k == "float":
            return float(value)
        if k == "str":
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {value!r}")
            return value
        if k == "bool":
            if value not in (True, False, 0, 1):
                raise TypeError(f"expected a bool, got {value!r}")
            return bool(value)
        if k == "ints":
            seq = tuple(value)
            if any(isinstance(x, bool) or int(x) != x for x in seq):
                raise TypeError(f"expected a tuple of ints, got {value!r}")
            return tuple(int(x) for x in seq)
        if k == "floats":
            return tuple(float(x) for x in value)
        raise AssertionError(k)


@dataclass(frozen=True, eq=False)
class OpDef:
    name: str
    kind: FusionKind
    infer: Callable[..., Any]  # (list[TensorType], **attrs) -> TensorType | list[TensorType]
    reference: Callable[..., Any]  # (*np.ndarray, **attrs) -> np.ndarray | tuple
    lower: Callable[..., Any] | None = None  # (*te.Tensor, **attrs) -> te.Tensor | tuple; None: no kernel needed
    grad: Any = None  # gradient rule, NOT_DIFFERENTIABLE or NO_RULE_YET; None only in an incomplete declaration
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    arity: tuple[int, int] = (1, 1)  # (min, max) number of inputs; max -1 = variadic
    is_view: bool = False  # output aliases the input's memory (reshape): the runtime makes a view, not a kernel
    movement: bool = False  # pure data movement (reshape, transpose, slice): no arithmetic, only re-indexing
    prologue: bool = False  # an anchor whose kernel may read its inputs through movement ops (index remapping)
    doc: str = ""
    flops: Callable[..., int] = per_element_flops  # (node) -> floating-point operations of one node
    channel_axis_agnostic: bool = False  # may run on a blocked channel layout as on NCHW (see the module docstring)
    half_operands: tuple[int, ...] = ()  # operand slots `mixed_precision` may round to half precision
    bf16_weight: bool = False  # its packed weight (input 1) may be stored as bfloat16 (`bf16_weights`)
    bf16_input: bool = False  # its input 0 may be bfloat16: it rounds a float32 one to bfloat16 anyway
    widens_input: bool = False  # its kernel may read input 0 through a fused bfloat16 -> float32 cast
    in_place: bool = False  # its kernel writes part of input 0's buffer, which must be its output's (see above)
    per_sample: Callable[..., bool] | None = None  # (node, carries) -> bool: output sample i from input samples i

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def check_attrs(self, attrs: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Validate attribute names and types, fill defaults; returns a new dict in schema order."""
        at = f" (node {where!r})" if where else ""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise IRError(f"op {self.name}{at}: unknown attribute(s) {sorted(unknown)}; "
                          f"it takes {sorted(self.attrs) or 'none'}")
        out = {}
        for key, spec in self.attrs.items():
            if key in attrs and attrs[key] is not None:
                try:
                    out[key] = spec.coerce(attrs[key])
                except (TypeError, ValueError) as e:
                    raise IRError(f"op {self.name}{at}: attribute {key}: {e}") from None
            elif spec.default is REQUIRED:
                raise IRError(f"op {self.name}{at}: missing required attribute {key!r}")
            else:
                out[key] = spec.default
        return out

    def infer_types(self, in_types: Sequence[TensorType], attrs: Mapping[str, Any], where: str = "") -> list[TensorType]:
        at = f" (node {where!r})" if where else ""
        lo, hi = self.arity
        if len(in_types) < lo or (hi >= 0 and len(in_types) > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{'any' if hi < 0 else hi}"
            raise IRError(f"op {self.name}{at}: takes {want} inputs, got {len(in_types)}")
        try:
            out = self.infer(list(in_types), **attrs)
        except IRError as e:
            raise IRError(f"op {self.name}{at}: {e}") from None
        except (ValueError, TypeError, IndexError) as e:
            raise IRError(f"op {self.name}{at}: invalid inputs "
                          f"({', '.join(map(str, in_types))}): {e}") from None
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def evaluate(self, *arrays, **attrs) -> list:
        """Run the numpy reference; always returns a list of outputs."""
        out = self.reference(*arrays, **attrs)
        return list(out) if isinstance(out, (list, tuple)) else [out]


OPS: dict[str, OpDef] = {}


# -- per_sample facts (see the module docstring) ----------------------------------------------------------------------
def broadcast_per_sample(n, carries) -> bool:
    """Elementwise with numpy broadcasting: each carrying input has the output's rank (its axis 0 is the batch);
    the others broadcast over the batch (a lower rank, or 1 along axis 0)."""
    rank = n.outputs[0].type.rank
    return all(v.type.rank == rank if c else (v.type.rank < rank or v.type.shape[0] == 1)
               for v, c in zip(n.inputs, carries))


def first_input_per_sample(n, carries) -> bool:
    """Per sample of input 0 (a conv's, pool's or dense's data), the other inputs (weights) read whole."""
    return bool(carries[0]) and not any(carries[1:])


def per_sample_unless_axis(attr: str):
    """Per sample of input 0 unless the op works along axis 0 (`attr`: an axis, or a tuple of them)."""
    def rule(n, carries) -> bool:
        axes = n.attrs[attr]
        axes = axes if isinstance(axes, tuple) else (axes,)
        rank = n.inputs[0].type.rank
        return first_input_per_sample(n, carries) and bool(axes) and all(a % rank != 0 for a in axes)
    return rule


def never_per_sample(n, carries) -> bool:
    return False


def defop(name: str, kind: FusionKind, *, infer, reference, grad, lower=None, attrs=None,
          arity=(1, 1), is_view=False, movement=False, prologue=False, doc="", flops=per_element_flops,
          channel_axis_agnostic=None, half_operands=(), bf16_weight=False, bf16_input=False,
          widens_input=False, in_place=False, per_sample=None) -> OpDef:
    """Declare and register an op. Names are unique; the registry is the single source of truth. `grad` has no
    default: every op says whether it has a rule. `channel_axis_agnostic` defaults to the op's class (elementwise
    and broadcast ops are)."""
    if name in OPS:
        raise ValueError(f"op {name} declared twice")
    if channel_axis_agnostic is None:
        channel_axis_agnostic = kind in (FusionKind.ELEMWISE, FusionKind.BROADCAST)
    if per_sample is None and kind in (FusionKind.ELEMWISE, FusionKind.BROADCAST):
        per_sample = broadcast_per_sample
    op = OpDef(name, kind, infer, reference, lower=lower, grad=grad, attrs=dict(attrs or {}), arity=arity,
               is_view=is_view, movement=movement or is_view, prologue=prologue, doc=doc, flops=flops,
               channel_axis_agnostic=channel_axis_agnostic, half_operands=tuple(half_operands),
               bf16_weight=bf16_weight, bf16_input=bf16_input, widens_input=widens_input, in_place=in_place,
               per_sample=per_sample)
    missing = missing_facts(op)
    if missing:
        raise ValueError(f"op {name}: incomplete declaration: {'; '.join(missing)}")
    OPS[name] = op
    return op


def missing_facts(op: OpDef) -> list[str]:
    """What the declaration of `op` lacks or states wrongly, one line per fact; empty when it is complete."""
    out = []
    if not isinstance(op.kind, FusionKind):
        out.append(f"kind {op.kind!r} is not a FusionKind")
    for fact in ("infer", "reference", "flops"):
        if not callable(getattr(op, fact)):
            out.append(f"{fact} is not callable")
    if not (callable(op.lower) or (op.lower is None and op.is_view)):
        out.append("lower is not callable (only a view may go without a kernel)")
    if not (callable(op.grad) or any(op.grad is m for m in GRAD_MARKS)):
        out.append(f"grad is {op.grad!r}: give a rule, NOT_DIFFERENTIABLE or NO_RULE_YET")
    if not isinstance(op.channel_axis_agnostic, bool):
        out.append(f"channel_axis_agnostic is {op.channel_axis_agnostic!r}, not a bool")
    elif op.channel_axis_agnostic and op.kind not in (FusionKind.ELEMWISE, FusionKind.BROADCAST):
        out.append("channel_axis_agnostic is set on an op that is not elementwise")
    hi = op.arity[1]
    if any(not isinstance(i, int) or i < 0 or (hi >= 0 and i >= hi) for i in op.half_operands):
        out.append(f"half_operands {op.half_operands!r} are not operand slots of an op with arity {op.arity}")
    if not isinstance(op.bf16_weight, bool) or (op.bf16_weight and hi >= 0 and hi < 2):
        out.append(f"bf16_weight is {op.bf16_weight!r}: a bool, and true only for an op with a weight input")
    if not isinstance(op.bf16_input, bool):
        out.append(f"bf16_input is {op.bf16_input!r}, not a bool")
    if not isinstance(op.widens_input, bool) or (op.widens_input and op.kind != FusionKind.OUT_ELEMWISE_FUSABLE):
        out.append(f"widens_input is {op.widens_input!r}: a bool, and true only for a conv/dense-like anchor")
    if op.per_sample is not None and not callable(op.per_sample):
        out.append(f"per_sample is {op.per_sample!r}: a function (node, carries) -> bool, or None")
    if not isinstance(op.in_place, bool) or (op.in_place and op.kind != FusionKind.OPAQUE):
        out.append(f"in_place is {op.in_place!r}: a bool, and true only for an opaque op (a kernel of its own)")
    return out


class _Ops:
    """`ops.relu` for the gradient rules, which emit sibling ops: each name is looked up in `OPS` when a rule runs,
    so a family module reaches its siblings without importing the ops package (which imports every family)."""

    def __getattr__(self, name: str) -> OpDef:
        try:
            return OPS[name]
        except KeyError:
            raise AttributeError(f"no op named {name!r}") from None


ops = _Ops()


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}") from None


def fail(msg: str):
    """Raise from a type rule: `OpDef.infer_types` prefixes the op and node."""
    raise IRError(msg)
