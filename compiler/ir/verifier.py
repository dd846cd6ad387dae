"""The IR verifier: run after every pass in tests. Raises `VerifyError` naming the node and the broken rule."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tensorforge.runtime.errors import IRError, VerifyError

if TYPE_CHECKING:
    from .graph import Graph


def verify(g: Graph) -> None:
    defined = set()
    names = set()

    def define(v, what):
        if v in defined:
            raise VerifyError(f"%{v.name} is defined twice ({what})")
        if v.name in names:
            raise VerifyError(f"two values share the name %{v.name}")
        defined.add(v)
        names.add(v.name)

    for v in g.inputs:
        if v.producer is not None or v.data is not None:
            raise VerifyError(f"graph input %{v.name} must have no producer and no data")
        define(v, "input")
    for p in g.params:
        if p.producer is not None:
            raise VerifyError(f"param %{p.name} has a producer")
        if p.data is not None and (tuple(p.data.shape) != p.type.shape or str(p.data.dtype) != p.type.dtype):
            raise VerifyError(f"param %{p.name} is typed {p.type} but holds {p.data.dtype}{list(p.data.shape)}")
        define(p, "param")
    for i, n in enumerate(g.nodes):
        where = f"node {i} ({n.op.name}{', ' + repr(n.name) if n.name else ''})"
        for v in n.inputs:
            if v not in defined:
                raise VerifyError(f"{where} reads %{v.name} before it is defined (dangling or out of order)")
        try:
            attrs = n.op.check_attrs(n.attrs, where=n.name)
            types = n.op.infer_types([v.type for v in n.inputs], attrs, where=n.name)
        except IRError as e:
            raise VerifyError(f"{where}: {e}") from None
        if attrs != n.attrs:
            raise VerifyError(f"{where}: attributes {n.attrs} are not in canonical form {attrs}")
        if len(types) != len(n.outputs) or any(t != o.type for t, o in zip(types, n.outputs)):
            raise VerifyError(f"{where}: outputs are typed {', '.join(str(o.type) for o in n.outputs)} but the "
                              f"type rule gives {', '.join(map(str, types))}")
        for o in n.outputs:
            if o.producer is not n:
                raise VerifyError(f"{where}: output %{o.name} does not point back to its node")
            define(o, where)
    closed: set[str] = set()
    for prev, n in zip([None] + g.nodes, g.nodes):
        if prev is not None and prev.group and prev.group != n.group:
            closed.add(prev.group)
        if n.group in closed:
            raise VerifyError(f"the nodes of fused group @{n.group} are not adjacent in the execution order")
    if not g.outputs:
        raise VerifyError("the graph has no outputs")
    if len(g.output_names) != len(g.outputs) or len(set(g.output_names)) != len(g.output_names):
        raise VerifyError(f"output names {g.output_names} must be distinct, one per output")
    for v in g.outputs:
        if v not in defined:
            raise VerifyError(f"graph output %{v.name} is not defined in the graph")
