"""Token-by-token decoding with a key/value cache: GPT-2 small (the network zoo's, benchmarks/kv_decoder.py) greedy
after a 32-token prompt, TensorForge (`compile_decoder`, one artifact for 1024 positions, the cache written in place)
against onnxruntime on the same ONNX export (its cache grown by the model's own Concat each token) and PyTorch
eager. Writes benchmarks/results/decode.md.

    TVM_NUM_THREADS=1 python benchmarks/decode.py [--new-tokens 128] [--rounds 5] [--max-length 1024]

Per round every engine generates the whole continuation (the order alternates between rounds); a round's per-token
latency is the median over its new tokens (each new token is one model call with one input token); the table gives
the median over rounds. The tokens must equal PyTorch's. The prompt's cost is reported apart: onnxruntime and
PyTorch take it in one call, TensorForge in chunks of 32 tokens (its prompt plan, sharing weights and cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TVM_NUM_THREADS", "1")

from benchmarks.machine import describe_machine, write_lines  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "decode.md")


def run_ort(sess, layers: int, prompt: list[int], new: int, step_times: list) -> list[int]:
    """onnxruntime's greedy loop: the prompt in one call, then one token per call, the presents fed back."""
    from benchmarks.kv_decoder import cache_names

    past_names, _ = cache_names(layers)
    heads_dim = sess.get_inputs()[3].shape[1], sess.get_inputs()[3].shape[3]
    feeds = {"input_ids": np.array([prompt], np.int64), "attention_mask": np.ones((1, len(prompt)), np.int64),
             "position_ids": np.arange(len(prompt), dtype=np.int64)[None],
             **{n: np.zeros((1, *heads_dim[:1], 0, heads_dim[1]), np.float32) for n in past_names}}
    out = []
    for i in range(new):
        t0 = time.perf_counter()
        logits, *present = sess.run(None, feeds)
        token = int(logits[0, -1].argmax())
        step_times.append(time.perf_counter() - t0)
        out.append(token)
        n = feeds["attention_mask"].shape[1]
        feeds = {"input_ids": np.array([[token]], np.int64), "attention_mask": np.ones((1, n + 1), np.int64),
                 "position_ids": np.array([[n]], np.int64), **dict(zip(past_names, present))}
    return out


def run_torch(module, prompt: list[int], new: int, step_times: list) -> list[int]:
    import torch

    ids, past = torch.tensor([prompt]), module.empty_cache()
    mask, pos = torch.ones(1, len(prompt), dtype=torch.int64), torch.arange(len(prompt))[None]
    out = []
    with torch.no_grad():
        for _ in range(new):
            t0 = time.perf_counter()
            logits, *past = module(ids, mask, pos, *past)
            token = int(logits[0, -1].argmax())
            step_times.append(time.perf_counter() - t0)
            out.append(token)
            ids = torch.tensor([[token]])
            mask = torch.ones(1, mask.shape[1] + 1, dtype=torch.int64)
            pos = torch.tensor([[mask.shape[1] - 1]])
    return out


