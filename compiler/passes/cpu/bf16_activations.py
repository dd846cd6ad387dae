"""bf16_activations: in the CPU's bf16 mode, activations that go from one kernel to a bf16 product are stored as
bfloat16, half the bytes of float32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Node, Value
from tensorforge.compiler.ir.types import TensorType
from tensorforge.compiler.ops import FusionKind
from tensorforge.runtime.errors import IRError

K = FusionKind


@dataclass(frozen=True)
class StoreActivationsBF16:
    """bf16_activations: a float32 activation read by a bf16 product (an op with `bf16_input`: conv2d_amx, the bf16
    Winograd conv) becomes `cast(x, bfloat16)`, written by its producer's kernel, and the product reads that instead
    of rounding x itself:
    the same bf16 operand, half the bytes written and read. Its other readers (a residual add) read
    `cast(bf16 x, float32)`, each in its own kernel, so their x is rounded to bfloat16 too (8 significant bits, as
    OpenVINO's bf16 mode stores activations).

    Only where it saves memory traffic: x must be computed by a conv/dense kernel's epilogue (the producer an anchor,
    or elementwise ops after one, each read once), which then writes bfloat16 instead of float32; every other reader
    must be elementwise or an anchor that widens its input in its kernel (`widens_input`: MobileNetV2's depthwise
    convs, after the AMX expansions); graph outputs stay float32. A bf16 product's
    output read only by elementwise ops (ResNet's downsampling conv, read by the residual add) is stored as
    bfloat16 too: its operands were bf16 already.

    Not dense_amx: BERT's and ConvNeXt's dense activations (<= 5 MB) stay in the caches, and a bfloat16 write after
    the GELU epilogue cost the up-projection what it saved the down-projection (BERT-base bf16, one core: 27.6 ->
    28.7 ms with dense_amx reading bfloat16; ConvNeXt-tiny 22.3 -> 22.1 ms).

    It runs last before fusion. Measured on one core of an Emerald Rapids Xeon (AMX): see the commit that brought
    it and benchmarks/results/suite_bf16_1t.md."""

    name: ClassVar[str] = "bf16_activations"

    def __call__(self, g: Graph) -> Graph:
        users = g.users()
        outputs = set(g.outputs)
        for n in list(g.nodes):
            if len(n.outputs) != 1:
                continue
            x = n.outputs[0]
            readers = users.get(x, [])
            if not readers or x in outputs or x.type.dtype != "float32":
                continue
            anchor = _anchor(n, users)
            if anchor is None:
                continue
            direct = [r for r in readers if _takes_bf16(r, x)]
            others = [r for r in readers if r not in direct]
            if not all(_widens(r, x) for r in others):
                continue
            if not (direct or _bf16_product(anchor) and (
                    all(r.op.widens_input for r in readers)  # an AMX expansion read by a depthwise conv
                    or anchor is n and all(_joins_other(r, x, users) for r in readers))):  # a downsampling conv
                continue
            (low,) = g.add_node(ops.cast, [x], {"to": "bfloat16"}, name=f"{n.name}.bf16", index=g.nodes.index(n) + 1)
            for r in direct:
                r.inputs[0] = low
            for r in others:
                (wide,) = g.add_node(ops.cast, [low], {"to": "float32"}, name=f"{r.name}.f32", index=g.nodes.index(r))
                r.inputs = [wide if v is x else v for v in r.inputs]
        return g


def _bf16_product(n: Node) -> bool:
    """Is `n` a bf16 product: an op with `bf16_input` whose type rule takes a bfloat16 input 0 with n's attributes
    (the Winograd conv only in its bf16 form)?"""
    if not n.op.bf16_input:
        return False
    types = [v.type for v in n.inputs]
    types[0] = TensorType(types[0].shape, "bfloat16")
    try:
        n.op.infer_types(types, n.attrs)
    except IRError:
        return False
    return True


def _takes_bf16(r: Node, x: Value) -> bool:
    """Does the bf16 product `r` read x as its input 0 only?"""
    return _reads_as_input0(r, x) and _bf16_product(r)


def _reads_as_input0(r: Node, x: Value) -> bool:
    """Does `r` read x as its input 0 and nowhere else?"""
    return r.inputs[0] is x and x not in r.inputs[1:]


def _widens(r: Node, x: Value) -> bool:
    """Can the reader `r` of x read it widened from bfloat16 in its own kernel? Elementwise ops, and anchors that
    take the widening cast as their prologue (`widens_input`: the depthwise conv) when x is their input 0 only."""
    return r.op.kind <= K.BROADCAST or (r.op.widens_input and _reads_as_input0(r, x))


def _joins_other(r: Node, x: Value, users: dict[Value, list[Node]]) -> bool:
    """Does the elementwise reader `r` of `x` also read another anchor's epilogue (a residual add after a conv)?
    Then it belongs to that kernel, not to x's producer's."""
    return any(v is not x and v.producer is not None and len(users.get(v, [])) == 1
               and _anchor(v.producer, users) is not None for v in r.inputs)


def _anchor(n: Node, users: dict[Value, list[Node]], depth: int = 8) -> Node | None:
    """`n` if it is an anchor (conv, dense, matmul), or the anchor before the elementwise op `n` whose kernel will
    take it (each value between them read once); else None."""
    if n.op.kind == K.OUT_ELEMWISE_FUSABLE:
        return n
    if n.op.kind > K.BROADCAST or depth == 0:
        return None
    found = (_anchor(v.producer, users, depth - 1) for v in n.inputs
             if v.producer is not None and len(users.get(v, [])) == 1)
    return next((a for a in found if a is not None), None)


bf16_activations = StoreActivationsBF16()
