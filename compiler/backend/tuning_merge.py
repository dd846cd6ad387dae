"""Merging tuning databases: the shards of one model tuned on identical machines (`tensorforge tune --shard i/n`),
or databases tuned apart, joined into one (`tensorforge tune --db OUT --merge DB...`)."""

from __future__ import annotations

import json
import os
from typing import Sequence

from tensorforge.runtime.artifact import atomic_write
from tensorforge.runtime.errors import CompileError

from .tuning import FORMAT, _quiet


def merge_databases(sources: Sequence[str], dest: str) -> dict:
    """Merge tuning databases (directories written by `tensorforge tune`, e.g. the shards of one model tuned on
    identical machines) into `dest`: per target directory, every MetaSchedule record and, for a kernel in several,
    the index entry with the best time. A source of another TVM version or format, or whose directory does not
    hold the target it names, is refused (CompileError) before anything is written. Returns {target dir: kernels}."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    sources_by_dir: dict[str, list[tuple[str, dict, dict]]] = {}  # target dir -> [(source dir, meta, index)]
    for root in sources:
        if not os.path.isdir(root):
            raise CompileError(f"merge: {root!r} is not a tuning database directory")
        subdirs = [d for d in sorted(os.listdir(root)) if os.path.exists(os.path.join(root, d, "meta.json"))]
        if not subdirs:
            raise CompileError(f"merge: {root!r} holds no tuning database (no <target>/meta.json)")
        for d in subdirs:
            src = os.path.join(root, d)
            meta = _read_json(os.path.join(src, "meta.json"))
            if meta.get("format") != FORMAT or meta.get("tvm_version") != tvm.__version__:
                raise CompileError(f"merge: {src} was written by TVM {meta.get('tvm_version')} "
                                   f"(format {meta.get('format')}); this is TVM {tvm.__version__}: retune it here")
            seen = sources_by_dir.setdefault(d, [])
            if seen and seen[0][1]["target"] != meta["target"]:
                raise CompileError(f"merge: {d} holds records for {meta['target']} in {src} but for "
                                   f"{seen[0][1]['target']} in {seen[0][0]}")
            seen.append((src, meta, _read_json(os.path.join(src, "index.json"), {})))
    merged = {}
    for d, entries in sources_by_dir.items():
        out = os.path.join(dest, d)
        os.makedirs(out, exist_ok=True)
        meta_path, index_path = os.path.join(out, "meta.json"), os.path.join(out, "index.json")
        meta = entries[0][1]
        have = _read_json(meta_path, None)
        if have is not None and (have.get("target") != meta["target"] or have.get("tvm_version") != tvm.__version__):
            raise CompileError(f"merge: {out} already holds records for {have.get('target')} (TVM "
                               f"{have.get('tvm_version')}): merge into an empty directory")
        index = _read_json(index_path, {})
        with _quiet():
            db = ms.database.JSONDatabase(work_dir=out)
            for src, _, src_index in entries:
                if os.path.abspath(src) == os.path.abspath(out):
                    continue
                for rec in ms.database.JSONDatabase(work_dir=src).get_all_tuning_records():
                    wl = db.commit_workload(rec.workload.mod)
                    db.commit_tuning_record(ms.database.TuningRecord(rec.trace, wl, rec.run_secs, rec.target,
                                                                     rec.args_info))
                for k, e in src_index.items():
                    mine = index.get(k)
                    if mine is None or (e.get("best_us") or float("inf")) < (mine.get("best_us") or float("inf")):
                        index[k] = e
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        atomic_write(index_path, lambda f: f.write(json.dumps(index, indent=1).encode()))
        merged[d] = len(index)
    return merged


_MISSING = object()


def _read_json(path: str, default=_MISSING):
    """The JSON file at `path`; `default` where there is none (if given)."""
    if default is not _MISSING and not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)
