"""fuse: group ops into kernels by fusion kind, as TVM's FuseOps does, using post-dominators (networkx).

Each node tries to join its group with its immediate post-dominator P (the first node every path from it reaches;
graph outputs lead to a virtual sink), together with every node on the paths in between:
  * a group with an anchor (conv, dense, matmul: OUT_ELEMWISE_FUSABLE) takes elementwise/broadcast ops up to P:
    bias, batch-norm scale and shift, ReLU/GELU, residual adds;
  * an elementwise/broadcast group joins a following injective op or reduction (relu -> max pool, exp -> softmax);
  * an injective group joins a following injective op (transpose -> reshape -> concat chains);
  * transposes and reshapes feeding a batch matmul become its prologue: the matmul reads through them;
  * a widening cast of an activation stored as bfloat16 (`_stored_half`) joins its reader's kernel, never its
    producer's (that would write float32 again);
  * on the CUDA target (`cast_prologues`), a widening cast (float16/bfloat16 -> float32, as the mixed-precision pass
    writes them) feeding a conv/dense/matmul becomes its prologue, and no producer's kernel takes it as an
    epilogue: the anchor's kernel then loads half-precision data and multiplies it with float32 sums, the form of
    a tensor-core matmul (backend/cuda/build.py), instead of reading a float32 copy written by another kernel.
A group never holds two anchors, stays convex (no path leaves it and comes back), and its nodes are made adjacent in
the execution order. The result is marked on the nodes (`node.group`), printed as `@name` in the IR. Nodes left
alone get a reason in `FUSION_REASONS[node]`, for `tensorforge inspect --fusion`.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Node
from tensorforge.compiler.ops import FusionKind

K = FusionKind
SINK = "<sink>"
KIND_LABEL = {K.ELEMWISE: "an elementwise", K.BROADCAST: "a broadcast", K.INJECTIVE: "an injective",
              K.REDUCTION: "a reduction", K.OUT_ELEMWISE_FUSABLE: "a conv/dense", K.OPAQUE: "an opaque"}


@dataclass
class _Group:
    members: list[Node]
    anchors: int  # OUT_ELEMWISE_FUSABLE members

    @property
    def movement_only(self) -> bool:
        return all(n.op.movement for n in self.members)

    @property
    def kind(self) -> FusionKind:
        """The group's kind; views (reshapes) are transparent: they only re-index what flows through them."""
        if self.anchors:
            return K.OUT_ELEMWISE_FUSABLE
        return max((n.op.kind for n in self.members if not n.op.is_view), default=K.INJECTIVE)


@dataclass(frozen=True)
class FuseOps:
    max_group_size: int = 32
    cast_prologues: bool = False  # widening casts become conv/dense/matmul prologues (the CUDA target)
    name: str = "fuse"

    def __call__(self, g: Graph) -> Graph:
        fuse_graph(g, self.max_group_size, self.cast_prologues)
        return g


fuse = FuseOps()
fuse_cuda = FuseOps(cast_prologues=True, name="fuse_cuda")

HALF = ("float16", "bfloat16")


def _widening_cast(n: Node) -> bool:
    """cast(x: f16/bf16, to=float32): the read side of a half-precision operand."""
    return n.op is ops.cast and n.attrs.get("to") == "float32" and n.inputs[0].type.dtype in HALF


def _stored_half(n: Node) -> bool:
    """cast(cast(x, bfloat16), float32): the read side of an activation stored as bfloat16 (passes/cpu/
    bf16_activations.py). It belongs to its reader's kernel: in the producer's it would undo the storage."""
    if not _widening_cast(n):
        return False
    x = n.inputs[0]
    return x.producer is not None and x.producer.op is ops.cast and x.producer.inputs[0].type.dtype == "float32"


def _dataflow(g: Graph) -> nx.DiGraph:
    """The nodes' dataflow graph with a virtual sink after the nodes no node reads. A graph output that other nodes
    read leads to the sink through them only: the kernel that computes it writes it and keeps going (an optimizer
    update writes the new moment, then the parameter from it: one kernel)."""
    G = nx.DiGraph()
    G.add_nodes_from(g.nodes)
    G.add_node(SINK)
    for n in g.nodes:
        for v in n.inputs:
            if v.producer is not None:
                G.add_edge(v.producer, n)
    for n in g.nodes:
        if G.out_degree(n) == 0:
            G.add_edge(n, SINK)
    return G


