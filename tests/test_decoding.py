"""Token-by-token decoding with the key/value cache in place (compiler/decoding.py, ops/cache.py,
passes/cached_attention.py, runtime/generate.py), on the zoo's tiny GPT-2 exported with its cache as inputs and
outputs (benchmarks/kv_decoder.py), against PyTorch growing its cache token by token and onnxruntime."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.kv_decoder import cache_names, decoder, export_decoder, greedy_reference  # noqa: E402
from tensorforge import CompileError, InputError, compile_decoder, compile_model, generate, load  # noqa: E402
from tensorforge.compiler.decoding import CACHE_POSITION  # noqa: E402
from tensorforge.compiler.cli import main as cli  # noqa: E402

MAX = 48
PROMPT = [5, 17, 3, 99, 250, 7, 42, 8]


@pytest.fixture(scope="module")
def tiny():
    module = decoder("gpt2_tiny")
    onnx_model = export_decoder("gpt2_tiny", module)
    return module, onnx_model, compile_decoder(onnx_model, MAX, prefill=5)  # an 8-token prompt: 5 + 3 padded


def _step_feeds(token: int, t: int) -> dict:
    mask = np.zeros((1, MAX), np.int64)
    mask[0, :t + 1] = 1
    return {"input_ids": np.array([[token]]), "attention_mask": mask, "position_ids": np.array([[t]]),
            CACHE_POSITION: np.array([t])}


def test_greedy_tokens_match_pytorch(tiny):
    module, _, model = tiny
    ref = greedy_reference(module, PROMPT, 30)
    assert generate(model, PROMPT, 30)[0].tolist() == ref
    # a second generation reuses the cache without clearing it: the stale slots are never read
    assert generate(model, np.array([PROMPT]), 30)[0].tolist() == ref


def test_every_step_matches_pytorch_and_onnxruntime(tiny):
    """The logits of each step, and the cache row each step writes, against PyTorch's module run with the cache
    grown by concatenation; one step against onnxruntime on the same ONNX file."""
    ort = pytest.importorskip("onnxruntime")
    module, onnx_model, model = tiny
    past = module.empty_cache()
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    past_names, _ = cache_names(len(module.layers))
    tokens = PROMPT + [11, 400, 23, 9]
    for t, token in enumerate(tokens):
        ids = torch.tensor([[token]])
        with torch.no_grad():
            want, *past = module(ids, torch.ones(1, t + 1, dtype=torch.int64), torch.tensor([[t]]), *past)
        got = model.run(_step_feeds(token, t))[0]
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
        for name, p in zip(past_names, past):
            np.testing.assert_allclose(model.models[0].state[name][:, :, t], p[:, :, t].numpy(), rtol=1e-5,
                                       atol=1e-5)
    feeds = {"input_ids": np.array([[tokens[-1]]]), "attention_mask": np.ones((1, len(tokens)), np.int64),
             "position_ids": np.array([[len(tokens) - 1]]),
             **{n: p[:, :, :-1].numpy() for n, p in zip(past_names, past)}}
    np.testing.assert_allclose(got, sess.run(["logits"], feeds)[0], rtol=1e-4, atol=1e-4)


def test_cache_is_state_written_in_place(tiny):
    """The pasts are persistent state, nothing but cache_write writes a buffer of the cache's shape, the presents
    are no outputs, and an empty cache costs the artifact nothing (one number per cache)."""
    module, _, model = tiny
    plan = model.models[0].plan
    past_names, _ = cache_names(len(module.layers))
    state = {s["name"]: s["buffer"] for s in plan["state"]}
    assert sorted(state) == sorted(past_names)
    assert model.output_names == ["logits"] == model.models[0].output_names
    assert model.input_names == ["input_ids", "attention_mask", "position_ids", CACHE_POSITION]
    cache_shape = plan["buffers"][state[past_names[0]]]["shape"]
    assert cache_shape == [1, 4, MAX, 16]
    writes = [s for s in plan["steps"] if plan["buffers"][s["args"][-1]]["shape"] == cache_shape]
    assert len(writes) == len(past_names) and all(s["op"] == "cache_write" for s in writes)
    assert sorted(s["args"][-1] for s in writes) == sorted(state.values())  # the output is the state's buffer
    assert any(s["op"] == "cached_attention" for s in plan["steps"])
    splats = {p["buffer"] for p in plan["params"] if "splat" in p}
    assert set(state.values()) <= splats


def test_slots_after_the_position_are_never_read(tiny):
    """NaN in every slot past the step's position: a kernel that read one (even masked) would return NaN."""
    module, _, model = tiny
    for name, buf in model.models[0].state.items():
        buf[...] = np.nan
    ref = greedy_reference(module, PROMPT, 6)
    assert generate(model, PROMPT, 6)[0].tolist() == ref


