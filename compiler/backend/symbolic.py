"""Kernels over symbolic sizes, built once and linked into every compile of one dynamic model.

A dynamic model (compiler/specialize.py) compiles the same network once per shape it meets. Its kernels change with
the shape only in some sizes: BERT's products, layer norms and embedding lookups at 16 and at 128 tokens are the same
kernel with 16 or 128 rows. `SymbolicKernels`, held by the dynamic model and handed to each of its builds, finds
those kernels and builds each once with the changing sizes as run-time variables:

  * every kernel of a build is remembered (its spec, `KernelSpec`);
  * a kernel of a later build that has a remembered one of the same structure (the same ops, attributes, dtypes and
    ranks; only integers in shapes and in tuple attributes differ: a reshape's target) is generalized from the
    pair: each distinct pair of differing integers becomes one variable (`Template`);
  * the template is lowered with those variables (the ops' TE lowerings take symbolic extents) and scheduled; it is
    kept only if the schedule rule that takes it is the one that takes the exact kernel (a template the fast rule
    refuses would fall to the generic schedule), and its object file is kept;
  * a kernel of any later build that the template reproduces (its integers equal the template's constants, and each
    variable's positions hold one value, of at least 2: a size of 1 broadcasts, which lowerings tell by the
    constant) is that object: nothing is lowered, scheduled or compiled for it.

The plan calls the template's symbol with buffers of the exact shapes; the kernel reads each variable from them (its
argument checks assert the positions agree). The kernel computes what the exact one computes: the same TE
lowering, evaluated at the sizes the exact kernel has as constants. Tuned kernels (a tuning database's record is for
one exact kernel) and the CUDA target are built per shape as before. torch.compile's graphs with symbolic sizes
(compiler/torch_backend.py) share one SymbolicKernels over their sizes the same way.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module itself imports no TVM: a dynamic model's runtime-only paths load it cheaply
    from .lower import KernelSpec

MAX_REMEMBERED = 512  # exact kernels remembered for pairing (the oldest forgotten first)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _walk_value(v, fn):
    """`v` (an attribute value) with fn applied to each integer inside its tuples and lists; scalars unchanged."""
    if isinstance(v, (tuple, list)):
        return type(v)(fn(x) if _is_int(x) else _walk_value(x, fn) for x in v)
    return v


def _walk(spec: KernelSpec, fn) -> tuple[list, list, list]:
    """(attrs of each op, input shapes, output shapes) with fn applied to every integer that may vary between the
    kernels of two shapes: the dimensions, and the integers inside tuple attributes (in this order, always)."""
    attrs = [[(k, _walk_value(v, fn)) for k, v in o.attrs] for o in spec.ops]
    ins = [tuple(fn(d) for d in t.shape) for t in spec.in_types]
    outs = [tuple(fn(d) for d in t.shape) for t in spec.out_types]
    return attrs, ins, outs


@functools.lru_cache(maxsize=4096)  # asked for the same spec by find, candidate, bind, generalize and remember
def _skeleton(spec: KernelSpec) -> str:
    """The kernel with its varying integers blanked: kernels of one structure share it."""
    attrs, ins, outs = _walk(spec, lambda _: "#")
    text = repr([[o.op.name, a, o.inputs] for o, a in zip(spec.ops, attrs)]
                + [[(s, t.dtype) for s, t in zip(ins, spec.in_types)], spec.outputs,
                   [(s, t.dtype) for s, t in zip(outs, spec.out_types)]])
    return hashlib.sha256(text.encode()).hexdigest()


def _integers(spec: KernelSpec) -> list[int]:
    out: list[int] = []
    _walk(spec, lambda x: out.append(x) or x)
    return out


@dataclass(frozen=True)
class Template:
    """A kernel with some integers made variables: `slots[i]` is the constant at position i, or -(v + 1) for
    variable v (positions in `_walk` order)."""
    example: KernelSpec  # one exact kernel it reproduces (structure and constants)
    skeleton: str
    slots: tuple[int, ...]
    n_vars: int

    def symbol(self) -> str:
        key = hashlib.sha256(f"{self.skeleton}{self.slots}".encode()).hexdigest()[:12]
        base = self.example.name().rsplit("_", 1)[0]
        return f"{base}_dyn_{key}"

    def bind(self, spec: KernelSpec) -> list[int] | None:
        """The variables' values that make this template `spec`, or None if it does not reproduce it, or gives a
        variable a size below 2: a size of 1 is where broadcasting reads one element for many, which a lowering
        tells by the constant (a variable is taken for a size above 1), so such a kernel is built exactly."""
        if _skeleton(spec) != self.skeleton:
            return None
        values: list[int | None] = [None] * self.n_vars
        for slot, x in zip(self.slots, _integers(spec)):
            if slot >= 0:
                if x != slot:
                    return None
            elif values[-slot - 1] is None:
                values[-slot - 1] = x
            elif values[-slot - 1] != x:
                return None
        return None if any(v < 2 for v in values) else values

    def prim_func(self, target):
        """The unscheduled PrimFunc, its variables as run-time sizes."""
        from tvm import te

        from .lower import build_prim_func

        variables = [te.var(f"n{i}", "int64") for i in range(self.n_vars)]
        slots = iter(self.slots)

        def fill(_):
            s = next(slots)
            return s if s >= 0 else variables[-s - 1]

        attrs, ins, outs = _walk(self.example, fill)
        return build_prim_func(self.example, target, symbolic=(attrs, ins, outs))


def generalize(a: KernelSpec, b: KernelSpec) -> Template | None:
    """The template of which `a` and `b` are two instances (each distinct pair of their differing integers one
    variable), or None if they differ in structure, or not at all."""
    skeleton = _skeleton(a)
    if skeleton != _skeleton(b):
        return None
    xs, ys = _integers(a), _integers(b)
    pairs: dict[tuple[int, int], int] = {}
    slots = []
    for x, y in zip(xs, ys):
        if x == y:
            slots.append(x)
        else:
            slots.append(-(pairs.setdefault((x, y), len(pairs)) + 1))
    if not pairs:
        return None
    return Template(a, skeleton, tuple(slots), len(pairs))


@dataclass
class Built:
    template: Template
    object_path: str  # the compiled kernel, linked into each library that calls it


class SymbolicKernels:
    """The symbolic kernels of one dynamic model (see the module docstring). Thread-safe."""

    def __init__(self):
        self._seen: dict[str, list[KernelSpec]] = {}  # skeleton -> exact kernels of earlier builds
        self._order: list[tuple[str, KernelSpec]] = []
        self._built: dict[str, list[Built]] = {}      # skeleton -> templates compiled
        self._refused: set[tuple[str, tuple]] = set()  # templates that could not be built as fast as exact ones
        self._lock = threading.Lock()
        self._dir: str | None = None
        self.reused = 0  # kernels of later builds that needed no compile (for reports and tests)

    def find(self, spec: KernelSpec) -> Built | None:
        """A compiled template that reproduces `spec`."""
        with self._lock:
            for built in self._built.get(_skeleton(spec), []):
                if built.template.bind(spec) is not None:
                    self.reused += 1
                    return built
        return None

    def candidate(self, spec: KernelSpec) -> Template | None:
        """A template to build for `spec`: generalized with a kernel of the same structure from an earlier build."""
        skeleton = _skeleton(spec)
        with self._lock:
            found = [t for t in (generalize(earlier, spec) for earlier in self._seen.get(skeleton, []))
                     if t is not None and (skeleton, t.slots) not in self._refused]
        return min(found, key=lambda t: t.n_vars, default=None)  # the closest kin: fewest sizes made variables

    def refuse(self, t: Template) -> None:
        with self._lock:
            self._refused.add((t.skeleton, t.slots))

    def object_path(self, t: Template) -> str:
        with self._lock:
            if self._dir is None:
                self._dir = tempfile.mkdtemp(prefix="tensorforge-symbolic-")
                weakref.finalize(self, shutil.rmtree, self._dir, True)  # with the model, or at exit
            return os.path.join(self._dir, t.symbol() + ".o")

    def add(self, t: Template, object_path: str) -> Built:
        built = Built(t, object_path)
        with self._lock:
            self._built.setdefault(t.skeleton, []).append(built)
        return built

    def remember(self, specs) -> None:
        """Kernels of a finished build, to pair with the kernels of later ones."""
        with self._lock:
            for spec in specs:
                skeleton = _skeleton(spec)
                kin = self._seen.setdefault(skeleton, [])
                if spec in kin:
                    continue
                kin.append(spec)
                self._order.append((skeleton, spec))
            while len(self._order) > MAX_REMEMBERED:
                skeleton, spec = self._order.pop(0)
                self._seen[skeleton].remove(spec)
