"""Compiler passes and the default pipelines. Each pass is a small named function Graph -> Graph.

The pipelines are plain lists, read top to bottom as the compiler's order. Later issues add the cleanups
(constant folding, CSE, DCE, simplification), layout and fusion passes here.
"""

from __future__ import annotations

from .manager import Pass, PassManager, pass_name  # noqa: F401
from .pack_weights import pack_weights


def dead_code_elimination(g):
    """Drop nodes and params that no output depends on."""
    g.remove_unused()
    return g


def pipeline(opt_level: int = 2, target: str = "cpu") -> list[Pass]:
    """The default pass list for an optimization level and target."""
    passes: list[Pass] = []
    if opt_level >= 1:
        passes.append(dead_code_elimination)
    if target == "cpu":
        passes.append(pack_weights)  # the CPU kernels need packed weights at every level
    return passes
