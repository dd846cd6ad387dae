"""Bundles: several specializations of one model in one file, chosen by the inputs at run time.

A model whose inputs decide shapes, or compiled with `dynamic=` ranges (compiler/specialize.py), is compiled per
value and shape it meets. `SpecializingModel.save(path)` writes the specializations compiled so far as a bundle,
which `runtime.load` reads without the compiler:

    bundle.json         {"format": "tensorforge-bundle", "version", "inputs", "outputs", "value_inputs",
                         "sequence_inputs", "specializations": [{"plan": "s<i>/plan.json", "kernels":
                         "s<i>/kernels.so", "values": {input: {"dtype", "shape", "data"}}, "shapes": {input: shape}}
                         or {"loop": {"of": j, "inputs": [input...]}, "shapes": ...}]}
    s<i>/plan.json      specialization i's plan (runtime/model.py), its parameters' files named by content
    s<i>/kernels.so     its kernels
    params/<sha>.npy    every parameter, once: the specializations of a model share their weights
    manifest.json       the SHA-256 and size of every other member, written last

Reading checks the manifest and every plan (runtime/plan_check.py) before anything runs, as for an artifact. A run
takes the specialization whose compiled-in values equal the fed ones and whose input shapes are the fed shapes;
there is none for other feeds (an `InputError` lists what the bundle holds). Bundles hold CPU specializations.
A "loop" entry (version 2) is a batch the compiler proved specialization j runs in slices along axis 0 of its
`inputs` (compiler/batch_loop.py): `LoopedModel`, no plan of its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import weakref
import zipfile
from typing import Mapping

import numpy as np

from . import artifact
from .errors import ArtifactError, InputError

FORMAT = "tensorforge-bundle"
VERSION = 2
READS = (1, 2)  # version 1: no loop entries
META = "bundle.json"


def is_bundle(path: str) -> bool:
    """Is the file at `path` a bundle (a zip holding bundle.json)? False for anything else, unreadable included
    (reading it as an artifact then names the problem)."""
    try:
        f = artifact._open_regular(path)
    except ArtifactError:
        return False
    try:
        with f, zipfile.ZipFile(f) as z:
            return META in z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def write_bundle(path: str, meta: dict, parts: list[tuple[dict, str, list]]) -> None:
    """Write `meta` (bundle.json without its specializations' members) and, per specialization, its (plan,
    kernel library path, parameter arrays) atomically; each distinct parameter is stored once."""
    meta = dict(meta)

    def write(f):
        digests = {}
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            def put(member: str, data: bytes) -> None:
                if member not in digests:
                    artifact.put_aligned(z, member, data)
                    digests[member] = (hashlib.sha256(data).hexdigest(), len(data))

            specs = []
            compiled = [spec for spec in meta["specializations"] if "loop" not in spec]
            for i, ((plan, kernels, params), spec) in enumerate(zip(parts, compiled)):
                if plan.get("device"):
                    raise ArtifactError(f"cannot write bundle {path}: it holds CPU specializations, and this one is "
                                        f"for {plan['device'].get('kind')!r}")
                plan = copy.deepcopy(plan)
                for entry, p in zip(plan["params"], params):
                    if "file" in entry:
                        data = artifact.param_bytes(p)
                        entry["file"] = f"params/{hashlib.sha256(data).hexdigest()[:40]}.npy"
                        put(entry["file"], data)
                spec = {**spec, "plan": f"s{i}/plan.json", "kernels": f"s{i}/kernels.so"}
                put(spec["plan"], json.dumps(plan, indent=1).encode())
                z.write(kernels, spec["kernels"])
                digests[spec["kernels"]] = artifact._file_digest(kernels)
                specs.append(spec)
            loops = [spec for spec in meta["specializations"] if "loop" in spec]
            put(META, json.dumps({**meta, "version": VERSION, "specializations": specs + loops}, indent=1).encode())
            z.writestr(artifact.MANIFEST, artifact.manifest_json(digests))

    artifact.atomic_write(os.fspath(path), write)


def read_bundle(path: str, make_model) -> "BundleModel":
    """Read and check the bundle at `path`; `make_model(plan, kernels path, params, owned dir, shared)` builds each
    specialization's CompiledModel, the specializations holding each distinct parameter once in memory and their
    persistent state (a decoder's cache) in common (`shared`, a runtime.model.SharedBuffers)."""
    from .plan import SharedBuffers

    shared = SharedBuffers(params_by_file=True)
    path = os.fspath(path)
    f = artifact._open_regular(path)
    pending = None  # a kernel directory no model owns yet (a model removes its own when it goes)
    try:
        z = zipfile.ZipFile(f)
        weakref.finalize(z, f.close)  # parameters are read from this open file when the models copy them in
        mm = artifact.open_mapped(f)
        artifact._verify_manifest(path, z, mm)
        names = set(z.namelist())
        try:
            meta = json.loads(z.read(META))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            specs = list(meta["specializations"])
            members = [(s["plan"], s["kernels"]) for s in specs if "loop" not in s]
        except (ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"bundle {path!r} is damaged: {META} cannot be read ({type(e).__name__}: {e})") \
                from None
        if meta.get("version") not in READS:
            raise ArtifactError(f"bundle {path!r} has format version {meta.get('version')}; this runtime reads "
                                f"version {VERSION}: save it again")
        models = []
        for i, (plan_member, kernels_member) in enumerate(members):
            if plan_member not in names:
                raise ArtifactError(f"bundle {path!r} is damaged: {plan_member} is missing")
            try:
                plan = json.loads(z.read(plan_member))
            except ValueError as e:
                raise ArtifactError(f"bundle {path!r} is damaged: {plan_member} ({e})") from None
            if not isinstance(plan, dict) or plan.get("format") != artifact.FORMAT or plan.get("device"):
                raise ArtifactError(f"bundle {path!r}: {plan_member} is not a CPU plan")
            pending = tempfile.mkdtemp(prefix="tensorforge-")
            kernels, params = artifact.plan_parts(f"bundle {path!r} specialization {i}", path, z, plan, pending,
                                                  kernels_member, mm)
            models.append(make_model(plan, kernels, params, pending, shared))
            pending = None
        return BundleModel(meta, models)
    except BaseException as e:
        if pending is not None:
            shutil.rmtree(pending, ignore_errors=True)
        f.close()
        if isinstance(e, (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, EOFError, OSError)):
            raise ArtifactError(f"bundle {path!r} is damaged or truncated ({type(e).__name__}: {e})") from None
        raise


class LoopedModel:
    """A batch run as slices of a model compiled for fewer samples (compiler/batch_loop.py proved it the same):
    the `inputs` cut along axis 0 into `times` slices, each run by `model`, the outputs joined along axis 0."""

    def __init__(self, model, inputs, times: int):
        self.model, self.inputs, self.times = model, list(inputs), int(times)
        self.input_names, self.output_names = model.input_names, model.output_names

    def _slices(self, feeds: Mapping):
        parts = {n: np.array_split(np.asarray(v), self.times) for n, v in feeds.items() if n in self.inputs}
        for i in range(self.times):
            yield {n: (parts[n][i] if n in parts else v) for n, v in feeds.items()}

    def run(self, feeds: Mapping) -> list:
        outs = [self.model.run(f) for f in self._slices(feeds)]
        return [np.concatenate(parts) for parts in zip(*outs)]

    __call__ = run

    def benchmark(self, feeds: Mapping, repeat: int = 20, warmup: int = 3) -> list[float]:
        return time_runs(lambda: self.run(feeds), repeat, warmup)

    def profile(self, feeds: Mapping, repeat: int = 10) -> list[dict]:
        """The slice model's profile on one slice, each kernel's time multiplied by the number of slices."""
        rows = self.model.profile(next(self._slices(feeds)), repeat)
        return [{**r, "ms": r["ms"] * self.times} for r in rows]


class BundleModel:
    """The specializations of a bundle, each a CompiledModel, chosen per run by the feeds (see the module
    docstring). Thread-safe as CompiledModel is."""

    def __init__(self, meta: dict, models: list):
        self.meta = meta
        self._compiled = list(models)
        self.input_names = list(meta["inputs"])
        self.output_names = list(meta["outputs"])
        self.value_inputs = list(meta.get("value_inputs", []))
        self.sequence_inputs = list(meta.get("sequence_inputs", []))
        self._specs = []
        compiled = iter(models)
        specs = meta["specializations"]
        for spec in specs:
            if "loop" in spec:
                loop = spec["loop"]
                try:  # "of": the index of a compiled specialization among them
                    model = LoopedModel(models[loop["of"]], loop["inputs"], loop["times"])
                except (KeyError, IndexError, TypeError) as e:
                    raise ArtifactError(f"bundle: a loop entry is damaged ({type(e).__name__}: {e})") from None
            else:
                model = next(compiled)
            values = {n: np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"])
                      for n, v in spec.get("values", {}).items()}
            shapes = dict(spec.get("shapes", {}))
            self._specs.append((values, shapes, model))

    @property
    def specializations(self) -> list[dict]:
        """What each specialization is for: {"values": {...}, "shapes": {...}}, and for a batch run as slices of a
        compiled one, "slices": {"of": its index among `models`, "times": how many}."""
        out = []
        for spec, (values, shapes, _) in zip(self.meta["specializations"], self._specs):
            entry = {"values": {n: v.tolist() for n, v in values.items()}, "shapes": dict(shapes)}
            if "loop" in spec:
                entry["slices"] = {"of": spec["loop"]["of"], "times": spec["loop"]["times"]}
            out.append(entry)
        return out

    @property
    def runners(self) -> list:
        """The model that runs each specialization, in `specializations`' order: a CompiledModel, or a LoopedModel."""
        return [model for _, _, model in self._specs]

    def benchmark(self, feeds: Mapping, repeat: int = 20, warmup: int = 3) -> list[float]:
        """Seconds per run of the specialization these feeds pick, as CompiledModel's."""
        return self._choose(feeds).benchmark(self._flat(feeds), repeat, warmup)

    def profile(self, feeds: Mapping, repeat: int = 10) -> list[dict]:
        """Each kernel call's median time in the specialization these feeds pick, as CompiledModel's."""
        return self._choose(feeds).profile(self._flat(feeds), repeat)

    def _flat(self, feeds: Mapping) -> dict:
        return flat_feeds(feeds, self.value_inputs)

    def save(self, path) -> None:
        """Write these specializations as a bundle again (atomically)."""
        meta = {k: v for k, v in self.meta.items() if k != "specializations"}
        specs = [{k: v for k, v in spec.items() if k not in ("plan", "kernels")} for spec in self.meta["specializations"]]
        write_bundle(os.fspath(path), {**meta, "specializations": specs}, [m.parts() for m in self.models])

    @property
    def models(self) -> list:
        """The compiled specializations' CompiledModels, in the bundle's order (not the loop entries)."""
        return list(self._compiled)

    def run(self, feeds: Mapping) -> list:
        model = self._choose(feeds)
        return regroup(self.output_names, model.output_names, model.run(self._flat(feeds)))

    def _choose(self, feeds: Mapping):
        check_names(feeds, self.input_names)
        for values, shapes, model in self._specs:
            if all(_same_value(feeds[n], v) for n, v in values.items()) and all(
                    _shape_key(_fed_shape(feeds[n])) == _shape_key(s) for n, s in shapes.items()):
                return model
        fed = {n: (np.asarray(feeds[n]).tolist() if n in self.value_inputs else _fed_shape(feeds[n]))
               for n in self.input_names}
        raise InputError(f"this bundle holds no specialization for {fed}; it holds {self.specializations} "
                         f"(compile one with compile_model and save the bundle again)")


def _fed_shape(v):
    return [list(np.shape(x)) for x in v] if isinstance(v, (list, tuple)) else list(np.shape(v))


def _shape_key(s):
    return json.dumps(s)


def _same_value(fed, want: np.ndarray) -> bool:
    a = np.asarray(fed)
    return a.shape == want.shape and a.dtype == want.dtype and bool(np.array_equal(a, want))


def time_runs(run, repeat: int, warmup: int) -> list[float]:
    """Seconds per call of `run()`, `repeat` samples after `warmup` calls."""
    import time

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


# -- feeds and outputs of a model compiled per specialization (shared with compiler/specialize.py, segments.py) --
def check_names(feeds: Mapping, input_names: list[str]) -> None:
    """An InputError for feeds with unknown or missing inputs."""
    unknown = sorted(set(feeds) - set(input_names))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {input_names}")
    missing = [n for n in input_names if n not in feeds]
    if missing:
        raise InputError(f"missing input(s) {missing}")


def flat_feeds(feeds: Mapping, compiled_in) -> dict:
    """The feeds as a specialization takes them: the inputs `compiled_in` (their values are constants in it)
    dropped, a sequence input `s` (a list) fed as its tensors `s.0`, `s.1`, ..."""
    flat = {}
    for name, v in feeds.items():
        if name in compiled_in:
            continue
        if isinstance(v, (list, tuple)):
            flat.update({f"{name}.{i}": np.asarray(x) for i, x in enumerate(v)})
        else:
            flat[name] = v
    return flat


def regroup(names: list[str], flat_names: list[str], flat: list) -> list:
    """A specialization's outputs (`flat_names`) as the model's (`names`): a sequence output `s`, compiled as
    `s.0`, `s.1`, ..., becomes the list of those."""
    by_name = dict(zip(flat_names, flat))
    out = []
    for name in names:
        if name in by_name:
            out.append(by_name[name])
            continue
        items = sorted((n for n in flat_names if n.startswith(name + ".") and n[len(name) + 1:].isdigit()),
                       key=lambda n: int(n[len(name) + 1:]))
        out.append([by_name[n] for n in items])
    return out
