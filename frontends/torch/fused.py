"""Converters for the fused ATen ops of PyTorch's inference fast paths, which dynamo captures as they are (in eval
mode under no_grad, nn.TransformerEncoderLayer and nn.MultiheadAttention call one fused kernel each): their
attention becomes our `attention` op directly. Masked forms are refused (the op then runs in PyTorch under
torch.compile). Registered in converters.CONVERTERS on import (the importer imports this module)."""

from __future__ import annotations

import numpy as np

from tensorforge.compiler import ops

from .converters import _reshape, aten, converter, gelu, native_layer_norm


def _dense(b, x, weight, bias):
    """x (..., K) @ weight (N, K)^T + bias, as PyTorch's Linear."""
    shape = b.type(x).shape
    rows = int(np.prod(shape[:-1]))
    y = b.emit(ops.dense, [_reshape(b, x, (rows, shape[-1])), weight, bias])
    return _reshape(b, y, shape[:-1] + (b.type(weight).shape[0],))


def _self_attention(b, x, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias):
    """nn.MultiheadAttention's self-attention on batch-first x (B, S, E), no mask: q, k, v from one projection,
    heads through `attention`, the output projection."""
    batch, seq, embed = b.type(x).shape
    head = embed // num_heads
    qkv = _reshape(b, _dense(b, x, qkv_weight, qkv_bias), (batch, seq, 3, num_heads, head))
    qkv = b.emit(ops.transpose, [qkv], perm=(2, 0, 3, 1, 4))  # (3, B, H, S, D)
    q, k, v = (_reshape(b, b.emit(ops.strided_slice, [qkv], begins=(i, 0, 0, 0, 0),
                                  ends=(i + 1, batch, num_heads, seq, head), strides=(1,) * 5),
                        (batch, num_heads, seq, head)) for i in range(3))
    y = b.emit(ops.attention, [q, k, v], scale=float(1 / np.sqrt(head)), causal=False, nan_guard=False)
    y = _reshape(b, b.emit(ops.transpose, [y], perm=(0, 2, 1, 3)), (batch, seq, embed))
    return _dense(b, y, proj_weight, proj_bias)


@converter(aten._transformer_encoder_layer_fwd.default)
def _transformer_encoder_layer_fwd(b, src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                   use_gelu, norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2,
                                   ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None):
    """nn.TransformerEncoderLayer (batch first) in one: attention block and feed-forward block, each with its
    residual, layer norms before (norm_first) or after."""
    if mask is not None:
        raise b.error("the fused encoder layer with a mask is not compiled")
    if b.type(src).rank != 3:
        raise b.error(f"the fused encoder layer takes (batch, seq, embed), got {b.type(src)}")

    def norm(x, w, bias):
        return native_layer_norm(b, x, (embed_dim,), w, bias, eps)[0]

    x = src
    h = norm(x, norm_weight_1, norm_bias_1) if norm_first else x
    x = b.emit(ops.add, [x, _self_attention(b, h, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias)])
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    h = norm(x, norm_weight_2, norm_bias_2) if norm_first else x
    h = _dense(b, h, ffn_weight_1, ffn_bias_1)
    h = gelu(b, h) if use_gelu else b.emit(ops.relu, [h])
    x = b.emit(ops.add, [x, _dense(b, h, ffn_weight_2, ffn_bias_2)])
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)


@converter(aten._native_multi_head_attention.default)
def _native_multi_head_attention(b, query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                 proj_bias, mask=None, need_weights=True, average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's fast path (batch first): self-attention (query, key and value one tensor) without a
    mask or returned weights."""
    if mask is not None or need_weights or not (query is key is value):
        raise b.error("the fused multi-head attention is compiled for self-attention without mask or weights only")
    return _self_attention(b, query, num_head, qkv_weight, qkv_bias, proj_weight, proj_bias), None
