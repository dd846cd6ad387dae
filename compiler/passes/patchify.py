"""patchify: a conv whose kernel equals its stride, without padding (a ViT's patch embedding: 16x16 / 16 on the
image), as a dense over the image's patches:

    conv2d(x (N, C, H, W), w (O, C, k, k), b, strides=k)
      -> patches = reshape(transpose(reshape(x, (N, C, H/k, k, W/k, k)), (0, 2, 4, 1, 3, 5)), (N*H/k*W/k, C*k*k))
         transpose(reshape(dense(patches, reshape(w, (O, C*k*k)), b), (N, H/k, W/k, O)), (0, 3, 1, 2))

The dense runs on the dense kernels (and, in the bf16 mode, on the matrix unit: passes/cpu/amx.py takes denses),
where the conv had only the plain kernel of an isolated NCHW conv. ViT-base's patch embedding on one core of the
Xeon: fp32 1.47 -> 1.30 ms, bf16 1.47 -> 0.37 ms (the patch gather 0.11 ms, a kernel of its own). A ViT flattens
the result back to (N, patches, O) at once: `_tokens` makes that a reshape of the dense's rows.
Only for weights that are params (their reshape folds) and kernels of at least MIN_PATCH pixels.
"""

from __future__ import annotations

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph

from .rewrite import Rewrite, apply_rules
from .simplify import simplify

MIN_PATCH = 8  # kernel side from which the rewrite applies (ConvNeXt's 4x4 stem keeps its conv)


def _patchify(r: Rewrite, n):
    x, w = n.inputs[:2]
    a = n.attrs
    o, c, kh, kw = w.type.shape
    batch, _, h, wd = x.type.shape
    if (not w.is_param or a["groups"] != 1 or tuple(a["strides"]) != (kh, kw) or any(a["pads"])
            or tuple(a["dilations"]) != (1, 1) or min(kh, kw) < MIN_PATCH or h % kh or wd % kw):
        return None
    oh, ow = h // kh, wd // kw
    t = r.emit(ops.reshape, [x], shape=(batch, c, oh, kh, ow, kw))
    t = r.emit(ops.transpose, [t], perm=(0, 2, 4, 1, 3, 5))
    t = r.emit(ops.reshape, [t], shape=(batch * oh * ow, c * kh * kw))
    y = r.emit(ops.dense, [t, r.emit(ops.reshape, [w], shape=(o, c * kh * kw)), *n.inputs[2:]])
    y = r.emit(ops.reshape, [y], shape=(batch, oh, ow, o))
    return r.emit(ops.transpose, [y], perm=(0, 3, 1, 2))


def _tokens(r: Rewrite, n):
    """transpose(reshape(transpose(y, (0, 3, 1, 2)), (N, O, P)), (0, 2, 1)) -> reshape(y, (N, P, O)): a ViT's
    flattening of the patch embedding back to tokens, which the dense wrote in that order already."""
    if tuple(n.attrs["perm"]) != (0, 2, 1):
        return None
    flat = r.producer(n.inputs[0], ops.reshape)
    back = flat and r.producer(flat.inputs[0], ops.transpose)
    if not back or tuple(back.attrs["perm"]) != (0, 3, 1, 2) or flat.outputs[0].type.shape[:2] != \
            back.outputs[0].type.shape[:2]:
        return None
    return r.emit(ops.reshape, [back.inputs[0]], shape=n.outputs[0].type.shape)


def patchify(g: Graph) -> Graph:
    """The rewrite, then simplify's rules (they cancel the transposes and merge the reshapes it leaves)."""
    return simplify(apply_rules(g, [(ops.conv2d, _patchify), (ops.transpose, _tokens)]))
