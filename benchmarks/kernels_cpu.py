"""GFLOP/s of the scheduled CPU kernels on ResNet-50-like and BERT-like shapes (batch 1, fp32).

Run: TVM_NUM_THREADS=2 python benchmarks/kernels_cpu.py [name-substring ...]
(matmul kernels: `bert_attn`, `matmul_`; BERT-base attention shapes, seq 128)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tvm
from tvm import te

from tensorforge.compiler.backend.cpu.rules import schedule_cpu
from tensorforge.compiler.ops import packed as K

# name: (C, H, W, OC, k, stride, pad, groups)
CONVS = {
    "r50_3x3_64_56": (64, 56, 56, 64, 3, 1, 1, 1),
    "r50_1x1_256to64_56": (256, 56, 56, 64, 1, 1, 0, 1),
    "r50_1x1_64to256_56": (64, 56, 56, 256, 1, 1, 0, 1),
    "r50_3x3_128_28": (128, 28, 28, 128, 3, 1, 1, 1),
    "r50_3x3_256_14": (256, 14, 14, 256, 3, 1, 1, 1),
    "r50_3x3_512_7": (512, 7, 7, 512, 3, 1, 1, 1),
    "r50_stem_7x7s2": (3, 224, 224, 64, 7, 2, 3, 1),
    "r50_1x1s2_256to512_56": (256, 56, 56, 512, 1, 2, 0, 1),
    "r50_1x1s2_1024to2048_14": (1024, 14, 14, 2048, 1, 2, 0, 1),
    "vgg_3x3_3to64_224": (3, 224, 224, 64, 3, 1, 1, 1),
    "dw_3x3_240_28": (240, 28, 28, 240, 3, 1, 1, 240),
    "dw_3x3_240_30_nopad": (240, 30, 30, 240, 3, 1, 0, 240),
    "dw_3x3s2_112_56": (112, 56, 56, 112, 3, 2, 1, 112),
    "dw_3x3_544_7": (544, 7, 7, 544, 3, 1, 1, 544),
    "shuffle_g3_1x1_240to240_28": (240, 28, 28, 240, 1, 1, 0, 3),
    "shuffle_g4_1x1_136_28_plain": (136, 28, 28, 136, 1, 1, 0, 4),
}
DENSES = {"fc_2048to1000_m1": (1, 2048, 1000), "fc_2048to1000_m8": (8, 2048, 1000)}
# matmul kernels as the fuse pass groups them (IR text; transposes are prologues, the division an epilogue)
MATMULS = {
    "bert_attn_scores": """graph g(%q: f32[1,128,12,64], %k: f32[1,128,12,64]) {
  %d = param f32[] = [8.0]
  %qt = transpose(%q) {perm=(0, 2, 1, 3)} : f32[1,12,128,64]
  %kt = transpose(%k) {perm=(0, 2, 3, 1)} : f32[1,12,64,128]
  %s = matmul(%qt, %kt) : f32[1,12,128,128]
  %o = div(%s, %d) : f32[1,12,128,128]
  return %o
}""",
    "bert_attn_context": """graph g(%p: f32[1,12,128,128], %v: f32[1,128,12,64]) {
  %vt = transpose(%v) {perm=(0, 2, 1, 3)} : f32[1,12,128,64]
  %o = matmul(%p, %vt) : f32[1,12,128,64]
  return %o
}""",
    "matmul_128x768x768": """graph g(%a: f32[128,768], %b: f32[768,768]) {
  %o = matmul(%a, %b) : f32[128,768]
  return %o
}""",
}


def _aligned(a: np.ndarray) -> tvm.runtime.Tensor:
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def _time(f, args, flops: float) -> tuple[float, float]:
    ev = f.time_evaluator("main", tvm.cpu(), number=10, repeat=5, min_repeat_ms=50)
    t = min(ev(*args).results)
    return t * 1e3, flops / t / 1e9


def _build(tensors, target):
    t0 = time.perf_counter()
    func = schedule_cpu(te.create_prim_func(tensors), target)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    return ex.mod, time.perf_counter() - t0


def bench_conv(name, spec, target):
    c, h, w, oc, k, s, p, g = spec
    layout = K.conv2d_weight_layout(oc, c // g, g, k, k)
    wt = np.random.rand(oc, c // g, k, k).astype("float32")
    wp = K.pack_conv2d_weight(wt, layout)
    x = te.placeholder((1, c, h, w), name="x")
    wpl = te.placeholder(wp.shape, name="w")
    b = te.placeholder((oc,), name="b")
    y = K.conv2d_nchw_compute(x, wpl, b, layout=layout, out_channels=oc, kernel=(k, k), strides=(s, s),
                              pads=(p, p, p, p), dilations=(1, 1), groups=g)
    f, build_s = _build([x, wpl, b, y], target)
    args = [_aligned(np.random.rand(1, c, h, w).astype("float32")), _aligned(wp),
            _aligned(np.random.rand(oc).astype("float32")), tvm.runtime.empty([int(d) for d in y.shape], "float32")]
    oh, ow = (int(d) for d in y.shape[2:])
    flops = 2.0 * oc * oh * ow * (c // g) * k * k
    ms, gf = _time(f, args, flops)
    print(f"{name:30s} {layout['kind']:9s} {ms:8.3f} ms {gf:7.1f} GFLOP/s  build {build_s:.2f} s", flush=True)


def bench_dense(name, spec, target):
    m, kk, n = spec
    layout = K.dense_weight_layout(n, kk)
    wp = K.pack_dense_weight(np.random.rand(n, kk).astype("float32"), layout)
    x = te.placeholder((m, kk), name="x")
    wpl = te.placeholder(wp.shape, name="w")
    b = te.placeholder((n,), name="b")
    y = K.dense_compute(x, wpl, b, layout=layout, n=n)
    f, build_s = _build([x, wpl, b, y], target)
    args = [_aligned(np.random.rand(m, kk).astype("float32")), _aligned(wp),
            _aligned(np.random.rand(n).astype("float32")), tvm.runtime.empty((m, n), "float32")]
    ms, gf = _time(f, args, 2.0 * m * n * kk)
    print(f"{name:30s} {'dense':9s} {ms:8.3f} ms {gf:7.1f} GFLOP/s  build {build_s:.2f} s", flush=True)


def bench_matmul(name, text, target):
    from tensorforge.compiler.backend.lower import build_prim_func, partition
    from tensorforge.compiler.ir import parse_graph
    from tensorforge.compiler.passes import fuse

    g = fuse(parse_graph(text))
    (kernel,) = [s for s in partition(g) if hasattr(s, "spec")]
    t0 = time.perf_counter()
    func = schedule_cpu(build_prim_func(kernel.spec), target)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    build_s = time.perf_counter() - t0
    values = {p.name: np.asarray(p.data, np.float32) for p in g.params}
    args = [tvm.runtime.tensor(values.get(v.name, np.asarray(np.random.rand(*v.type.shape), np.float32)), tvm.cpu())
            for v in kernel.inputs]  # not _aligned: np.ascontiguousarray makes a 0-d param 1-d
    (out,) = kernel.outputs
    args.append(tvm.runtime.empty(out.type.shape, "float32"))
    mm = [n for n in kernel.nodes if n.op.name == "matmul"][0]
    flops = 2.0 * np.prod(mm.outputs[0].type.shape) * mm.inputs[0].type.shape[-1]
    ms, gf = _time(ex.mod, args, flops)
    print(f"{name:30s} {'matmul':9s} {ms:8.3f} ms {gf:7.1f} GFLOP/s  build {build_s:.2f} s", flush=True)


def bench_numpy_peak():
    a = np.random.rand(512, 512).astype("float32")
    best = min(_wall(lambda: a @ a) for _ in range(5))
    print(f"{'numpy matmul 512^3':30s} {'blas':9s} {best * 1e3:8.3f} ms {2 * 512 ** 3 / best / 1e9:7.1f} GFLOP/s")


def _wall(fn, n=20):
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(filters: list[str]) -> None:
    target = tvm.target.Target.from_device(tvm.cpu())
    print(f"threads={tvm.runtime.num_threads()} target={target}")
    bench_numpy_peak()
    for name, spec in CONVS.items():
        if not filters or any(f in name for f in filters):
            bench_conv(name, spec, target)
    for name, spec in DENSES.items():
        if not filters or any(f in name for f in filters):
            bench_dense(name, spec, target)
    for name, text in MATMULS.items():
        if not filters or any(f in name for f in filters):
            bench_matmul(name, text, target)


if __name__ == "__main__":
    main(sys.argv[1:])
