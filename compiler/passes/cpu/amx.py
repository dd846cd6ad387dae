"""amx_dense, amx_conv, amx_attention: the CPU's bf16 mode puts dense, conv and attention products on the CPU's bf16
dot-product unit: AMX tiles where the CPU has them, else AVX512-BF16 vector dot products (`bf16_unit`); lstm_bf16
puts an LSTM's recurrent product on AVX512-BF16 dot products."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph
from tensorforge.compiler.ops import amx
from tensorforge.runtime.cpu_features import cpu_features, cpu_vendor, has_amx
from tensorforge.runtime.errors import InputError

BF16_UNIT_ENV = "TENSORFORGE_BF16_UNIT"


def bf16_units_here() -> list[str]:
    """The bf16 units this CPU has, of ops/amx.py UNITS (whether or not `bf16_unit` would pick them)."""
    return [u for u, ok in (("amx", has_amx()), ("avx512bf16", "avx512_bf16" in cpu_features())) if ok]


def _wanted_unit() -> str:
    """TENSORFORGE_BF16_UNIT as set ("" where unset)."""
    return os.environ.get(BF16_UNIT_ENV, "").strip().lower()


def bf16_unit() -> str | None:
    """The unit that computes the bf16 mode's products on this CPU: "amx" (AMX-BF16 tiles) where it has them,
    "avx512bf16" (`vdpbf16ps`) on an AMD CPU with AVX512-BF16 (Zen 4 and later), else None (the float32 kernels,
    with the weights stored as bfloat16). TENSORFORGE_BF16_UNIT=amx|avx512bf16|none picks another unit this CPU
    has: on an AMX Xeon, `avx512bf16` compiles the kernels a Zen 4 would run (benchmarks/bf16_units.py).

    Why not AVX512-BF16 on Intel: measured on an Emerald Rapids Xeon (Golden Cove cores), `vdpbf16ps` zmm issues
    once per two cycles, 16 multiply-adds per cycle against 32 for the two fp32 FMA ports, so its kernels run at
    half the fp32 kernels' speed (benchmarks/results/bf16_units.md); a Xeon that exposes AVX512-BF16 but not AMX
    (a VM, Cooper Lake) keeps the fp32 kernels. Zen 4 issues `vdpbf16ps` zmm like a zmm FMA (two 256-bit halves),
    twice the multiply-adds of fp32."""
    have = bf16_units_here()
    wanted = _wanted_unit()
    if wanted:
        if wanted not in (*amx.UNITS, "none"):
            raise InputError(f"{BF16_UNIT_ENV}={wanted!r} is not a bf16 unit; choose one of amx, avx512bf16, none")
        if wanted != "none" and wanted not in have:
            raise InputError(f"{BF16_UNIT_ENV}={wanted}: this CPU has no {wanted.upper()} (its flags lack it)")
        return None if wanted == "none" else wanted
    if "amx" in have:
        return "amx"
    return "avx512bf16" if "avx512bf16" in have and cpu_vendor() == "AuthenticAMD" else None


def replace(g: Graph, n, op, inputs, attrs) -> None:
    """Replace the one-output node `n` by `op(inputs)`, in its place in the order."""
    (new_out,) = g.add_node(op, inputs, attrs, name=n.name, index=g.nodes.index(n))
    g.take_over(n, new_out)


@dataclass(frozen=True)
class AmxDense:
    """amx_dense: `dense(x, W)` with a float32 param weight and at least `amx.MIN_ROWS` rows becomes
    `dense_amx(x, pack_amx_weight(W))` (ops/amx.py): x and W rounded to bfloat16, products summed in float32 on
    the AMX unit (or with AVX512-BF16 dot products: `unit`), 8 bits of mantissa per operand as in OpenVINO's and
    PyTorch's bf16 modes. On a CPU without either the pass changes nothing (the bf16_weights pass then stores the
    packed weights as bfloat16).

    It runs before pack_weights, which packs the dense nodes it leaves. Weights computed at run time (training)
    keep the float32 kernels."""

    name: ClassVar[str] = "amx_dense"
    unit: str | None = None  # None: this CPU's (bf16_unit); tests name one (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        unit = self.unit or bf16_unit()
        if unit is None:
            return g
        packed: dict = {}  # one packed weight per float32 weight, shared by its readers
        for n in list(g.nodes):
            if n.op is not ops.dense:
                continue
            x, w = n.inputs[0], n.inputs[1]
            if not (w.is_param and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"
                    and x.type.shape[0] >= amx.MIN_ROWS):
                continue
            if w not in packed:
                packed[w] = g.add_param(w.name + ".amx", amx.pack_amx_weight(w.data))
            n_out, k = w.type.shape
            replace(g, n, ops.dense_amx, [x, packed[w]] + n.inputs[2:], {"n": n_out, "k": k, "unit": unit})
        g.remove_unused()
        return g


amx_dense = AmxDense()


@dataclass(frozen=True)
class MergeSiblingDenses:
    """merge_denses: denses reading the same x (at least amx.MIN_ROWS rows) with float32 param weights, all with a
    param bias or all without (attention's q, k and v projections), become one dense over their weights stacked
    along N; each former dense's readers take its columns of the result (a `strided_slice`, which fuses with the heads'
    reshape and transpose that follow it). One kernel with 3x the columns instead of three: x is converted to the
    bf16 tile layout once, and the tile tasks are 3x as many. BERT-base's three 128 x 768 -> 768 projections took
    0.168 ms each on AMX in the model (one core), the kernel alone 0.128 ms.

    The CPU's bf16 mode only, before amx_dense (which then takes the merged dense) and on a CPU with a bf16 unit."""

    name: ClassVar[str] = "merge_denses"
    unit: str | None = None  # None: this CPU's (bf16_unit); tests name one (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        if (self.unit or bf16_unit()) is None:
            return g
        siblings: dict = {}
        for n in g.nodes:
            if n.op is not ops.dense:
                continue
            x, w, bias = n.inputs[0], n.inputs[1], n.inputs[2:]
            if (w.is_param and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"
                    and x.type.shape[0] >= amx.MIN_ROWS and all(b.is_param and b.data is not None for b in bias)):
                siblings.setdefault((x, len(bias)), []).append(n)
        for (x, has_bias), group in siblings.items():
            if len(group) < 2:
                continue
            weights = np.concatenate([np.asarray(n.inputs[1].data, np.float32) for n in group])
            inputs = [x, g.add_param(f"{group[0].inputs[1].name}.merged", weights)]
            if has_bias:
                inputs.append(g.add_param(f"{group[0].inputs[2].name}.merged",
                                          np.concatenate([np.asarray(n.inputs[2].data, np.float32) for n in group])))
            at = min(g.nodes.index(n) for n in group)
            (y,) = g.add_node(ops.dense, inputs, {}, name=f"{group[0].name or 'dense'}.merged", index=at)
            rows, start = x.type.shape[0], 0
            for i, n in enumerate(group):
                width = n.inputs[1].type.shape[0]
                (part,) = g.add_node(ops.strided_slice, [y], {"begins": (0, start), "ends": (rows, start + width),
                                                      "strides": (1, 1)}, name=f"{n.name}.columns", index=at + 1 + i)
                g.take_over(n, part)
                start += width
        g.remove_unused()
        return g


