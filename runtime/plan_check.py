"""Checks an execution plan before anything runs it: a plan that passes cannot make a kernel read or write memory
outside its buffers, read a tensor no step has written, or overwrite a tensor that is still needed.

The compiler proves its own plans sound (compiler/backend/plan.py, compiler/backend/memory.py); this module
re-proves the facts the runtime relies on for a plan read back from a file, without importing the compiler.
The invariants, as compiler/backend/plan.py builds them:

  buffers   each is exactly one of: an input, a parameter or a state buffer (own memory; listed under
            inputs/params/state), a kernel result in the arena ("arena_offset": 64-byte aligned, inside
            arena_bytes), or a view ("view_of" an earlier buffer that is not itself a view, with the same elements
            and element size: a reshape or a bitcast)
  steps     "args" are buffer ids, a kernel's inputs first, then its outputs: every input is an input, a
            parameter, a state buffer or written by an earlier step; every output is a fresh arena buffer, or a
            state buffer (a training step updates its state in place). Parameters and inputs are never written.
  lifetimes an arena buffer lives from the step that writes it to the last step that reads it (through a view
            too); an output lives to the end. Two buffers alive at one step share no byte, except an in-place
            hand-over: the same offset and size, the old one read for the last time by the step that writes the
            new one, which the compiler allows for elementwise kernels only: "memory"."classes" (where present)
            names such pairs one storage class. "memory"."tensors", where present, must agree with the lifetimes.

An output may be any buffer: an input (an identity model), a parameter (a constant output) or a kernel result.
"""

from __future__ import annotations

import numpy as np

from .errors import ArtifactError
from .tvm_loader import STORAGE_DTYPES

ALIGNMENT = 64

