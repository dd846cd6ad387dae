"""The pass manager: runs a visible list of passes, verifying, timing and dumping the IR after each one.

A pass is a named function Graph -> Graph (it may edit the graph in place and return it). Options live in frozen
dataclasses; a pass that takes options is a dataclass instance with `__call__`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ir.verifier import verify
from tensorforge.runtime.errors import PassError, TensorForgeError

Pass = Callable[[Graph], Graph]


def pass_name(p: Pass) -> str:
    return getattr(p, "name", None) or getattr(p, "__name__", None) or type(p).__name__


@dataclass
class PassManager:
    passes: Sequence[Pass]
    verify_each: bool = True
    dump_after: frozenset[str] = frozenset()  # names of passes after which the IR is printed to `dump`
    disabled: frozenset[str] = frozenset()
    dump: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, g: Graph) -> Graph:
        ran: list[str] = []
        for p in self.passes:
            name = pass_name(p)
            if name in self.disabled:
                continue
            t0 = time.perf_counter()
            try:
                g = p(g)
                if self.verify_each:
                    verify(g)
            except Exception as e:
                before = ", ".join(ran) or "none"
                kind = "produced invalid IR" if isinstance(e, TensorForgeError) else "failed"
                raise PassError(f"pass {name!r} {kind}: {e} (passes run before it: {before})") from e
            self.timings.append((name, time.perf_counter() - t0))
            ran.append(name)
            if name in self.dump_after:
                self.dump(f"// IR after {name}\n{g}")
        return g
