"""The `tensorforge` command line: compile, run, generate, serve, inspect, tune, train, cache, demo. Over 500 lines: a thin function
per command and the one parser that declares every command's flags; the work itself lives in the compiler's modules.
Errors print one line (`tensorforge: error: ...`) and exit 1; `--verbose` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from tensorforge.runtime.errors import InputError, TensorForgeError


class UsageError(InputError):
    """A command line argparse rejected: reported like every other error, in one line with exit status 1."""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as UsageError (not printed with the usage and exit status 2)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _check_output_file(path: str, flag: str, suggestion: str) -> None:
    """Before the work that precedes writing it: `path` must name a file in an existing directory."""
    if os.path.isdir(path):
        raise InputError(f"{flag} {path} is a directory; give a file name, e.g. {os.path.join(path, suggestion)}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(f"{flag} {path}: directory {directory} does not exist")


def parse_shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    """'x=1x3x224x224' -> ('x', (1, 3, 224, 224)). The name may contain '=' only before the last one."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected NAME=AxBxC, e.g. x=1x3x224x224")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: dimensions must be integers separated by 'x'") from None
    if any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--shape {text!r}: dimensions must be positive")
    return name, shape


def parse_dynamic_arg(text: str) -> tuple[str, dict[int, tuple[int, int]]]:
    """'ids=1..8x1..512' -> ('ids', {0: (1, 8), 1: (1, 512)}): LOW..HIGH for a dimension that may vary, a number
    (or '?') for one that does not."""
    name, sep, dims = text.rpartition("=")
    if not sep or not name or not dims:
        raise argparse.ArgumentTypeError(f"--dynamic {text!r}: expected NAME=LOW..HIGHxD..., e.g. ids=1..8x1..512")
    ranges = {}
    for axis, d in enumerate(dims.lower().split("x")):
        if ".." not in d:
            if d != "?" and not d.isdigit():
                raise argparse.ArgumentTypeError(f"--dynamic {text!r}: dimension {axis} is {d!r}; give LOW..HIGH, "
                                                 f"a number or ?")
            continue
        low, _, high = d.partition("..")
        if not (low.isdigit() and high.isdigit()) or not 1 <= int(low) <= int(high):
            raise argparse.ArgumentTypeError(f"--dynamic {text!r}: dimension {axis}'s range {d!r} must be LOW..HIGH "
                                             f"with 1 <= LOW <= HIGH")
        ranges[axis] = (int(low), int(high))
    if not ranges:
        raise argparse.ArgumentTypeError(f"--dynamic {text!r}: no LOW..HIGH range (use --shape for fixed shapes)")
    return name, ranges


def parse_input_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.rpartition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected NAME=FILE.npy")
    return name, path


def _compile_options(args):
    from tensorforge.compiler.options import CompileOptions

    for db in getattr(args, "tuning_db", None) or ():
        if not os.path.isdir(db):
            raise InputError(f"--tuning-db {db}: no such directory (tensorforge tune MODEL --db {db} creates one)")

    return CompileOptions(target=args.target, opt_level=args.opt_level, arch=getattr(args, "arch", None),
                          precision=getattr(args, "precision", "fp32"),
                          dump_after=frozenset(args.dump_after or ()), disabled_passes=frozenset(args.disable_pass or ()),
                          tuning_db=tuple(getattr(args, "tuning_db", None) or ()),
                          use_shipped_tuning=not getattr(args, "no_shipped_tuning", False))