def _written(members: set[Node], outputs: set, users: dict) -> int:
    """How many values a kernel of `members` writes: graph outputs and values read outside it."""
    return sum(1 for m in members for o in m.outputs
               if o in outputs or any(r not in members for r in users.get(o, ())))


def _may_join(kind: FusionKind, member: Node, is_dom: bool) -> bool:
    """May `member` (on the path, or the post-dominator itself) join a group of `kind`?"""
    k = member.op.kind
    if kind == K.OUT_ELEMWISE_FUSABLE:
        return k <= K.BROADCAST  # the anchor schedules take elementwise epilogues of the output's shape only
    if member.op.is_view and kind <= K.BROADCAST:
        return True  # exp -> reshape -> softmax is one kernel
    if kind <= K.BROADCAST:
        return k <= K.INJECTIVE if not is_dom else k <= K.REDUCTION
    if kind == K.INJECTIVE:
        return k <= K.INJECTIVE
    return False


def fuse_graph(g: Graph, max_group_size: int = 32, cast_prologues: bool = False) -> dict[Node, str]:
    """Mark fused groups on `g`'s nodes and reorder them; returns the reason each unfused node stayed alone.
    `cast_prologues`: widening casts read only by a conv/dense/matmul are that anchor's prologue (see above)."""
    for n in g.nodes:
        n.group = None
    order = {n: i for i, n in enumerate(g.nodes)}
    G = _dataflow(g)
    ipdom = nx.immediate_dominators(G.reverse(copy=False), SINK)
    group_of: dict[Node, _Group] = {n: _Group([n], int(n.op.kind == K.OUT_ELEMWISE_FUSABLE)) for n in g.nodes}
    reasons: dict[Node, str] = {}
    graph_outputs, users = set(g.outputs), g.users()

    def cast_prologue(x: Node) -> bool:
        """A widening cast whose every reader is one anchor: kept for that anchor's kernel (on CUDA; on the CPU the
        read side of a stored activation, `_stored_half`, where the anchor `widens_input`)."""
        p = ipdom.get(x)
        if p is None or p == SINK or p.op.kind != K.OUT_ELEMWISE_FUSABLE:
            return False
        return ((cast_prologues and _widening_cast(x) or _stored_half(x) and p.op.widens_input)
                and all(r is p for o in x.outputs for r in users.get(o, ())))

    def between(a: Node, b: Node) -> set[Node]:
        """Nodes on some path from a to b, both excluded."""
        return (nx.descendants(G, a) & nx.ancestors(G, b)) - {a, b}

    def convex(members: set[Node]) -> bool:
        """No path leaves `members` and re-enters it: BFS from the members' outside successors, bounded by order."""
        last = max(order[m] for m in members)
        frontier = [s for m in members for s in G.successors(m) if s not in members and s != SINK]
        seen = set()
        while frontier:
            x = frontier.pop()
            if x in seen or order[x] > last:
                continue
            seen.add(x)
            for s in G.successors(x):
                if s in members:
                    return False
                if s != SINK:
                    frontier.append(s)
        return True

    for n in g.nodes:
        grp = group_of[n]
        kind = grp.kind
        if n.op.is_view and len(grp.members) == 1:
            reasons[n] = "a view: runs as a zero-copy reshape, no kernel"
            continue
        if kind >= K.REDUCTION and kind != K.OUT_ELEMWISE_FUSABLE:
            reasons.setdefault(n, "opaque op" if kind == K.OPAQUE else
                               "a reduction ends its kernel (nothing fuses after it)")
            continue
        p = ipdom.get(n)
        if p is None or p == SINK:
            reasons.setdefault(n, "its output is a graph output" if any(o in g.outputs for o in n.outputs) else
                               "its readers meet again only at the graph's end")
            continue
        path = between(n, p)
        # a transpose/reshape feeding an anchor that can read through it (batch matmul) becomes its prologue
        prologue = grp.movement_only and p.op.prologue and all(x.op.movement for x in path)
        # a widening cast read by one anchor is its prologue (the anchor loads the half-precision operand): CUDA, and
        # the CPU's stored bf16 activations read by a depthwise conv
        prologue = prologue or (not path and len(grp.members) == 1 and cast_prologue(n))
        blocker = None if prologue else next(
            (x for x in sorted(path, key=order.get) if not _may_join(kind, x, False) or cast_prologue(x)
             or _stored_half(x)), None)
        if blocker is None and not prologue and (not _may_join(kind, p, True) or cast_prologue(p) or _stored_half(p)):
            blocker = p
        if blocker is not None and _stored_half(blocker):
            reasons.setdefault(n, f"{blocker.op.name} ({blocker.name or '?'}) after it reads the bfloat16 copy it "
                                  f"stores; it joins its reader's kernel")
            continue
        if blocker is not None and cast_prologue(blocker):
            reasons.setdefault(n, f"{blocker.op.name} ({blocker.name or '?'}) after it is kept as the prologue of "
                                  f"{ipdom[blocker].op.name} ({ipdom[blocker].name or '?'}), which then reads "
                                  f"{blocker.inputs[0].type.dtype}")
            continue
        if blocker is not None:
            reasons.setdefault(n, f"{KIND_LABEL[kind]} kernel cannot take {blocker.op.name} "
                                  f"({blocker.name or '?'}) after it")
            continue
        joined = {m for x in path | {p, n} for m in group_of[x].members}
        anchors = sum(1 for m in joined if m.op.kind == K.OUT_ELEMWISE_FUSABLE)
        if anchors > 1:
            reasons.setdefault(n, f"{p.op.name} ({p.name or '?'}) already belongs to another anchor's kernel")
            continue
        anchor = next((m for m in joined if m.op.kind == K.OUT_ELEMWISE_FUSABLE), None)
        if anchor is not None and any(m.op.kind > K.BROADCAST and not (anchor.op.prologue and m.op.movement and
                                                                         order[m] < order[anchor])
                                      for m in joined if m is not anchor):
            reasons.setdefault(n, "an anchor's kernel takes only elementwise and broadcast ops after it")
            continue
        if anchor is not None and _written(joined, graph_outputs, users) > 1:
            reasons.setdefault(n, "an anchor's kernel writes one output (its schedule has one epilogue)")
            continue
        if len(joined) > max_group_size:
            reasons.setdefault(n, f"the kernel would exceed {max_group_size} ops")
            continue
        if not convex(joined):
            reasons.setdefault(n, f"fusing up to {p.op.name} ({p.name or '?'}) would make a cycle between kernels")
            continue
        merged = _Group(sorted(joined, key=order.get), anchors)
        for m in joined:
            group_of[m] = merged

    groups = {id(gr): gr for gr in group_of.values()}.values()
    fused = [gr for gr in groups if len(gr.members) > 1]
    for i, gr in enumerate(sorted(fused, key=lambda gr: order[gr.members[0]])):
        for m in gr.members:
            m.group = f"k{i}"
            reasons.pop(m, None)
    _make_groups_adjacent(g, group_of, order)
    g.fusion_reasons = reasons
    return reasons


def _make_groups_adjacent(g: Graph, group_of, order) -> None:
    """Topologically order the groups (ties by original position) and lay out each group's members together."""
    Q = nx.DiGraph()
    rep = {n: id(group_of[n]) for n in g.nodes}
    first = {}
    for n in g.nodes:
        first.setdefault(rep[n], order[n])
        Q.add_node(rep[n])
    for n in g.nodes:
        for v in n.inputs:
            if v.producer is not None and rep[v.producer] != rep[n]:
                Q.add_edge(rep[v.producer], rep[n])
    members = {}
    for n in g.nodes:
        members.setdefault(rep[n], []).append(n)
    g.nodes = [n for r in nx.lexicographical_topological_sort(Q, key=first.get) for n in members[r]]