merge_denses = MergeSiblingDenses()


@dataclass(frozen=True)
class AmxConv:
    """amx_conv: `conv2d_nchwc` on an NCHW[16]c input (or an NCHW one with MIN_PLAIN_CONV_REDUCTION values per output,
    blocked by a to_blocked copy first) with NCHW[16]c output (groups 1), a float32 param weight and equal strides
    becomes `conv2d_amx` (ops/amx_conv.py), the implicit GEMM on AMX tiles: x and the weight rounded
    to bfloat16, sums in float32, the same layouts in and out (or with AVX512-BF16 dot products: `unit`). On
    AVX512-BF16 a 3x3 stride-1 conv on 32-channel multiples becomes `winograd_conv2d` in bf16 instead (unit
    avx512bf16, F(2x2, 3x3): `_dp_winograd_wanted`). On a CPU without either unit it changes nothing.

    It runs after alter_layout (which makes the blocked convs) and before winograd, which would otherwise take the
    3x3 convs in float32."""

    name: ClassVar[str] = "amx_conv"
    unit: str | None = None  # None: this CPU's (bf16_unit); tests name one (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import amx_conv, winograd

        unit = self.unit or bf16_unit()
        if unit is None:
            return g
        packed: dict = {}
        for n in list(g.nodes):
            if n.op is not ops.conv2d_nchwc:
                continue
            x, w, a = n.inputs[0], n.inputs[1], n.attrs
            plain = a["in_block"] == 0  # an NCHW input (ConvNeXt's downsampling after its channels-first norm)
            if not ((a["in_block"] == amx_conv.IN_BLOCK or plain and x.type.shape[1] % amx_conv.IN_BLOCK == 0)
                    and a["block"] == amx_conv.IN_BLOCK and w.is_param and w.data is not None
                    and w.type.dtype == "float32" and x.type.dtype == "float32" and a["strides"][0] == a["strides"][1]):
                continue
            kh, kw = w.type.shape[2], w.type.shape[3]
            in_channels = x.type.shape[1] * (1 if plain else amx_conv.IN_BLOCK)
            if unit == "avx512bf16" and not plain and _dp_winograd_wanted(n, in_channels):
                if w not in packed:
                    packed[w] = g.add_param(w.name + ".winograd_dp", winograd.transform_weight_dp(_oihw(w, a)))
                replace(g, n, ops.winograd_conv2d, [x, packed[w]] + n.inputs[2:],
                        {"pads": a["pads"], "tile": winograd.DP_TILE, "out_channels": a["out_channels"],
                         "unit": unit})
                continue
            if in_channels * kh * kw < (MIN_PLAIN_CONV_REDUCTION if plain else MIN_CONV_REDUCTION):
                continue
            if plain:  # blocked for the AMX kernel: one layout copy against a float32 conv
                (x,) = g.add_node(ops.to_blocked, [x], {"block": amx_conv.IN_BLOCK}, name=f"{n.name}.blocked",
                                  index=g.nodes.index(n))
            if w not in packed:
                packed[w] = g.add_param(w.name + ".amx", amx_conv.pack_amx_conv_weight(_oihw(w, a)))
            attrs = {"strides": a["strides"], "pads": a["pads"], "dilations": a["dilations"],
                     "out_channels": a["out_channels"], "in_channels": in_channels,
                     "kernel": (kh, kw), "unit": unit}
            replace(g, n, ops.conv2d_amx, [x, packed[w]] + n.inputs[2:], attrs)
        g.remove_unused()
        return g