def test_sampling_is_reproducible_and_stops_at_eos(tiny):
    _, _, model = tiny
    a = generate(model, PROMPT, 12, temperature=0.8, top_k=20, seed=3)
    b = generate(model, PROMPT, 12, temperature=0.8, top_k=20, seed=3)
    assert a.tolist() == b.tolist() and a.shape == (1, 12)
    assert ((0 <= a) & (a < 500)).all()
    greedy = generate(model, PROMPT, 12)[0].tolist()
    stop = greedy[3]
    got = generate(model, PROMPT, 12, eos_token_id=stop)[0].tolist()
    assert got == greedy[:greedy.index(stop) + 1]


def test_prompt_in_chunks_matches_token_by_token(tiny):
    """The prompt plan (5 tokens a call, causal per row over the cache) gives what one token a call gives, for
    prompts of 1 to 13 tokens (chunks, a padded last chunk, single tokens), and the two plans share the weights
    and the cache."""
    module, onnx_model, model = tiny
    step, prompt_plan = model.models
    assert [m.input_specs["input_ids"][0] for m in model.models] == [(1, 1), (1, 5)]
    for name, buf in step.state.items():
        assert buf is prompt_plan.state[name]
    weights = [b for b in step._shared if b is not None and b.size > 1000 and b.dtype == np.float32]
    assert weights and any(b is c for b in weights for c in prompt_plan._shared if c is not None)
    one_by_one = compile_decoder(onnx_model, MAX, prefill=1)
    assert len(one_by_one.models) == 1
    for length in (1, 2, 5, 6, 13):
        prompt = (PROMPT * 2)[:length]
        ref = greedy_reference(module, prompt, 5)
        assert generate(model, prompt, 5)[0].tolist() == ref
        assert generate(one_by_one, prompt, 5)[0].tolist() == ref


def test_saved_artifact_generates_the_same(tiny, tmp_path):
    _, _, model = tiny
    path = tmp_path / "decoder.tfa"
    model.save(path)
    assert os.path.getsize(path) < 4 * 2**20  # weights once for both plans; the cache is not stored
    loaded = load(path)
    assert loaded.models[0].state["past_key_values.0.key"] is loaded.models[1].state["past_key_values.0.key"]
    assert generate(loaded, PROMPT, 10).tolist() == generate(model, PROMPT, 10).tolist()


def test_bad_input(tiny):
    _, onnx_model, model = tiny
    with pytest.raises(InputError, match="cache slots"):
        generate(model, list(range(40)), 10)
    with pytest.raises(InputError, match="batch"):
        generate(model, np.array([PROMPT, PROMPT]), 4)
    with pytest.raises(InputError, match="position outside the cache"):
        model.run(_step_feeds(3, MAX))
    with pytest.raises(CompileError, match="prefill"):
        compile_decoder(onnx_model, MAX, prefill=0)
    with pytest.raises(InputError, match="temperature"):
        generate(model, PROMPT, 4, temperature=-1)
    with pytest.raises(InputError, match="compile_decoder"), pytest.warns(UserWarning, match="symbolic"):
        generate(compile_model(export_decoder("gpt2_tiny")), PROMPT, 4)  # a plain compile binds past to 1


