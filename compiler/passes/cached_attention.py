"""cached_attention: in a decoder compiled with its key/value cache in place (compiler/decoding.py), attention whose
keys and values are the caches just written reads, for the token at position p, the keys 0 .. p alone.

The decoder's original model is causal: the token at position p attends to the keys of positions 0 .. p, the concat
of its past and the new entries (its causal mask hides the new tokens after it). compile_decoder gives that concat
the cache's full size and writes the new entries at `cache_position` (`cache_write`), so the slots after them are
not part of the model (its attention mask hides them from a one-token step; the model's causal mask, computed for a
full cache, no longer tells a chunk of new tokens apart). `cached_attention` (ops/cache.py) stops each query row at
its own position: per token it reads the past's keys and values once, as the original model does, instead of the
whole cache. This pass runs only in the decoding pipeline (passes/pipeline.py `decoding`): in any other graph the
later slots are data.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensorforge.compiler.ir import Graph


@dataclass(frozen=True)
class CachedAttention:
    name: str = "cached_attention"

    def __call__(self, g: Graph) -> Graph:
        from tensorforge.compiler.ops import attention, cache_write, cached_attention

        for n in list(g.nodes):
            if n.op is not attention or n.attrs["causal"]:
                continue
            q, k, v = n.inputs[:3]
            wk, wv = k.producer, v.producer
            if wk is None or wv is None or wk.op is not cache_write or wv.op is not cache_write:
                continue
            axis, new = k.type.rank - 2, wk.inputs[1].type.shape[-2]
            if (wk.inputs[2] is not wv.inputs[2] or wk.attrs["axis"] != axis or wv.attrs["axis"] != axis
                    or wv.inputs[1].type.shape[-2] != new or q.type.shape[-2] != new or q.type.dtype != "float32"):
                continue  # the query rows must be the new tokens, in order
            (out,) = g.add_node(cached_attention, [q, k, v, wk.inputs[2], *n.inputs[3:]],
                                {"scale": n.attrs["scale"], "nan_guard": n.attrs["nan_guard"]}, name=n.name,
                                index=g.nodes.index(n))
            g.take_over(n, out)
        return g


cached_attention_pass = CachedAttention()
