"""Tuning farmed out: local knob search against two RPC servers and against two shards merged. Writes
benchmarks/results/rpc_tuning.md.

    python benchmarks/rpc_tuning.py [--model small_cnn]

Two machines simulated on this one, each limited to one core (taskset):
  local    `tensorforge tune MODEL --db A`, one process on one core
  rpc      a tracker and two servers (`python -m tvm.exec.rpc_server`, one core each); `tensorforge tune MODEL
           --rpc-tracker ... --rpc-key ...` builds here (unpinned) and times there, a kernel per server at a time
  shards   `tensorforge tune MODEL --shard 0/2` and `--shard 1/2` at once, one core each, then `--merge`
Reported: wall time of each and the kernels each database holds (the same set for all three).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT = os.path.join(ROOT, "benchmarks", "results", "rpc_tuning.md")
CLI = [sys.executable, "-m", "tensorforge.compiler.cli"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(p) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            os.killpg(p.pid, signal.SIGKILL)  # the forked workers left behind
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
        else:
            return


def _kernels(db: str) -> set:
    keys = set()
    for d in os.listdir(db):
        path = os.path.join(db, d, "index.json")
        if os.path.exists(path):
            with open(path) as f:
                keys |= set(json.load(f))
    return keys


def _model(name: str, path: str) -> None:
    import onnx

    if name == "small_cnn":
        from tensorforge.compiler.examples import small_cnn_onnx

        onnx.save(small_cnn_onnx(), path)
    else:
        from benchmarks.models import export_onnx

        onnx.save(export_onnx(name), path)


def main(argv=None) -> int:
    from benchmarks.machine import describe_machine, write_lines

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    env = {**os.environ, "TVM_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "m.onnx")
        _model(args.model, model)

        t0 = time.perf_counter()
        subprocess.run(["taskset", "-c", "0", *CLI, "tune", model, "--db", os.path.join(tmp, "local")], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        rows["local, one core"] = (time.perf_counter() - t0, _kernels(os.path.join(tmp, "local")))
        print(rows, flush=True)

        port = _port()
        procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                   str(port), "--port-end", str(port + 1)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)]
        try:
            time.sleep(2)
            for core in (0, 1):
                procs.append(subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-m",
                                               "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key",
                                               "bench", "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True))
            from tvm import rpc

            while (rpc.connect_tracker("127.0.0.1", port).summary().get("queue_info", {}).get("bench") or {}).get(
                    "free", 0) < 2:
                time.sleep(0.2)
            t0 = time.perf_counter()
            subprocess.run([*CLI, "tune", model, "--db", os.path.join(tmp, "rpc"), "--rpc-tracker",
                            f"127.0.0.1:{port}", "--rpc-key", "bench"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            rows["RPC, two servers of one core"] = (time.perf_counter() - t0, _kernels(os.path.join(tmp, "rpc")))
            print(rows, flush=True)
        finally:
            for p in procs:  # each with the workers it forked (its own process group)
                _stop(p)

        t0 = time.perf_counter()
        shards = [subprocess.Popen(["taskset", "-c", str(i), *CLI, "tune", model, "--db",
                                    os.path.join(tmp, f"shard{i}"), "--shard", f"{i}/2"], env=env,
                                   stdout=subprocess.DEVNULL) for i in range(2)]
        for p in shards:
            if p.wait() != 0:
                raise RuntimeError("a shard failed")
        subprocess.run([*CLI, "tune", "--db", os.path.join(tmp, "merged"), "--merge", os.path.join(tmp, "shard0"),
                        os.path.join(tmp, "shard1")], env=env, check=True, stdout=subprocess.DEVNULL)
        rows["two shards of one core, merged"] = (time.perf_counter() - t0, _kernels(os.path.join(tmp, "merged")))
        shutil.rmtree(os.path.join(tmp, "local"), ignore_errors=True)
    base, base_keys = rows["local, one core"]
    lines = ["# Tuning farmed out: RPC servers and shards against one machine", "",
             f"Machine: {describe_machine()}; two machines simulated by two processes of one core each (taskset).",
             "", f"Generated by `python benchmarks/rpc_tuning.py --model {args.model}` (knob search, "
             "`tensorforge tune`). In the RPC row the candidates are built by the tuning process, unpinned, on the "
             "same two cores the servers measure on.", "",
             "| how | wall s | / local | kernels in the database | same kernels as local |", "|---|---:|---:|---:|---|"]
    for how, (secs, keys) in rows.items():
        same = "yes" if keys == base_keys else "no"
        lines.append(f"| {how} | {secs:.1f} | {secs / base:.2f} | {len(keys)} | {same} |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
