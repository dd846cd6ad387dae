"""`tensorforge serve`: compiled models behind the KServe v2 / Triton HTTP inference protocol. 500 lines: the
protocol's decoding and encoding, the batcher and the ASGI app stay together.

    GET  /v2/health/live, /v2/health/ready                 200 when serving
    GET  /v2                                               server metadata (name, version, extensions)
    GET  /v2/models/{name}[/versions/1]                    model metadata: inputs and outputs (name, datatype, shape)
    GET  /v2/models/{name}[/versions/1]/ready
    POST /v2/models/{name}[/versions/1]/infer              inference: JSON tensors, or the binary tensor extension

The binary tensor extension (Triton's): a request whose `Inference-Header-Content-Length` header is N has its JSON
in the first N bytes of the body and, after it, the raw little-endian bytes of each input whose parameters give
`binary_data_size`, in order; outputs come back as raw bytes the same way where the request asks for
`"binary_data": true` on them (or `"binary_data_output": true` for all).

The app is Starlette's, run by uvicorn. Each model runs on the thread-safe runtime (runtime/model.py): at most
`max_concurrency` runs at once per model (an execution context each), on threads, so the event loop never waits on
a kernel. With `max_batch`, requests of a model are batched dynamically: those that arrive within `max_delay_ms`
of the first are joined along axis 0 (up to max_batch rows), run once, and split again; a model compiled for a
fixed batch runs the joined rows padded with zeros to that batch. Batching assumes what serving frameworks assume of
a batch dimension: samples do not meet (Triton's max_batch_size).

Bad requests get a 4xx with {"error": "..."} naming what was wrong: an unknown model (404), malformed JSON, an
unknown, missing or repeated input, a wrong datatype or shape, data that does not fill the shape (400), a body over
`max_request_bytes` (413). uvicorn shuts down gracefully on SIGINT/SIGTERM: no new connections, the requests in
flight answered. `.onnx` files are served on onnxruntime (`engine="onnxruntime"` in the metadata), so that both
engines can be measured behind the same server (benchmarks/serve.py).

The runtime never imports the compiler; this module needs the `serve` extra (starlette, uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, TensorForgeError

SERVER_NAME = "tensorforge"
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
_BY_DTYPE = {np.dtype(t): name for name, t in DATATYPES.items()}
MAX_REQUEST_BYTES = 64 << 20
HEADER_LENGTH = "inference-header-content-length"


class RequestError(TensorForgeError):
    """A request the server refuses: `status` is its HTTP status (400, 404, 413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def datatype_of(dtype) -> str:
    try:
        return _BY_DTYPE[np.dtype(dtype)]
    except (KeyError, TypeError):
        raise TensorForgeError(f"the protocol has no datatype for {dtype}") from None


# -- the models --------------------------------------------------------------------------------------------------------
@dataclass
class TensorSpec:
    name: str
    datatype: str
    shape: list  # -1 where any size

    def json(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class OnnxRuntimeModel:
    """An ONNX file on onnxruntime's CPU provider, with the runtime models' run(feeds) -> [arrays] (for comparison
    behind the same server)."""

    def __init__(self, path: str, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors, named
            raise TensorForgeError(f"onnxruntime cannot load {path!r}: {str(e).splitlines()[0][-300:]}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping) -> list:
        return self.session.run(None, dict(feeds))


_ORT_TYPES = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
              "tensor(int32)": "INT32", "tensor(int16)": "INT16", "tensor(int8)": "INT8", "tensor(uint8)": "UINT8",
              "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64",
              "tensor(bool)": "BOOL"}


def _specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The model's inputs and outputs as the protocol describes them (-1: a dimension that varies)."""
    if isinstance(model, OnnxRuntimeModel):
        def spec(a):
            if a.type not in _ORT_TYPES:
                raise TensorForgeError(f"the ONNX model's {a.name!r} is a {a.type}, which the server does not take")
            return TensorSpec(a.name, _ORT_TYPES[a.type], [d if isinstance(d, int) else -1 for d in a.shape])
        return ([spec(a) for a in model.session.get_inputs()], [spec(a) for a in model.session.get_outputs()])
    if hasattr(model, "models") and hasattr(model, "runners"):  # a bundle: the shapes its specializations hold
        return _merged([_specs(m) for m in model.runners], model.input_names, model.output_names)
    if hasattr(model, "times"):  # a bundle's batch run as slices of a compiled one (runtime/bundle.LoopedModel)
        ins, outs = _specs(model.model)
        times = lambda s, scaled: TensorSpec(s.name, s.datatype, [s.shape[0] * model.times] + s.shape[1:]  # noqa: E731
                                             if scaled and s.shape else s.shape)
        return [times(s, s.name in model.inputs) for s in ins], [times(s, True) for s in outs]
    prog = model.program
    ins = [TensorSpec(n, datatype_of(prog.buffers[b].dtype), list(prog.buffers[b].shape)) for n, b in prog.inputs]
    outs = [TensorSpec(n, datatype_of(prog.buffers[b].dtype), list(prog.buffers[b].shape)) for n, b in prog.outputs]
    return ins, outs


def _merged(all_specs, input_names, output_names):
    def merge(name, specs):
        specs = [s for s in specs if s.name == name]
        shape = [d if all(len(s.shape) == len(specs[0].shape) and s.shape[i] == d for s in specs) else -1
                 for i, d in enumerate(specs[0].shape)]
        return TensorSpec(name, specs[0].datatype, shape)

    ins = [merge(n, [s for i, _ in all_specs for s in i]) for n in input_names]
    outs = [merge(n, [s for _, o in all_specs for s in o]) for n in output_names]
    return ins, outs


def _batch_sizes(model, inputs: list) -> list[int] | None:
    """The batch sizes (axis 0 of every input) the model runs, its `inputs` as declared; None: any."""
    runners = getattr(model, "runners", None)  # a bundle: each of its specializations
    sizes = set()
    for ins in [_specs(m)[0] for m in runners] if runners is not None else [inputs]:
        rows = {s.shape[0] for s in ins}
        if -1 in rows:
            return None
        if len(rows) == 1:
            sizes |= rows
    return sorted(sizes)


@dataclass
class ServedModel:
    """A model as the server holds it: its specs, its concurrency bound and its optional batcher."""
    name: str
    model: object
    engine: str
    max_concurrency: int
    max_batch: int = 0
    max_delay_s: float = 0.0
    inputs: list = field(init=False)  # TensorSpecs, from the model
    outputs: list = field(init=False)
    batch_sizes: list | None = field(init=False, default=None)  # with max_batch: the batches the model runs

    def __post_init__(self):
        self.inputs, self.outputs = _specs(self.model)
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self.batcher = None
        if self.max_batch:
            if any(not s.shape for s in self.inputs + self.outputs):
                raise TensorForgeError(f"model {self.name!r}: --max-batch needs a batch dimension (axis 0) on every "
                                       f"input and output; a scalar has none")
            self.batch_sizes = _batch_sizes(self.model, self.inputs)
            if self.batch_sizes is not None and (not self.batch_sizes or self.max_batch > max(self.batch_sizes)):
                raise TensorForgeError(f"model {self.name!r} runs batches of {self.batch_sizes or 'no one size'}; "
                                       f"--max-batch {self.max_batch} is more than it takes (compile it for a "
                                       f"batch of {self.max_batch}, or with a dynamic batch)")
            for s in self.outputs:
                if self.batch_sizes and s.shape[0] not in (-1, *self.batch_sizes):
                    raise TensorForgeError(f"model {self.name!r}: output {s.name!r} {s.shape} does not carry the "
                                           f"batch along axis 0; serve it without --max-batch")

    def metadata(self) -> dict:
        platform = "onnxruntime_onnx" if self.engine == "onnxruntime" else "tensorforge_artifact"
        return {"name": self.name, "versions": ["1"], "platform": platform,
                "inputs": [s.json() for s in self.inputs], "outputs": [s.json() for s in self.outputs],
                "parameters": {"max_batch": self.max_batch, "max_concurrency": self.max_concurrency}}

    def check(self, feeds: dict) -> None:
        """RequestError unless `feeds` fit the declared inputs (with batching: any rows up to max_batch)."""
        for s in self.inputs:
            a = feeds.get(s.name)
            if a is None:
                raise RequestError(f"model {self.name!r}: input {s.name!r} is missing; the model takes "
                                   f"{[i.name for i in self.inputs]}")
            if datatype_of(a.dtype) != s.datatype:
                raise RequestError(f"model {self.name!r}: input {s.name!r} is {s.datatype}, got {datatype_of(a.dtype)}")
            want = list(s.shape)
            if self.max_batch and want:
                want[0] = -1
                if not 1 <= a.shape[0] <= self.max_batch:
                    raise RequestError(f"model {self.name!r}: input {s.name!r} has {a.shape[0]} rows; this server "
                                       f"batches 1 to {self.max_batch}")
            if len(a.shape) != len(want) or any(w not in (-1, g) for w, g in zip(want, a.shape)):
                raise RequestError(f"model {self.name!r}: input {s.name!r} has shape {list(a.shape)}, the model "
                                   f"takes {s.shape} (-1: any size)")
        if self.max_batch and len({feeds[s.name].shape[0] for s in self.inputs}) != 1:
            raise RequestError(f"model {self.name!r}: the inputs' first dimensions (the batch) differ: "
                               f"{ {s.name: feeds[s.name].shape[0] for s in self.inputs} }")

    def run(self, feeds: dict) -> list:
        """One run on this thread, within the concurrency bound. A refusal of the runtime (InputError) is the
        request's fault."""
        with self._slots:
            try:
                return [np.asarray(o) for o in self.model.run(feeds)]
            except InputError as e:
                raise RequestError(f"model {self.name!r}: {e}") from None

    def run_batch(self, feeds_list: list[dict]) -> list[list]:
        """Requests joined along axis 0, padded with zeros to a batch size the model runs, run once, split."""
        rows = [next(iter(f.values())).shape[0] for f in feeds_list]
        total = sum(rows)
        size = total if self.batch_sizes is None else min(b for b in self.batch_sizes if b >= total)
        joined = {}
        for s in self.inputs:
            parts = [f[s.name] for f in feeds_list]
            if size > total:
                parts.append(np.zeros((size - total,) + parts[0].shape[1:], parts[0].dtype))
            joined[s.name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        outs = self.run(joined)
        for name, o in zip(self.model.output_names, outs):
            if o.ndim == 0 or o.shape[0] != size:
                raise TensorForgeError(f"model {self.name!r}: output {name!r} {list(o.shape)} does not carry the "
                                       f"batch of {size} along axis 0; serve it without --max-batch")
        bounds = np.cumsum([0] + rows)
        return [[o[bounds[i]:bounds[i + 1]] for o in outs] for i in range(len(rows))]


class Batcher:
    """Dynamic batching for one model: requests queued, joined while they keep coming within max_delay_s of the
    first (up to max_batch rows, and only requests whose shapes match beyond axis 0), run on a thread."""

    def __init__(self, served: ServedModel):
        self.served = served
        self.queue: asyncio.Queue = asyncio.Queue()
        self._held = None
        self._in_flight = asyncio.Semaphore(served.max_concurrency)
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, feeds: dict) -> list:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((feeds, fut))
        return await fut

    @staticmethod
    def _key(feeds: dict) -> tuple:
        return tuple((n, a.shape[1:], a.dtype.str) for n, a in sorted(feeds.items()))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.served
        while True:
            first = self._held or await self.queue.get()
            self._held = None
            batch, key = [first], self._key(first[0])
            rows = next(iter(first[0].values())).shape[0]
            deadline = loop.time() + s.max_delay_s
            while rows < s.max_batch:
                try:
                    item = self.queue.get_nowait() if loop.time() >= deadline else \
                        await asyncio.wait_for(self.queue.get(), deadline - loop.time())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                n = next(iter(item[0].values())).shape[0]
                if rows + n > s.max_batch or self._key(item[0]) != key:
                    self._held = item  # the first of the next batch
                    break
                batch.append(item)
                rows += n
            await self._in_flight.acquire()  # at most max_concurrency batches run at once; the next one gathers
            loop.create_task(self._run(batch))

    async def _run(self, batch) -> None:
        try:
            results = await asyncio.to_thread(self.served.run_batch, [f for f, _ in batch])
        except BaseException as e:  # noqa: BLE001 - handed to every request of the batch
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._in_flight.release()
        for (_, fut), r in zip(batch, results):
            if not fut.done():
                fut.set_result(r)


# -- the protocol --------------------------------------------------------------------------------------------------
def decode_request(body: bytes, header_length: str | None, served: ServedModel) -> tuple[dict, list, dict]:
    """(feeds, [(output name, binary?)], the request's JSON) of an infer request's body."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise RequestError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise RequestError(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        head, binary = body[:n], memoryview(body)[n:]
    else:
        head, binary = body, memoryview(b"")
    try:
        req = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({e})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list):
        raise RequestError('the request must be a JSON object with an "inputs" list')
    known = {s.name: s for s in served.inputs}
    feeds, offset = {}, 0
    for i, t in enumerate(req["inputs"]):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise RequestError(f"inputs[{i}] must be an object with a name")
        name = t["name"]
        if name not in known:
            raise RequestError(f"model {served.name!r} has no input {name!r}; its inputs are {list(known)}")
        if name in feeds:
            raise RequestError(f"input {name!r} is given twice")
        dtype = DATATYPES.get(t.get("datatype"))
        if dtype is None:
            raise RequestError(f"input {name!r}: datatype {t.get('datatype')!r} is not one of {sorted(DATATYPES)}"
                               + (" (BYTES tensors are not supported)" if t.get("datatype") == "BYTES" else ""))
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise RequestError(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        count = int(np.prod(shape, dtype=np.int64))
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * np.dtype(dtype).itemsize:
                raise RequestError(f"input {name!r}: binary_data_size {size!r}, but {t['datatype']}{shape} is "
                                   f"{count * np.dtype(dtype).itemsize} bytes")
            if offset + size > len(binary):
                raise RequestError(f"input {name!r}: the body holds {len(binary) - offset} bytes of binary data "
                                   f"for it, {size} needed")
            a = np.frombuffer(binary[offset:offset + size], dtype=np.dtype(dtype).newbyteorder("<")).astype(
                dtype, copy=True).reshape(shape)
            offset += size
        else:
            data = t.get("data")
            if data is None:
                raise RequestError(f"input {name!r} has no data (and no binary_data_size)")
            try:
                a = np.asarray(data, dtype=dtype)
            except (ValueError, TypeError, OverflowError) as e:
                raise RequestError(f"input {name!r}: its data are not {t['datatype']} values ({e})") from None
            if a.size != count:
                raise RequestError(f"input {name!r}: {a.size} values given for shape {shape} ({count} needed)")
            a = a.reshape(shape)
        feeds[name] = a
    if offset != len(binary):
        raise RequestError(f"the body holds {len(binary) - offset} bytes of binary data no input claims")
    served.check(feeds)
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output", False))
    names = [o.name for o in served.outputs]
    wanted = req.get("outputs")
    if wanted is None:
        outputs = [(n, all_binary) for n in names]
    else:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                   for o in wanted):
            raise RequestError('"outputs" must be a list of objects with a name')
        outputs = []
        for o in wanted:
            if o["name"] not in names:
                raise RequestError(f"model {served.name!r} has no output {o['name']!r}; its outputs are {names}")
            outputs.append((o["name"], bool((o.get("parameters") or {}).get("binary_data", all_binary))))
    return feeds, outputs, req


def encode_response(served: ServedModel, req: dict, outputs: list, results: Sequence) -> tuple[bytes, dict]:
    """(body, headers) of the infer response."""
    by_name = dict(zip(served.model.output_names, results))
    out, binary = [], []
    for name, as_binary in outputs:
        a = np.ascontiguousarray(by_name[name])
        entry = {"name": name, "datatype": datatype_of(a.dtype), "shape": list(a.shape)}
        if as_binary:
            raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = a.reshape(-1).tolist()
        out.append(entry)
    resp = {"model_name": served.name, "model_version": "1", "outputs": out}
    if "id" in req:
        resp["id"] = req["id"]
    head = json.dumps(resp, separators=(",", ":")).encode()
    if not binary:
        return head, {"content-type": "application/json"}
    return b"".join([head] + binary), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


# -- the app -----------------------------------------------------------------------------------------------------------
def load_models(paths: Sequence[str], names: Sequence[str] = (), *, max_concurrency: int | None = None,
                max_batch: int = 0, max_delay_ms: float = 2.0, threads: int | None = None) -> list[ServedModel]:
    """The models at `paths` (artifacts, bundles, or .onnx files for onnxruntime), each served under its file
    name's stem or the matching entry of `names`."""
    from . import model as runtime_model

    if names and len(names) != len(paths):
        raise TensorForgeError(f"{len(names)} names for {len(paths)} models: give one --name per model, or none")
    served, seen = [], set()
    for i, path in enumerate(paths):
        name = names[i] if names else os.path.splitext(os.path.basename(path))[0]
        if name in seen:
            raise TensorForgeError(f"two models are named {name!r}: give each a --name")
        seen.add(name)
        if not os.path.isfile(path):
            raise TensorForgeError(f"no model file at {path!r}")
        if path.endswith(".onnx"):
            model, engine = OnnxRuntimeModel(path, threads), "onnxruntime"
        else:
            model, engine = runtime_model.load(path, num_threads=threads, max_concurrency=max_concurrency,
                                               map_params=True), "tensorforge"
        limit = max_concurrency or getattr(model, "max_concurrency", None) or os.cpu_count() or 1
        served.append(ServedModel(name, model, engine, limit, max_batch, max_delay_ms / 1000))
    return served


def make_app(models: Sequence[ServedModel], max_request_bytes: int = MAX_REQUEST_BYTES):
    """The ASGI app (Starlette) serving `models`."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from importlib import metadata

    try:
        version = metadata.version("tensorforge")
    except metadata.PackageNotFoundError:
        version = "unknown"
    by_name = {m.name: m for m in models}

    def error(message: str, status: int = 400):
        return JSONResponse({"error": message}, status_code=status)

    def served(request):
        name = request.path_params["name"]
        if name not in by_name:
            raise RequestError(f"no model named {name!r}; this server has {sorted(by_name)}", 404)
        v = request.path_params.get("version")
        if v is not None and v != "1":
            raise RequestError(f"model {name!r} has version 1 only, not {v!r}", 404)
        return by_name[name]

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": True})

    async def server_meta(request):
        return JSONResponse({"name": SERVER_NAME, "version": version, "extensions": ["binary_tensor_data"]})

    async def model_meta(request):
        try:
            return JSONResponse(served(request).metadata())
        except RequestError as e:
            return error(str(e), e.status)

    async def model_ready(request):
        try:
            return JSONResponse({"name": served(request).name, "ready": True})
        except RequestError as e:
            return error(str(e), e.status)

    async def infer(request):
        try:
            m = served(request)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
                raise RequestError(f"the request is {declared} bytes, more than this server's limit of "
                                   f"{max_request_bytes}", 413)
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_request_bytes:
                    raise RequestError(f"the request is more than this server's limit of {max_request_bytes} bytes",
                                       413)
                chunks.append(chunk)
            feeds, outputs, req = decode_request(b"".join(chunks), request.headers.get(HEADER_LENGTH), m)
            if m.batcher is not None:
                results = await m.batcher.submit(feeds)
            else:
                results = await asyncio.to_thread(m.run, feeds)
            body, headers = encode_response(m, req, outputs, results)
            return Response(body, headers=headers)
        except RequestError as e:
            return error(str(e), e.status)
        except TensorForgeError as e:
            return error(str(e), 500)

    @asynccontextmanager
    async def lifespan(app):
        for m in models:
            if m.max_batch:
                m.batcher = Batcher(m)
        yield
        for m in models:
            if m.batcher is not None:
                m.batcher.task.cancel()
                m.batcher = None

    model_path = "/v2/models/{name:str}"
    versioned = model_path + "/versions/{version:str}"
    routes = [Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_meta)]
    for base in (model_path, versioned):
        routes += [Route(base, model_meta), Route(base + "/ready", model_ready),
                   Route(base + "/infer", infer, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(models: Sequence[ServedModel], host: str = "127.0.0.1", port: int = 8000, *,
          max_request_bytes: int = MAX_REQUEST_BYTES, log_level: str = "info", graceful_s: int = 30) -> None:
    """Serve until SIGINT or SIGTERM (then the requests in flight are answered, for up to `graceful_s`)."""
    import uvicorn

    uvicorn.run(make_app(models, max_request_bytes), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=graceful_s, access_log=False)