def cmd_compile(args) -> int:
    from tensorforge.compiler.api import compile_model

    options = _compile_options(args)
    stem = os.path.splitext(os.path.basename(args.model))[0] or "model"
    _check_output_file(args.output, "-o", stem + ".tfa")
    t0 = time.perf_counter()
    if args.at and not args.dynamic:
        raise InputError("--at compiles shapes within --dynamic ranges: give --dynamic too")
    if args.decoder:
        from tensorforge.compiler.decoding import compile_decoder

        if args.dynamic or args.shape:
            raise InputError("--decoder fixes every shape itself (one token per step, --max-length cache slots): "
                             "drop --dynamic/--shape")
        model = compile_decoder(args.model, args.max_length, prefill=args.prefill, options=options)
        model.save(args.output)
        print(f"compiled {args.model} -> {args.output}: a decoder with its key/value cache in place for "
              f"{args.max_length} positions (one token a step, {model.meta['decoder']['prefill'] or 1} a prompt "
              f"step), {time.perf_counter() - t0:.1f} s")
        return 0
    if args.dynamic:
        model = compile_model(args.model, shapes=dict(args.shape or []), options=options,
                              dynamic=dict(args.dynamic))
        for name, shape in args.at or []:
            model.specialize_shapes({name: shape})
        model.save(args.output)
        print(f"compiled {args.model} -> {args.output}: a bundle of {model.specializations} specialization(s) "
              f"for {dict(args.dynamic)}, {time.perf_counter() - t0:.1f} s")
        return 0
    model = compile_model(args.model, shapes=dict(args.shape or []), options=options)
    model.save(args.output)
    print(f"compiled {args.model} -> {args.output}: {model.num_kernels} kernel calls "
          f"({model.plan['stats']['tuned_kernels']} tuned), {time.perf_counter() - t0:.1f} s")
    if args.print_pass_times:
        for stage, secs in model.compile_timings.items():
            print(f"  {stage:<28} {secs * 1e3:9.1f} ms")
    return 0


def cmd_run(args) -> int:
    from tensorforge import runtime
    if args.output_dir and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise InputError(f"-o/--output-dir {args.output_dir} is a file: run writes one .npy file per output into a "
                         f"directory (created if missing)")
    model = runtime.load(args.artifact, num_threads=args.threads)
    feeds = {}
    for name, path in args.input or []:
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise runtime.InputError(f"cannot read input {name!r} from {path!r}: {e}") from None
    outputs = model.run(feeds)
    if args.output_dir:
        try:
            os.makedirs(args.output_dir, exist_ok=True)
        except OSError as e:
            raise InputError(f"-o/--output-dir {args.output_dir}: cannot create it ({e.strerror or e})") from None
    for name, value in zip(model.output_names, outputs):
        line = f"{name}: {value.dtype}{list(value.shape)}"
        if args.output_dir:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
            path = os.path.join(args.output_dir, safe + ".npy")
            np.save(path, value)
            line += f" -> {path}"
        print(line)
    if args.benchmark:
        times = model.benchmark(feeds, repeat=args.benchmark)
        print(f"median latency: {np.median(times) * 1e3:.3f} ms over {args.benchmark} runs")
    if args.profile:
        rows = model.profile(feeds)
        total = sum(r["ms"] for r in rows) or 1.0
        by_op: dict[str, float] = {}
        for r in rows:
            by_op[r["op"]] = by_op.get(r["op"], 0.0) + r["ms"]
        print(f"profile: {total:.3f} ms in {len(rows)} kernel calls")
        for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1]):
            print(f"  {op:<20} {ms:9.3f} ms  {100 * ms / total:5.1f}%")
        print("slowest calls:")
        for r in sorted(rows, key=lambda r: -r["ms"])[:10]:
            print(f"  {r['ms']:9.3f} ms  {r['op']:<16} {r['node']}")
    return 0


