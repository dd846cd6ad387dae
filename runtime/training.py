"""TrainingSession: runs a compiled training graph step by step; the runtime half of `compiler.compile_training`.

The training graph (compiler/autodiff/training.py) holds forward, loss, backward and optimizer update in one
plan. Its persistent state (parameters, optimizer moments, batch-norm running statistics) lives in the
CompiledModel's state buffers and is updated in place by the kernels: a step copies in only the batch, the labels,
a few host-computed scalars (the scheduled learning rate, Adam's bias corrections) and one uniform sample per
dropout, drawn from a seeded numpy Generator; it copies out only the loss and the logits.

Like the rest of the runtime this module needs numpy and TVM's runtime only (ONNX export imports onnx lazily).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
import zipfile
from typing import Mapping

import numpy as np

from .artifact import atomic_write
from .errors import ArtifactError, InputError
from .model import CompiledModel
from .tvm_loader import STORAGE_DTYPES, numpy_dtype

CHECKPOINT_FORMAT = "tensorforge-checkpoint"


def learning_rate(base_lr: float, schedule: Mapping | None, step: int) -> float:
    """The learning rate at `step` (0-based), computed on the host and fed to the update kernels.

    schedule: None (constant); {"name": "step", "step_size": k, "gamma": 0.1}; {"name": "cosine",
    "total_steps": T, "min_lr": 0.0}; {"name": "constant"}. Any of them takes "warmup_steps": W, a linear warmup
    from base_lr / W over the first W steps (multiplied in)."""
    if not schedule:
        return base_lr
    name = schedule.get("name", "constant")
    if name == "step":
        lr = base_lr * schedule.get("gamma", 0.1) ** (step // int(schedule["step_size"]))
    elif name == "cosine":
        total, low = int(schedule["total_steps"]), float(schedule.get("min_lr", 0.0))
        lr = low + (base_lr - low) * (1 + math.cos(math.pi * min(step, total) / total)) / 2
    elif name in ("constant", "linear_warmup"):
        lr = base_lr
    else:
        raise InputError(f"unknown learning-rate schedule {name!r}; supported: step, cosine, constant, "
                         f"linear_warmup")
    warmup = int(schedule.get("warmup_steps", 0))
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    return lr


class TrainingSession:
    """A compiled model being trained. Build one with `compiler.compile_training`.

    A session may be shared between threads: steps, evaluations and checkpoint reads and writes run one at a time
    (a step updates the state every other call reads)."""

    def __init__(self, train: CompiledModel, evaluator: CompiledModel, spec: dict, *,
                 update: CompiledModel | None = None, group=None):
        self._lock = threading.RLock()
        self._train = train
        self._eval = evaluator
        # data-parallel (compile_training(distributed=...)): `train` computes the gradients into one flat buffer,
        # `group` (runtime/distributed.py) averages it over the processes, `update` applies the optimizer; the two
        # plans hold the parameters in the same buffers
        self._update, self.group = update, group
        self.spec = spec
        self.step_count = 0
        self._rng = np.random.default_rng(spec.get("seed", 0) + (group.rank if group is not None else 0))
        self._kinds = spec["state_kinds"]  # state name -> kind
        self._holder: dict[str, CompiledModel] = {}  # state name -> a model holding its buffer
        for m in (train, update):
            for s in (m.plan.get("state", []) if m is not None else []):
                self._holder.setdefault(s["name"], m)
        self._names = list(self._holder)
        self._label_dtype = dict(train.input_specs)[spec["labels"]][1]
        self.last_logits: np.ndarray | None = None
        if group is not None:  # every process starts from rank 0's parameters and statistics
            for name in self._names:
                group.broadcast(self._holder[name].state[name])

    # -- stepping ---------------------------------------------------------------------------------------------------------
    def learning_rate(self, step: int | None = None) -> float:
        opt = self.spec["optimizer"]
        return learning_rate(opt["lr"], self.spec.get("schedule"), self.step_count if step is None else step)

    def _scalars(self) -> dict[str, np.ndarray]:
        opt = self.spec["optimizer"]
        lr = self.learning_rate()
        t = self.step_count + 1
        values = {"lr": lr, "decay": 1.0 - lr * opt.get("weight_decay", 0.0)}
        if opt["name"] in ("adam", "adamw"):
            b1, b2 = opt["betas"]
            values["step_size"] = lr / (1.0 - b1 ** t)
            values["inv_sqrt_bc2"] = 1.0 / math.sqrt(1.0 - b2 ** t)
        return {name: np.array([values[kind]], np.float32) for kind, name in self.spec["scalars"].items()}

    def step(self, feeds: Mapping[str, np.ndarray], labels: np.ndarray) -> float:
        """One training step on a batch: forward, loss, backward, update. Returns the loss (before the update)."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
        with self._lock:
            full = dict(feeds)
            full[self.spec["labels"]] = np.asarray(labels).astype(self._label_dtype, copy=False)
            full.update(self._scalars())
            for name, shape in self.spec["dropout"]:
                full[name] = self._rng.random(tuple(shape), dtype=np.float32)
            if self._update is None:
                loss, logits = self._train.run(full)
            else:
                scalars = {n: full.pop(n) for n in self.spec["scalars"].values()}
                # synchronized batch norm averages inside the plan, over the group
                with self.group.collectives() if self.group is not None else contextlib.nullcontext():
                    outs = dict(zip(self._train.output_names, self._train.run(full)))
                loss, logits, grads = outs["loss"], outs["logits"], outs["grads"]
                if self.group is not None:
                    self.group.average(grads)  # every process applies the same, averaged gradients
                    loss = self.group.average(np.ascontiguousarray(loss, np.float32))
                self._update.run({"grads": grads, **scalars})
            self.step_count += 1
            self.last_logits = logits
            return float(loss.reshape(-1)[0])

    def eval(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The model's outputs in inference mode (running statistics, no dropout) with the current parameters."""
        with self._lock:
            full = dict(feeds)
            state = self._train.state  # the live buffers (on a GPU: device tensors, which the evaluator reads in place)
            for name in self._eval.input_names:
                if name in state:
                    full[name] = state[name]
            return self._eval.run(full)

    # -- state ------------------------------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the trainable parameters and running statistics, by name."""
        with self._lock:
            return {k: self._holder[k].read_state(k) for k in self._names if self._kinds[k] in ("param", "running_mean",
                                                                                                  "running_var")}

    def load_parameters(self, params: Mapping[str, np.ndarray]) -> None:
        unknown = sorted(k for k in params if k not in self._names)
        if unknown:
            raise InputError(f"unknown parameter {unknown[0]!r}")
        with self._lock:
            for k, v in params.items():
                self._holder[k].write_state(k, v)

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Parameters, optimizer state, step count and the dropout generator's state, written atomically (in
        data-parallel training by rank 0 alone: every process holds the same state)."""
        if self.group is not None and self.group.rank != 0:
            return

        def write(f):
            meta = {"format": CHECKPOINT_FORMAT, "step": self.step_count, "rng": self._rng.bit_generator.state,
                    "names": sorted(self._names)}
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
                z.writestr("meta.json", json.dumps(meta))
                for i, name in enumerate(meta["names"]):
                    buf = io.BytesIO()
                    np.save(buf, self._holder[name].read_state(name), allow_pickle=False)
                    z.writestr(f"state/{i}.npy", buf.getvalue())

        with self._lock:  # one step's state, count and generator, not a mix of two
            atomic_write(os.fspath(path), write)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by `save_checkpoint`. Everything in it is checked first: a damaged or
        mismatched checkpoint raises ArtifactError and leaves the session as it was."""
        path = os.fspath(path)
        with self._lock:
            meta, arrays, rng = self._read_checkpoint(path)
            for name, a in arrays.items():
                self._holder[name].write_state(name, a)
            self.step_count = meta["step"]
            self._rng.bit_generator.state = rng.bit_generator.state

    def _read_checkpoint(self, path: str) -> tuple[dict, dict[str, np.ndarray], np.random.Generator]:
        """The checkpoint's meta.json, its state arrays (as this session's dtypes) and a generator in its rng state,
        all checked against this session."""
        try:
            if os.path.exists(path) and not os.path.isfile(path):
                raise ArtifactError(f"checkpoint {path!r} is not a regular file")
            with zipfile.ZipFile(path) as z:
                try:
                    meta = json.loads(z.read("meta.json"))
                except KeyError:
                    raise ArtifactError(f"checkpoint {path!r} is damaged: meta.json is missing") from None
                except ValueError as e:
                    raise ArtifactError(f"checkpoint {path!r} is damaged: meta.json is not JSON ({e})") from None
                if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
                    raise ArtifactError(f"{path!r} is not a TensorForge checkpoint")
                names = meta.get("names")
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or \
                        sorted(names) != sorted(self._names):
                    raise ArtifactError(f"checkpoint {path!r} holds state {names}, this session has "
                                        f"{sorted(self._names)}")
                step = meta.get("step")
                if not isinstance(step, int) or isinstance(step, bool) or step < 0:
                    raise ArtifactError(f"checkpoint {path!r} is damaged: meta.json field 'step' is {step!r}, "
                                        f"expected a non-negative integer")
                rng = np.random.Generator(type(self._rng.bit_generator)())
                try:
                    rng.bit_generator.state = meta.get("rng")
                except (ValueError, TypeError, KeyError, AttributeError) as e:
                    raise ArtifactError(f"checkpoint {path!r} is damaged: meta.json field 'rng' is not a "
                                        f"{type(self._rng.bit_generator).__name__} state ({type(e).__name__}: {e})"
                                        ) from None
                specs = {name: m.plan["buffers"][next(s["buffer"] for s in m.plan["state"] if s["name"] == name)]
                         for name, m in self._holder.items()}
                arrays = {}
                for i, name in enumerate(names):
                    member = f"state/{i}.npy"
                    try:
                        with z.open(member) as f:
                            a = np.lib.format.read_array(io.BufferedReader(f), allow_pickle=False)
                    except KeyError:
                        raise ArtifactError(f"checkpoint {path!r} is damaged: {member} (state {name!r}) is "
                                            f"missing") from None
                    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
                        raise ArtifactError(f"checkpoint {path!r} is damaged: {member} (state {name!r}) cannot be "
                                            f"read ({type(e).__name__}: {e})") from None
                    arrays[name] = _as_state(a, specs[name], f"checkpoint {path!r}: {member} (state {name!r})")
        except ArtifactError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ArtifactError(f"checkpoint {path!r} is missing or damaged ({type(e).__name__}: {e})") from None
        meta["step"] = step
        return meta, arrays, rng

    def export_onnx(self, path: str | os.PathLike, model=None) -> None:
        """Write the ONNX model this session was compiled from (or `model`) with the trained values of its
        initializers (every initializer whose name is a trained parameter or running statistic)."""
        import onnx
        from onnx import numpy_helper

        source = model if model is not None else self.spec.get("onnx")
        if source is None:
            raise InputError("export_onnx needs the source ONNX model (this session was not compiled from one)")
        proto = onnx.ModelProto()
        if isinstance(source, onnx.ModelProto):
            proto.CopyFrom(source)
        elif isinstance(source, (bytes, bytearray)):
            proto.ParseFromString(bytes(source))
        else:
            proto = onnx.load(os.fspath(source))
        params = self.parameters()  # one consistent snapshot (under the lock)
        for init in proto.graph.initializer:
            if init.name in params and tuple(init.dims) == params[init.name].shape:
                init.CopyFrom(numpy_helper.from_array(params[init.name].astype(
                    onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), init.name))
        atomic_write(os.fspath(path), lambda f: f.write(proto.SerializeToString()))

    @property
    def train_model(self) -> CompiledModel:
        return self._train

    @property
    def eval_model(self) -> CompiledModel:
        return self._eval


def _as_state(a: np.ndarray, buffer: dict, what: str) -> np.ndarray:
    """A checkpoint array as the state buffer holds it, or ArtifactError if its shape or dtype is not the buffer's.
    .npy files store bfloat16 and the storage-only types as raw records (|V2, |V1): re-typed by their size."""
    shape, dtype = tuple(buffer["shape"]), numpy_dtype(buffer["dtype"])
    if a.dtype != dtype and a.dtype.kind == "V" and a.dtype.itemsize == dtype.itemsize and \
            (buffer["dtype"] == "bfloat16" or buffer["dtype"] in STORAGE_DTYPES):
        a = np.ascontiguousarray(a).view(dtype).reshape(a.shape)
    if a.shape != shape or a.dtype != dtype:
        raise ArtifactError(f"{what} is {a.dtype}{list(a.shape)}, the session expects {dtype}{list(shape)}")
    return a
