"""The graph IR: a typed SSA graph of op applications.

* A `Value` is defined exactly once: as a graph input, as a parameter (a constant with data), or as an output of
  one `Node`. Its `type` is static (shape + dtype).
* A `Node` applies an `OpDef` (an object from the op registry, never a string) to input values, with typed
  attributes; the op's type rule gives the types of its outputs.
* `Graph.nodes` is kept in a valid execution order (every input defined before use). Passes return new graphs or
  edit in place through the small API below; `verify()` checks the invariants after each pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from tensorforge.runtime.errors import IRError

from .types import TensorType

if TYPE_CHECKING:
    from tensorforge.compiler.ops.registry import OpDef


class Value:
    """An SSA value. `producer` is the defining node (None for inputs and params); `data` is set for params."""

    __slots__ = ("name", "type", "producer", "data")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None, data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.data = data

    @property
    def is_param(self) -> bool:
        return self.producer is None and self.data is not None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. `attrs` is a dict of the op's typed attributes, every one present (defaults filled)."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "name", "group")

    def __init__(self, op: "OpDef", inputs: Sequence[Value], attrs: dict[str, Any], name: str = ""):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = attrs
        self.outputs: list[Value] = []
        self.name = name  # where it came from (ONNX node name), for error messages; not part of the semantics
        self.group: str | None = None  # fused kernel this node belongs to (set by the fuse pass); members adjacent

    def __repr__(self) -> str:
        ins = ", ".join("%" + v.name for v in self.inputs)
        outs = ", ".join("%" + v.name for v in self.outputs)
        return f"{outs} = {self.op.name}({ins})"


class Graph:
    """A function: inputs and params in, outputs out, nodes in between in execution order."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self._outputs: list[Value] = []
        self.output_names: list[str] = []  # the names users see; passes that replace an output value keep them
        self.fusion_reasons: dict = {}  # node -> why the fuse pass left it alone (for inspect --fusion)
        self.memo = None  # a constants.ConstantMemo shared with other compiles of the same model, or None
        # param arrays this compile made and nobody else holds (packed weights): id -> array (kept alive, so the id
        # stays its own). The compiled model runs on them where they lie instead of copying them (compiler/driver.py)
        self.owned: dict[int, np.ndarray] = {}
        self._names: set[str] = set()
        self._counter = 0

    @property
    def outputs(self) -> list[Value]:
        return self._outputs

    @outputs.setter
    def outputs(self, values) -> None:
        """Set the outputs; each is named after its value (assign `output_names` afterwards to choose others)."""
        self._outputs = list(values)
        self.output_names = [v.name for v in self._outputs]

    # -- construction --------------------------------------------------------------------------------------------------
    def fresh_name(self, hint: str = "") -> str:
        """A value name not used yet in this graph, close to `hint` (an ONNX tensor name, say)."""
        if hint and hint not in self._names:
            return hint
        while True:
            name = f"{hint}.{self._counter}" if hint else str(self._counter)
            self._counter += 1
            if name not in self._names:
                return name

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise IRError(f"value name %{name} is defined twice")
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(self.fresh_name(name)), type)
        self.inputs.append(v)
        return v

    def add_param(self, name: str, data: np.ndarray | None, type: TensorType | None = None,
                  owned: bool = False) -> Value:
        """A constant. `owned`: `data` was made by this compile and no one else holds it (see `owned`).
        `data` may be None only for graphs parsed from text without their parameter data. It is kept
        contiguous: in C order, or in Fortran order where it lies so (a MatMul weight's transposed view, which
        packing reads without a transposed copy: 0.6 s of BERT-base's import); the plan stores C order."""
        if data is not None:
            data = np.asarray(data)
            if not (data.flags.c_contiguous or data.flags.f_contiguous):
                data = np.ascontiguousarray(data)
        ty = type if type is not None else TensorType.of(data)
        v = Value(self._claim(self.fresh_name(name or "p")), ty, data=data)
        if owned and data is not None:
            self.owned[id(data)] = data
        if data is None:
            v.data = None
        self.params.append(v)
        return v

    def add_node(self, op: "OpDef", inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
                 name: str = "", out_names: Sequence[str] = (), index: int | None = None) -> list[Value]:
        """Add `op(inputs)` with attributes checked and defaulted, at the end or before position `index`;
        returns its output values (typed)."""
        node = Node(op, inputs, op.check_attrs(attrs or {}, where=name), name)
        types = op.infer_types([v.type for v in inputs], node.attrs, where=name)
        for i, t in enumerate(types):
            hint = out_names[i] if i < len(out_names) else ""
            node.outputs.append(Value(self._claim(self.fresh_name(hint)), t, producer=node))
        self.nodes.insert(len(self.nodes) if index is None else index, node)
        return node.outputs

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads any more; their names become free."""
        self.nodes.remove(node)
        for v in node.outputs:
            self._names.discard(v.name)

    def is_free(self, name: str) -> bool:
        return name not in self._names

    def rename(self, value: Value, name: str) -> None:
        self._names.discard(value.name)
        value.name = self._claim(name)

    # -- queries --------------------------------------------------------------------------------------------------------
    def users(self) -> dict[Value, list[Node]]:
        """Map each value to the nodes that read it (in execution order)."""
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.params
        for n in self.nodes:
            yield from n.outputs

    def replace_uses(self, old: Value, new: Value) -> None:
        """Make every reader of `old` (nodes and graph outputs) read `new` instead."""
        for n in self.nodes:
            if old in n.inputs:  # values compare by identity: a scan in C, a new list only where old is read
                n.inputs = [new if v is old else v for v in n.inputs]
        self._outputs = [new if v is old else v for v in self._outputs]

    def take_over(self, n: "Node", *new: Value) -> None:
        """The values `new` take over the outputs of node `n` (in order), their readers and their names; `n` goes (a
        pass replacing an op by another)."""
        if len(new) != len(n.outputs):
            raise IRError(f"node {n.name!r} has {len(n.outputs)} output(s), {len(new)} given to take them over")
        for old, value in zip(n.outputs, new):
            self.replace_uses(old, value)
        self.remove_node(n)
        for old, value in zip(n.outputs, new):
            self.rename(value, old.name)

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody reads and params nobody reads (dead code elimination)."""
        live = set(self.outputs)
        kept = []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                kept.append(n)
                live.update(n.inputs)
        self.nodes = kept[::-1]
        self.params = [p for p in self.params if p in live]
        self._names = {v.name for v in self.values()}

    def copy(self) -> "Graph":
        """An independent copy (nodes and values new, parameter arrays shared: params are never mutated); the same
        graph as printing and parsing it back gives, node names kept."""
        g = Graph(self.name)
        new: dict[Value, Value] = {}
        for v in self.inputs:
            new[v] = g.add_input(v.name, v.type)
        for p in self.params:
            new[p] = g.add_param(p.name, p.data, p.type)
        for n in self.nodes:
            outs = g.add_node(n.op, [new[v] for v in n.inputs], dict(n.attrs), n.name, [o.name for o in n.outputs])
            outs[0].producer.group = n.group
            new.update(zip(n.outputs, outs))
        g.outputs = [new[v] for v in self.outputs]
        g.output_names = list(self.output_names)
        g.memo = self.memo
        g.owned = dict(self.owned)  # shared with the copy: neither hands them to a model that writes them
        return g

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def verify(self) -> None:
        from .verifier import verify

        verify(self)
