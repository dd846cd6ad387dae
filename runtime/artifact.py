"""The artifact file: one zip holding the kernel library, the execution plan (JSON) and the parameters (.npy).

    plan.json          format, version, target, buffers, inputs, outputs, params, steps (see plan.py)
    kernels.so         every kernel of the model, built for the target
    params/<i>.npy     parameter i, read with allow_pickle=False (data only, never code); a parameter whose
                       elements are all equal is stored in the plan as a splat value instead
    kernels.fatbin     CUDA artifacts only (plan["device"]["kind"] == "cuda"): the device code compiled by nvcc
                       (SASS for plan["device"]["arch"] plus PTX); kernels.so then holds the host code and the
                       CUDA source that TVM's loader asks to have compiled (runtime/cuda.py answers with this)

Writing is atomic: a temporary file in the destination's directory, fsync, then os.replace. A reader never sees a
half-written artifact, and a crash leaves the old one in place.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import ArtifactError

FORMAT = "tensorforge-artifact"
VERSION = 1


def atomic_write(path: str, write) -> None:
    """Call write(fileobj) on a temporary file next to `path`, then rename it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ArtifactError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def device_files(plan: dict) -> list[str]:
    """The members besides kernels.so that a plan's device needs (the CUDA fatbin)."""
    device = plan.get("device") or {}
    return [device["fatbin"]] if device.get("fatbin") else []


def write_artifact(path: str, plan: dict, kernels_path: str, params: list[np.ndarray],
                   extra_files: dict[str, str] | None = None) -> None:
    """`extra_files`: member name -> local file, for every member in `device_files(plan)`."""
    extra_files = dict(extra_files or {})
    missing = [m for m in device_files(plan) if m not in extra_files]
    if missing:
        raise ArtifactError(f"cannot write {path}: the plan needs {missing[0]}, which was not given")

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            z.writestr("plan.json", json.dumps(plan, indent=1))
            z.write(kernels_path, "kernels.so")
            for member, local in extra_files.items():
                z.write(local, member)
            for entry, p in zip(plan["params"], params):
                if "file" in entry:
                    buf = io.BytesIO()
                    np.save(buf, np.asarray(p, order="C"), allow_pickle=False)
                    z.writestr(entry["file"], buf.getvalue())

    atomic_write(path, write)


def _read_param(path: str, member: str) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as z, z.open(member) as f:
            return np.lib.format.read_array(io.BufferedReader(f), allow_pickle=False)
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
        raise ArtifactError(f"artifact {path!r} is damaged: cannot read {member} ({type(e).__name__}: {e})") from None


def read_artifact(path: str, kernels_dir: str) -> tuple[dict, str, list]:
    """Returns (plan, path of the extracted kernel library, params: for each plan entry a callable that reads the
    array, or None for a splat). Device files (`device_files(plan)`) are extracted next to the kernel library.
    Raises ArtifactError on any damage."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"artifact {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for required in ("plan.json", "kernels.so"):
                if required not in names:
                    raise ArtifactError(f"artifact {path!r} is damaged: {required} is missing")
            plan = json.loads(z.read("plan.json"))
            if not isinstance(plan, dict) or plan.get("format") != FORMAT:
                raise ArtifactError(f"{path!r} is not a TensorForge artifact")
            if plan.get("version") != VERSION:
                raise ArtifactError(f"artifact {path!r} has format version {plan.get('version')}; this runtime "
                                    f"reads version {VERSION}: recompile the model")
            for member in device_files(plan):
                if member not in names or "/" in member or member.startswith("."):
                    raise ArtifactError(f"artifact {path!r} is damaged: {member} is missing")
            missing = [e["file"] for e in plan["params"] if "file" in e and e["file"] not in names]
            if missing:
                raise ArtifactError(f"artifact {path!r} is damaged: parameter file {missing[0]} is missing")
            # each parameter is read when the model copies it into its buffer: one in memory at a time
            params = [(lambda member=e["file"]: _read_param(path, member)) if "file" in e else None
                      for e in plan["params"]]
            kernels = os.path.join(kernels_dir, "kernels.so")
            for member, local in [("kernels.so", kernels)] + [(m, os.path.join(kernels_dir, m))
                                                               for m in device_files(plan)]:
                with z.open(member) as src, open(local, "wb") as dst:
                    dst.write(src.read())
    except ArtifactError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError) as e:
        raise ArtifactError(f"artifact {path!r} is damaged or truncated ({type(e).__name__}: {e})") from None
    return plan, kernels, params
