"""Models with ops whose output shapes depend on the data (NonZero, Unique, NonMaxSuppression, Compress): compiled
segments around host steps.

The IR has static shapes, so such an op cannot be a kernel: how many elements NonZero finds is known only after it
ran. `compile_model` on an ONNX model whose only unsupported ops are these (`HOST_OPS`) returns a
`SegmentedModel`: the graph is cut at each of them into compiled segments (each a `SpecializingModel`, compiled on
first sight for the shapes it is fed: the sizes that come out of a host step, and kept) and host steps, which run
the op in numpy through onnx's reference implementation (`onnx.reference`). onnxruntime runs these ops on the CPU
the same way; OpenVINO and TVM Relax compute their shapes at run time too.

Each segment is an ONNX model of its own: its inputs are the values it reads from the graph's inputs or from earlier
steps (typed from onnx's shape inference, a host step's outputs with their data-dependent dimensions symbolic), its
outputs the values later steps or the graph's outputs read.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping

import numpy as np

from tensorforge.compiler.specialize import SpecializingModel, check_shape, declared_inputs
from tensorforge.runtime.bundle import check_names, time_runs
from tensorforge.runtime.errors import FrontendError, InputError, UnsupportedOpError

HOST_OPS = frozenset({"NonZero", "Unique", "NonMaxSuppression", "Compress"})


def segmentable(error: FrontendError, proto) -> bool:
    """Is `error` the importer's refusal of host ops only, at the graph's top level?"""
    if not isinstance(error, UnsupportedOpError):
        return False
    return all(op in HOST_OPS for op, _, _ in error.unsupported) and any(
        n.op_type in HOST_OPS for n in proto.graph.node)


class SegmentedModel:
    """The ONNX model `proto` as compiled segments and host steps (see the module docstring). `compile_fn(proto,
    shapes)` compiles one segment's specialization; `fingerprint` keys their on-disk cache."""

    def __init__(self, proto, compile_fn: Callable, fingerprint: str = ""):
        import onnx

        inferred = onnx.shape_inference.infer_shapes(proto)
        types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
                 + list(inferred.graph.output)}
        inits = {t.name: t for t in proto.graph.initializer}
        self.input_names = [vi.name for vi in proto.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in proto.graph.output]
        self._declared = declared_inputs(proto)
        runs: list[tuple[bool, list]] = []  # (host, nodes), in graph order
        for node in proto.graph.node:
            host = node.op_type in HOST_OPS
            if runs and not host and not runs[-1][0]:
                runs[-1][1].append(node)
            else:
                runs.append((host, [node]))
        later_reads: list[set[str]] = []  # what the steps after step i read, and the graph's outputs
        reads = set(self.output_names)
        for _, nodes in reversed(runs):
            later_reads.append(set(reads))
            for n in nodes:
                reads.update(_reads(n))
        later_reads.reverse()
        self.steps: list[tuple[object, list[str], list[str]]] = []  # (runner, input names, output names)
        available = set(self.input_names)
        for (host, nodes), after in zip(runs, later_reads):
            produced = [o for n in nodes for o in n.output if o]
            needs = [v for v in dict.fromkeys(v for n in nodes for v in _reads(n)) if v not in produced]
            ins = [v for v in needs if v not in inits]
            outs = [o for o in produced if o in after]
            missing = [v for v in ins if v not in available]
            if missing:
                raise FrontendError(f"cannot cut the graph at its data-dependent ops: {missing} are read before "
                                    f"they are computed")
            if host:
                runner = _HostStep(nodes[0], _opset(proto), [inits[v] for v in needs if v in inits])
            else:
                seg = _segment_model(proto, nodes, ins, outs, types, inits)
                runner = SpecializingModel(seg, None, compile_fn, fingerprint=fingerprint)
            self.steps.append((runner, ins, outs))
            available.update(outs)

    def run(self, feeds: Mapping) -> list:
        check_names(feeds, self.input_names)
        for name, (dims, dtype) in self._declared.items():
            got = np.asarray(feeds[name])
            if got.dtype != dtype:
                raise InputError(f"input {name!r} has dtype {got.dtype}, but the model declares {dtype}")
            check_shape(name, got.shape, dims)
        env = dict(feeds)
        for runner, ins, outs in self.steps:
            env.update(zip(outs, runner.run({n: env[n] for n in ins})))
        return [env[n] for n in self.output_names]

    def benchmark(self, feeds: Mapping, repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per whole run (segments and host steps), `repeat` samples after `warmup` runs."""
        return time_runs(lambda: self.run(feeds), repeat, warmup)

    def profile(self, feeds: Mapping, repeat: int = 10) -> list[dict]:
        """The segments' kernel calls (CompiledModel.profile's rows) and each host step's median time, in order."""
        import time

        rows, env = [], dict(feeds)
        for runner, ins, outs in self.steps:
            step_feeds = {n: env[n] for n in ins}
            if isinstance(runner, SpecializingModel):
                rows += runner.profile(step_feeds, repeat)
            else:
                samples = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    runner.run(step_feeds)
                    samples.append(time.perf_counter() - t0)
                rows.append({"kernel": "host", "op": runner.op_type, "node": runner.node_name,
                             "ms": float(np.median(samples)) * 1e3})
            env.update(zip(outs, runner.run(step_feeds)))
        return rows

    @property
    def segments(self) -> list:
        """The compiled segments (SpecializingModels), in order."""
        return [r for r, _, _ in self.steps if isinstance(r, SpecializingModel)]

    def save(self, path) -> None:
        from tensorforge.runtime.errors import CompileError

        ops = sorted({r.op_type for r, _, _ in self.steps if isinstance(r, _HostStep)})
        raise CompileError(f"this model's data-dependent ops ({', '.join(ops)}) run on the host between compiled "
                           f"segments, and an artifact holds one compiled graph; save a segment's specialization "
                           f"instead (`model.segments[i].specialize(feeds)`)")


