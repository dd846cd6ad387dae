"""alter_layout: run chains of CPU convolutions in the blocked channel layout NCHW[b]c, chosen per conv.

In NCHW[b]c, (N, C / b, H, W, b), one vector register holds b channels of one pixel: a conv reads its packed
weights and writes its output as whole contiguous vectors, and pooling vectorizes over the channel lanes. The pass
  1. picks the convs that run blocked (`ConvPolicy`, measured in benchmarks/results/layout.md),
  2. propagates the blocked layout forward through the ops that do not care about it: elementwise and broadcast
     ops (per-channel params are re-blocked at compile time; a small plain operand gets a `to_blocked`), max and
     average pooling, and concatenation along channels; a global average pool reads the blocked tensor and writes
     its small result in NCHW,
  3. leaves every other consumer (graph outputs, reshapes, dense, grouped convs, ...) reading the plain tensor,
     which a `from_blocked` right after the producer provides; dead ones are removed by DCE.
A conv whose output channels do not split into blocks (MobileNetV2's 24) runs blocked on its channels padded up to
the next multiple of the block (24 -> 32), with zero weights and bias for the padding, so a chain of convs stays
blocked instead of turning back to NCHW around every such conv (at batch 8 two 8x96x56x56 / 8x144x56x56 transforms
cost 2-3 ms each). Invariant: **padded channel lanes hold zeros.** Ops that keep it may follow: convs (they read
the padding with zero weights), pools, and elementwise ops that map zeros to zero; the plain view of a padded
tensor is `from_blocked` then a channel slice.
Weights are already packed by `pack_weights` as (OC / b, IC, KH, KW, b); a conv on a blocked input gets them
repacked at compile time as (OC / b, IC / b, KH, KW, b, b), so that its innermost input-lane loop reads contiguous
weights. Convs whose input stays plain read NCHW directly (`in_block` 0), e.g. the first conv on the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Node, Value
from tensorforge.compiler.ops.nchwc import block_depthwise_weight, block_nchw, repack_conv2d_weight_nchwc


@dataclass(frozen=True)
class ConvPolicy:
    """Which convs run blocked. Measured per conv shape (benchmarks/layout.py); see `wants`."""

    block: int = 16
    min_in_channels: int = 16  # blocked input lanes need C % block == 0; convs on fewer channels read NCHW
    max_channel_padding: float = 1.5  # output channels padded to whole blocks if that adds at most this factor

    def padded_channels(self, channels: int) -> int | None:
        """`channels` rounded up to whole blocks, or None when the padding would cost too much."""
        padded = -(-channels // self.block) * self.block
        return padded if padded <= self.max_channel_padding * channels else None

    def wants(self, node: Node) -> bool:
        a = node.attrs
        if node.op is not ops.conv2d_packed or a["wlayout"] != "packed" or a["groups"] != 1:
            return False
        if not node.inputs[1].is_param:
            return False  # packed at run time (a training graph's weights): no compile-time repacking possible
        if a["out_channels"] % self.block and len(node.inputs) > 2 and not node.inputs[2].is_param:
            return False  # a padded conv's bias is padded at compile time
        return a["block"] == self.block and self.padded_channels(a["out_channels"]) is not None

    def wants_depthwise(self, node: Node) -> bool:
        """Depthwise convs (one channel per group, multiplier 1) on blocked channels."""
        a = node.attrs
        return (node.op is ops.conv2d_packed and a["wlayout"] == "depthwise" and a["groups"] == a["out_channels"]
                and node.inputs[1].is_param and node.inputs[0].type.shape[1] == a["groups"]
                and a["groups"] % self.block == 0)


@dataclass(frozen=True)
class AlterLayout:
    policy: ConvPolicy = ConvPolicy()
    name: str = "alter_layout"

    def __call__(self, g: Graph) -> Graph:
        alter_layout_graph(g, self.policy)
        return g


alter_layout = AlterLayout()


_BLOCKED_CONVS = (ops.conv2d_nchwc, ops.depthwise_conv2d_nchwc)
_GAINS = _BLOCKED_CONVS + (ops.max_pool2d_nchwc, ops.avg_pool2d_nchwc, ops.global_avg_pool_nchwc)  # faster blocked


def alter_layout_graph(g: Graph, policy: ConvPolicy = ConvPolicy()) -> int:
    """Rewrite `g` in place; returns the number of convs moved to NCHW[b]c.

    A trial rewrite of a copy first finds the isolated convs: those whose input is plain and whose blocked output
    reaches no other blocked conv or pool before it is turned back to NCHW. For them the blocked kernel is no faster
    (benchmarks/results/layout.md) and the transform back is pure cost, so the real rewrite leaves them NCHW."""
    trial = g.copy()
    origins: dict[Node, str] = {}
    _rewrite(trial, policy, frozenset(), origins)
    isolated = _isolated_convs(trial, origins)
    return _rewrite(g, policy, isolated, {})


def _isolated_convs(g: Graph, origins: dict[Node, str]) -> frozenset[str]:
    """The output names (in the graph before the rewrite) of the isolated convs."""
    users = g.users()
    isolated = set()
    for n in g.nodes:
        # only a dense conv on a plain input can be isolated: a depthwise conv gains from the blocked layout even
        # alone (HF ConvNeXt-tiny's first 7x7 depthwise convs, 96 channels at 56x56: 1.65 ms each on the NCHW
        # row-wise kernel, 0.2 ms blocked plus ~0.1 ms for the transforms, one core)
        if n.op is not ops.conv2d_nchwc or n.attrs["in_block"] != 0:
            continue
        frontier, seen, gains = list(n.outputs), set(), False
        while frontier and not gains:
            v = frontier.pop()
            for u in users.get(v, ()):
                if u in seen or u.op is ops.from_blocked:
                    continue
                seen.add(u)
                gains = gains or u.op in _GAINS
                frontier.extend(u.outputs)
        if not gains:
            isolated.add(origins[n])
    return frozenset(isolated)


def _rewrite(g: Graph, policy: ConvPolicy, skip: frozenset[str], origins: dict[Node, str]) -> int:
    """The rewrite; convs whose output name is in `skip` stay NCHW; `origins` gets each new node's original output
    name."""
    b = policy.block
    blocked: dict[Value, Value] = {}  # plain value -> the same tensor in NCHW[b]c (channels padded to whole blocks)
    reblocked_params: dict[Value, Value] = {}
    repacked: dict[tuple[Value, int], Value] = {}  # (conv weight, input lanes) -> weight for a blocked input
    padded_biases: dict[Value, Value] = {}
    converted = 0

    def channels(v: Value) -> int | None:
        return v.type.shape[1] if v.type.rank == 4 else None

    def padded(v: Value) -> bool:
        """Is the blocked form of plain `v` padded with (zero) channels?"""
        return blocked[v].type.shape[1] * b != v.type.shape[1]

    def zero_padded_param(v: Value, axis: int, size: int, suffix: str) -> Value:
        data = np.asarray(v.data)
        if data.shape[axis] == size:
            return v
        widths = [(0, 0)] * data.ndim
        widths[axis] = (0, size - data.shape[axis])
        return g.add_param(v.name + suffix, np.pad(data, widths))

    def adapt(v: Value, like: Value, c: int, index: int) -> tuple[Value, int] | None:
        """`v` as an operand of an elementwise op with `c` channels whose blocked operand is `like` (blocked form
        of a plain NCHW tensor); returns (value, nodes inserted) or None when `v` cannot follow."""
        if v in blocked:
            return blocked[v], 0
        if v.type.numel == 1:
            return v, 0  # a scalar broadcasts in any layout
        n, lanes, h, w = like.type.shape[0], like.type.shape[1] * b, like.type.shape[2], like.type.shape[3]
        shape = (1,) * (4 - v.type.rank) + tuple(v.type.shape) if v.type.rank <= 4 else None
        if shape is None or shape[1] != c or shape[0] not in (1, n) or shape[2] not in (1, h) or shape[3] not in (1, w):
            return None
        if v.is_param and v.data is not None:
            if v not in reblocked_params:
                data = np.asarray(v.data).reshape(shape)
                data = np.pad(data, [(0, 0), (0, lanes - c), (0, 0), (0, 0)])  # zeros for padded channels
                reblocked_params[v] = g.add_param(v.name + ".nchwc", block_nchw(data, b))
            return reblocked_params[v], 0
        if v.type.rank != 4 or lanes != c:
            return None
        (vb,) = g.add_node(ops.to_blocked, [v], {"block": b}, index=index)
        return vb, 1

    for n in list(g.nodes):
        out = n.outputs[0] if len(n.outputs) == 1 else None
        if out is None or out.type.dtype != "float32":
            continue
        index = g.nodes.index(n)
        attrs: dict
        if out.name in skip:
            continue
        if policy.wants(n):
            x = n.inputs[0]
            xin, in_block = (blocked[x], b) if x in blocked else (x, 0)
            w, bias = n.inputs[1], n.inputs[2:]
            if in_block:
                lanes = xin.type.shape[1] * in_block
                if (w, lanes) not in repacked:  # zero weights for padded input channels
                    data = np.asarray(zero_padded_param(w, 1, lanes, ".padded").data)
                    repacked[w, lanes] = g.add_param(w.name + ".nchwc", repack_conv2d_weight_nchwc(data, in_block))
                w = repacked[w, lanes]
            a = n.attrs
            oc = policy.padded_channels(a["out_channels"])
            if bias and oc != a["out_channels"]:
                if bias[0] not in padded_biases:
                    padded_biases[bias[0]] = zero_padded_param(bias[0], 0, oc, ".padded")
                bias = [padded_biases[bias[0]]]
            attrs = {"strides": a["strides"], "pads": a["pads"], "dilations": a["dilations"], "in_block": in_block,
                     "block": b, "out_channels": oc}
            new_op, inputs = ops.conv2d_nchwc, [xin, w] + bias
            converted += 1
        elif policy.wants_depthwise(n):
            x = n.inputs[0]
            if x in blocked:
                xin = blocked[x]
            else:
                (xin,) = g.add_node(ops.to_blocked, [x], {"block": b}, index=index)
                index += 1
            w = n.inputs[1]
            if (w, 0) not in repacked:
                repacked[w, 0] = g.add_param(w.name + ".nchwc", block_depthwise_weight(w.data, b))
            new_op, inputs = ops.depthwise_conv2d_nchwc, [xin, repacked[w, 0]] + n.inputs[2:]
            attrs = {k: n.attrs[k] for k in ("strides", "pads", "dilations")}
            converted += 1
        elif n.op is ops.global_avg_pool and n.inputs[0] in blocked and n.inputs[0].type.rank == 4:
            # reads the blocked tensor, writes the small plain (N, C, 1, 1) result: no transform at all
            (y,) = g.add_node(ops.global_avg_pool_nchwc, [blocked[n.inputs[0]]], {}, name=n.name, index=index)
            if padded(n.inputs[0]):
                (y,) = g.add_node(ops.strided_slice, [y], _channel_slice(out), index=index + 1)
            g.take_over(n, y)
            continue
        elif n.op in (ops.max_pool2d, ops.avg_pool2d) and n.inputs[0] in blocked:
            new_op = ops.max_pool2d_nchwc if n.op is ops.max_pool2d else ops.avg_pool2d_nchwc
            inputs, attrs = [blocked[n.inputs[0]]], dict(n.attrs)
        elif (n.op is ops.concat and n.attrs["axis"] == 1 and n.inputs
              and all(v in blocked and not padded(v) for v in n.inputs)):
            new_op, inputs, attrs = ops.concat, [blocked[v] for v in n.inputs], {"axis": 1}
        elif n.op.channel_axis_agnostic and channels(out) is not None and any(v in blocked for v in n.inputs):
            like = next(blocked[v] for v in n.inputs if v in blocked)
            c = channels(out)
            if like.type.shape[:4] != (out.type.shape[0], -(-c // b)) + out.type.shape[2:]:
                continue  # the op broadcasts the blocked operand itself: leave it plain
            if like.type.shape[1] * b != c and not _maps_zeros_to_zero(n):
                continue  # the padded channels would stop being zeros
            adapted = []
            for v in n.inputs:
                got = adapt(v, like, c, index)
                if got is None:
                    break
                adapted.append(got[0])
                index += got[1]
            else:
                new_op, inputs, attrs = n.op, adapted, dict(n.attrs)
            if len(adapted) != len(n.inputs):
                continue
        else:
            continue
        (yb,) = g.add_node(new_op, inputs, attrs, name=n.name, index=index)
        origins[yb.producer] = out.name
        (plain,) = g.add_node(ops.from_blocked, [yb], {}, index=index + 1)
        if plain.type.shape[1] != out.type.shape[1]:  # padded channels: the plain view slices them off
            (plain,) = g.add_node(ops.strided_slice, [plain], _channel_slice(out), index=index + 2)
        g.take_over(n, plain)
        blocked[plain] = yb
    g.remove_unused()
    return converted


def _channel_slice(plain: Value) -> dict:
    """strided_slice attributes taking the first channels of a padded tensor: those of `plain`."""
    rank = plain.type.rank
    return {"begins": (0,) * rank, "ends": tuple(plain.type.shape), "strides": (1,) * rank}


def _maps_zeros_to_zero(n: Node) -> bool:
    """Does the elementwise op `n` give zero where every tensor operand is zero (scalar constants as they are)?
    Then it keeps the padded channels of a padded blocked tensor zero (per-channel params are padded with zeros)."""
    args = []
    for v in n.inputs:
        if v.type.numel == 1:
            if v.data is None:
                return False  # a scalar known only at run time
            args.append(np.asarray(v.data))
        else:
            args.append(np.zeros((1,) * v.type.rank, v.type.dtype))
    try:
        with np.errstate(all="ignore"):
            return bool(np.all(np.asarray(n.op.evaluate(*args, **n.attrs)[0]) == 0))
    except Exception:  # noqa: BLE001 - a reference that cannot run on these stand-ins: keep the op plain
        return False
