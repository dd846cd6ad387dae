"""cached_attention: in a decoder compiled with its key/value cache in place (compiler/decoding.py), attention whose
keys and values are the caches just written reads only the slots written so far.

The decoder's original model attends over exactly `past + new` keys: the concat of its past and the new entries.
compile_decoder gives that concat the cache's full size and writes the new entries at `cache_position`
(`cache_write`), so the slots after `cache_position + new` are not part of the model; its attention mask hides
them, but attention would still read them. `cached_attention` (ops/cache.py) stops at the last written key: per
token it reads the past's keys and values once, as the original model does, instead of the whole cache. This pass
runs only in the decoding pipeline (passes/pipeline.py `decoding`): in any other graph those slots are data.
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
                    or wv.inputs[1].type.shape[-2] != new or q.type.dtype != "float32"):
                continue
            (out,) = g.add_node(cached_attention, [q, k, v, wk.inputs[2], *n.inputs[3:]],
                                {"scale": n.attrs["scale"], "new": new}, name=n.name, index=g.nodes.index(n))
            g.take_over(n, out)
        return g


cached_attention_pass = CachedAttention()