class _HostStep:
    """One data-dependent op, run by onnx's reference implementation."""

    def __init__(self, node, opset: int, initializers: list):
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        inits = {t.name for t in initializers}
        inputs = [helper.make_empty_tensor_value_info(v) for v in dict.fromkeys(node.input) if v and v not in inits]
        outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        graph = helper.make_graph([node], f"host_{node.op_type}", inputs, outputs, initializer=initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        self.op_type = node.op_type
        self.node_name = node.name or node.op_type
        self._names = [vi.name for vi in inputs]
        self._eval = ReferenceEvaluator(model)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping) -> list:
        with self._lock:  # onnx's evaluator is not documented as thread-safe
            return list(self._eval.run(None, {n: feeds[n] for n in self._names}))


def _reads(node) -> list[str]:
    return [v for v in node.input if v]


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)


def _segment_model(proto, nodes, inputs, outputs, types, inits):
    """An ONNX model of `nodes`: graph inputs `inputs` (typed from shape inference, unknown dimensions symbolic),
    the initializers they read, graph outputs `outputs`."""
    from onnx import helper

    def info(name, output=False):
        vi = types.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            if output:  # the importer infers an output's type
                return vi if vi is not None else helper.make_empty_tensor_value_info(name)
            raise FrontendError(f"cannot cut the graph at its data-dependent ops: onnx's shape inference gives no "
                                f"type or rank for {name!r}")
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else f"{name}_{i}" for i, d in enumerate(t.shape.dim)]
        return helper.make_tensor_value_info(name, t.elem_type, dims)

    read = {v for n in nodes for v in _reads(n)}
    graph = helper.make_graph(nodes, "segment", [info(v) for v in inputs], [info(v, True) for v in outputs],
                              initializer=[t for name, t in inits.items() if name in read])
    return helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