amx_conv = AmxConv()


def _oihw(w, a) -> np.ndarray:
    """A conv2d_nchwc's packed param weight `w` (attrs `a`) as OIHW float32."""
    from tensorforge.compiler.ops.nchwc import _nchwc_weight
    from tensorforge.compiler.ops.packed import unpack_conv2d_weight

    return unpack_conv2d_weight(_nchwc_weight(np.asarray(w.data), a["in_block"]), wlayout="packed", block=a["block"],
                                out_channels=a["out_channels"])


# On AVX512-BF16 a 3x3 stride-1 conv on multiples of 32 channels with at least this many 2x2 output tiles runs as
# Winograd F(2x2, 3x3) in bf16 (ops/winograd.py unit avx512bf16): 16 products per 4 outputs instead of 36.
# Zen 4, one core: ResNet-50 bf16 44.0 -> 39.1 ms (its 3x3 convs at 14x14 1.1 -> 0.75 ms; at 56x56, 64 channels,
# where V and M stream through memory, 1.07 -> 1.04).
MIN_DP_WINOGRAD_TILES = 4


def _dp_winograd_wanted(n, in_channels: int) -> bool:
    a, w = n.attrs, n.inputs[1]
    _, _, oh, ow, _ = n.outputs[0].type.shape
    tiles = n.outputs[0].type.shape[0] * -(-oh // 2) * -(-ow // 2)
    return (tuple(w.type.shape[2:4]) == (3, 3) and tuple(a["strides"]) == (1, 1) and tuple(a["dilations"]) == (1, 1)
            and in_channels % amx.K_BLOCK == 0 and a["out_channels"] % amx.N_TILE == 0
            and tiles >= MIN_DP_WINOGRAD_TILES)


@dataclass(frozen=True)
class AmxStem:
    """amx_stem: a strided conv on an image's few channels (ResNet-50's 7x7/2 and MobileNetV2's 3x3/2 on 3 channels:
    `conv2d_nchwc` reading the plain input, `in_block` 0) becomes `conv2d_amx`, stride 1, over the input's
    space-to-depth:

        x (N, C, H, W) -> pad (the conv's, extended to whole s x s cells) -> (N, C * s * s, H2, W2), channel
        (c, i, j) = pixel (s y + i, s z + j) of channel c, zero-padded to a multiple of 16 channels, NCHW[16]c
        conv(x, w, stride s) = conv(s2d, w2, stride 1), w2[o, (c, i, j), a, b] = w[o, c, s a + i, s b + j] (zero past
        the kernel): a ceil(KH / s) x ceil(KW / s) kernel.

    On 3 channels amx_conv would pad every tap's 3 channels to a 32-channel block (10x the product); as 12 (16)
    channels per cell the 7x7/2 conv is a 4x4 conv on 16 channels, 256 values per output against 147. The
    space-to-depth is a pad, two reshapes, a transpose and the blocking: one injective kernel. It runs after
    alter_layout, right before amx_conv; on a CPU without a bf16 unit it changes nothing."""

    name: ClassVar[str] = "amx_stem"
    unit: str | None = None  # None: this CPU's (bf16_unit); tests name one (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import amx_conv
        from tensorforge.compiler.ops.packed import unpack_conv2d_weight

        unit = self.unit or bf16_unit()
        if unit is None:
            return g
        b16 = amx_conv.IN_BLOCK
        for n in list(g.nodes):
            if n.op is not ops.conv2d_nchwc or n.attrs["in_block"] != 0 or n.attrs["block"] != b16:
                continue
            x, w, a = n.inputs[0], n.inputs[1], n.attrs
            s = a["strides"][0]
            if not (w.is_param and w.data is not None and w.type.dtype == "float32" and x.type.dtype == "float32"
                    and x.type.rank == 4 and tuple(a["dilations"]) == (1, 1) and s >= 2 and a["strides"][1] == s):
                continue
            oihw = unpack_conv2d_weight(np.asarray(w.data), wlayout="packed", block=a["block"],
                                        out_channels=a["out_channels"])
            oc, c, kh, kw = oihw.shape
            batch, _, h, wd = x.type.shape
            cells = c * s * s
            channels = -(-cells // b16) * b16
            ka, kb = -(-kh // s), -(-kw // s)
            if cells > MAX_STEM_CHANNELS or channels * ka * kb < MIN_CONV_REDUCTION:
                continue
            useful = c * kh * kw / (amx_conv.conv_channel_blocks(channels, ka, kb) * amx.K_BLOCK * ka * kb)
            if unit != "amx" and useful < MIN_DP_STEM_USE:
                continue
            top, left, _, _ = a["pads"]
            _, _, oh, ow, _ = n.outputs[0].type.shape
            h2, w2 = oh + ka - 1, ow + kb - 1  # the cells the stride-1 conv reads
            bottom2, right2 = s * h2 - h - top, s * w2 - wd - left
            if bottom2 < 0 or right2 < 0:
                continue  # the conv skips input rows at its end: not worth a crop here
            name, at = n.name or "stem", g.nodes.index(n)

            def emit(op, inputs, attrs, suffix):
                nonlocal at
                (out,) = g.add_node(op, inputs, attrs, name=f"{name}.{suffix}", index=at)
                at += 1
                return out

            v = emit(ops.pad, [x], {"pads": (0, 0, top, left, 0, 0, bottom2, right2)}, "s2d_pad")
            v = emit(ops.reshape, [v], {"shape": (batch, c, h2, s, w2, s)}, "s2d_cells")
            v = emit(ops.transpose, [v], {"perm": (0, 1, 3, 5, 2, 4)}, "s2d_order")
            v = emit(ops.reshape, [v], {"shape": (batch, cells, h2, w2)}, "s2d")
            if channels > cells:
                v = emit(ops.pad, [v], {"pads": (0, 0, 0, 0, 0, channels - cells, 0, 0)}, "s2d_channels")
            v = emit(ops.to_blocked, [v], {"block": b16}, "s2d_blocked")
            wk = np.zeros((oc, c, s, s, ka, kb), np.float32)  # [o, c, i, j, a, b] = w[o, c, s a + i, s b + j]
            for i in range(s):
                for j in range(s):
                    part = oihw[:, :, i::s, j::s]
                    wk[:, :, i, j, :part.shape[2], :part.shape[3]] = part
            w2 = np.zeros((oc, channels, ka, kb), np.float32)
            w2[:, :cells] = wk.reshape(oc, cells, ka, kb)
            wp = g.add_param(f"{w.name}.s2d.amx", amx_conv.pack_amx_conv_weight(w2))
            replace(g, n, ops.conv2d_amx, [v, wp] + n.inputs[2:],
                    {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "out_channels": a["out_channels"],
                     "in_channels": channels, "kernel": (ka, kb), "unit": unit})
        g.remove_unused()
        return g


amx_stem = AmxStem()
# On AVX512-BF16 (2x the fp32 FMA's multiply-adds per instruction, where AMX has 16x) the stem goes to the bf16
# conv only if at least this share of its padded products is real: ResNet-50's 7x7/2 (147 of 512 per output) took
# 4.3 ms there against the float32 conv's 2.5 ms (Zen 4, one core); ConvNeXt's 4x4/4 (48 of 64) stays bf16.
MIN_DP_STEM_USE = 0.5
# At most this many space-to-depth channels (C * s * s): ConvNeXt's 4x4/4 stem on 3 channels gives 48, a 1x1 conv.
MAX_STEM_CHANNELS = 64

# Convs reducing over fewer values (input channels x taps) keep the float32 kernel: the reduction is padded to two
# 32-channel blocks (ops/amx_conv.py conv_channel_blocks), and at high resolution their time is the product's
# round trip through memory, which the float32 kernel's in-register epilogue saves. MobileNetV2, one core, AMX
# against float32: 16 -> 96 channels at 112x112 0.437 against 0.281 ms; 32 channels on AMX are ahead since its 1x1
# convs run in row tasks configured once per task (32 -> 192 at 28x28: 0.037 against 0.064 ms; the whole model
# 3.28-3.32 -> 2.95-3.00 ms with 32-channel convs on AMX).
MIN_CONV_REDUCTION = amx.K_BLOCK
# A conv on an NCHW input goes to AMX behind a to_blocked copy from this many values per output (input channels x
# taps): ConvNeXt-tiny's 2x2/2 downsampling convs (384 to 1536 values) ran in float32 at ~170 GFLOP/s, 2.0 of the
# bf16 model's 19.2 ms on one core.
MIN_PLAIN_CONV_REDUCTION = 256


@dataclass(frozen=True)
class AmxAttention:
    """amx_attention: `attention(q, k, v[, mask])` on float32 activations with at least 16 query rows becomes
    `attention_amx` (ops/amx_attention.py: one kernel, both products on AMX tiles, the scores in L1) where the unit
    is AMX and there are MIN_FUSED_KEYS to MAX_FUSED_KEYS keys. Otherwise (AVX512-BF16, or longer rows), from
    MIN_KEYS keys, it is split, keys padded to a multiple of SOFTMAX_ROW:
    matmul_amx(q, k, transpose_b) -> * scale (+ mask, + the causal bias) -> softmax -> matmul_amx(p, v): both products in
    bfloat16 on AMX tiles (ops/amx_matmul.py), the softmax in float32. The fused fp32 attention kernel keeps a row
    tile's scores in registers, but its products run at ~80 GFLOP/s on one core; on the tiles the two products and
    the separate softmax are faster. With AVX512-BF16 (`unit`) the products are vector dot products; on a CPU
    without either it changes nothing."""

    name: ClassVar[str] = "amx_attention"
    unit: str | None = None  # None: this CPU's (bf16_unit); tests name one (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import amx_matmul
        from tensorforge.compiler.ops.attention import causal_bias

        unit = self.unit or bf16_unit()
        if unit is None:
            return g
        for n in list(g.nodes):
            if n.op is not ops.attention or n.attrs["nan_guard"]:  # the AMX forms have no guard
                continue
            q, k, v = n.inputs[:3]
            skv = k.type.shape[-2]
            fused = unit == "amx" and MIN_FUSED_KEYS <= skv <= MAX_FUSED_KEYS
            if not (all(t.type.dtype == "float32" for t in n.inputs) and q.type.rank >= 3
                    and q.type.shape[-2] >= amx_matmul.MIN_ROWS and (fused or skv >= MIN_KEYS)):
                continue
            rank, name, at = q.type.rank, n.name or "attention", g.nodes.index(n)
            if fused:
                attrs = {"scale": n.attrs["scale"], "causal": n.attrs["causal"], "unit": unit}
                (out,) = g.add_node(ops.attention_amx, n.inputs, attrs, name=name, index=at)
                g.take_over(n, out)
                continue

            def emit(op, inputs, attrs=None, suffix=""):
                nonlocal at
                (out,) = g.add_node(op, inputs, attrs or {}, name=f"{name}.{suffix}", index=at)
                at += 1
                return out

            extra = -skv % SOFTMAX_ROW  # keys padded with zeros and masked out: the softmax rows vectorize
            if extra:
                pads = [0] * (2 * rank)
                pads[rank + rank - 2] = extra
                k = emit(ops.pad, [k], {"pads": tuple(pads)}, "k_padded")
                v = emit(ops.pad, [v], {"pads": tuple(pads)}, "v_padded")
            s = emit(ops.matmul_amx, [q, k], {"unit": unit, "transpose_b": True}, "qk")
            s = emit(ops.mul, [s, g.add_param(f"{name}.scale", np.array(n.attrs["scale"], np.float32))],
                     suffix="scaled")
            if extra:
                keys = np.where(np.arange(skv + extra) < skv, 0.0, -np.inf).astype(np.float32)
                s = emit(ops.add, [s, g.add_param(f"{name}.key_padding", keys)], suffix="key_padding")
            if len(n.inputs) == 4:
                mask = n.inputs[3]
                if extra and mask.type.shape[-1] != 1:
                    mpads = [0] * (2 * mask.type.rank)
                    mpads[2 * mask.type.rank - 1] = extra
                    mask = emit(ops.pad, [mask], {"pads": tuple(mpads)}, "mask_padded")
                s = emit(ops.add, [s, mask], suffix="masked")
            if n.attrs["causal"]:
                bias = causal_bias(q.type.shape[-2], skv + extra, np.float32)
                s = emit(ops.add, [s, g.add_param(f"{name}.causal", bias)], suffix="causal")
            p = emit(ops.softmax, [s], {"axis": rank - 1}, "softmax")
            out = emit(ops.matmul_amx, [p, v], {"unit": unit}, "pv")
            g.take_over(n, out)
        g.remove_unused()
        return g


# Key lengths that are no multiple of this are padded to one (zero keys and values, masked out with -inf): the
# standalone softmax's schedule does not vectorize rows of other lengths (ViT-base's 197 keys unpadded: 34.7 ms for
# 12 layers on one core, against the fused fp32 kernel's 23 ms for the whole attention).
SOFTMAX_ROW = 16
# Past this many keys the fused kernel's per-task scores and exponentials (32 rows x keys float32 each, on the
# stack) would pass 256 KB each; the split form takes longer rows.
MAX_FUSED_KEYS = 2048
# The fused kernel from two 16-key blocks: GPT-2 small over 64 tokens 26.3 -> 25.7 ms against the fused float32
# kernel; BERT-base 27.4 -> 26.5, ViT-base 48.6 -> 44.3 against the split form (one core, interleaved).
MIN_FUSED_KEYS = 32
# Fewer keys keep it too: GPT-2 small over 64 tokens ran 31.1 ms split against 29.1 ms fused (the split also
# materializes the heads' transposes that the fused kernel reads as prologues); BERT-base over 128, 34.0 against
# 35.9 ms (one core, interleaved).
MIN_KEYS = 128

amx_attention = AmxAttention()


@dataclass(frozen=True)
class LstmBf16:
    """lstm_bf16: `lstm_sequence` (inference: no saved gates) with a constant recurrent weight, 16-unit blocks and an
    even hidden size becomes `lstm_sequence_dp` (ops/rnn_bf16.py: h and R as bf16 pairs in `vdpbf16ps`, the gates
    and the cell state float32) on a CPU with AVX512-BF16, AMX or not: a step's product with M = batch rows is no
    work for AMX tiles (one row of sixteen), and as bf16 pairs it reads half the bytes of the float32 weight. One
    Emerald Rapids core, 64 steps of hidden 256: 0.452 -> 0.377 ms (`vdpbf16ps` issues every other cycle there;
    Zen 4 issues it every cycle)."""

    name: ClassVar[str] = "lstm_bf16"
    force: bool = False  # tests: rewrite on any CPU (the code is compiled, not run)

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import rnn, rnn_bf16

        if not (self.force or "avx512bf16" in bf16_units_here()):
            return g
        if _wanted_unit() == "none":
            return g
        for n in list(g.nodes):
            if n.op is not ops.lstm_sequence or n.attrs["save_gates"]:
                continue
            x, w, h0, c0 = n.inputs
            hidden = h0.type.shape[1]
            if not (w.is_param and w.data is not None and x.type.dtype == "float32" and hidden % 2 == 0
                    and rnn.lstm_unit_block(hidden) == 16):
                continue
            pairs = g.add_param(w.name + ".bf16_pairs", rnn_bf16.pair_lstm_weight(np.asarray(w.data)))
            outs = g.add_node(ops.lstm_sequence_dp, [x, pairs, h0, c0], {"reverse": n.attrs["reverse"]},
                              name=n.name, index=g.nodes.index(n))
            g.take_over(n, *outs)
        g.remove_unused()
        return g


lstm_bf16 = LstmBf16()
