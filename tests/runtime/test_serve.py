"""runtime/serve.py: the KServe v2 / Triton HTTP protocol over a real uvicorn server on 127.0.0.1 (JSON and binary
tensors, metadata, health, clear 4xx errors, request size limit), dynamic batching, and the CLI's errors."""

import asyncio
import json
import socket
import threading
import time

import httpx
import numpy as np
import onnx
import pytest
import uvicorn
from onnx import TensorProto, helper, numpy_helper

from tensorforge import compile_model
from tensorforge.compiler.cli import main as cli_main
from tensorforge.runtime import serve

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 8)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)


def mlp_onnx(batch):
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
                          helper.make_node("Relu", ["a"], ["y"]),
                          helper.make_node("ReduceSum", ["y"], ["s"], axes=[1], keepdims=0)], "mlp",
                         [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8]),
                          helper.make_tensor_value_info("s", TensorProto.FLOAT, [batch])],
                         initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=8)


def expected(x):
    y = np.maximum(x @ W + B, 0)
    return y, y.sum(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    for name, batch in (("mlp", 2), ("mlp4", 4)):
        compile_model(mlp_onnx(batch)).save(d / f"{name}.tfa")
    onnx.save(mlp_onnx(2), d / "ort.onnx")
    plain = serve.load_models([str(d / "mlp.tfa"), str(d / "ort.onnx")], max_concurrency=2)
    batched = serve.load_models([str(d / "mlp4.tfa")], max_batch=4, max_delay_ms=20)
    return plain + batched


@pytest.fixture(scope="module")
def url(models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(serve.make_app(models, max_request_bytes=4096), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def test_health_and_metadata(url):
    with httpx.Client(base_url=url) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2").json()["extensions"] == ["binary_tensor_data"]
        meta = c.get("/v2/models/mlp").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 16]}]
        assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 8]},
                                   {"name": "s", "datatype": "FP32", "shape": [2]}]
        assert c.get("/v2/models/ort/versions/1").json()["platform"] == "onnxruntime_onnx"
        assert c.get("/v2/models/mlp/ready").json()["ready"] is True


@pytest.mark.parametrize("name", ["mlp", "ort"])
def test_json_inference_equals_a_direct_run(url, name):
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    body = {"id": "r1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": x.tolist()}]}
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "r1" and out["model_name"] == name
    y, s = (np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in out["outputs"])
    np.testing.assert_allclose(y, expected(x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, expected(x)[1], rtol=1e-5, atol=1e-5)
    # one output asked for
    body["outputs"] = [{"name": "s"}]
    assert [o["name"] for o in httpx.post(f"{url}/v2/models/{name}/infer", json=body).json()["outputs"]] == ["s"]


def test_binary_tensors_both_ways(url):
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "s"}]}).encode()
    r = httpx.post(f"{url}/v2/models/mlp/infer", content=head + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    y_meta, s_meta = meta["outputs"]
    assert y_meta["parameters"]["binary_data_size"] == 2 * 8 * 4 and "data" not in y_meta
    y = np.frombuffer(r.content[n:], np.float32).reshape(y_meta["shape"])
    np.testing.assert_allclose(y, expected(x)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s_meta["data"], expected(x)[1], rtol=1e-5, atol=1e-5)


def _infer(name, inputs, **extra):
    return {"inputs": inputs, **extra}


@pytest.mark.parametrize("path, body, status, message", [
    ("nope", {"inputs": []}, 404, "no model named 'nope'"),
    ("mlp/versions/2", {"inputs": []}, 404, "version 1 only"),
    ("mlp", b"{not json", 400, "not valid JSON"),
    ("mlp", {"x": 1}, 400, 'an "inputs" list'),
    ("mlp", {"inputs": []}, 400, "input 'x' is missing"),
    ("mlp", {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}]}, 400, "has no input 'z'"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 16], "data": [0] * 32}]}, 400,
     "input 'x' is FP32, got INT64"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": [0] * 48}]}, 400,
     r"shape \[3, 16\], the model takes \[2, 16\]"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0] * 31}]}, 400,
     r"31 values given for shape \[2, 16\] \(32 needed\)"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}, 400,
     "BYTES tensors are not supported"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, -16], "data": []}]}, 400,
     "shape must be a list of non-negative integers"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": ["a"] * 32}]}, 400,
     "are not FP32 values"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0] * 32}],
             "outputs": [{"name": "q"}]}, 400, "has no output 'q'"),
    ("mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 2000}]}, 413,
     "limit of 4096"),
])
def test_bad_requests_get_clear_errors(url, path, body, status, message):
    import re

    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{url}/v2/models/{path}/infer", **kw)
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]


