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

    found = []  # (target key, source dir, meta, index)
    for root in sources:
        if not os.path.isdir(root):
            raise CompileError(f"merge: {root!r} is not a tuning database directory")
        subdirs = [d for d in sorted(os.listdir(root)) if os.path.exists(os.path.join(root, d, "meta.json"))]
        if not subdirs:
            raise CompileError(f"merge: {root!r} holds no tuning database (no <target>/meta.json)")
        for d in subdirs:
            with open(os.path.join(root, d, "meta.json")) as f:
                meta = json.load(f)
            if meta.get("format") != FORMAT or meta.get("tvm_version") != tvm.__version__:
                raise CompileError(f"merge: {os.path.join(root, d)} was written by TVM {meta.get('tvm_version')} "
                                   f"(format {meta.get('format')}); this is TVM {tvm.__version__}: retune it here")
            src = os.path.join(root, d)
            index_path = os.path.join(src, "index.json")
            index = json.load(open(index_path)) if os.path.exists(index_path) else {}
            found.append((d, src, meta, index))
    by_key: dict[str, list] = {}
    for d, src, meta, index in found:
        other = by_key.get(d)
        if other and other[0][2]["target"] != meta["target"]:
            raise CompileError(f"merge: {d} holds records for {meta['target']} in {src} but for "
                               f"{other[0][2]['target']} in {other[0][1]}")
        by_key.setdefault(d, []).append((d, src, meta, index))
    merged = {}
    for d, entries in by_key.items():
        out = os.path.join(dest, d)
        os.makedirs(out, exist_ok=True)
        meta_path = os.path.join(out, "meta.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                have = json.load(f)
            if have.get("target") != entries[0][2]["target"] or have.get("tvm_version") != tvm.__version__:
                raise CompileError(f"merge: {out} already holds records for {have.get('target')} (TVM "
                                   f"{have.get('tvm_version')}): merge into an empty directory")
        index_path = os.path.join(out, "index.json")
        index = json.load(open(index_path)) if os.path.exists(index_path) else {}
        with _quiet():
            db = ms.database.JSONDatabase(work_dir=out)
            for _, src, _, src_index in entries:
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
        atomic_write(meta_path, lambda f: f.write(json.dumps(entries[0][2], indent=1).encode()))
        atomic_write(index_path, lambda f: f.write(json.dumps(index, indent=1).encode()))
        merged[d] = len(index)
    return merged