def run_tf(model, prompt: list[int], new: int, step_times: list) -> tuple[list[int], float]:
    """Our greedy loop; also the prompt's time (its tokens one by one, through the first new token)."""
    from tensorforge import generate

    t0 = time.perf_counter()
    stamps = []
    tokens = generate(model, prompt, new, on_token=lambda step, tok, s: stamps.append((time.perf_counter(), s)))
    step_times.extend(s for _, s in stamps)
    return tokens[0].tolist(), stamps[0][0] - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32, help="prompt length (token ids drawn with a fixed seed)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--model", default="gpt2_small",
                    help="gpt2_small (the network zoo's, benchmarks/models.py) or hf_gpt2 (transformers' GPT-2 small)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="leave out TensorForge with bfloat16 weights (precision='bf16')")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    threads = int(os.environ["TVM_NUM_THREADS"])

    import onnxruntime as ort
    import torch

    from benchmarks.kv_decoder import decoder, export_decoder, export_hf_gpt2, greedy_reference
    from tensorforge import compile_decoder, load

    torch.set_num_threads(threads)
    if args.model == "hf_gpt2":  # transformers' GPT-2 small (random weights), its own attention and masks
        module, onnx_model = export_hf_gpt2(layers=12, hidden=768, heads=12, vocab=50257, positions=1024)
        vocab = 50257
    else:
        module = decoder(args.model)
        vocab = module.gpt2.tokens.num_embeddings
        onnx_model = export_decoder(args.model, module)
    layers = len(module.layers)
    prompt = np.random.default_rng(0).integers(0, vocab, args.prompt).tolist()
    t0 = time.perf_counter()
    compiled = compile_decoder(onnx_model, args.max_length)
    compile_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "decoder.tfa")
        compiled.save(path)
        artifact_mb = os.path.getsize(path) / 2**20
        model = load(path, num_threads=threads)
    del compiled
    model_bf16 = compile_decoder(onnx_model, args.max_length, precision="bf16") if args.bf16 else None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    reference = greedy_reference(module, prompt, args.new_tokens)
    print(f"compiled in {compile_s:.1f} s; artifact {artifact_mb:.0f} MB", flush=True)

    engines = ["tensorforge", "onnxruntime", "pytorch"] + (["tensorforge bf16"] if model_bf16 is not None else [])
    per_round = {e: [] for e in engines}
    first = {e: [] for e in engines}
    prompt_tf: dict[str, list] = {}
    same = {}
    for r in range(args.rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            times: list[float] = []
            if e.startswith("tensorforge"):
                tokens, prefill = run_tf(model if e == "tensorforge" else model_bf16, prompt, args.new_tokens, times)
                prompt_tf.setdefault(e, []).append(prefill)
            elif e == "onnxruntime":
                tokens = run_ort(sess, layers, prompt, args.new_tokens, times)
            else:
                tokens = run_torch(module, prompt, args.new_tokens, times)
            same[e] = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), len(reference))
            first[e].append(times[0])
            per_round[e].append(float(np.median(times[1:])))
            print(f"round {r} {e}: {per_round[e][-1] * 1e3:.2f} ms/token, the first {same[e]} tokens equal "
                  f"PyTorch's", flush=True)
    ms = {e: float(np.median(per_round[e])) * 1e3 for e in engines}
    title = "transformers' GPT-2 small" if args.model == "hf_gpt2" else "GPT-2 small"
    lines = [f"# Decoding with a key/value cache: {title}, greedy, token by token", "",
             f"Machine: {describe_machine()}. {threads} thread(s) for every engine.",
             f"Generated by `TVM_NUM_THREADS={threads} python benchmarks/decode.py --model {args.model} "
             f"--new-tokens {args.new_tokens} "
             f"--rounds {args.rounds} --max-length {args.max_length}`: a {args.prompt}-token prompt, "
             f"{args.new_tokens} new tokens, medians of per-token latency over {args.rounds} interleaved rounds. "
             f"TensorForge: one artifact (a one-token plan and a 32-token prompt plan) compiled for "
             f"{args.max_length} positions in {compile_s:.1f} s ({artifact_mb:.0f} MB, the cache not stored), the "
             f"cache written in place; onnxruntime "
             f"{ort.__version__} runs the same ONNX file, its cache grown by the model's Concat each token; PyTorch "
             f"{torch.__version__} eager likewise.", "",
             "| engine | ms per new token (median) | / onnxruntime | tokens equal PyTorch's | first new token ms "
             "(after the prompt) |", "|---|---:|---:|---|---:|"]
    for e in engines:
        first_ms = float(np.median(first[e])) * 1e3
        if e in prompt_tf:
            first_ms = float(np.median(prompt_tf[e])) * 1e3
        equal = "yes" if same[e] == len(reference) else f"the first {same[e]}"
        lines.append(f"| {e} | {ms[e]:.2f} | {ms[e] / ms['onnxruntime']:.3f} | {equal} | {first_ms:.1f} |")
    lines += ["", "The first new token's column includes the prompt: onnxruntime and PyTorch run the prompt in one "
              "call, TensorForge in calls of its prompt plan (32 tokens a call, the last chunk padded), which shares "
              "the step plan's weights and cache in the same artifact.",
              "", "`tensorforge bf16`: the same decoder compiled with precision='bf16' (weights stored as bfloat16, "
              "sums in float32): its tokens follow PyTorch's float32 ones until a near-tie between two logits "
              "rounds the other way, and differ from there on (greedy decoding amplifies one flip)."]
    write_lines(args.out, lines)
    return 0 if all(same[e] == len(reference) for e in engines if e != "tensorforge bf16") else 1


if __name__ == "__main__":
    sys.exit(main())
