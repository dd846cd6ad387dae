"""unroll_lstm: rewrite every `lstm_sequence` into its per-step ops (dense, slices, sigmoid/tanh, cell update).

`lstm_sequence`'s kernel is a serial time loop around one parallel loop per step: the right shape for a CPU, the
wrong one for a GPU (one kernel, one thread block's worth of work per step). The CUDA pipeline therefore runs the
recurrence unrolled, as before the op existed; `compile_training` unrolls the forward graph before autodiff on CUDA,
so that the backward is built from the per-step ops too.
"""

from __future__ import annotations

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ops.rnn import unrolled_lstm
from tensorforge.runtime.errors import CompileError


def unroll_lstm(g: Graph) -> Graph:
    for n in [n for n in g.nodes if n.op is ops.lstm_sequence]:
        index = g.nodes.index(n)
        added: list = []

        def op(opdef, inputs, **attrs):
            outs = g.add_node(opdef, inputs, attrs, name=n.name, index=index + len(added))
            added.append(outs[0].producer)
            return outs[0] if len(outs) == 1 else outs

        y, c = unrolled_lstm(op, *n.inputs, reverse=n.attrs["reverse"])
        if n.attrs["save_gates"] and g.users().get(n.outputs[2]):
            raise CompileError(f"unroll_lstm: the saved gates of lstm_sequence {n.name!r} are read (a training "
                               f"graph's backward): unroll the forward graph before autodiff")
        for old, new in zip(n.outputs, (y, c)):
            g.replace_uses(old, new)
        g.remove_node(n)
        for old, new in zip(n.outputs, (y, c)):
            if new.producer is not None and g.is_free(old.name):
                g.rename(new, old.name)
    return g