def test_models_without_a_cache_are_refused():
    from benchmarks.models import export_onnx

    with pytest.raises(CompileError, match="no key/value cache"):
        compile_decoder(export_onnx("mlp"), 16)
    with pytest.raises(CompileError, match="position embeddings"):
        compile_decoder(export_decoder("gpt2_tiny"), 100)  # the tiny model has 64 positions


def test_cli_compile_and_generate(tiny, tmp_path, capsys):
    module, onnx_model, _ = tiny
    import onnx

    src, out = tmp_path / "dec.onnx", tmp_path / "dec.tfa"
    onnx.save(onnx_model, src)
    assert cli(["compile", str(src), "--decoder", "--max-length", str(MAX), "-o", str(out)]) == 0
    capsys.readouterr()
    assert cli(["generate", str(out), "--prompt-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", "9"]) == 0
    printed = capsys.readouterr()
    assert printed.out.split() == [str(t) for t in greedy_reference(module, PROMPT, 9)]
    assert "ms per token" in printed.err
    assert cli(["generate", str(out), "--prompt-ids", "1,x"]) == 1


def test_a_hugging_face_gpt2_export_decodes_like_its_generate():
    """transformers' GPT-2 with its own attention and masks (the cache's first concat behind a one-input Concat, a
    NaN guard after the softmax: attention recognized with nan_guard): the tokens equal transformers' generate."""
    pytest.importorskip("transformers")
    from benchmarks.kv_decoder import export_hf_gpt2

    wrapper, onnx_model = export_hf_gpt2()
    model = compile_decoder(onnx_model, MAX, prefill=5)
    assert [s["op"] for s in model.models[0].plan["steps"]].count("cached_attention") == 2
    with torch.no_grad():
        ref = wrapper.hf.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False,
                          pad_token_id=0)[0, len(PROMPT):].tolist()
    assert generate(model, PROMPT, 12)[0].tolist() == ref == greedy_reference(wrapper, PROMPT, 12)


def test_a_cache_read_by_more_than_attention_gets_no_prompt_plan(tiny):
    """Without cached_attention (the recognize pass disabled) a one-token plan is still exact (the attention mask
    hides the unwritten slots), a prompt plan is not: refused when asked for, left out with a warning by default."""
    module, onnx_model, _ = tiny
    with pytest.warns(UserWarning, match="one token a call"):
        model = compile_decoder(onnx_model, MAX, disabled_passes=frozenset({"recognize"}))
    assert model.meta["decoder"]["prefill"] is None and len(model.models) == 1
    assert generate(model, PROMPT, 8)[0].tolist() == greedy_reference(module, PROMPT, 8)
    with pytest.raises(CompileError, match="prefill=1"):
        compile_decoder(onnx_model, MAX, prefill=8, disabled_passes=frozenset({"recognize"}))


def test_a_batch_of_prompts_of_different_lengths():
    """Batch 2, prompts of 8 and 3 tokens: the shorter left-padded, its padding masked out and its positions counted
    from its first token; each row continues as PyTorch continues that prompt alone."""
    module = decoder("gpt2_tiny")
    model = compile_decoder(export_decoder("gpt2_tiny", module), MAX, batch=2, prefill=5)
    short = [9, 400, 7]
    got = generate(model, [PROMPT, short], 10)
    assert got.tolist() == [greedy_reference(module, PROMPT, 10), greedy_reference(module, short, 10)]
    same = generate(model, np.array([PROMPT, PROMPT[::-1]]), 6)
    assert same.tolist() == [greedy_reference(module, PROMPT, 6), greedy_reference(module, PROMPT[::-1], 6)]
    with pytest.raises(InputError, match="non-empty"):
        generate(model, [PROMPT, []], 4)
