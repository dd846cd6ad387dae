"""Token-by-token decoding from one artifact: `compile_decoder` turns a decoder exported with its key/value cache as
inputs and outputs (Hugging Face's ONNX layout: `input_ids`, `attention_mask`, optional `position_ids`, past
keys/values in, `logits` and the presents out, each present a Concat of its past and the new entries) into a model
whose cache is persistent state, updated in place.

The design, a static cache (as Hugging Face's StaticCache and torch.compile's decoding recipes):
  * the model is compiled once, for one new token and a past of `max_length - 1` entries, so every concat gives
    `max_length` entries: the cache's full size;
  * each concat becomes `cache_write(past, new, cache_position)` (ops/cache.py), which writes the new entry into the
    past's own buffer at the step's position: per token one entry per layer moves, never the whole cache;
  * the past inputs become persistent state (backend/plan.py), zero in a fresh model, and the presents leave the
    outputs; a new input `cache_position` (int64, shape (1,)) says where the token goes;
  * attention over the cache reads only the slots written so far, each query row up to its own position
    (`cached_attention`, passes/cached_attention.py): the original model's keys exactly, which is why one artifact
    serves every past length from 0 to max_length - 1 (and why the decoder must be causal); `attention_mask`
    (batch, max_length) marks the written slots too, for any attention that pass does not take (one-token steps
    only: a prompt plan refuses such a model), and `position_ids` carry the positions;
  * a second plan takes `prefill` prompt tokens a call, sharing the weights and the cache (runtime SharedBuffers);
    the two are one bundle (runtime/bundle.py) whose "decoder" entry names the roles for runtime/generate.py.
"""

from __future__ import annotations

import warnings

import numpy as np

from tensorforge.compiler.driver import compile_graph, import_model, load_if_onnx, optimize
from tensorforge.compiler.ir.types import TensorType
from tensorforge.compiler.options import CompileOptions
from tensorforge.runtime.errors import CompileError, TensorForgeError

CACHE_POSITION = "cache_position"
ROLES = {"input_ids": True, "attention_mask": True, "position_ids": False}  # role -> required


def cache_pairs(model) -> list[tuple[str, str, int]]:
    """(past input, present output, axis) for each graph output that a Concat makes of a graph input (first) and
    the new entries."""
    g = model.graph
    inputs = {i.name: i for i in g.input}
    producer = {o: n for n in g.node for o in n.output}

    def source(name: str) -> str:  # through Identity and one-input Concat nodes (exporters leave them)
        n = producer.get(name)
        while n is not None and len(n.input) == 1 and n.op_type in ("Identity", "Concat"):
            name = n.input[0]
            n = producer.get(name)
        return name

    pairs = []
    for out in g.output:
        n = producer.get(out.name)
        if n is None or n.op_type != "Concat" or len(n.input) != 2 or source(n.input[0]) not in inputs:
            continue
        past = source(n.input[0])
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        rank = len(inputs[past].type.tensor_type.shape.dim)
        if axis is None or not -rank <= axis < rank:
            continue
        pairs.append((past, out.name, axis % rank))
    return pairs


def decoder_shapes(model, pairs, max_length: int, batch: int, new: int = 1) -> dict[str, tuple[int, ...]]:
    """Every input's shape for `new` tokens a step: the pasts hold max_length - new entries (so that each concat
    gives the full cache), the mask max_length slots."""
    inputs = {i.name: i for i in model.graph.input}
    missing = [r for r, required in ROLES.items() if required and r not in inputs]
    past_names = {p for p, _, _ in pairs}
    extra = sorted(set(inputs) - past_names - set(ROLES))
    if missing or extra:
        raise CompileError(f"compile_decoder expects inputs {', '.join(ROLES)} (position_ids optional) besides the "
                           f"past keys/values; this model "
                           + "; ".join(([f"lacks {missing}"] if missing else []) +
                                       ([f"also takes {extra}"] if extra else []))
                           + f" (its inputs: {list(inputs)})")
    shapes = {"input_ids": (batch, new), "attention_mask": (batch, max_length)}
    if "position_ids" in inputs:
        shapes["position_ids"] = (batch, new)
    for past, _, axis in pairs:
        dims = inputs[past].type.tensor_type.shape.dim
        shape = []
        for a, d in enumerate(dims):
            if a == axis:
                shape.append(max_length - new)
            elif d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif a == 0:
                shape.append(batch)
            else:
                raise CompileError(f"past input {past!r}: dimension {a} ({d.dim_param or '?'}) is neither the batch "
                                   f"(0) nor the cache axis ({axis}); export it with a fixed size")
        shapes[past] = tuple(shape)
    return shapes


