"""Process replay: prove that a refactor is one. Compile a fixed set of models and write, per case, the IR printed
after every pass, the scheduled TIR of every kernel, the plan JSON and a digest of every parameter; then compare two
such directories. Empty differences mean the compiler's behaviour did not change (tinygrad's "process replay").

    python benchmarks/replay.py record DIR [--quick] [--only CASE ...]
    python benchmarks/replay.py compare BASE NEW

Typical use around a restructure:

    git worktree add /tmp/base <commit> && (cd /tmp/base && python benchmarks/replay.py record /tmp/replay-base)
    python benchmarks/replay.py record /tmp/replay-new && python benchmarks/replay.py compare /tmp/replay-base \
        /tmp/replay-new

The script hooks only stable seams (the pass manager's dump callback and `tvm.compile`), so the same script records
before and after modules move; it finds the compiler as `tensorforge.compiler` or, on older checkouts, `compiler`.
CUDA cases compile only (nvcc, no GPU needed). Nothing here measures time.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mod(name: str):
    """`tensorforge.<name>` where the checkout has one namespace, else the old top-level `<name>`."""
    try:
        return importlib.import_module(f"tensorforge.{name}")
    except ImportError:
        return importlib.import_module(name)


# name -> (model, compile kwargs); models come from benchmarks/models.py (ONNX exports) or _small_cnn below
INFERENCE = [
    ("mlp", {}), ("bert_small", {}), ("gpt2_tiny", {}), ("vit_tiny", {}), ("lstm_classifier", {}),
    ("gru_classifier", {}), ("mobilenet_v2", {}), ("llama_block", {}), ("small_cnn", {}), ("resnet50", {}),
    ("mlp", {"opt_level": 0}), ("mobilenet_v2", {"opt_level": 1}), ("small_cnn", {"opt_level": 0}),
    ("bert_small", {"precision": "bf16"}), ("small_cnn", {"precision": "bf16"}),
    ("bert_small", {"target": "cuda"}), ("mobilenet_v2", {"target": "cuda"}),
    ("lstm_classifier", {"target": "cuda"}), ("bert_small", {"target": "cuda", "precision": "fp16"}),
]
TRAINING = [
    ("mlp", {"optimizer": {"name": "adam", "lr": 1e-3}}),
    ("small_cnn", {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}),
    ("small_cnn", {"target": "cuda"}),
    ("lstm_classifier", {"target": "cuda"}),
    ("mlp", {"precision": "bf16"}),
]
GRADIENTS = [("small_cnn", {}), ("lstm_classifier", {"target": "cuda"})]  # compile_gradients
QUICK = {"mlp", "small_cnn", "bert_small"}


def _small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()
    return m, torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _onnx(name: str):
    import io
    import warnings

    import onnx
    import torch

    from benchmarks import models

    if name != "small_cnn":
        return models.export_onnx(name)
    m, x = _small_cnn()
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, opset_version=17, input_names=["input"], output_names=["output"])
    return onnx.load_from_string(f.getvalue())


class Recorder:
    """Collects what one compile does: (pass name, IR text) after every pass run, and every module tvm.compile
    builds. Installed around the pass manager's `run` and `tvm.compile`."""

    def __init__(self):
        self.passes: list[tuple[int, str, str]] = []  # (pass-manager run, pass name, IR text)
        self.modules: list = []

    def __enter__(self):
        import tvm

        pm_cls = _mod("compiler.passes.manager").PassManager
        pass_name = _mod("compiler.passes.manager").pass_name
        self._saved = (pm_cls, pm_cls.run, tvm, tvm.compile)
        rec = self
        orig_run, orig_compile = pm_cls.run, tvm.compile

        runs = [0]

        def run(pm, g):
            runs[0] += 1
            index = runs[0]
            object.__setattr__(pm, "dump_after", frozenset(pass_name(p) for p in pm.passes))
            object.__setattr__(pm, "dump", lambda text: rec.passes.append((index, *text.split("\n", 1))))
            return orig_run(pm, g)

        def compile_(mod, *a, **k):
            rec.modules.append(mod)
            return orig_compile(mod, *a, **k)

        pm_cls.run, tvm.compile = run, compile_
        return self

    def __exit__(self, *exc):
        pm_cls, run, tvm, compile_ = self._saved
        pm_cls.run, tvm.compile = run, compile_


