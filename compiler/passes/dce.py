"""dce: dead code elimination, drop nodes and params that no output depends on."""

from __future__ import annotations

from dataclasses import dataclass

from tensorforge.compiler.ir import Graph


@dataclass(frozen=True)
class DeadCodeElimination:
    name: str = "dce"  # the pipelines run it more than once, each under its own name

    def __call__(self, g: Graph) -> Graph:
        g.remove_unused()
        return g


dce = DeadCodeElimination()