def write_in_place(g, pairs) -> None:
    """Each present = concat(past, new) becomes cache_write(past, new, cache_position), the past grown to the full
    cache (graph `g`, imported with the shapes of `decoder_shapes`)."""
    from tensorforge.compiler.ops import cache_write, concat

    position = g.add_input(CACHE_POSITION, TensorType((1,), "int64"))
    by_name = {v.name: v for v in g.inputs}
    outputs = dict(zip(g.output_names, g.outputs))
    users = g.users()

    def source(v):  # through one-input concats (identities)
        while v.producer is not None and v.producer.op is concat and len(v.producer.inputs) == 1:
            v = v.producer.inputs[0]
        return v

    for past_name, present_name, axis in pairs:
        past, present = by_name.get(past_name), outputs.get(present_name)
        node = present.producer if present is not None else None
        if (past is None or node is None or node.op is not concat or len(node.inputs) != 2
                or source(node.inputs[0]) is not past or node.attrs["axis"] != axis):
            raise CompileError(f"cache {past_name!r} -> {present_name!r}: after import the present is not a concat "
                               f"of the past and the new entries along axis {axis}")
        chain, v = {node}, node.inputs[0]
        while v is not past:
            chain.add(v.producer)
            v = v.producer.inputs[0]
        others = [n for v in (past, *(n.outputs[0] for n in chain if n is not node)) for n in users.get(v, [])
                  if n not in chain]
        if others:
            raise CompileError(f"past input {past_name!r} is read by {others[0].op.name} (node {others[0].name!r}) "
                               f"besides its concat; a cache updated in place can only be appended to")
        shape = list(past.type.shape)
        shape[axis] += node.inputs[1].type.shape[axis]
        past.type = TensorType(shape, past.type.dtype)
        (written,) = g.add_node(cache_write, [past, node.inputs[1], position], {"axis": axis}, name=node.name,
                                index=g.nodes.index(node))
        g.take_over(node, written)
        for n in chain - {node}:  # the one-input concats between the past and its concat, read by nothing now
            g.remove_node(n)
    g.verify()


def _compile_step(proto, pairs, max_length: int, batch: int, new: int, options: CompileOptions, shared):
    """One plan of the decoder: `new` tokens per call, the cache written in place."""
    from tensorforge.compiler.ops import cache_write, cached_attention

    shapes = decoder_shapes(proto, pairs, max_length, batch, new)
    try:
        g = import_model(proto, shapes)
    except TensorForgeError as e:
        raise CompileError(f"importing the decoder with a cache of max_length={max_length} slots failed: {e} (is "
                           f"max_length beyond the positions the model has, e.g. its position embeddings?)") from e
    write_in_place(g, pairs)
    g = optimize(g, options, decoding=True)
    if new > 1:  # the model's causal mask was computed for a full cache: only cached_attention sees the positions
        users = g.users()
        for n in g.nodes:
            if n.op is cache_write:
                for u in users.get(n.outputs[0], []):
                    if u.op is not cached_attention:
                        raise PromptPlanError(f"a {new}-token prompt step needs every reader of the cache to be "
                                              f"attention over it; {u.op.name} (node {u.name!r}) reads "
                                              f"{n.outputs[0].name!r}: compile with prefill=1")
    state = {present: past for past, present, _ in pairs}
    initial = {v.name: np.zeros(v.type.shape, v.type.dtype) for v in g.inputs if v.name in state.values()}
    return compile_graph(g, options, state=state, initial_state=initial, shared=shared)