def _write_case(out: str, rec: Recorder, plans: dict, params: dict) -> None:
    os.makedirs(os.path.join(out, "ir"), exist_ok=True)
    names, count = [], {}
    for run, header, text in rec.passes:  # one numbering per pass-manager run: a pass added at the end of one run
        i = count[run] = count.get(run, -1) + 1  # shows as one new file, not as every later file shifted
        names.append(f"{run}: {header.removeprefix('// IR after ')}")
        with open(os.path.join(out, "ir", f"{run}-{i:03d}.ir"), "w") as f:
            f.write(text)
    with open(os.path.join(out, "passes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    funcs = {}
    for mod in rec.modules:
        for gv, func in mod.functions.items():
            funcs[gv.name_hint] = func.script()
    with open(os.path.join(out, "tir.txt"), "w") as f:
        for name in sorted(funcs):
            f.write(f"# ---- {name}\n{funcs[name]}\n")
    for key, plan in plans.items():
        with open(os.path.join(out, f"{key}.json"), "w") as f:
            json.dump(plan, f, indent=1, sort_keys=True, default=str)
    with open(os.path.join(out, "params.txt"), "w") as f:
        for key, arrays in params.items():
            for i, a in enumerate(arrays):
                import numpy as np

                a = np.ascontiguousarray(np.asarray(a))
                f.write(f"{key}[{i}] {a.dtype} {list(a.shape)} {hashlib.sha256(a.tobytes()).hexdigest()[:16]}\n")


def _params(model) -> list:
    """The parameters as the compiled model holds them (a CUDA model keeps them on the host until it first runs)."""
    host = getattr(model, "_host_params", None)
    if host is not None:
        return list(host)
    return [model._shared[entry["buffer"]] for entry in model.plan["params"]]


def record_case(out: str, name: str, kwargs: dict, kind: str) -> None:
    compiler = _mod("compiler")
    onnx_model = _onnx(name)
    kwargs = dict(kwargs)
    with Recorder() as rec:
        if kind == "grad":
            models = {"plan": compiler.api.compile_gradients(onnx_model, **kwargs)}
        elif kind == "train":
            sess = compiler.compile_training(onnx_model, loss="cross_entropy", **kwargs)
            models = {"train": sess._train, "eval": sess._eval}
        else:
            models = {"plan": compiler.compile_model(onnx_model, **kwargs)}
    plans = {k: m.plan for k, m in models.items()}
    _write_case(out, rec, plans, {k: _params(m) for k, m in models.items()})


def case_id(name: str, kwargs: dict, kind: str) -> str:
    tail = "-".join(f"{k}={v['name'] if isinstance(v, dict) else v}" for k, v in sorted(kwargs.items()))
    return ("" if kind == "infer" else f"{kind}-") + name + (f"-{tail}" if tail else "")


def cases(quick: bool):
    for kind, table in (("infer", INFERENCE), ("train", TRAINING), ("grad", GRADIENTS)):
        for name, kwargs in table:
            if not quick or name in QUICK:
                yield case_id(name, kwargs, kind), name, kwargs, kind


def cmd_record(args) -> int:
    os.makedirs(args.dir, exist_ok=True)
    todo = [c for c in cases(args.quick) if not args.only or c[0] in args.only]
    for i, (cid, name, kwargs, kind) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {cid}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            case_dir = os.path.join(tmp, cid)
            try:
                record_case(case_dir, name, kwargs, kind)
            except Exception as e:  # a failure is a result too: record it so that compare shows it
                os.makedirs(case_dir, exist_ok=True)
                with open(os.path.join(case_dir, "error.txt"), "w") as f:
                    f.write(f"{type(e).__name__}: {e}\n")
                print(f"    failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
            final = os.path.join(args.dir, cid)
            if os.path.exists(final):
                shutil.rmtree(final)
            shutil.move(case_dir, final)
    return 0


def cmd_compare(args) -> int:
    base, new = args.base, args.new
    different = 0

    def walk(cmp: filecmp.dircmp, rel: str):
        nonlocal different
        for f in cmp.left_only + cmp.right_only:
            different += 1
            print(f"only in {'base' if f in cmp.left_only else 'new'}: {os.path.join(rel, f)}")
        for f in cmp.diff_files:
            different += 1
            path = os.path.join(rel, f)
            with open(os.path.join(base, path)) as a, open(os.path.join(new, path)) as b:
                diff = list(difflib.unified_diff(a.read().splitlines(), b.read().splitlines(), "base/" + path,
                                                 "new/" + path, lineterm="", n=1))
            print("\n".join(diff[: args.lines]) + ("\n    ..." if len(diff) > args.lines else ""))
        for sub, c in cmp.subdirs.items():
            walk(c, os.path.join(rel, sub))

    # filecmp compares by content when sizes match but stat signatures differ; shallow=False is what we need
    class Deep(filecmp.dircmp):
        def phase3(self):
            self.same_files, self.diff_files, self.funny_files = filecmp.cmpfiles(
                self.left, self.right, self.common_files, shallow=False)

        methodmap = dict(filecmp.dircmp.methodmap, same_files=phase3, diff_files=phase3, funny_files=phase3)

    walk(Deep(base, new), "")
    n_cases = len(os.listdir(base))
    print(f"{n_cases} cases compared: {'identical' if not different else f'{different} files differ'}")
    return 1 if different else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="compile every case and write what it produced under DIR")
    r.add_argument("dir")
    r.add_argument("--quick", action="store_true", help=f"only the small models {sorted(QUICK)}")
    r.add_argument("--only", nargs="*", help="case ids to record (see the names `record` prints)")
    c = sub.add_parser("compare", help="compare two recorded directories; exit 1 if anything differs")
    c.add_argument("base")
    c.add_argument("new")
    c.add_argument("--lines", type=int, default=40, help="diff lines shown per differing file")
    args = p.parse_args(argv)
    return cmd_record(args) if args.cmd == "record" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
