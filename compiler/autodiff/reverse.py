"""Reverse-mode differentiation of an IR graph: `backward(g, loss, wrt)` appends the backward nodes to `g`.

Nodes are visited in reverse execution order; each op's gradient rule (`OpDef.grad`, declared with the op) maps
the gradient of its output to gradients of its inputs, emitted as ordinary IR nodes through an `Emitter`.
Contributions to a value read several times are summed. Only nodes on a path from `wrt` to `loss` are
differentiated; an op on such a path without a rule (`NO_RULE_YET`) is an error that names the op and the node.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Node, Value
from tensorforge.compiler.ops import NO_RULE_YET, NOT_DIFFERENTIABLE
from tensorforge.runtime.errors import AutodiffError  # noqa: F401  (re-exported: compiler.autodiff.reverse.AutodiffError)


class Emitter:
    """Adds nodes to the graph being differentiated, with the few helpers every rule needs."""

    def __init__(self, g: Graph, name: str = ""):
        self.g = g
        self.name = name  # the forward node being differentiated (backward nodes are named after it)

    def op(self, opdef, inputs, **attrs) -> Value:
        outs = self.g.add_node(opdef, [self.value(x, inputs) for x in inputs], attrs, name=self.name + ".grad")
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype) -> Value:
        return self.g.add_param("c", np.asarray(value, dtype).reshape(np.shape(value) or (1,)))

    def value(self, x, siblings=()) -> Value:
        if isinstance(x, Value):
            return x
        dtype = next((v.type.dtype for v in siblings if isinstance(v, Value)), "float32")
        return self.const(x, dtype)

    # -- helpers ------------------------------------------------------------------------------------------------------
    def sum_to(self, v: Value, shape: tuple[int, ...]) -> Value:
        """Undo numpy broadcasting: sum v over the axes along which `shape` was broadcast to v's shape."""
        shape = tuple(shape)
        if v.type.shape == shape:
            return v
        lead = v.type.rank - len(shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and v.type.shape[lead + i] != 1)
        s = self.op(ops.reduce_sum, [v], axes=axes, keepdims=True) if axes else v
        return self.op(ops.reshape, [s], shape=shape) if s.type.shape != shape else s

    def broadcast(self, v: Value, shape: tuple[int, ...]) -> Value:
        return v if v.type.shape == tuple(shape) else self.op(ops.broadcast_to, [v], shape=tuple(shape))

    def add(self, a: Value, b: Value) -> Value:
        return self.op(ops.add, [a, b])

    def mul(self, a, b) -> Value:
        return self.op(ops.mul, [a, b])

    def scale(self, v: Value, s: float) -> Value:
        return self.op(ops.mul, [v, self.const(s, v.type.dtype)])


def _where(n: Node) -> str:
    return f"op {n.op.name} (node {n.name or '?'}, output %{n.outputs[0].name})"


def backward(g: Graph, loss: Value, wrt: Sequence[Value], seed: Value | None = None) -> dict[Value, Value]:
    """Append to `g` the nodes computing d(sum of loss)/dv for each v in `wrt`; returns {v: gradient value}.
    `seed` is dL/dloss (default: ones). A value in `wrt` that does not reach the loss gets a zero gradient."""
    wanted = set(wrt)
    depends = set(wanted)  # values that depend on some wrt value
    forward = list(g.nodes)
    for n in forward:
        if any(v in depends for v in n.inputs):
            depends.update(n.outputs)
    if loss not in depends:
        raise AutodiffError(f"the loss %{loss.name} does not depend on any of the values to differentiate")
    e = Emitter(g)
    # contributions to each value's gradient, summed when the value's producer is differentiated
    parts: dict[Value, list[Value]] = {
        loss: [seed if seed is not None else e.const(np.ones(loss.type.shape), loss.type.dtype)]}
    grads: dict[Value, Value] = {}

    def total(v: Value) -> Value | None:
        if v not in grads and v in parts:
            e.name = (v.producer.name if v.producer is not None else "") or v.name
            grads[v] = _sum(e, parts[v])
        return grads.get(v)

    for n in reversed(forward):
        dys = [total(o) for o in n.outputs]
        if all(d is None for d in dys) or not any(v in depends for v in n.inputs):
            continue
        rule = n.op.grad
        if rule is NOT_DIFFERENTIABLE:
            continue
        if rule is NO_RULE_YET or rule is None:  # None: an OpDef built by hand, not by defop
            raise AutodiffError(f"no gradient rule for {_where(n)}; declare one with the op "
                                f"(defop({n.op.name!r}, ..., grad=rule))")
        e.name = n.name or n.outputs[0].name
        # a multi-output op's rule gets every output's gradient (None where an output does not reach the loss)
        in_grads = rule(e, n, dys[0] if len(n.outputs) == 1 else dys)
        for v, gv in zip(n.inputs, in_grads):
            if gv is None or v not in depends:
                continue
            if gv.type != v.type:
                raise AutodiffError(f"the gradient rule of {_where(n)} gave {gv.type} for input %{v.name} "
                                    f"of type {v.type}")
            parts.setdefault(v, []).append(gv)
    out = {}
    for v in wrt:
        out[v] = total(v) if v in parts else e.const(np.zeros(v.type.shape), v.type.dtype)
    return out


def _slice_grad_parts(v: Value):
    """(input_shape, axis, begin, dy) if `v` is a strided_slice_grad of unit strides that slices one axis only."""
    n = v.producer
    if n is None or n.op is not ops.strided_slice_grad or any(s != 1 for s in n.attrs["strides"]):
        return None
    shape, begins, dy = n.attrs["input_shape"], n.attrs["begins"], n.inputs[0]
    cut = [k for k, (b, d, full) in enumerate(zip(begins, dy.type.shape, shape)) if b != 0 or d != full]
    if len(cut) > 1:
        return None
    axis = cut[0] if cut else 0
    return tuple(shape), axis, begins[axis], dy


def _sum(e: Emitter, parts: list[Value]) -> Value:
    """The sum of a value's gradient contributions. Those that are slice adjoints of disjoint slices along one axis
    (a tensor read step by step) become one scatter_slices: k full-size adds would cost k passes over it."""
    slices: dict[tuple, list] = {}
    rest = []
    for p in parts:
        info = _slice_grad_parts(p)
        if info is None:
            rest.append(p)
        else:
            slices.setdefault(info[:2], []).append((info[2], info[3], p))
    for (shape, axis), group in slices.items():
        group.sort(key=lambda t: t[0])
        disjoint = all(b + dy.type.shape[axis] <= b2 for (b, dy, _), (b2, _, _) in zip(group, group[1:]))
        if len(group) < 2 or not disjoint:
            rest += [p for _, _, p in group]
            continue
        rest.append(e.op(ops.scatter_slices, [dy for _, dy, _ in group], input_shape=shape, axis=axis,
                         begins=tuple(b for b, _, _ in group)))
    total = rest[0]
    for p in rest[1:]:
        total = e.add(total, p)
    return total
