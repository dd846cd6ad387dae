"""Text generation with a decoder compiled by `compile_decoder` (compiler/decoding.py): its key/value cache is the
model's persistent state, written in place one token at a time, so one artifact serves every length up to its
`max_length`. Runtime only (numpy and the loaded model).

    model = tensorforge.load("gpt2.tfa")              # compiled with tensorforge compile --decoder
    tokens = generate(model, prompt_ids, max_new_tokens=128)                 # greedy
    tokens = generate(model, prompt_ids, 128, temperature=0.8, top_k=40, seed=0)

Each step feeds one token: `input_ids` (batch, 1), `attention_mask` (batch, max_length) with ones on the slots
written so far, `position_ids` (batch, 1) and `cache_position` (1,), and reads the logits of that token. The prompt
runs through the prompt plan, `prefill` tokens a call (the last chunk padded; its padding's slots are written again
by the tokens that follow), or token by token where the bundle has none; its last token's logits choose the first
new token. Prompts of different lengths are left-padded, the padding masked out.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Callable, Sequence

import numpy as np

from .errors import InputError

_locks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def decoder_spec(model) -> dict:
    """The bundle's "decoder" entry (input roles, max_length, batch, prefill), or an InputError saying how to get
    one."""
    meta = getattr(model, "meta", None)
    spec = meta.get("decoder") if isinstance(meta, dict) else None
    if spec is None:
        raise InputError("this model was not compiled as a decoder with a key/value cache: compile it with "
                         "compile_decoder(onnx, max_length) or `tensorforge compile MODEL.onnx --decoder`")
    return spec


def _lock(model) -> threading.Lock:
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.Lock()
        return lock


def _choose(logits: np.ndarray, temperature: float, top_k: int | None, rng: np.random.Generator) -> np.ndarray:
    """The next token of each row of `logits` (batch, vocab): argmax, or a sample at `temperature` from the
    `top_k` most likely."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])


def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             seed: int | None = None, eos_token_id: int | None = None,
             on_token: Callable[[int, np.ndarray, float], None] | None = None) -> np.ndarray:
    """The tokens that follow `input_ids` ((batch, prompt) or (prompt,) integers, or a list of prompts of different
    lengths: left-padded, the padding masked out and the positions counted from each prompt's first token):
    (batch, new) int64, at most `max_new_tokens` per row, fewer if every row reached `eos_token_id`. Greedy when
    `temperature` is 0; otherwise sampled from softmax(logits / temperature), restricted to the `top_k` most likely,
    reproducibly for a `seed`.
    `on_token(step, tokens, seconds)` is called after each new token (its step's time included). One generation at
    a time per model (the cache is the model's state); the cache need not be cleared between calls."""
    spec = decoder_spec(model)
    ids, pad = _left_padded(input_ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
        raise InputError(f"input_ids must be a non-empty (batch, prompt) or (prompt,) array of token ids, got "
                         f"{ids.dtype}{list(ids.shape)}")
    batch, prompt = ids.shape
    max_length = spec["max_length"]
    if batch != spec["batch"]:
        raise InputError(f"input_ids has batch {batch}; this decoder was compiled for batch {spec['batch']}")
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if prompt + max_new_tokens - 1 > max_length:
        raise InputError(f"a {prompt}-token prompt and {max_new_tokens} new tokens need {prompt + max_new_tokens - 1}"
                         f" cache slots; this decoder has {max_length} (compile it with a larger max_length)")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise InputError(f"temperature must be >= 0 and top_k >= 1, got {temperature!r}, {top_k!r}")
    rng = np.random.default_rng(seed)
    logits_at = model.output_names.index(spec["logits"])
    mask = np.zeros((batch, max_length), np.int64)
    real = (np.arange(max_length)[None, :] >= pad[:, None]).astype(np.int64)  # not a padding slot
    out: list[np.ndarray] = []
    done = np.zeros(batch, bool)
    chunk = spec.get("prefill") or 1

    def call(tokens: np.ndarray, t: int) -> np.ndarray:
        """Logits (batch, n, vocab) of `tokens` (batch, n) at positions t .. t + n - 1."""
        n = tokens.shape[1]
        mask[:, t:t + n] = real[:, t:t + n]
        feeds = {spec["input_ids"]: tokens, spec["attention_mask"]: mask,
                 spec["cache_position"]: np.array([t], np.int64)}
        if spec.get("position_ids"):
            feeds[spec["position_ids"]] = np.maximum(np.arange(t, t + n, dtype=np.int64)[None, :] - pad[:, None], 0)
        return model.run(feeds)[logits_at].reshape(batch, n, -1)

    with _lock(model):
        t0 = time.perf_counter()
        t = 0  # the prompt: in chunks of `chunk` tokens while more than one is left, the last chunk padded
        while t < prompt:
            if chunk > 1 and prompt - t > 1 and t + chunk <= max_length:
                n = min(chunk, prompt - t)
                tokens = np.zeros((batch, chunk), np.int64)
                tokens[:, :n] = ids[:, t:t + n]
                last = call(tokens, t)[:, n - 1]
                mask[:, t + n:] = 0  # the padding's slots are written again by the tokens that follow
            else:
                n = 1
                last = call(ids[:, t:t + 1].astype(np.int64), t)[:, 0]
            t += n
        for t in range(prompt, prompt + max_new_tokens):
            if t > prompt:
                t0 = time.perf_counter()
                last = call(token[:, None], t - 1)[:, 0]
            token = np.asarray(_choose(last, temperature, top_k, rng), np.int64)
            if eos_token_id is not None:
                token = np.where(done, eos_token_id, token)
                done |= token == eos_token_id
            out.append(token)
            if on_token is not None:
                on_token(len(out) - 1, token, time.perf_counter() - t0)
            if eos_token_id is not None and done.all():
                break
    return np.stack(out, axis=1) if out else np.zeros((batch, 0), np.int64)


def _left_padded(input_ids) -> tuple[np.ndarray, np.ndarray]:
    """(ids (batch, longest prompt), each row's padding count): prompts of different lengths padded on the left."""
    if isinstance(input_ids, (list, tuple)) and input_ids and all(
            isinstance(p, (list, tuple, np.ndarray)) for p in input_ids):
        rows = [np.asarray(p) for p in input_ids]
        if any(r.ndim != 1 or r.size == 0 or r.dtype.kind not in "iu" for r in rows):
            raise InputError("input_ids: each prompt must be a non-empty sequence of token ids")
        longest = max(r.size for r in rows)
        ids = np.zeros((len(rows), longest), np.int64)
        for i, r in enumerate(rows):
            ids[i, longest - r.size:] = r
        return ids, np.array([longest - r.size for r in rows], np.int64)
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    return ids, np.zeros(ids.shape[0] if ids.ndim == 2 else 0, np.int64)


def prompt_ids(text: str) -> Sequence[int]:
    """Token ids written as `1,2,3` or `1 2 3` (the CLI's --prompt-ids)."""
    try:
        ids = [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"--prompt-ids {text!r}: expected integers separated by commas or spaces") from None
    if not ids:
        raise InputError("--prompt-ids: give at least one token id")
    return ids