def cmd_generate(args) -> int:
    from tensorforge import runtime
    from tensorforge.runtime.generate import generate, prompt_ids

    ids = prompt_ids(args.prompt_ids)
    if args.model.endswith(".onnx"):
        from tensorforge.compiler.decoding import compile_decoder

        t0 = time.perf_counter()
        model = compile_decoder(args.model, args.max_length, prefill=args.prefill, options=_compile_options(args))
        print(f"compiled {args.model} as a decoder for {args.max_length} positions in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        model = runtime.load(args.model, num_threads=args.threads)
    times: list[float] = []

    def shown(step, token, seconds):
        times.append(seconds)
        if args.stream:
            print(" ".join(str(int(t)) for t in token), flush=True)

    tokens = generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      seed=args.seed, eos_token_id=args.eos, on_token=shown)
    if not args.stream:
        print(" ".join(str(int(t)) for t in tokens[0]))
    decode = times[1:] or times  # the first new token's step also follows the prompt's last token only
    print(f"{tokens.shape[1]} new tokens after a {len(ids)}-token prompt: {np.median(decode) * 1e3:.2f} ms per "
          f"token (median)", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    try:
        from tensorforge.runtime import serve
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TensorForgeError(f"serving needs the serve extra: pip install 'tensorforge[serve]' ({e})") from None
    models = serve.load_models(args.models, args.name or (), max_concurrency=args.max_concurrency,
                               max_batch=args.max_batch or 0, max_delay_ms=args.max_delay_ms, threads=args.threads)
    for m in models:
        print(f"serving {m.name!r} ({m.engine}) at http://{args.host}:{args.port}/v2/models/{m.name}/infer",
              file=sys.stderr)
    serve.serve(models, args.host, args.port, max_request_bytes=int(args.max_request_mb * 2**20),
                log_level=args.log_level)
    return 0


def cmd_inspect(args) -> int:
    path = args.model
    if path.endswith(".onnx"):
        from tensorforge.compiler.driver import import_model
        from tensorforge.compiler.report import analyze

        if args.train:
            from tensorforge.compiler.report import training_report

            g, plan = training_report(path, args.loss, {"name": args.optimizer, "lr": 0.01},
                                      shapes=dict(args.shape or []), options=_compile_options(args))
            if not (args.json or args.fusion):
                print(g, end="")
        elif not (args.json or args.fusion or args.optimized):
            print(import_model(path, dict(args.shape or [])), end="")
            return 0
        else:
            g, plan = analyze(path, dict(args.shape or []), _compile_options(args))
        if args.optimized:
            print(g, end="")
    else:
        import tempfile

        from tensorforge.runtime import artifact, bundle

        if bundle.is_bundle(path):
            from tensorforge import runtime

            b = runtime.load(path)
            print(f"bundle {path}: {len(b.specializations)} specialization(s) of inputs {b.input_names}"
                  + (f", {len(b.models)} compiled" if len(b.models) != len(b.specializations) else ""))
            for spec, m in zip(b.specializations, b.runners):
                slices = spec.pop("slices", None)
                print(f"  {spec}: " + (f"{slices['times']} slices of compiled specialization {slices['of']}"
                                       if slices else f"{m.num_kernels} kernel calls"))
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            plan, _, _ = artifact.read_artifact(path, tmp)
        if not (args.json or args.fusion):
            device = plan.get("device")
            print(f"artifact {path}: target {plan['target']}" + (
                f"; device {device['kind']} {device['arch']} ({device.get('device_kernels', '?')} GPU kernels, "
                f"precision {plan.get('precision', 'fp32')})" if device else ""))
            print(plan.get("ir", "(no IR stored)"), end="")
            print(f"{len(plan['steps'])} kernel calls, {len({s['kernel'] for s in plan['steps']})} distinct kernels:")
            for s in plan["steps"]:
                print(f"  {s['kernel']:<48} {'tuned' if s.get('tuned') else '     '} {s['op']:<28} {s['node']}")
            return 0
    if args.fusion:
        _print_fusion(plan.get("fusion", []))
    if args.json:
        print(json.dumps(plan["stats"]))
    return 0


def _print_fusion(report: list[dict]) -> None:
    fused = [e for e in report if len(e["nodes"]) > 1]
    alone = [e for e in report if len(e["nodes"]) == 1]
    print(f"{len(report)} steps: {len(fused)} fused kernels, {len(alone)} ops on their own")
    for e in fused:
        print(f"  {e['kernel']}: " + " + ".join(f"{op} ({name})" if name else op for op, name in e["nodes"]))
    if alone:
        print("ops left on their own:")
        for e in alone:
            (op, name), = e["nodes"]
            print(f"  {op} ({name or '?'}): {e['reason']}")


def cmd_tune_cuda(args) -> int:
    """CUDA tuning without RPC: --prepare builds the candidates here, --ingest stores the GPU's measurements."""
    from tensorforge.compiler.backend.cuda import bundle as cuda_tuning
    from tensorforge.compiler.tune import prepare_model

    if args.prepare and args.ingest:
        raise InputError("tune: --prepare and --ingest are two steps: give one")
    if args.prepare:
        def progress(done, total, name, info):
            print(f"[{done}/{total}] {name}: {info['candidates']} candidate(s)", flush=True)

        m = prepare_model(args.model, args.prepare, dict(args.shape or []), options=_compile_options(args),
                                      candidates=args.trials, progress=progress)
        print(f"bundle {args.prepare}: {len(m['tasks'])} kernel(s) for {m['arch']}; on the GPU machine, from the "
              f"repository root: python {os.path.join(args.prepare, 'measure.py')} {args.prepare}; then here: "
              f"tensorforge tune {args.model} --target cuda --db {args.db} --ingest {args.prepare}")
        return 0
    results = args.results or os.path.join(args.ingest, "results.json")
    done = cuda_tuning.ingest_results(args.ingest, results, args.db)
    faster = sum(1 for e in done.values() if e["best_us"] and e["default_us"] and e["best_us"] < e["default_us"])
    print(f"ingested {len(done)} kernel(s) into {args.db}; {faster} beat the default schedule")
    return 0


def cmd_tune(args) -> int:
    from tqdm import tqdm

    from tensorforge.compiler.tune import tune_model
    from tensorforge.compiler.backend.tuning import parse_duration

    if args.merge:
        from tensorforge.compiler.backend.tuning_merge import merge_databases

        if args.model:
            raise InputError("tune --merge DB... --db OUT merges databases; it takes no model")
        merged = merge_databases(args.merge, args.db)
        print(f"merged {len(args.merge)} database(s) into {args.db}: "
              + ", ".join(f"{d}: {n} kernel(s)" for d, n in merged.items()))
        return 0
    if not args.model:
        raise InputError("tune: give the ONNX model to tune (or --merge DB... to merge databases)")
    if args.target == "cuda" and (args.prepare or args.ingest):
        return cmd_tune_cuda(args)
    if args.prepare or args.ingest or args.results:
        raise InputError("tune: --prepare, --ingest and --results are for --target cuda")
    shard = (0, 1)
    if args.shard:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise InputError(f"tune: --shard {args.shard!r}: give i/n, e.g. 0/2") from None
        if not 0 <= i < n:
            raise InputError(f"tune: --shard {args.shard}: i must be in 0..n-1")
        shard = (i, n)

    try:
        budget = parse_duration(args.time_budget) if args.time_budget else None
    except ValueError as e:
        raise InputError(f"tune: --time-budget {args.time_budget}: {e}") from None
    bar = tqdm(total=None, unit="kernel", desc="tuning", dynamic_ncols=True)

    def progress(done, total, name, info):
        bar.total = total
        best = f"{info['gflops']:.1f} GFLOP/s" if info.get("gflops") else "n/a"
        bar.set_postfix_str(f"{name[:40]} {info['trials']} trials, best {best}, ~{info['left_s'] / 60:.1f} min left")
        bar.update(1)

    result = tune_model(args.model, args.db, dict(args.shape or []), trials=args.trials, time_budget=budget,
                        retune=args.retune, options=_compile_options(args), progress=progress, search=args.search,
                        build_timeout=args.build_timeout, rpc_tracker=args.rpc_tracker, rpc_key=args.rpc_key,
                        shard=shard)
    bar.close()
    print(f"tuned {result.tuned} kernel(s) in {result.seconds:.0f} s; {result.skipped} already in {args.db}; "
          f"{result.remaining} left" + (" (time budget reached: run again to resume)" if result.remaining else ""))
    return 0


def cmd_demo(args) -> int:
    from tensorforge.compiler.api import compile_model
    from tensorforge.compiler.examples import small_cnn_onnx

    model = small_cnn_onnx()
    print("demo: a small CNN (3 conv+batchnorm+relu blocks, global pooling, linear, softmax) on a 1x3x32x32 image")
    t0 = time.perf_counter()
    compiled = compile_model(model, options=_compile_options(args))
    print(f"compiled in {time.perf_counter() - t0:.1f} s: {compiled.num_kernels} kernel calls")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ours = compiled.run({"image": x})[0]
    ours_ms = np.median(compiled.benchmark({"image": x}, repeat=args.repeat)) * 1e3
    try:
        import onnxruntime as ort
    except ImportError:
        from tensorforge.compiler.ir import interpret
        from tensorforge.frontends.onnx import from_onnx

        ref = interpret(from_onnx(model), {"image": x})[0]
        print("onnxruntime is not installed: checked against our numpy reference interpreter instead")
        ref_name, ref_ms = "reference", None
    else:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("TVM_NUM_THREADS", "0") or 0)
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ref = sess.run(None, {"image": x})[0]
        samples = []
        for _ in range(args.repeat + 3):
            t = time.perf_counter()
            sess.run(None, {"image": x})
            samples.append(time.perf_counter() - t)
        ref_name, ref_ms = "onnxruntime", np.median(samples[3:]) * 1e3
    err = float(np.max(np.abs(ours - ref)))
    ok = np.allclose(ours, ref, rtol=1e-3, atol=1e-5)
    print(f"top class: tensorforge {int(ours.argmax())}, {ref_name} {int(ref.argmax())}; max abs difference {err:.2e}"
          f" -> {'match' if ok else 'MISMATCH'}")
    print(f"latency (median of {args.repeat}): tensorforge {ours_ms:.3f} ms"
          + (f", onnxruntime {ref_ms:.3f} ms" if ref_ms is not None else ""))
    return 0 if ok else 1