PREFILL = 32  # prompt tokens a call of the prompt plan, by default


class PromptPlanError(CompileError):
    """The model's cache is read by more than attention: no prompt plan (one token a call only)."""


def compile_decoder(model, max_length: int, *, batch: int = 1, prefill: int | None = None,
                    options: CompileOptions | None = None, **option_kwargs):
    """Compile a causal decoder with a key/value cache (see the module docstring) for every past length from 0 to
    `max_length - 1`: a step plan for one token and, unless `prefill` is 1, a prompt plan for `prefill` tokens a call
    (the prompt in chunks; the last one padded; by default 32, or none with a warning where the model's cache is
    read by more than attention). Both share the weights and the cache. Returns a
    `runtime.bundle.BundleModel` (save it; `tensorforge.load` reads it) for `runtime.generate.generate` (`tensorforge
    generate`). `options` or keyword options as `CompileOptions` takes (precision, opt_level, ...); CPU only."""
    from tensorforge.runtime import bundle
    from tensorforge.runtime.plan import SharedBuffers

    if options is not None and option_kwargs:
        raise CompileError(f"compile_decoder: give options= or {', '.join(option_kwargs)}=, not both")
    options = options if options is not None else CompileOptions(**option_kwargs)
    if options.spec.is_cuda:
        raise CompileError("compile_decoder builds for the CPU only (the GPU runtime has no in-place cache yet)")
    asked, prefill = prefill is not None, PREFILL if prefill is None else prefill
    for name, value, low in (("max_length", max_length, 2), ("batch", batch, 1), ("prefill", prefill, 1)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise CompileError(f"{name} must be an integer of at least {low}, got {value!r}")
    max_length, prefill = int(max_length), min(int(prefill), int(max_length) // 2)
    proto = load_if_onnx(model)
    if type(proto).__name__ != "ModelProto":
        raise CompileError(f"compile_decoder takes an ONNX decoder (a file, bytes or a ModelProto), not a "
                           f"{type(model).__name__}")
    pairs = cache_pairs(proto)
    if not pairs:
        raise CompileError("no key/value cache found: compile_decoder needs graph outputs that are a Concat of a "
                           "past input and new entries (Hugging Face's present.N.key = concat(past_key_values.N.key,"
                           " k))")
    shared = SharedBuffers()
    plans = [_compile_step(proto, pairs, max_length, batch, 1, options, shared)]
    if prefill > 1:
        try:
            plans.append(_compile_step(proto, pairs, max_length, batch, prefill, options, shared))
        except PromptPlanError as e:
            if asked:
                raise
            warnings.warn(f"{e}; the prompt runs one token a call", stacklevel=2)
            prefill = 1
    step = plans[0]
    spec = {"input_ids": "input_ids", "attention_mask": "attention_mask",
            "position_ids": "position_ids" if "position_ids" in step.input_names else None,
            "cache_position": CACHE_POSITION, "logits": "logits" if "logits" in step.output_names
            else step.output_names[0], "max_length": max_length, "batch": int(batch),
            "prefill": prefill if prefill > 1 else None, "cache": [past for past, _, _ in pairs]}
    per_call = [[n for n in ("input_ids", "position_ids") if n in m.input_names] for m in plans]
    meta = {"format": bundle.FORMAT, "version": bundle.VERSION, "inputs": step.input_names,
            "outputs": step.output_names, "value_inputs": [], "sequence_inputs": [], "decoder": spec,
            "specializations": [{"shapes": {n: list(m.input_specs[n][0]) for n in names}}
                                for m, names in zip(plans, per_call)]}
    return bundle.BundleModel(meta, plans)
