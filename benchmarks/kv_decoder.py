"""GPT-2-style decoders exported with their key/value cache as inputs and outputs, the layout of Hugging Face's
ONNX exports (optimum): inputs `input_ids` (batch, seq), `attention_mask` (batch, past + seq), `position_ids`
(batch, seq) and `past_key_values.{i}.key` / `.value` (batch, heads, past, head_dim); outputs `logits` and
`present.{i}.key` / `.value` (batch, heads, past + seq, head_dim), each the past with the new keys appended.

    module = decoder("gpt2_small")          # the network zoo's GPT-2 small (benchmarks/models.py), cache in, cache out
    onnx_model = export_decoder("gpt2_small")   # past length and sequence symbolic
    greedy_reference(module, prompt, 128)   # PyTorch's tokens, the cache grown token by token
"""

from __future__ import annotations

import io
import math
import warnings

import onnx
import torch
from torch import nn

from benchmarks.models import MODELS, GPT2, GPT2Block

NEG = -1e4  # added to the scores of masked keys (as the zoo's GPT-2 does for its causal mask)


class _CachedAttention(nn.Module):
    def __init__(self, block: GPT2Block):
        super().__init__()
        self.block = block

    def forward(self, x, bias, past_k, past_v):
        attn = self.block.attn
        b, s, h = x.shape
        q, k, v = attn.qkv(self.block.ln1(x)).split(h, dim=2)
        q, k, v = (t.view(b, s, attn.heads, attn.head_dim).transpose(1, 2) for t in (q, k, v))
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(attn.head_dim) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x + attn.proj(ctx.transpose(1, 2).reshape(b, s, h))
        blk = self.block
        x = x + blk.out(nn.functional.gelu(blk.fc(blk.ln2(x)), approximate="tanh"))
        return x, k, v


class GPT2WithCache(nn.Module):
    """The zoo's GPT-2 (its own weights, shared) run over new tokens with the keys and values of the past ones."""

    def __init__(self, gpt2: GPT2):
        super().__init__()
        self.gpt2 = gpt2
        self.layers = nn.ModuleList(_CachedAttention(b) for b in gpt2.blocks)
        self.heads = gpt2.blocks[0].attn.heads
        self.head_dim = gpt2.blocks[0].attn.head_dim

    def forward(self, input_ids, attention_mask, position_ids, *past):
        s = input_ids.shape[1]
        p = past[0].shape[2]
        # query i (position p + i) sees key j where j <= p + i and the mask says the key is real
        causal = self.gpt2.blocks[0].attn.mask[p:p + s, :p + s]
        bias = causal + (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * NEG
        x = self.gpt2.tokens(input_ids) + self.gpt2.positions(position_ids)
        present = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, bias, past[2 * i], past[2 * i + 1])
            present += [k, v]
        logits = torch.matmul(self.gpt2.ln_f(x), self.gpt2.tokens.weight.t())
        return (logits, *present)

    def empty_cache(self, batch: int = 1) -> list[torch.Tensor]:
        return [torch.zeros(batch, self.heads, 0, self.head_dim) for _ in range(2 * len(self.layers))]


def decoder(name: str = "gpt2_small") -> GPT2WithCache:
    gpt2, _ = MODELS[name](1)
    return GPT2WithCache(gpt2).eval()


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def export_decoder(name: str = "gpt2_small", module: GPT2WithCache | None = None) -> onnx.ModelProto:
    """The decoder as ONNX (TorchScript exporter, opset 17) with batch, sequence and past length symbolic."""
    m = module if module is not None else decoder(name)
    past_names, present_names = cache_names(len(m.layers))
    ids = torch.zeros(1, 2, dtype=torch.int64)
    past = [torch.zeros(1, m.heads, 3, m.head_dim) for _ in past_names]
    args = (ids, torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]), *past)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch", 2: "past"} for n in past_names}, **{n: {0: "batch", 2: "total"} for n in present_names}}
    f = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, args, f, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
    return onnx.load_from_string(f.getvalue())


@torch.no_grad()
def greedy_reference(module: GPT2WithCache, prompt: list[int], new_tokens: int) -> list[int]:
    """PyTorch's greedy continuation of `prompt`: the prompt in one call, then one token per call with the cache."""
    ids = torch.tensor([prompt])
    past = module.empty_cache()
    mask = torch.ones(1, len(prompt), dtype=torch.int64)
    pos = torch.arange(len(prompt))[None]
    out = []
    for _ in range(new_tokens):
        logits, *past = module(ids, mask, pos, *past)
        token = int(logits[0, -1].argmax())
        out.append(token)
        ids = torch.tensor([[token]])
        mask = torch.ones(1, mask.shape[1] + 1, dtype=torch.int64)
        pos = torch.tensor([[pos[0, -1].item() + 1]])
    return out


def export_hf_gpt2(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 500, positions: int = 64):
    """(a Hugging Face GPT2LMHeadModel with random weights wrapped to take and give its cache as tensors, the
    wrapper exported in the same layout as export_decoder): transformers' own attention and masks, a DynamicCache
    inside. The wrapper runs as GPT2WithCache does (`greedy_reference`); `.hf` is the transformers model."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab,
                                    n_positions=positions)).eval()

    class WithCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf
            self.layers = list(range(layers))  # as GPT2WithCache: len(layers), heads, head_dim, empty_cache
            self.heads, self.head_dim = heads, hidden // heads

        def empty_cache(self, batch: int = 1) -> list[torch.Tensor]:
            return [torch.zeros(batch, self.heads, 0, self.head_dim) for _ in range(2 * layers)]

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    past_names, present_names = cache_names(layers)
    head_dim = hidden // heads
    args = (torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]),
            *[torch.zeros(1, heads, 3, head_dim) for _ in past_names])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
            **{n: {0: "batch", 2: "past"} for n in past_names}, **{n: {0: "batch", 2: "total"} for n in present_names}}
    f = io.BytesIO()
    wrapper = WithCache().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, f, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes)
    return wrapper, onnx.load_from_string(f.getvalue())
