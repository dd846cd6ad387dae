"""The reference interpreter: runs a graph with every op's numpy implementation. It is the oracle for tests."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .graph import Graph, Value


def interpret(g: Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    env: dict[Value, np.ndarray] = {p: p.data for p in g.params}
    for v in g.inputs:
        env[v] = np.asarray(feeds[v.name])
    for n in g.nodes:
        outs = n.op.evaluate(*(env[v] for v in n.inputs), **n.attrs)
        for v, a in zip(n.outputs, outs):
            env[v] = np.asarray(a)
    return [env[v] for v in g.outputs]