# The element types a plan may use, with their sizes in bytes (compiler/ir/types.py DTYPE_SHORT; a test pins the
# two together). Storage-only types hold one element per byte.
DTYPE_SIZES = {
    **{name: np.dtype(name).itemsize for name in ("float32", "float64", "float16", "int64", "int32", "int16", "int8",
                                                  "uint64", "uint32", "uint16", "uint8", "bool")},
    "bfloat16": 2,
    **{name: 1 for name in STORAGE_DTYPES},
}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class _Checker:
    def __init__(self, plan: dict, where: str):
        self.plan = plan
        self.where = where

    def fail(self, detail: str):
        raise ArtifactError(f"{self.where} has a damaged plan (plan.json): {detail}")

    def field(self, name: str, kind, required: bool = True):
        if name not in self.plan:
            if required:
                self.fail(f"field {name!r} is missing")
            return kind()
        value = self.plan[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(f"field {name!r} is a {type(value).__name__}, expected a {kind.__name__}")
        return value

    def buffer_id(self, value, what: str) -> int:
        if not _is_int(value) or not 0 <= value < len(self.buffers):
            self.fail(f"{what} is {value!r}, not a buffer index (0..{len(self.buffers) - 1})")
        return value

    def describe(self, b: int) -> str:
        name = self.buffers[b].get("name")
        return f"buffer {b}" + (f" ({name!r})" if isinstance(name, str) else "")

    # -- the checks, in order ------------------------------------------------------------------------------------------
    def run(self) -> None:
        if not isinstance(self.plan, dict):
            self.fail(f"the plan is a {type(self.plan).__name__}, expected an object")
        self.buffers = self.field("buffers", list)
        self.arena_bytes = self.field("arena_bytes", int, required=False)
        if self.arena_bytes < 0:
            self.fail(f"field 'arena_bytes' is {self.arena_bytes}")
        self.check_buffers()
        self.check_entries()
        self.check_views_and_arena()
        self.check_steps()
        self.check_lifetimes()

    def check_buffers(self) -> None:
        self.nbytes = []
        self.elements = []
        for i, b in enumerate(self.buffers):
            if not isinstance(b, dict):
                self.fail(f"buffers[{i}] is a {type(b).__name__}, expected an object")
            shape, dtype = b.get("shape"), b.get("dtype")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                self.fail(f"buffers[{i}] has shape {shape!r}, expected a list of non-negative integers")
            if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
                self.fail(f"buffers[{i}] has dtype {dtype!r}, which this runtime does not know")
            if "arena_offset" in b and "view_of" in b:
                self.fail(f"buffers[{i}] has both arena_offset and view_of")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            self.elements.append(count)
            self.nbytes.append(count * DTYPE_SIZES[dtype])

    def check_entries(self) -> None:
        """inputs, outputs, params and state: well formed, and no buffer both an input and a parameter or state."""
        role: dict[int, str] = {}  # buffer -> "input 'x'", "parameter 3", "state 'w'" (own memory, filled from outside)
        for key in ("inputs", "outputs", "state"):
            entries = self.field(key, list, required=(key != "state"))
            names = set()
            for j, e in enumerate(entries):
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    self.fail(f"{key}[{j}] is {e!r}, expected an object with a name and a buffer")
                b = self.buffer_id(e.get("buffer"), f"{key}[{j}] ({e['name']!r}).buffer")
                if e["name"] in names:
                    self.fail(f"{key} lists {e['name']!r} twice")
                names.add(e["name"])
                if key == "outputs":
                    continue
                label = f"{'input' if key == 'inputs' else 'state'} {e['name']!r}"
                if b in role:
                    self.fail(f"{self.describe(b)} is both {role[b]} and {label}")
                role[b] = label
        self.state = {e["buffer"] for e in self.plan.get("state", [])}
        params = self.field("params", list)
        self.params = set()
        for j, e in enumerate(params):
            if not isinstance(e, dict):
                self.fail(f"params[{j}] is {e!r}, expected an object")
            b = self.buffer_id(e.get("buffer"), f"params[{j}].buffer")
            sources = [k for k in ("file", "splat", "external") if k in e]
            if len(sources) != 1:
                self.fail(f"params[{j}] (for {self.describe(b)}) has {sources or 'none'} of file/splat/external; "
                          f"expected exactly one")
            value = e[sources[0]]
            if sources[0] == "splat" and not isinstance(value, (int, float)):
                self.fail(f"params[{j}].splat is {value!r}, expected a number")
            if sources[0] != "splat" and not isinstance(value, str):
                self.fail(f"params[{j}].{sources[0]} is {value!r}, expected a string")
            if b in self.params:
                self.fail(f"{self.describe(b)} has two parameter entries (params[{j}] is the second)")
            self.params.add(b)
            if b in role and b not in self.state:
                self.fail(f"{self.describe(b)} is both {role[b]} and parameter {j}")
            role.setdefault(b, f"parameter {j}")
        self.role = role
        self.fixed = set(role)  # buffers with their own memory, filled from outside the steps

    def check_views_and_arena(self) -> None:
        for i, b in enumerate(self.buffers):
            if i in self.fixed:
                if "arena_offset" in b or "view_of" in b:
                    self.fail(f"{self.describe(i)} is {self.role[i]} but is placed in the arena or as a view")
            elif "view_of" in b:
                base = self.buffer_id(b["view_of"], f"buffers[{i}].view_of")
                if base >= i or "view_of" in self.buffers[base]:
                    self.fail(f"{self.describe(i)} is a view of {self.describe(base)}, which is not an earlier "
                              f"buffer with memory of its own")
                if self.elements[i] != self.elements[base] or self.nbytes[i] != self.nbytes[base]:
                    self.fail(f"{self.describe(i)} ({self.buffers[i]['dtype']}{self.buffers[i]['shape']}) is a view "
                              f"of {self.describe(base)} ({self.buffers[base]['dtype']}{self.buffers[base]['shape']}),"
                              f" which holds other elements or bytes")
            elif "arena_offset" in b:
                start = b["arena_offset"]
                if not _is_int(start) or start < 0 or start % ALIGNMENT:
                    self.fail(f"{self.describe(i)} has arena_offset {start!r}, expected a multiple of {ALIGNMENT}")
                if start + self.nbytes[i] > self.arena_bytes:
                    self.fail(f"{self.describe(i)} [{start}, {start + self.nbytes[i]}) lies outside the arena of "
                              f"{self.arena_bytes} bytes")
            else:
                self.fail(f"{self.describe(i)} is not an input, parameter or state buffer, not a view and not in the "
                          f"arena")

    def root(self, b: int) -> int:
        return self.buffers[b].get("view_of", b)

    def check_steps(self) -> None:
        steps = self.field("steps", list)
        self.written: dict[int, int] = {}  # arena buffer -> the step that writes it
        self.last: dict[int, int] = {}  # arena buffer -> the last step that reads or writes it
        for i, s in enumerate(steps):
            if not isinstance(s, dict) or not isinstance(s.get("kernel"), str):
                self.fail(f"steps[{i}] is not an object with a kernel name")
            what = f"step {i} (kernel {s['kernel']}" + (f", node {s['node']}" if isinstance(s.get("node"), str)
                                                          else "") + ")"
            args = s.get("args")
            if not isinstance(args, list) or not args:
                self.fail(f"{what} has args {args!r}, expected a non-empty list of buffer indices")
            args = [self.buffer_id(a, f"{what} args[{j}]") for j, a in enumerate(args)]
            # the outputs come last: fresh arena buffers, or state buffers updated in place
            n_out = 0
            for a in reversed(args):
                if a in self.state or (a not in self.fixed and "view_of" not in self.buffers[a] and
                                       a not in self.written and a not in args[:len(args) - n_out - 1]):
                    n_out += 1
                else:
                    break
            if n_out == 0:
                a = args[-1]
                why = (self.role[a] if a in self.fixed else
                       f"a view of {self.describe(self.root(a))}" if "view_of" in self.buffers[a] else
                       f"already written by step {self.written[a]}" if a in self.written else "also its input")
                self.fail(f"{what} writes {self.describe(a)}, which is {why}")
            for a in args[:len(args) - n_out]:
                r = self.root(a)
                if r not in self.fixed and r not in self.written:
                    self.fail(f"{what} reads {self.describe(a)} before any step writes it")
            for a in args[len(args) - n_out:]:
                if a not in self.fixed:
                    self.written[a] = i
            for a in args:
                if self.root(a) not in self.fixed:
                    self.last[self.root(a)] = i
        self.end = len(steps)
        for j, o in enumerate(self.plan["outputs"]):
            r = self.root(o["buffer"])
            if r not in self.fixed:
                if r not in self.written:
                    self.fail(f"output {o['name']!r} is {self.describe(o['buffer'])}, which no step writes")
                self.last[r] = self.end  # outputs are read after the last step
        for i, b in enumerate(self.buffers):
            if "arena_offset" in b and i not in self.written:
                self.fail(f"{self.describe(i)} lies in the arena but no step writes it")

    def check_lifetimes(self) -> None:
        live = {b: (first, self.last[b]) for b, first in self.written.items()}
        memory = self.plan.get("memory") if isinstance(self.plan.get("memory"), dict) else {}
        recorded, classes = memory.get("tensors"), memory.get("classes")
        if classes is not None and not isinstance(classes, dict):
            self.fail("field 'memory'.'classes' is not an object")
        if recorded is not None:
            if not isinstance(recorded, list) or not all(isinstance(t, list) and len(t) == 4 for t in recorded):
                self.fail("field 'memory'.'tensors' is not a list of [buffer, bytes, first step, last step]")
            table = {t[0]: tuple(t[1:]) for t in recorded}
            for b, (first, last) in sorted(live.items()):
                if table.get(b) != (self.nbytes[b], first, last):
                    self.fail(f"{self.describe(b)} is written at step {first} and last used at step {last}, but the "
                              f"memory plan recorded {table.get(b, 'nothing')} for it (bytes, first, last): steps "
                              f"were removed, added or reordered")
        # sweep the arena in offset order; two buffers sharing bytes must not be alive at one step, except in place
        spans = sorted((self.buffers[b]["arena_offset"], b) for b in live if self.nbytes[b])
        for k, (a_start, a) in enumerate(spans):
            a_end = a_start + self.nbytes[a]
            for b_start, b in spans[k + 1:]:
                if b_start >= a_end:
                    break
                (af, al), (bf, bl) = live[a], live[b]
                if af > bl or bf > al:
                    continue  # never alive together
                # in place: the compiler chose it (one storage class) for a kernel that may write over its input
                handover = (a_start == b_start and self.nbytes[a] == self.nbytes[b] and
                            ((al == bf and af < bf) or (bl == af and bf < af)) and
                            (classes is None or classes.get(str(a), a) == classes.get(str(b), b)))
                if not handover:
                    self.fail(f"{self.describe(a)} (steps {af}-{al}) and {self.describe(b)} (steps {bf}-{bl}) are "
                              f"alive together and share arena bytes at offset {b_start}")


def validate_plan(plan: dict, where: str) -> None:
    """Raise ArtifactError naming the field, step or buffer unless `plan` is a sound execution plan (see the module
    doc). `where` names the plan's origin for the message, e.g. "artifact 'model.tfa'"."""
    _Checker(plan, where).run()
