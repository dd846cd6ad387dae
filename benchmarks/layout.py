"""Does the blocked activation layout NCHW[16]c pay? Each model compiled twice, with the `alter_layout` pass and
without it (NCHW activations, the same packed weights and conv register tiles), run interleaved in one process;
whole-model medians, and each conv kernel's time (the least of its per-round medians) side by side (from `CompiledModel.profile`, joined on the
conv's node name). Writes benchmarks/results/layout.md.

    TVM_NUM_THREADS=1 python benchmarks/layout.py [--rounds 8] [--kernels 15] [model ...]
(one thread: on a shared 2-core machine a second busy core stalls every 2-thread parallel kernel, which swamps the
difference measured here.)
Models: `torch:NAME` from benchmarks/models.py (default resnet50, mobilenet_v2) and light model names.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "2")

from benchmarks.light_models import timed  # noqa: E402
from benchmarks.machine import describe_machine, write_lines  # noqa: E402
from tensorforge import compile_model  # noqa: E402
from tensorforge.compiler.driver import compile_graph, import_model, optimize  # noqa: E402
from tensorforge.compiler.options import CompileOptions  # noqa: E402
from tensorforge.compiler.examples import LIGHT_MODELS, light_input, light_path, randomize_weights  # noqa: E402

DEFAULT_MODELS = ["torch:resnet50", "torch:mobilenet_v2", "densenet121", "inception_v1", "squeezenet", "vgg19"]
OUT = os.path.join(ROOT, "benchmarks", "results", "layout.md")


def load(name: str) -> tuple[onnx.ModelProto, dict]:
    if name.startswith("torch:"):
        from benchmarks.models import example_feeds, export_onnx

        model = export_onnx(name[6:])
        feeds, _ = example_feeds(name[6:])
        return model, feeds
    model = randomize_weights(onnx.load(light_path(name)), seed=0)
    return model, light_input(model)


def conv_times(profile: list[dict]) -> dict[str, float]:
    return {s["node"]: s["ms"] for s in profile if "conv" in s["op"]}


def bench(name: str, rounds: int) -> dict:
    model, feeds = load(name)
    g = optimize(import_model(model), CompileOptions())
    shapes = conv_shapes(g)
    blocked = compile_graph(g, CompileOptions())
    plain = compile_model(model, options=CompileOptions(disabled_passes=frozenset({"alter_layout"})))
    out_b, out_p = blocked.run(feeds)[0], plain.run(feeds)[0]
    err = float(np.abs(out_b - out_p).max() / max(1e-6, np.abs(out_p).max()))
    tb, tp = [], []
    timed(lambda: blocked.run(feeds), 2)
    timed(lambda: plain.run(feeds), 2)
    pb, pp = [], []
    for _ in range(rounds):
        tb += timed(lambda: blocked.run(feeds), 3)
        tp += timed(lambda: plain.run(feeds), 3)
        pb.append(conv_times(blocked.profile(feeds, repeat=2)))
        pp.append(conv_times(plain.profile(feeds, repeat=2)))
    per_conv = {}
    for node in pb[0]:
        if node in pp[0]:
            # min over rounds of each round's median: the kernel's time with the least interference from other jobs
            per_conv[node] = (float(np.min([p[node] for p in pb])), float(np.min([p[node] for p in pp])))
    return {"model": name, "blocked_ms": np.median(tb) * 1e3, "plain_ms": np.median(tp) * 1e3,
            "blocked_min_ms": np.min(tb) * 1e3, "plain_min_ms": np.min(tp) * 1e3,
            "kernels": (blocked.num_kernels, plain.num_kernels), "rel_err": err, "convs": per_conv,
            "shapes": shapes}


def conv_shapes(g) -> dict[str, str]:
    """node name -> 'IC->OC KxK/s HxW' for the convs of an optimized graph."""
    out = {}
    last_of_group = {n.group: n.name for n in g.nodes if n.group}
    for n in g.nodes:
        if n.op.name.startswith("conv2d"):
            x, w = n.inputs[0].type, n.inputs[1].type
            ic = x.shape[1] * (x.shape[4] if x.rank == 5 else 1)
            out[n.name] = (f"{ic}->{n.attrs['out_channels']} {w.shape[2]}x{w.shape[3]}/{n.attrs['strides'][0]} "
                           f"{x.shape[2]}x{x.shape[3]}")
            if n.group:
                out[last_of_group[n.group]] = out[n.name]  # the plan names a fused kernel by its last node
    return out


def conv_graphs(shape: str):
    """One conv (+ bias + ReLU) of `shape` ('IC->OC KxK/S HxW') twice: NCHW, and NCHW[16]c in and out (as inside a
    chain of blocked convs); and the feeds of each."""
    from tensorforge.compiler.ir import parse_graph
    from tensorforge.compiler.ops.nchwc import block_nchw

    ic, oc, kh, kw, stride, h, w = parse_conv_shape(shape)
    pad = kh // 2
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    conv = f"strides=({stride}, {stride}), pads=({pad}, {pad}, {pad}, {pad}), dilations=(1, 1)"
    plain = f"""graph g(%x: f32[1,{ic},{h},{w}]) {{
  %w = param f32[{oc},{ic},{kh},{kw}]
  %b = param f32[{oc}]
  %c = conv2d(%x, %w, %b) {{{conv}, groups=1}} : f32[1,{oc},{oh},{ow}]
  %r = relu(%c) : f32[1,{oc},{oh},{ow}]
  return %r
}}"""
    blocked = f"""graph g(%x: f32[1,{ic // 16},{h},{w},16]) {{
  %w = param f32[{oc // 16},{ic // 16},{kh},{kw},16,16]
  %b = param f32[{oc}]
  %c = conv2d_nchwc(%x, %w, %b) {{{conv}, in_block=16, block=16, out_channels={oc}}} : f32[1,{oc // 16},{oh},{ow},16]
  %r = relu(%c) : f32[1,{oc // 16},{oh},{ow},16]
  return %r
}}"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, ic, h, w)).astype(np.float32)
    graphs = []
    for text, feed in ((plain, x), (blocked, block_nchw(x, 16))):
        g = parse_graph(text)
        params = {p.name: rng.standard_normal(p.type.shape).astype(np.float32) * 0.1 for p in g.params}
        graphs.append((parse_graph(text, params), {"x": feed}))
    return graphs


RESNET_SHAPES = ["64->64 3x3/1 56x56", "64->256 1x1/1 56x56", "256->64 1x1/1 56x56", "128->128 3x3/1 28x28",
                 "512->128 1x1/1 28x28", "256->256 3x3/1 14x14", "1024->256 1x1/1 14x14", "512->512 3x3/1 7x7",
                 "2048->512 1x1/1 7x7"]


def parse_conv_shape(shape: str) -> tuple[int, ...]:
    """'IC->OC KHxKW/S HxW' (as conv_shapes writes it) -> (ic, oc, kh, kw, stride, h, w)."""
    chans, k, hw = shape.split()
    kk, stride = k.split("/")
    return (*map(int, chans.split("->")), *map(int, kk.split("x")), int(stride), *map(int, hw.split("x")))


def conv_flops(shape: str) -> float:
    ic, oc, kh, kw, stride, h, w = parse_conv_shape(shape)
    return 2.0 * ic * oc * kh * kw * (h // stride) * (w // stride)


def bench_kernels(shapes: list[str], repeat: int) -> list[tuple[str, float, float]]:
    """Each conv shape alone, NCHW[16]c against NCHW (layout transforms excluded: inside a chain there are none);
    the least time of `repeat` interleaved runs each, the run with the least interference from other jobs."""
    rows = []
    for shape in shapes:
        (gp, fp), (gb, fb) = conv_graphs(shape)
        off = CompileOptions(disabled_passes=frozenset({"alter_layout"}))
        plain, blocked = compile_model(gp, options=off), compile_model(gb)
        tb, tp = [], []
        for _ in range(repeat):
            tb += blocked.benchmark(fb, repeat=3, warmup=1)
            tp += plain.benchmark(fp, repeat=3, warmup=1)
        rows.append((shape, min(tb) * 1e3, min(tp) * 1e3))
        print(f"{shape}: NCHW[16]c {rows[-1][1]:.3f} ms, NCHW {rows[-1][2]:.3f} ms, "
              f"ratio {rows[-1][1] / rows[-1][2]:.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--kernels", type=int, default=15, metavar="N",
                    help="also time ResNet-50's distinct 3x3 and 1x1 conv shapes alone, N interleaved rounds (0: no)")
    args = ap.parse_args(argv)
    kernel_rows = bench_kernels(RESNET_SHAPES, args.kernels) if args.kernels else []
    rows = []
    for name in args.models:
        r = bench(name, args.rounds)
        rows.append(r)
        print(f"{name}: blocked {r['blocked_ms']:.2f} ms, plain {r['plain_ms']:.2f} ms, "
              f"ratio {r['blocked_ms'] / r['plain_ms']:.3f}; least {r['blocked_min_ms']:.2f} / {r['plain_min_ms']:.2f} "
              f"= {r['blocked_min_ms'] / r['plain_min_ms']:.3f}; rel err {r['rel_err']:.1e}", flush=True)
    lines = ["# Blocked activation layout NCHW[16]c vs NCHW", "",
             f"Machine: {describe_machine()}. {os.environ['TVM_NUM_THREADS']} thread(s), batch 1, interleaved runs in "
             "one process: medians, and the least time (the run with the least interference from other jobs).",
             f"Generated by `TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']} python benchmarks/layout.py`.", "",
             "| model | NCHW[16]c ms | NCHW ms | ratio | least: NCHW[16]c | NCHW | ratio | kernels (blocked / plain) "
             "| convs faster blocked |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        faster = sum(1 for b, p in r["convs"].values() if b < p)
        lines.append(f"| {r['model']} | {r['blocked_ms']:.2f} | {r['plain_ms']:.2f} | "
                     f"{r['blocked_ms'] / r['plain_ms']:.3f} | {r['blocked_min_ms']:.2f} | {r['plain_min_ms']:.2f} | "
                     f"{r['blocked_min_ms'] / r['plain_min_ms']:.3f} | {r['kernels'][0]} / {r['kernels'][1]} | "
                     f"{faster}/{len(r['convs'])} |")
    if kernel_rows:
        lines += ["", "## One conv alone (+ bias + ReLU): NCHW[16]c in and out vs NCHW, no layout transforms", "",
                  "Least time of the interleaved runs (ms) and GFLOP/s.", "",
                  "| shape | NCHW[16]c ms | NCHW ms | ratio | NCHW[16]c GFLOP/s |", "|---|---:|---:|---:|---:|"]
        for shape, b, p in kernel_rows:
            lines.append(f"| {shape} | {b:.3f} | {p:.3f} | {b / p:.2f} | {conv_flops(shape) / b / 1e6:.0f} |")
    for r in rows:
        if not r["convs"]:
            continue
        lines += ["", f"## {r['model']}: conv kernels (ms, least per-round median, each with its fused epilogue)", "",
                  "| conv node | shape | NCHW[16]c | NCHW | ratio |", "|---|---|---:|---:|---:|"]
        for node, (b, p) in r["convs"].items():
            lines.append(f"| {node} | {r['shapes'].get(node, '')} | {b:.3f} | {p:.3f} | {b / p:.2f} |")
    write_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
