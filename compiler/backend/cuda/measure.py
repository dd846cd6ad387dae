"""Measure a CUDA tuning bundle on the GPU machine: the half of CUDA tuning that needs a GPU and nothing else.

backend/cuda/bundle.py builds, here, every candidate schedule of every kernel with nvcc and writes a bundle; this
script (copied into the bundle as measure.py) runs where the GPU is, with only numpy, the TVM runtime and a CUDA
driver: it loads each task's kernel library with its fatbin (runtime/cuda.py), times every candidate on random
inputs and writes results.json, which `tensorforge tune --target cuda --ingest` turns into tuning records.

    python BUNDLE/measure.py BUNDLE [--out results.json] [--repeat 10] [--number 20]   # from the repository root

It imports no compiler code and not `tvm` (only `runtime`, for the driver checks and the fatbin loader).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

RESULTS_FORMAT = 1


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def rank(candidates: dict) -> list[tuple[str, float]]:
    """Measured candidates of one task, fastest first: [(symbol, median seconds)]; failed ones are left out."""
    timed = [(sym, median(r["secs"])) for sym, r in candidates.items() if r.get("secs")]
    return sorted(timed, key=lambda t: t[1])


def time_calls(call, sync, number: int, repeat: int, warmup: int = 2, clock=time.perf_counter) -> list[float]:
    """Seconds per call: `repeat` samples, each the mean of `number` back-to-back calls between two syncs."""
    for _ in range(warmup):
        call()
    sync()
    out = []
    for _ in range(repeat):
        t0 = clock()
        for _ in range(number):
            call()
        sync()
        out.append((clock() - t0) / number)
    return out


def measure_bundle(bundle: str, *, repeat: int = 10, number: int = 20, device_id: int = 0, progress=print) -> dict:
    """Time every candidate of the bundle on GPU `device_id`; returns the results (see write_results)."""
    import tvm_ffi

    from tensorforge.runtime.cuda import DeviceMemory, _np_dtype, init_cuda, load_cuda_kernels

    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    info = init_cuda(device_id, manifest["arch"])  # DeviceError: no driver, no GPU, a GPU older than the bundle
    mem = DeviceMemory(tvm_ffi.device("cuda", device_id))
    rng = np.random.default_rng(0)
    results = {"format": RESULTS_FORMAT, "bundle_id": manifest["id"], "gpu": info.name, "arch": info.arch,
               "tasks": {}}
    for i, task in enumerate(manifest["tasks"]):
        entry = results["tasks"].setdefault(task["key"], {})
        try:
            mod = load_cuda_kernels(os.path.join(bundle, task["library"]), os.path.join(bundle, task["fatbin"]),
                                    task["source_sha256"])
            args = []
            for shape, dtype in task["args"]:
                t = mem.empty(shape, dtype)
                data = (rng.uniform(-1, 1, shape) if dtype.startswith(("float", "bfloat")) else np.zeros(shape))
                mem.copy_in(t, data.astype(_np_dtype(dtype)))
                args.append(t)
        except Exception as e:  # a task that cannot load is reported, the others still run
            for c in task["candidates"]:
                entry[c["symbol"]] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            continue
        for c in task["candidates"]:
            try:
                fn = mod[c["symbol"]]
                entry[c["symbol"]] = {"secs": time_calls(lambda: fn(*args), mem.sync, number, repeat)}
            except Exception as e:  # e.g. a launch that asks for more shared memory than this GPU has
                entry[c["symbol"]] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        best = rank(entry)
        if progress:
            progress(f"[{i + 1}/{len(manifest['tasks'])}] {task['name']}: {len(best)}/{len(task['candidates'])} ran"
                     + (f", best {best[0][1] * 1e6:.1f} us ({best[0][0]})" if best else ""))
    return results


def write_results(results: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def _find_runtime(root: str) -> None:
    """`tensorforge.runtime` installed, or else from a checkout at `root` (the repository root: its runtime/ folder
    is the package), without installing anything: the GPU machine may have neither pip access nor TVM."""
    try:
        import tensorforge.runtime  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.util
    import types

    folder = os.path.join(root, "runtime")
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        raise SystemExit(f"measure.py: tensorforge is not installed and {root} is no TensorForge checkout (no "
                         f"runtime/ folder): run it from the repository root")
    top = types.ModuleType("tensorforge")
    top.__path__ = []
    sys.modules["tensorforge"] = top
    spec = importlib.util.spec_from_file_location("tensorforge.runtime", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tensorforge.runtime"] = module
    spec.loader.exec_module(module)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--out", default=None, help="results file (default BUNDLE/results.json)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args(argv)
    _find_runtime(os.getcwd())
    results = measure_bundle(args.bundle, repeat=args.repeat, number=args.number, device_id=args.device)
    out = args.out or os.path.join(args.bundle, "results.json")
    write_results(results, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
