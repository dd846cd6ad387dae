"""The on-disk cache of compiled models, shared by the processes of one user: specializations compiled at run time
(compiler/specialize.py) are kept under `cache_dir()`/specializations, bounded by $TENSORFORGE_CACHE_MAX_MB (the
least recently used files go first); `tensorforge cache [--clear]` shows or empties it.
"""

from __future__ import annotations

import logging
import os

from tensorforge.runtime.errors import ArtifactError, InputError

log = logging.getLogger("tensorforge")

CACHE_ENV = "TENSORFORGE_CACHE_DIR"
CACHE_MAX_ENV = "TENSORFORGE_CACHE_MAX_MB"  # the on-disk cache's bound; the least recently used files go first
CACHE_MAX_MB = 4096


def cache_dir() -> str | None:
    """Where compiled specializations are kept across processes: $TENSORFORGE_CACHE_DIR, else
    $XDG_CACHE_HOME/tensorforge or ~/.cache/tensorforge; None when TENSORFORGE_CACHE_DIR is "off" or empty."""
    given = os.environ.get(CACHE_ENV)
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0", "none") else given
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tensorforge")


def fingerprint(options, *extra) -> str:
    """What a cached compiled model depends on besides the model and its inputs: the compile options, the host
    CPU's features (its kernels are built for it), the versions (and `extra`). TVM's version is read from the
    installed distribution's metadata: a cache hit then costs no TVM import (1.4-3 s here)."""
    from importlib.metadata import PackageNotFoundError, version

    from tensorforge import __version__
    from tensorforge.runtime.cpu_features import cpu_features

    try:
        tvm_version = version("apache-tvm")
    except PackageNotFoundError:
        import tvm

        tvm_version = tvm.__version__
    return repr((repr(options), sorted(cpu_features()), __version__, tvm_version) + tuple(extra))


def load_cached(path: str | None, what: str):
    """The compiled model kept at `path` (marked recently used), or None if there is none or it does not load (a
    damaged or stale file: compiled again, with a warning). The runtime alone: neither TVM nor the compiler."""
    if path is None or not os.path.exists(path):
        return None
    from tensorforge.runtime import load

    try:
        model = load(path, map_params=True)  # our own files, only ever replaced atomically: mapped, not copied
    except Exception as e:  # noqa: BLE001 - a damaged or stale file is compiled again
        log.warning("ignoring the cached %s %s (%s: %s); compiling it again", what, path, type(e).__name__, e)
        return None
    try:
        os.utime(path)  # recently used: trimmed last
    except OSError:
        pass
    log.info("loaded a cached %s from %s", what, path)
    return model


def store_cached(path: str | None, model, what: str) -> None:
    """Keep `model` at `path` (atomically; a failure is a warning), then trim the cache to its bound."""
    if path is None or not hasattr(model, "save"):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save(path)  # atomic (runtime/artifact.py)
    except (OSError, ArtifactError) as e:
        log.warning("cannot keep the %s in %s: %s", what, path, e)
        return
    trim_cache(keep=path)


def cache_limit_bytes() -> int:
    given = os.environ.get(CACHE_MAX_ENV)
    try:
        return int(float(given) * 2**20) if given else CACHE_MAX_MB * 2**20
    except ValueError:
        raise InputError(f"{CACHE_MAX_ENV}={given!r}: give a size in MB") from None


def cached_files() -> list[tuple[str, int, float]]:
    """The on-disk cache's specializations: (path, bytes, last use), least recently used first."""
    root = cache_dir()
    if root is None:
        return []
    found = []
    for base, _, files in os.walk(os.path.join(root, "specializations")):
        for name in files:
            if name.endswith(".tfa"):
                path = os.path.join(base, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                found.append((path, st.st_size, st.st_mtime))
    return sorted(found, key=lambda f: f[2])


def trim_cache(keep: str | None = None, limit: int | None = None) -> int:
    """Delete the least recently used specializations until the cache holds at most `limit` bytes (default
    `cache_limit_bytes()`), never `keep`; returns how many were deleted."""
    limit = cache_limit_bytes() if limit is None else limit
    files = cached_files()
    total = sum(size for _, size, _ in files)
    deleted = 0
    for path, size, _ in files:
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        deleted += 1
        try:
            os.rmdir(os.path.dirname(path))  # the model's directory, once empty
        except OSError:
            pass
    return deleted
