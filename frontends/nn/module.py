"""The builder API's core: modules with named parameters, traced into the IR.

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * 32 * 32, 10))
    params = net.init(seed=0)                      # {"0.weight": array, "0.bias": ..., "1.running_mean": ...}
    graph = net.to_graph({"x": (1, 3, 32, 32)}, params)
    model = compiler.compile_model(net, shapes={"x": (1, 3, 32, 32)})

A module declares its parameters in `__init__` with `self.param(name, shape, init)` and its children as attributes;
`forward(t, *inputs)` computes with the tracer `t` (one method per IR op) on IR values. Names are paths of
attribute names ("encoder.0.attn.query.weight"), as PyTorch's state_dict keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, Value
from tensorforge.runtime.errors import FrontendError, IRError

Init = Callable[[np.random.Generator, tuple], np.ndarray]


def zeros(rng, shape):
    return np.zeros(shape, np.float32)


def ones(rng, shape):
    return np.ones(shape, np.float32)


def kaiming_uniform(fan_in: int) -> Init:
    """PyTorch's default for Linear and Conv weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(max(fan_in, 1))
    return lambda rng, shape: rng.uniform(-bound, bound, shape).astype(np.float32)


def normal(std: float = 1.0) -> Init:
    return lambda rng, shape: rng.normal(0.0, std, shape).astype(np.float32)


@dataclass
class ParamSpec:
    shape: tuple[int, ...]
    init: Init
    trainable: bool = True  # False for buffers such as batch-norm running statistics


class Module:
    training = False

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_children", {})

    def __setattr__(self, name, value):
        if isinstance(value, Module):
            self._children[name] = value
        object.__setattr__(self, name, value)

    def param(self, name: str, shape: Sequence[int], init: Init, trainable: bool = True) -> None:
        self._params[name] = ParamSpec(tuple(int(d) for d in shape), init, trainable)

    # -- parameters -------------------------------------------------------------------------------------------------
    def named_param_specs(self, prefix: str = "") -> Iterator[tuple[str, ParamSpec]]:
        for name, spec in self._params.items():
            yield prefix + name, spec
        for name, child in self._children.items():
            yield from child.named_param_specs(f"{prefix}{name}.")

    def init(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Fresh parameters, deterministically from `seed`."""
        rng = np.random.default_rng(seed)
        return {name: spec.init(rng, spec.shape) for name, spec in self.named_param_specs()}

    def forward(self, t: "Tracer", *inputs: Value):
        raise NotImplementedError

    def __call__(self, t: "Tracer", *inputs: Value):
        return t.call(self, *inputs)

    # -- tracing ------------------------------------------------------------------------------------------------------
    def to_graph(self, inputs: Mapping[str, Sequence[int] | TensorType], params: Mapping[str, np.ndarray] | None = None,
                 name: str | None = None) -> Graph:
        """Trace the module into a verified IR graph. `inputs`: name -> shape (float32) or TensorType."""
        params = dict(params) if params is not None else self.init()
        specs = dict(self.named_param_specs())
        missing = sorted(set(specs) - set(params))
        unknown = sorted(set(params) - set(specs))
        if missing or unknown:
            raise FrontendError(f"parameters do not match the module: missing {missing}, unknown {unknown}")
        for k, spec in specs.items():
            if tuple(params[k].shape) != spec.shape:
                raise FrontendError(f"parameter {k!r} has shape {tuple(params[k].shape)}, the module declares "
                                    f"{spec.shape}")
        g = Graph(name or type(self).__name__)
        values = [g.add_input(k, v if isinstance(v, TensorType) else TensorType(tuple(v), "float32"))
                  for k, v in inputs.items()]
        t = Tracer(g, params)
        outs = self(t, *values)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        g.outputs = [t.value(o) for o in outs]
        g.output_names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
        g.remove_unused()
        g.verify()
        return g


class Tracer:
    """Builds IR while modules run: `t.op(opdef, inputs, **attrs)`, plus parameter lookup by path."""

    def __init__(self, graph: Graph, params: Mapping[str, np.ndarray]):
        self.g = graph
        self.params = params
        self._path: list[str] = []
        self._made: dict[str, Value] = {}

    def call(self, module: Module, *inputs):
        name = next((k for k, m in (self._owner()._children.items() if self._stack else ()) if m is module), None)
        self._stack.append((module, name))
        try:
            return module.forward(self, *inputs)
        finally:
            self._stack.pop()

    @property
    def _stack(self) -> list:
        if not hasattr(self, "_s"):
            self._s = []
        return self._s

    def _owner(self) -> Module:
        return self._stack[-1][0]

    def p(self, name: str) -> Value:
        """The current module's parameter `name`, as a graph param (one per path)."""
        path = ".".join([n for _, n in self._stack[1:] if n is not None] + [name])
        if path not in self._made:
            if path not in self.params:
                raise FrontendError(f"no parameter {path!r}")
            self._made[path] = self.g.add_param(path, np.asarray(self.params[path], np.float32))
        return self._made[path]

    def const(self, value, dtype="float32") -> Value:
        return self.g.add_param("c", np.asarray(value, dtype))

    def value(self, x) -> Value:
        return x if isinstance(x, Value) else self.const(x)

    def op(self, opdef, inputs, **attrs):
        try:
            outs = self.g.add_node(opdef, [self.value(x) for x in inputs], attrs, name=self._where())
        except IRError as e:
            raise FrontendError(f"in module {self._where()!r}: {e}") from None
        return outs[0] if len(outs) == 1 else outs

    def _where(self) -> str:
        return ".".join(n for _, n in self._stack[1:] if n is not None) or type(self._stack[0][0]).__name__

    # shorthands used by the layers
    def reshape(self, x, shape):
        return self.op(ops.reshape, [x], shape=tuple(int(d) for d in shape))

    def transpose(self, x, perm):
        return self.op(ops.transpose, [x], perm=tuple(perm))

    def slice(self, x, axis, start, end):
        shape = x.type.shape
        begins, ends, strides = [0] * len(shape), list(shape), [1] * len(shape)
        begins[axis], ends[axis] = start, end
        return self.op(ops.strided_slice, [x], begins=tuple(begins), ends=tuple(ends), strides=tuple(strides))

    def dense(self, x, weight, bias=None):
        """x (..., K) @ weight (N, K).T + bias."""
        shape = x.type.shape
        x2 = self.reshape(x, (int(np.prod(shape[:-1])), shape[-1])) if len(shape) != 2 else x
        y = self.op(ops.dense, [x2, weight] + ([bias] if bias is not None else []))
        return self.reshape(y, shape[:-1] + (weight.type.shape[0],)) if len(shape) != 2 else y
