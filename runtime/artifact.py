"""The artifact file: one zip holding the kernel library, the execution plan (JSON) and the parameters (.npy).

    plan.json          format, version, target, buffers, inputs, outputs, params, steps (see runtime/model.py)
    kernels.so         every kernel of the model, built for the target
    params/<i>.npy     parameter i, read with allow_pickle=False (data only, never code); a parameter whose
                       elements are all equal is stored in the plan as a splat value instead
    kernels.fatbin     CUDA artifacts only (plan["device"]["kind"] == "cuda"): the device code compiled by nvcc
                       (SASS for plan["device"]["arch"] plus PTX); kernels.so then holds the host code and the CUDA
                       source that TVM's loader asks to have compiled (runtime/cuda.py answers with this)
    manifest.json      {"format": "tensorforge-manifest", "members": {name: {"sha256", "size"}}} for every other
                       member, written last

Reading checks everything before anything runs: the path is a regular file, the members are exactly the manifest's
with its sizes and SHA-256 digests, and the plan is sound (runtime/plan_check.py). The manifest detects damage (a
flipped bit, a truncated copy, a member edited by hand), not malice: whoever can write an artifact can write its
manifest too, and kernels.so is native code, so an artifact must be trusted like any shared library.

Writing is atomic: a temporary file in the destination's directory, fsync, then os.replace. A reader never sees a
half-written artifact, and a crash leaves the old one in place.

Parameters are stored uncompressed with their data 64-byte aligned in the file (a padding extra field, as Android's
zipalign does, and .npy headers are multiples of 64 bytes), so a reader maps the file and reads them in place: the
digests are computed in parallel over the mapping, and `load(path, map_params=True)` even runs on the mapped pages
themselves (copy-on-write, shared with the page cache and with every other process mapping the same file).
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import re
import stat
import struct
import tempfile
import threading
import time
import weakref
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ArtifactError

FORMAT = "tensorforge-artifact"
VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "tensorforge-manifest"

DATA_ALIGNMENT = 64  # where a stored parameter's data starts in the file (the runtime's buffer alignment)
_PADDING_FIELD = 0xD935  # the extra field zipalign pads with; readers skip extra fields they do not know
STALE_TMP_SECONDS = 60  # a temporary file this old whose writer process is gone is a crash's leftover
_umask_lock = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (changing it races with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: leave its file alone
    return True


def _remove_stale_temporaries(directory: str, base: str) -> None:
    """Delete `base.<pid>.*.tmp` files next to the destination that a killed writer left behind: its pid is gone and
    the file is older than STALE_TMP_SECONDS (a shared directory's writer on another machine has a pid we cannot
    see, but it keeps its file fresh while it writes)."""
    pattern = re.compile(re.escape(base) + r"\.(\d+)\.[^/]+\.tmp\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        m = pattern.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) and now - st.st_mtime > STALE_TMP_SECONDS:
                os.unlink(full)
        except OSError:
            pass  # another writer cleaned it up first


def atomic_write(path: str, write) -> None:
    """Call write(fileobj) on a temporary file next to `path`, then rename it over `path`. The file gets the
    permissions a new file gets (0o666 less the umask); a writer's leftovers from a crash are removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ArtifactError(f"cannot write {path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise ArtifactError(f"cannot write {path}: it is a directory; give a file name")
    base = os.path.basename(path)
    _remove_stale_temporaries(directory, base)
    fd, tmp = tempfile.mkstemp(prefix=f"{base}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def device_files(plan: dict) -> list[str]:
    """The members besides kernels.so that a plan's device needs (the CUDA fatbin)."""
    device = plan.get("device") or {}
    return [device["fatbin"]] if device.get("fatbin") else []


def manifest_json(members: dict[str, tuple[str, int]]) -> str:
    """The manifest member for {name: (sha256 hex digest, size in bytes)}."""
    return json.dumps({"format": MANIFEST_FORMAT, "members": {name: {"sha256": digest, "size": size}
                                                               for name, (digest, size) in sorted(members.items())}},
                      indent=1)


def _file_digest(local: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(local, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def param_bytes(p) -> bytes:
    """A parameter as the .npy member that stores it."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(p, order="C"), allow_pickle=False)
    return buf.getvalue()


def put_aligned(z: zipfile.ZipFile, member: str, data: bytes) -> None:
    """Write `data` as an uncompressed member of `z` whose bytes start at a multiple of DATA_ALIGNMENT in the file
    (padded with an extra field), so that a .npy member's array data is aligned for reading in place."""
    info = zipfile.ZipInfo(member, date_time=time.localtime(time.time())[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o600 << 16
    zip64 = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0  # the local header's zip64 field, after ours
    pad = -(z.fp.tell() + 30 + len(member.encode()) + zip64) % DATA_ALIGNMENT
    if pad:
        pad += DATA_ALIGNMENT if pad < 4 else 0  # a field is at least its 4-byte header
        info.extra = struct.pack("<HH", _PADDING_FIELD, pad - 4) + bytes(pad - 4)
    z.writestr(info, data)


def write_artifact(path: str, plan: dict, kernels_path: str, params: list[np.ndarray],
                   extra_files: dict[str, str] | None = None) -> None:
    """`extra_files`: member name -> local file, for every member in `device_files(plan)`."""
    extra_files = dict(extra_files or {})
    missing = [m for m in device_files(plan) if m not in extra_files]
    if missing:
        raise ArtifactError(f"cannot write {path}: the plan needs {missing[0]}, which was not given")

    def write(f):
        digests = {}
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            def put(member: str, data: bytes) -> None:
                put_aligned(z, member, data)
                digests[member] = (hashlib.sha256(data).hexdigest(), len(data))

            put("plan.json", json.dumps(plan, indent=1).encode())
            for member, local in [("kernels.so", kernels_path)] + list(extra_files.items()):
                z.write(local, member)
                digests[member] = _file_digest(local)
            for entry, p in zip(plan["params"], params):
                if "file" in entry:
                    put(entry["file"], param_bytes(p))
            z.writestr(MANIFEST, manifest_json(digests))

    atomic_write(path, write)


def _open_regular(path: str):
    """The artifact opened for reading, refusing anything but a regular file: opening a FIFO would block until a
    writer comes, and a device never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"artifact {path!r} does not exist") from None
    except IsADirectoryError:
        raise ArtifactError(f"artifact {path!r} is a directory, not an artifact file") from None
    except OSError as e:
        raise ArtifactError(f"cannot open artifact {path!r}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "not a regular file")
        raise ArtifactError(f"artifact {path!r} is {kind}, not an artifact file")
    return os.fdopen(fd, "rb")


def _looks_like_onnx(path: str, head: bytes) -> bool:
    # an ONNX ModelProto starts with field 1 (ir_version, a varint): tag byte 0x08; the runtime never imports onnx
    return path.lower().endswith(".onnx") or head[:1] == b"\x08"


def _verify_manifest(path: str, z: zipfile.ZipFile, mm: mmap.mmap | None = None) -> None:
    """The members are exactly the manifest's, with its sizes and SHA-256 digests (hashed from the mapping `mm`
    where given)."""
    names = z.namelist()
    if len(names) != len(set(names)):
        dup = next(n for n in names if names.count(n) > 1)
        raise ArtifactError(f"artifact {path!r} is damaged: it holds member {dup} twice")
    if MANIFEST not in names:
        raise ArtifactError(f"artifact {path!r} has no {MANIFEST}: it was written by an older TensorForge or is "
                            f"damaged; recompile the model (tensorforge compile MODEL.onnx -o {path})")
    try:
        manifest = json.loads(z.read(MANIFEST))
        members = manifest["members"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(members, dict):
            raise ValueError("not a TensorForge manifest")
        expected = {name: (str(m["sha256"]), int(m["size"])) for name, m in members.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"artifact {path!r} is damaged: {MANIFEST} cannot be read ({type(e).__name__}: {e})") \
            from None
    for name in names:
        if name != MANIFEST and name not in expected:
            raise ArtifactError(f"artifact {path!r} is damaged: member {name} is not in the manifest")
    for name, (digest, size) in expected.items():
        if name not in names:
            raise ArtifactError(f"artifact {path!r} is damaged: {name} is missing (the manifest lists it)")
        info = z.getinfo(name)
        if info.file_size != size:
            raise ArtifactError(f"artifact {path!r} is damaged: member {name} has {info.file_size} bytes, the "
                                f"manifest says {size}")

    def sha256(name: str):  # hashlib lets go of the GIL over large buffers: the members hash in parallel
        h = hashlib.sha256()
        try:
            at = _stored_at(z, z.getinfo(name), mm)
            if at is not None:
                h.update(memoryview(mm)[at:at + expected[name][1]])
                return h.hexdigest()
            with z.open(name) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            return e
        return h.hexdigest()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = dict(zip(expected, pool.map(sha256, expected)))
    for name, (digest, _) in expected.items():
        if isinstance(found[name], Exception):
            e = found[name]
            raise ArtifactError(f"artifact {path!r} is damaged: member {name} cannot be read "
                                f"({type(e).__name__}: {e})") from None
        if found[name] != digest:
            raise ArtifactError(f"artifact {path!r} is damaged: member {name} does not match its SHA-256 in the "
                                f"manifest")


def open_mapped(f) -> mmap.mmap | None:
    """A private (copy-on-write) mapping of the open file `f`: what a reader hashes and reads parameters from; None
    where the file system cannot map it (the members are then read through the zip)."""
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None


def _stored_at(z: zipfile.ZipFile, info: zipfile.ZipInfo, mm: mmap.mmap | None) -> int | None:
    """Where the bytes of an uncompressed, unencrypted member begin in the mapped file `mm` (None: read it through
    the zip instead). BadZipFile where its local header is not where the directory says."""
    if mm is None or info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    h = info.header_offset
    if h < 0 or h + 30 > len(mm) or mm[h:h + 4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", mm[h + 26:h + 30])
    at = h + 30 + name_len + extra_len
    if at + info.file_size > len(mm):
        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the file")
    return at


def _read_param(path: str, z: zipfile.ZipFile, member: str, mm: mmap.mmap | None = None) -> np.ndarray:
    """Parameter `member`: an array over the mapping `mm` (the file's own bytes, no copy) where the member is
    stored uncompressed, else read through the zip."""
    try:
        info = z.getinfo(member)
        at = _stored_at(z, info, mm)
        if at is not None:
            return _mapped_npy(mm, at, info.file_size)
        with z.open(member) as f:
            return np.lib.format.read_array(io.BufferedReader(f), allow_pickle=False)
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
        raise ArtifactError(f"artifact {path!r} is damaged: cannot read {member} ({type(e).__name__}: {e})") from None


def _mapped_npy(mm: mmap.mmap, at: int, size: int) -> np.ndarray:
    """The .npy file at bytes [at, at + size) of `mm` as an array over those bytes."""
    head = io.BytesIO(mm[at:at + min(size, 1 << 16)])
    version = np.lib.format.read_magic(head)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(head)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(head)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or fortran or head.tell() + count * dtype.itemsize != size:
        raise ValueError(f"{dtype}{list(shape)} ({'Fortran order, ' if fortran else ''}{size} bytes in the file) is "
                         f"not a C-ordered array of plain data filling its member")
    return np.frombuffer(mm, dtype, count, at + head.tell()).reshape(shape)


def plan_parts(what: str, path: str, z: zipfile.ZipFile, plan: dict, kernels_dir: str,
               kernels_member: str = "kernels.so", mm: mmap.mmap | None = None) -> tuple[str, list]:
    """For a plan read from the zip `z` (an artifact's, or a bundle's specialization: `what` names it in errors):
    checks it (runtime/plan_check.py) and that its members are there, then extracts `kernels_member` (and the device
    files, `device_files(plan)`) into `kernels_dir`. Returns (the kernel library's path, params: for each plan entry
    a callable that reads the array from `z`, or None for a splat): over the mapping `mm` where given (no copy)."""
    from .plan_check import validate_plan

    names = set(z.namelist())
    validate_plan(plan, what)
    for member in [kernels_member] + device_files(plan):
        if member not in names or member in device_files(plan) and ("/" in member or member.startswith(".")):
            raise ArtifactError(f"{what} is damaged: {member} is missing")
    missing = [e["file"] for e in plan["params"] if "file" in e and e["file"] not in names]
    if missing:
        raise ArtifactError(f"{what} is damaged: parameter file {missing[0]} is missing")
    params = [(lambda member=e["file"]: _read_param(path, z, member, mm)) if "file" in e else None
              for e in plan["params"]]
    kernels = os.path.join(kernels_dir, "kernels.so")
    for member, local in [(kernels_member, kernels)] + [(m, os.path.join(kernels_dir, m))
                                                        for m in device_files(plan)]:
        with z.open(member) as src, open(local, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return kernels, params


def read_artifact(path: str, kernels_dir: str) -> tuple[dict, str, list]:
    """Returns (plan, path of the extracted kernel library, params: for each plan entry a callable that reads the
    array, or None for a splat: an array over the file's mapped bytes where it is stored uncompressed). Device
    files (`device_files(plan)`) are extracted next to the kernel library. Raises ArtifactError on any damage,
    before anything is extracted."""
    path = os.fspath(path)
    f = _open_regular(path)
    try:
        head = f.read(4)
        f.seek(0)
        if not head:
            raise ArtifactError(f"artifact {path!r} is empty")
        if not zipfile.is_zipfile(f) and _looks_like_onnx(path, head):
            stem = path[:-5] if path.lower().endswith(".onnx") else path
            raise ArtifactError(f"{path!r} is an ONNX model; compile it first: tensorforge compile {path} -o "
                                f"{stem}.tfa")
        f.seek(0)
        # the parameters are read later, when the model copies them into their buffers: from this same open file,
        # so an artifact saved over `path` meanwhile cannot mix its parameters into this one
        z = zipfile.ZipFile(f)
        weakref.finalize(z, f.close)  # the zip does not close a file it was given
        mm = open_mapped(f)
        names = set(z.namelist())
        for required in ("plan.json", "kernels.so"):
            if required not in names:
                raise ArtifactError(f"artifact {path!r} is damaged: {required} is missing")
        try:
            plan = json.loads(z.read("plan.json"))
        except ValueError:
            plan = None  # the manifest check below names the damage
        if isinstance(plan, dict) and plan.get("format") == FORMAT and plan.get("version") != VERSION:
            raise ArtifactError(f"artifact {path!r} has format version {plan.get('version')}; this runtime "
                                f"reads version {VERSION}: recompile the model")
        _verify_manifest(path, z, mm)
        if not isinstance(plan, dict) or plan.get("format") != FORMAT:
            raise ArtifactError(f"{path!r} is not a TensorForge artifact")
        kernels, params = plan_parts(f"artifact {path!r}", path, z, plan, kernels_dir, mm=mm)
    except ArtifactError:
        f.close()
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError) as e:
        f.close()
        raise ArtifactError(f"artifact {path!r} is damaged or truncated ({type(e).__name__}: {e})") from None
    return plan, kernels, params
