"""Load test of `tensorforge serve` (runtime/serve.py) on 127.0.0.1: TensorForge artifacts against onnxruntime
behind the same server. Writes benchmarks/results/serve.md.

    python benchmarks/serve.py [--seconds 30] [--clients 16] [--models resnet50 bert_base]

Per model, the same ONNX export: compiled to an artifact (TensorForge) or served as the .onnx file (onnxruntime).
Each engine gets a server of its own (`tensorforge serve`, a subprocess; --max-concurrency 2 runs of one thread
each, on this machine's cores; the load generator runs in this process, on the same cores). Then:
  load      `--clients` clients, each sending its next request when the last is answered (binary tensors), for
            `--seconds` or `--max-requests` per client, whichever ends first: p50/p99 latency, throughput, errors,
            and every answer compared with a direct `run()` of the same model on the same input (exactly equal)
  1 client  sequential requests: the server's p50 against a direct `run()` in this process plus the HTTP cost,
            measured as the p50 of a model that does nothing (an Identity of 4 floats) on the same server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("TENSORFORGE_CACHE_DIR", "off")

from benchmarks.machine import describe_machine, write_lines  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "serve.md")
SAMPLES = 4  # distinct request inputs per model


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _identity_onnx(path: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def prepare(names, tmp: str) -> dict:
    """{model: {"onnx": path, "tfa": path, "inputs": [feeds], "tf": [outputs], "ort": [outputs]}}: the files and
    the answers of direct runs (one thread, as the servers run)."""
    import onnx
    import onnxruntime as ort

    from benchmarks.models import INPUT_NAME, MODELS, export_onnx
    from tensorforge import compile_model, runtime

    out = {}
    for name in list(names) + ["empty"]:
        onnx_path, tfa = os.path.join(tmp, f"{name}.onnx"), os.path.join(tmp, f"{name}.tfa")
        if name == "empty":
            _identity_onnx(onnx_path)
            feeds = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)}
                     for i in range(SAMPLES)]
        else:
            model = export_onnx(name)
            onnx.save(model, onnx_path)
            _, x = MODELS[name](1)
            rng = np.random.default_rng(0)
            if x.dtype.is_floating_point:
                feeds = [{INPUT_NAME: rng.standard_normal(tuple(x.shape)).astype(np.float32)} for _ in range(SAMPLES)]
            else:
                feeds = [{INPUT_NAME: rng.integers(0, 1000, tuple(x.shape)).astype(np.int64)} for _ in range(SAMPLES)]
        compile_model(onnx_path).save(tfa)
        m = runtime.load(tfa, num_threads=1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        out[name] = {"onnx": onnx_path, "tfa": tfa, "inputs": feeds, "tf": [m.run(f) for f in feeds],
                     "ort": [sess.run(None, f) for f in feeds], "direct_tf": m, "direct_ort": sess}
        print(f"prepared {name}", flush=True)
    return out


def start_server(paths: list[str], names: list[str], port: int):
    cmd = [sys.executable, "-m", "tensorforge.compiler.cli", "serve", *paths, "--port", str(port),
           "--max-concurrency", "2", "--threads", "1", "--log-level", "warning"]
    for n in names:
        cmd += ["--name", n]
    proc = subprocess.Popen(cmd, env={**os.environ, "TVM_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 300 s")


def _body(feeds: dict) -> tuple[bytes, dict]:
    from tensorforge.runtime.serve import datatype_of

    inputs, raw = [], []
    for n, a in feeds.items():
        inputs.append({"name": n, "datatype": datatype_of(a.dtype), "shape": list(a.shape),
                       "parameters": {"binary_data_size": a.nbytes}})
        raw.append(np.ascontiguousarray(a).tobytes())
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(raw), {"Inference-Header-Content-Length": str(len(head)),
                                  "Content-Type": "application/octet-stream"}


def _outputs(content: bytes, n: int) -> list:
    meta = json.loads(content[:n])
    outs, at = [], n
    from tensorforge.runtime.serve import DATATYPES

    for o in meta["outputs"]:
        size = o["parameters"]["binary_data_size"]
        outs.append(np.frombuffer(content[at:at + size], DATATYPES[o["datatype"]]).reshape(o["shape"]))
        at += size
    return outs


async def load(url: str, samples: list, expected: list, clients: int, seconds: float, max_requests: int) -> dict:
    import httpx

    bodies = [_body(f) for f in samples]
    lat, errors, wrong = [], [], 0
    stop = time.monotonic() + seconds

    async def client(i: int, c) -> None:
        nonlocal wrong
        k = i
        for _ in range(max_requests):
            if time.monotonic() >= stop:
                return
            body, headers = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            try:
                r = await c.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text[:200]}")
            else:
                got = _outputs(r.content, int(r.headers["inference-header-content-length"]))
                if not all(np.array_equal(g, w) for g, w in zip(got, expected[k % len(bodies)])):
                    wrong += 1
            k += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=120) as c:
        await asyncio.gather(*(client(i, c) for i in range(clients)))
    wall = time.perf_counter() - t0
    lat_ms = np.asarray(lat) * 1e3
    return {"requests": len(lat), "errors": len(errors), "wrong": wrong, "p50": float(np.median(lat_ms)),
            "p99": float(np.percentile(lat_ms, 99)), "rps": len(lat) / wall, "first_error": errors[:1]}


def one_client(url: str, samples: list, n: int) -> float:
    import httpx

    bodies = [_body(f) for f in samples]
    lat = []
    with httpx.Client(timeout=120) as c:
        for i in range(n + 3):
            body, headers = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            r = c.post(url, content=body, headers=headers)
            if i >= 3:  # after a warm-up
                lat.append(time.perf_counter() - t0)
            r.raise_for_status()
    return float(np.median(lat) * 1e3)


def direct_ms(run, samples: list, n: int) -> float:
    lat = []
    for i in range(n + 3):
        t0 = time.perf_counter()
        run(samples[i % len(samples)])
        if i >= 3:
            lat.append(time.perf_counter() - t0)
    return float(np.median(lat) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "bert_base"])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-requests", type=int, default=10000, help="per client, at most")
    ap.add_argument("--single", type=int, default=30, help="sequential requests for the 1-client row")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    rows, single = [], []
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare(args.models, tmp)
        for engine, key in (("tensorforge", "tfa"), ("onnxruntime", "onnx")):
            port = _port()
            names = list(prep)
            proc = start_server([prep[n][key] for n in names], names, port)
            try:
                answers = "tf" if engine == "tensorforge" else "ort"
                empty_url = f"http://127.0.0.1:{port}/v2/models/empty/infer"
                http_ms = one_client(empty_url, prep["empty"]["inputs"], args.single * 3)
                for name in args.models:
                    url = f"http://127.0.0.1:{port}/v2/models/{name}/infer"
                    res = asyncio.run(load(url, prep[name]["inputs"], prep[name][answers], args.clients, args.seconds,
                                           args.max_requests))
                    rows.append({"model": name, "engine": engine, **res})
                    print(rows[-1], flush=True)
                    served = one_client(url, prep[name]["inputs"], args.single)
                    direct = prep[name]["direct_" + ("tf" if engine == "tensorforge" else "ort")]
                    run = direct.run if engine == "tensorforge" else (lambda f, s=direct: s.run(None, f))
                    d = direct_ms(run, prep[name]["inputs"], args.single)
                    single.append({"model": name, "engine": engine, "served": served, "direct": d, "http": http_ms})
                    print(single[-1], flush=True)
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    lines = ["# `tensorforge serve` under load: TensorForge against onnxruntime behind the same server", "",
             f"Machine: {describe_machine()}. Server and load generator on the same cores (127.0.0.1).",
             f"Generated by `python benchmarks/serve.py --seconds {args.seconds:g} --clients {args.clients}`. Each "
             "engine's server: `tensorforge serve MODEL... --max-concurrency 2 --threads 1`; requests and answers "
             "in the binary tensor extension; every answer compared with a direct run() of the same model on the "
             "same input.", "",
             f"## {args.clients} clients, {args.seconds:g} s per model", "",
             "| model | engine | requests | errors | answers unequal to run() | p50 ms | p99 ms | requests/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['engine']} | {r['requests']} | {r['errors']} | {r['wrong']} | "
                     f"{r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} |")
    lines += ["", "## One client: the server's p50 against a direct run() plus the HTTP cost", "",
              "The HTTP cost is the p50 of a model that does nothing (Identity of 4 floats) on the same server.", "",
              "| model | engine | served p50 ms | direct run() p50 ms | HTTP cost ms | served / (direct + HTTP) |",
              "|---|---|---:|---:|---:|---:|"]
    for s in single:
        lines.append(f"| {s['model']} | {s['engine']} | {s['served']:.2f} | {s['direct']:.2f} | {s['http']:.2f} | "
                     f"{s['served'] / (s['direct'] + s['http']):.3f} |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