def cmd_cache(args) -> int:
    from tensorforge.compiler import disk_cache

    root = disk_cache.cache_dir()
    if root is None:
        print(f"no on-disk cache ({disk_cache.CACHE_ENV}={os.environ.get(disk_cache.CACHE_ENV)!r})")
        return 0
    if args.clear:
        deleted = disk_cache.trim_cache(limit=0)
        print(f"deleted {deleted} cached specialization(s) from {root}")
        return 0
    files = disk_cache.cached_files()
    total = sum(size for _, size, _ in files)
    print(f"{root}: {len(files)} compiled specialization(s), {total / 2**20:.1f} MB of at most "
          f"{disk_cache.cache_limit_bytes() / 2**20:.0f} MB ({disk_cache.CACHE_MAX_ENV})")
    return 0


def cmd_opt(args) -> int:
    from tensorforge.compiler.opt import cmd_opt as run

    return run(args)


def cmd_train(args) -> int:
    from tqdm import tqdm

    from tensorforge.compiler.api import compile_training
    from tensorforge.compiler.train_example import quadrant_blobs, small_cnn

    batch = args.batch
    rank, world = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))) if args.distributed else (0, 1)
    if batch % world:
        raise InputError(f"--batch {batch} does not split evenly over {world} processes")
    part = batch // world
    if args.sync_batch_norm and not args.distributed:
        raise InputError("--sync-batch-norm averages batch norm's statistics between the processes: it needs "
                         "--distributed (under torchrun)")
    args.quiet = args.quiet or rank != 0
    for flag, size in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        if size < batch:
            raise InputError(f"{flag} {size} is smaller than --batch {batch}: it must hold at least one batch")
    if args.checkpoint:
        _check_output_file(args.checkpoint, "--checkpoint", "train_example.ckpt")
    t0 = time.perf_counter()
    x_train, y_train = quadrant_blobs(args.train_size, seed=args.seed)
    x_test, y_test = quadrant_blobs(args.test_size // batch * batch, seed=args.seed + 1)
    optimizer = {"name": args.optimizer, "lr": args.lr}
    if args.optimizer == "sgd":
        optimizer["momentum"] = 0.9
    session = compile_training(small_cnn(), "cross_entropy", optimizer, shapes={"x": (part, 1, 16, 16)},
                               lr_schedule={"name": "cosine", "total_steps": args.steps, "warmup_steps": 10},
                               seed=args.seed, distributed=args.distributed, sync_batch_norm=args.sync_batch_norm)
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"train: quadrant-blob task, small CNN, {args.optimizer} lr {args.lr}, batch {batch}"
        + (f" over {world} processes" if args.distributed else "")
        + (", batch norm synchronized" if args.sync_batch_norm else "") + f"; compiled in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    bar = tqdm(range(args.steps), desc="train", unit="step", disable=args.quiet)
    correct = seen = 0
    for step in bar:
        start = (step * batch) % (len(order) - batch + 1)
        idx = order[start:start + batch][rank * part:(rank + 1) * part]  # this process's share of the batch
        loss = session.step({"x": x_train[idx]}, y_train[idx])
        correct += int((session.last_logits.argmax(1) == y_train[idx]).sum())
        seen += part
        if step % 10 == 0 or step == args.steps - 1:
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{correct / seen:.3f}")
            correct = seen = 0
    hits = 0
    for i in range(0, len(x_test), part):
        (logits,) = session.eval({"x": x_test[i:i + part]})
        hits += int((logits.argmax(1) == y_test[i:i + part]).sum())
    accuracy = hits / len(x_test)
    if args.checkpoint:
        session.save_checkpoint(args.checkpoint)
    say(f"held-out accuracy {accuracy:.4f} on {len(x_test)} images; total {time.perf_counter() - t0:.1f} s"
          + (f"; checkpoint -> {args.checkpoint}" if args.checkpoint else ""))
    return 0 if accuracy >= args.min_accuracy else 1


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="tensorforge", description="Compile and run neural networks with TVM kernels.")
    p.add_argument("--verbose", "-v", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    def compile_flags(sp):
        sp.add_argument("--target", default="cpu",
                        help="compilation target: cpu (the default, the host CPU) or cuda (an NVIDIA GPU)")
        sp.add_argument("--arch", help="cuda: GPU architecture, sm_90 (the default, Hopper), sm_80, ...; "
                                       "SASS for it plus PTX for newer GPUs")
        sp.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="fp16/bf16: half-precision matmul/dense/conv operands, fp32 accumulation")
        sp.add_argument("-O", dest="opt_level", type=int, default=2, choices=(0, 1, 2), help="optimization level")
        sp.add_argument("--dump-after", action="append", metavar="PASS", help="print the IR after this pass")
        sp.add_argument("--disable-pass", action="append", metavar="PASS", help="skip this pass")

    c = sub.add_parser("compile", help="compile an ONNX model into an artifact")
    c.add_argument("model", help="ONNX file")
    c.add_argument("-o", "--output", required=True, help="artifact file to write (a cuda artifact: runs where there "
                                                         "is an NVIDIA GPU, compiled here without one)")
    c.add_argument("--shape", action="append", type=parse_shape_arg, metavar="NAME=AxBxC",
                   help="bind an input's shape (repeatable)")
    c.add_argument("--dynamic", action="append", type=parse_dynamic_arg, metavar="NAME=LOW..HIGHxD",
                   help="let an input's dimensions vary in ranges (repeatable); the output is a bundle of the shapes "
                        "compiled: the lower bounds and each --at")
    c.add_argument("--at", action="append", type=parse_shape_arg, metavar="NAME=AxBxC",
                   help="with --dynamic: also compile this shape into the bundle (repeatable)")
    c.add_argument("--decoder", action="store_true",
                   help="a decoder exported with its key/value cache as inputs and outputs (Hugging Face's layout): "
                        "compile it once with the cache in place, for tensorforge generate")
    c.add_argument("--max-length", type=positive_int, default=1024,
                   help="with --decoder: cache slots, the longest prompt + generated text (default 1024)")
    c.add_argument("--prefill", type=positive_int,
                   help="with --decoder: prompt tokens per call (a second plan sharing the weights; 1: none; default "
                        "32 where the model allows)")
    c.add_argument("--print-pass-times", action="store_true", help="print the time of each pass and stage")
    c.add_argument("--tuning-db", action="append", metavar="DIR", help="use tuned schedules from this database")
    c.add_argument("--no-shipped-tuning", action="store_true", help="ignore the repository's own tuning records")
    compile_flags(c)
    c.set_defaults(func=cmd_compile)

    t = sub.add_parser("tune", help="auto-tune a model's kernels into a tuning database (knob search or MetaSchedule)")
    t.add_argument("model", nargs="?", help="ONNX file")
    t.add_argument("--db", required=True, help="tuning database directory (created if missing; resumable)")
    t.add_argument("--rpc-tracker", metavar="HOST:PORT",
                   help="measure on the servers registered with this TVM RPC tracker (python -m tvm.exec.rpc_tracker; "
                        "servers: python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY); built here")
    t.add_argument("--rpc-key", metavar="KEY", help="with --rpc-tracker: the servers' key")
    t.add_argument("--shard", metavar="I/N", help="tune only the I-th of N equal parts of the distinct kernels "
                                                 "(identical machines; join the databases with --merge)")
    t.add_argument("--merge", nargs="+", metavar="DB", help="merge these tuning databases into --db (no model)")
    t.add_argument("--search", choices=("knobs", "metaschedule"), default="knobs",
                   help="knobs: vary the default schedules' tile parameters (fast); metaschedule: MetaSchedule's "
                        "search, --trials candidates per kernel (slow on few cores)")
    t.add_argument("--trials", type=positive_int, default=64,
                   help="metaschedule: measured candidates per kernel (default 64)")
    t.add_argument("--time-budget", help="stop starting new kernels after this long, e.g. 30m, 2h")
    t.add_argument("--retune", action="store_true", help="tune kernels that already have records again")
    t.add_argument("--build-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="metaschedule: seconds a candidate's build or measurement may take before it is dropped "
                        "(default 600; MetaSchedule's own 30 s expires on a loaded small machine)")
    t.add_argument("--shape", action="append", type=parse_shape_arg, metavar="NAME=AxBxC")
    t.add_argument("--prepare", metavar="DIR", help="cuda: build candidates (--trials per kernel) into a bundle "
                                                    "to measure on the GPU machine (DIR/measure.py)")
    t.add_argument("--ingest", metavar="DIR", help="cuda: store a measured bundle's results in --db")
    t.add_argument("--results", metavar="FILE", help="cuda, with --ingest: the results file (default DIR/results.json)")
    compile_flags(t)
    t.set_defaults(func=cmd_tune)

    r = sub.add_parser("run", help="run a compiled artifact on .npy inputs")
    r.add_argument("artifact")
    r.add_argument("--input", "-i", action="append", type=parse_input_arg, metavar="NAME=FILE.npy")
    r.add_argument("-o", "--output-dir", help="write each output to DIR/<name>.npy")
    r.add_argument("--threads", type=positive_int, help="kernel threads (default: all cores)")
    r.add_argument("--benchmark", type=positive_int, metavar="N", help="also time N runs and print the median")
    r.add_argument("--profile", action="store_true", help="time each kernel call; print totals per op and the slowest")
    r.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="generate tokens with a decoder (compiled with --decoder, or ONNX)")
    gen.add_argument("model", help="artifact compiled with `tensorforge compile --decoder`, or the ONNX decoder")
    gen.add_argument("--prompt-ids", required=True, metavar="IDS", help="the prompt's token ids, e.g. 464,2068,318")
    gen.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default 32)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (the default): greedy; else sample")
    gen.add_argument("--top-k", type=positive_int, help="sample from the k most likely tokens")
    gen.add_argument("--seed", type=int, help="random seed for sampling")
    gen.add_argument("--eos", type=int, metavar="ID", help="stop at this token id")
    gen.add_argument("--stream", action="store_true", help="print each token as it comes")
    gen.add_argument("--max-length", type=positive_int, default=1024,
                     help="ONNX input: cache slots to compile for (default 1024)")
    gen.add_argument("--prefill", type=positive_int, help="ONNX input: prompt tokens per call (default 32)")
    gen.add_argument("--threads", type=positive_int, help="kernel threads (default: all cores)")
    compile_flags(gen)
    gen.set_defaults(func=cmd_generate)

    sv = sub.add_parser("serve", help="serve artifacts over HTTP (KServe v2 / Triton inference protocol)")
    sv.add_argument("models", nargs="+", metavar="MODEL", help="artifacts or bundles (.onnx files: on onnxruntime, "
                    "for comparison); each served under its file name's stem")
    sv.add_argument("--name", action="append", help="the name to serve a model under (one per model, in order)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=positive_int, default=8000, help="port (default 8000)")
    sv.add_argument("--max-concurrency", type=positive_int, help="runs at once per model (default: the CPU count)")
    sv.add_argument("--max-batch", type=positive_int,
                    help="batch requests dynamically, up to this many rows along axis 0 (samples must not meet)")
    sv.add_argument("--max-delay-ms", type=positive_float, default=2.0,
                    help="with --max-batch: how long the first request waits for others (default 2 ms)")
    sv.add_argument("--max-request-mb", type=positive_float, default=64.0, help="largest request body (default 64)")
    sv.add_argument("--threads", type=positive_int, help="kernel threads (default: all cores)")
    sv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    sv.set_defaults(func=cmd_serve)

    i = sub.add_parser("inspect", help="print the IR of an ONNX model or a compiled artifact")
    i.add_argument("model", help="ONNX file or artifact")
    i.add_argument("--shape", action="append", type=parse_shape_arg, metavar="NAME=AxBxC")
    i.add_argument("--json", action="store_true", help="print the kernel and memory report as JSON")
    i.add_argument("--fusion", action="store_true", help="list the fused kernels, and why each other op is alone")
    i.add_argument("--optimized", action="store_true", help="ONNX: print the IR after the passes")
    i.add_argument("--train", action="store_true",
                   help="ONNX: the training program (forward, loss, backward, update) instead; --json adds "
                        "saved_activation_bytes and state_bytes")
    i.add_argument("--loss", default="cross_entropy", help="with --train: the loss (default cross_entropy)")
    i.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"), help="with --train (default sgd)")
    compile_flags(i)
    i.set_defaults(func=cmd_inspect)

    tr = sub.add_parser("train", help="train a small CNN on a built-in synthetic task (compile_training demo)")
    tr.add_argument("--steps", type=positive_int, default=300, help="training steps (default 300)")
    tr.add_argument("--batch", type=positive_int, default=32, help="batch size (default 32)")
    tr.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"))
    tr.add_argument("--lr", type=positive_float, default=0.05,
                    help="peak learning rate (cosine schedule, 10 warmup steps)")
    tr.add_argument("--train-size", type=positive_int, default=4096)
    tr.add_argument("--test-size", type=positive_int, default=1024)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--checkpoint", "-o", default="train_example.ckpt", help="checkpoint file to write ('' for none)")
    tr.add_argument("--min-accuracy", type=float, default=0.95, help="exit 1 below this held-out accuracy")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.add_argument("--distributed", action="store_true",
                    help="data-parallel over the processes torchrun starts (torchrun --nproc_per_node N --no-python "
                         "tensorforge train --distributed): each steps on its 1/N of every batch")
    tr.add_argument("--sync-batch-norm", action="store_true",
                    help="with --distributed: batch norm's statistics over the whole batch, averaged between the "
                         "processes in every step (PyTorch's SyncBatchNorm); without it each process's own")
    tr.set_defaults(func=cmd_train)

    o = sub.add_parser("opt", help="run named passes over IR text and print the IR (golden tests from files)")
    o.add_argument("file", nargs="?", help="IR file (as `tensorforge inspect` prints it), or - for standard input")
    o.add_argument("-p", "--passes", action="append", metavar="PASS{opt=v},...",
                   help="passes to run, in order, comma-separated (repeatable); --list names them")
    o.add_argument("--params", metavar="FILE.npz", help="data of the params the text does not inline, by name")
    o.add_argument("-o", "--output", metavar="FILE.ir", help="write the IR here instead of standard output")
    o.add_argument("--params-out", metavar="FILE.npz", help="write the resulting non-inline params' data here")
    o.add_argument("--no-verify", action="store_true", help="do not verify the IR after each pass")
    o.add_argument("--list", action="store_true", help="list every pass with its options and exit")
    o.set_defaults(func=cmd_opt)

    ca = sub.add_parser("cache", help="show (or --clear) the on-disk cache of specializations compiled at run time")
    ca.add_argument("--clear", action="store_true", help="delete every cached specialization")
    ca.set_defaults(func=cmd_cache)

    d = sub.add_parser("demo", help="compile and run a built-in CNN, compared with onnxruntime")
    d.add_argument("--repeat", type=positive_int, default=50, help="timed runs per engine")
    compile_flags(d)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"tensorforge: error: {e}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except TensorForgeError as e:
        if args.verbose:
            raise
        print(f"tensorforge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tensorforge: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: still one line, with a way to see more
        if args.verbose:
            raise
        print(f"tensorforge: internal error: {type(e).__name__}: {e} (run with --verbose for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