def test_binary_sizes_are_checked(url):
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                   "parameters": {"binary_data_size": 128}}]}).encode()
    r = httpx.post(f"{url}/v2/models/mlp/infer", content=head + b"\0" * 100,
                   headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "100 bytes of binary data for it, 128 needed" in r.json()["error"]


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(url, models):
    batched = models[-1]
    calls = []
    run = batched.model.run
    batched.model.run = lambda feeds: calls.append(len(feeds["x"])) or run(feeds)
    try:
        xs = [RNG.standard_normal((rows, 16)).astype(np.float32) for rows in (1, 2, 1, 1, 3, 1)]

        async def one(client, x):
            r = await client.post(f"{url}/v2/models/mlp4/infer", json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]})
            assert r.status_code == 200, r.text
            return [np.asarray(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]]

        async def all_():
            async with httpx.AsyncClient() as client:
                return await asyncio.gather(*(one(client, x) for x in xs))

        for x, (y, s) in zip(xs, asyncio.run(all_())):
            assert y.shape == (len(x), 8) and s.shape == (len(x),)
            np.testing.assert_allclose(y, expected(x)[0], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(s, expected(x)[1], rtol=1e-5, atol=1e-5)
        assert calls and all(c == 4 for c in calls)  # always the compiled batch, padded
    finally:
        batched.model.run = run


def test_requests_queued_together_run_as_one_batch(models):
    batched = models[-1]
    calls = []
    run = batched.model.run
    batched.model.run = lambda feeds: calls.append(1) or run(feeds)
    xs = [RNG.standard_normal((1, 16)).astype(np.float32) for _ in range(3)]

    async def go():
        b = serve.Batcher(batched)
        try:  # queued before the batcher's loop first runs: one batch of three rows
            return await asyncio.gather(*(b.submit({"x": x}) for x in xs))
        finally:
            b.task.cancel()

    try:
        for x, (y, s) in zip(xs, asyncio.run(go())):
            np.testing.assert_allclose(y, expected(x)[0], rtol=1e-5, atol=1e-5)
        assert calls == [1]
    finally:
        batched.model.run = run


def test_batching_needs_a_model_that_takes_the_batch(models, tmp_path):
    path = tmp_path / "m.tfa"
    models[0].model.save(path)
    with pytest.raises(serve.TensorForgeError, match=r"runs batches of \[2\]; --max-batch 8 is more than it takes"):
        serve.load_models([str(path)], max_batch=8)


def test_the_cli_names_what_is_wrong(tmp_path, capsys):
    assert cli_main(["serve", str(tmp_path / "missing.tfa")]) == 1
    assert "no model file at" in capsys.readouterr().err
    (tmp_path / "a.tfa").write_bytes(b"x")
    assert cli_main(["serve", str(tmp_path / "a.tfa"), "--name", "a", "--name", "b"]) == 1
    assert "2 names for 1 models" in capsys.readouterr().err


def test_sigterm_answers_the_requests_in_flight_then_stops(tmp_path, models):
    """`tensorforge serve` on SIGTERM: no new connections, but a request already in (here waiting in the batcher's
    window) is answered."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "m.tfa"
    models[-1].model.save(path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tensorforge.compiler.cli", "serve", str(path), "--port", str(port),
                             "--max-batch", "4", "--max-delay-ms", "1500", "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        x = RNG.standard_normal((1, 16)).astype(np.float32)
        got = {}

        def request():
            r = httpx.post(f"{base}/v2/models/m/infer", timeout=60, json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.tolist()}]})
            got["status"], got["y"] = r.status_code, r.json()["outputs"][0]["data"]

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.5)  # the request waits in the batcher's 1.5 s window
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert got["status"] == 200
        np.testing.assert_allclose(np.reshape(got["y"], (1, 8)), expected(x)[0], rtol=1e-5, atol=1e-5)
        proc.wait(30)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v2/health/ready", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
