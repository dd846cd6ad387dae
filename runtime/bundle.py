"""Bundles: several specializations of one model in one file, chosen by the inputs at run time.

A model whose inputs decide shapes, or compiled with `dynamic=` ranges (compiler/specialize.py), is compiled per
value and shape it meets. `SpecializingModel.save(path)` writes the specializations compiled so far as a bundle,
which `runtime.load` reads without the compiler:

    bundle.json     {"format": "tensorforge-bundle", "version", "inputs", "outputs", "value_inputs",
                     "sequence_inputs", "specializations": [{"member": "s<i>.tfa", "values": {input: {"dtype",
                     "shape", "data"}}, "shapes": {input: shape}}]}
    s<i>.tfa        specialization i, a complete artifact (runtime/artifact.py), checked again when read
    manifest.json   the SHA-256 and size of every other member, written last

A run takes the specialization whose compiled-in values equal the fed ones and whose input shapes are the fed
shapes; there is none for other feeds (an `InputError` lists what the bundle holds). Each specialization keeps its
own parameters: a bundle of n specializations is about n times an artifact's size.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from . import artifact
from .errors import ArtifactError, InputError

FORMAT = "tensorforge-bundle"
VERSION = 1
META = "bundle.json"


def is_bundle(path: str) -> bool:
    """Is the file at `path` a bundle (a zip holding bundle.json)?"""
    try:
        with zipfile.ZipFile(path) as z:
            return META in z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def write_bundle(path: str, meta: dict, artifacts: list[str]) -> None:
    """Write `meta` (bundle.json, its specializations' members named s<i>.tfa) and the artifact files
    `artifacts` (in the order of meta["specializations"]) atomically."""
    import hashlib

    def write(f):
        digests = {}
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            data = json.dumps(meta, indent=1).encode()
            z.writestr(META, data)
            digests[META] = (hashlib.sha256(data).hexdigest(), len(data))
            for spec, local in zip(meta["specializations"], artifacts):
                z.write(local, spec["member"])
                digests[spec["member"]] = artifact._file_digest(local)
            z.writestr(artifact.MANIFEST, artifact.manifest_json(digests))

    artifact.atomic_write(os.fspath(path), write)


def read_bundle(path: str, load_one) -> "BundleModel":
    """Read and check the bundle at `path`; `load_one(artifact path)` loads each specialization."""
    path = os.fspath(path)
    tmp = tempfile.mkdtemp(prefix="tensorforge-bundle-")
    try:
        with zipfile.ZipFile(path) as z:
            artifact._verify_manifest(path, z)
            try:
                meta = json.loads(z.read(META))
                specs = meta["specializations"]
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}")
                if meta.get("version") != VERSION:
                    raise ArtifactError(f"bundle {path!r} has format version {meta.get('version')}; this runtime "
                                        f"reads version {VERSION}: save it again")
                members = [s["member"] for s in specs]
            except (ValueError, KeyError, TypeError) as e:
                raise ArtifactError(f"bundle {path!r} is damaged: {META} cannot be read ({type(e).__name__}: "
                                    f"{e})") from None
            models = []
            for i, member in enumerate(members):
                if member not in z.namelist() or "/" in member or member.startswith("."):
                    raise ArtifactError(f"bundle {path!r} is damaged: specialization {member!r} is missing")
                local = os.path.join(tmp, f"s{i}.tfa")
                with z.open(member) as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                models.append(load_one(local))
        return BundleModel(meta, models)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArtifactError(f"bundle {path!r} is damaged or truncated ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BundleModel:
    """The specializations of a bundle, each a CompiledModel, chosen per run by the feeds (see the module
    docstring). Thread-safe as CompiledModel is."""

    def __init__(self, meta: dict, models: list):
        self.input_names = list(meta["inputs"])
        self.output_names = list(meta["outputs"])
        self.value_inputs = list(meta.get("value_inputs", []))
        self.sequence_inputs = list(meta.get("sequence_inputs", []))
        self._specs = []
        for spec, model in zip(meta["specializations"], models):
            values = {n: np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"])
                      for n, v in spec.get("values", {}).items()}
            shapes = dict(spec.get("shapes", {}))
            self._specs.append((values, shapes, model))

    @property
    def specializations(self) -> list[dict]:
        """What each specialization was compiled for: {"values": {...}, "shapes": {...}}."""
        return [{"values": {n: v.tolist() for n, v in values.items()}, "shapes": dict(shapes)}
                for values, shapes, _ in self._specs]

    def run(self, feeds: Mapping) -> list:
        model = self._choose(feeds)
        flat = {}
        for name, v in feeds.items():
            if name in self.value_inputs:
                continue
            if isinstance(v, (list, tuple)):
                flat.update({f"{name}.{i}": np.asarray(x) for i, x in enumerate(v)})
            else:
                flat[name] = v
        outs = model.run(flat)
        by_name = dict(zip(model.output_names, outs))
        result = []
        for name in self.output_names:
            if name in by_name:
                result.append(by_name[name])
            else:  # a sequence output: name.0, name.1, ...
                items = sorted((n for n in model.output_names if n.startswith(name + ".")
                                and n[len(name) + 1:].isdigit()), key=lambda n: int(n[len(name) + 1:]))
                result.append([by_name[n] for n in items])
        return result

    def _choose(self, feeds: Mapping):
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise InputError(f"unknown input(s) {unknown}; the model's inputs are {self.input_names}")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}")
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
