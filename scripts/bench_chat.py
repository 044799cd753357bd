#!/usr/bin/env python3
"""Chat generation speed: `minicpm chat`'s generator against each backend's own generation.

    python scripts/bench_chat.py [--work /tmp/minicpm-bench-chat] [--layers 12] [--tokens 64] [--reps 4]

Builds (once, cached in --work; scripts/bench_checkpoint.py) a random-weight MiniCPM with MiniCPM-1B's
widths (hidden 1536, 24 heads, 8 KV heads, FFN 3840, 12 layers = 955 MB, tied embeddings) and the real
MiniCPM 1/2 tokenizer (vocab 122,753),
converts it to GGUF q8_0 and q4_0, and times one chat turn (prompt rendered with the model's template):

- GGUF: runtime.generate.Generator vs llama-cpp-python's create_completion(stream=True), the same
  llama.cpp context (threads, batch, KV cache), the same sampling (temperature 0.7, top-p 0.8,
  repetition penalty 1.02, seed), the KV cache cleared before each run.
- HF: Generator (float Llama: runtime.llama_decode's static cache) vs transformers' model.generate on
  the same in-memory model (f32), greedy.

Time to first token (TTFT) includes the prompt's prefill; decode tokens/s counts tokens after the first.
Replies never stop early (stop ids off / min_new_tokens), so both sides generate --tokens tokens.
Ratios are ours / theirs: above 1 means faster for decode, below 1 means faster for TTFT. Reps
alternate which side runs first (a first run pays for cold caches; use an even --reps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_checkpoint import build_checkpoint  # noqa: E402

PROMPT = ("Please write a detailed explanation of how rivers shape the landscape over thousands of years, "
          "covering erosion, sediment transport, meanders, deltas and the role of floods. "
          "Then give three examples of famous river valleys and what makes each of them special.")


def to_gguf(src: Path, outtype: str) -> Path:
    from converters.gguf_export import convert_to_gguf

    out = src.with_name(f"{src.name}-{outtype}.gguf")
    if not out.is_file():
        convert_to_gguf(src, out, outtype=outtype)
    return out


def prompt_ids(model) -> list[int]:
    from runtime.chat_prompt import chat_format, encode_prompt

    return encode_prompt(model, chat_format(model), [{"role": "user", "content": PROMPT}])


def time_stream(chunks, count=None) -> tuple[float, float, int]:
    """(TTFT, decode tokens/s, tokens) over an iterator of per-token chunks."""
    start = time.perf_counter()
    first = None
    n = 0
    for _ in chunks:
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    n = count() if count else n
    return first - start, (n - 1) / (end - first), n


def bench_gguf(path: Path, args) -> list[dict]:
    from runtime.generate import Generator, Sampling, set_gguf_threads
    from runtime.load import load_gguf

    model = load_gguf(path, n_ctx=1024, threads=args.threads, logits_all=False)
    llama = model.model
    set_gguf_threads(llama, args.threads)  # prompt batches too
    ids = prompt_ids(model)
    s = Sampling(temperature=0.7, top_p=0.8, top_k=0, repetition_penalty=1.02, max_new_tokens=args.tokens, seed=1)
    ours_gen = Generator(model, 1024, stop_ids=set())

    def ours():
        llama.reset()  # no reuse of the previous run's prompt
        return time_stream(ours_gen.stream(ids, s), count=lambda: ours_gen.stats.new_tokens)

    def theirs():
        llama.reset()
        chunks = llama.create_completion(ids, max_tokens=args.tokens, temperature=0.7, top_p=0.8, top_k=0,
                                         min_p=0.0, typical_p=1.0, repeat_penalty=1.02, seed=1, stream=True)
        last = {}

        def text_chunks():  # the closing chunk carries finish_reason, not a token
            for chunk in chunks:
                last.update(chunk["choices"][0])
                if chunk["choices"][0]["text"]:
                    yield chunk

        result = time_stream(text_chunks(), count=lambda: args.tokens)
        assert last.get("finish_reason") == "length", last  # all --tokens generated
        return result

    return compare(f"GGUF {path.name}", ours, theirs, args.reps)


def compare(name: str, ours, theirs, reps: int) -> list[dict]:
    runs = {"ours": [], "theirs": []}
    for rep in range(reps):  # interleaved, so machine load hits both alike; who goes first alternates
        first, second = ("ours", ours), ("theirs", theirs)
        for side, run in (first, second) if rep % 2 == 0 else (second, first):
            runs[side].append(run())
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in runs.items()}
    row = {"case": name, "ours_ttft_s": med["ours"][0], "ref_ttft_s": med["theirs"][0],
           "ours_tok_s": med["ours"][1], "ref_tok_s": med["theirs"][1],
           "decode_ratio": med["ours"][1] / med["theirs"][1], "ttft_ratio": med["ours"][0] / med["theirs"][0],
           "tokens": (med["ours"][2], med["theirs"][2]),
           # each rep's ratio against the run next to it: their range is the noise of the median ratio
           "decode_ratios": [o[1] / t[1] for o, t in zip(runs["ours"], runs["theirs"])],
           "ttft_ratios": [o[0] / t[0] for o, t in zip(runs["ours"], runs["theirs"])],
           "load_average": os.getloadavg()}
    print(f"{name:34s} TTFT {row['ours_ttft_s']:.3f}s vs {row['ref_ttft_s']:.3f}s ({row['ttft_ratio']:.2f}x)  "
          f"decode {row['ours_tok_s']:.2f} vs {row['ref_tok_s']:.2f} tok/s ({row['decode_ratio']:.3f}x)  "
          f"tokens {row['tokens']}", flush=True)
    print(f"{'':34s} per rep: decode {' '.join(f'{r:.3f}' for r in row['decode_ratios'])}x, "
          f"TTFT {' '.join(f'{r:.2f}' for r in row['ttft_ratios'])}x; "
          f"load {' '.join(f'{x:.2f}' for x in row['load_average'])}", flush=True)
    return [row]


def bench_hf(src: Path, args) -> list[dict]:
    from transformers.generation.streamers import BaseStreamer

    from runtime.generate import Generator, Sampling
    from runtime.load import load_model

    torch.set_num_threads(args.threads)
    model = load_model(src, device="cpu")
    ids = prompt_ids(model)
    s = Sampling(temperature=0, repetition_penalty=1.0, max_new_tokens=args.tokens)
    gen = Generator(model, 4096, stop_ids=set())
    tokens = {}

    def ours():
        gen._cache, gen._cached_ids = None, []  # no reuse of the previous run's prompt
        for _ in gen.stream(ids, s):
            pass
        tokens["ours"] = gen.last_tokens
        return gen.stats.first_token_s, gen.stats.tokens_per_s, gen.stats.new_tokens

    class Clock(BaseStreamer):
        """Records when generate hands out each new token (its first put() is the prompt)."""
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def theirs():
        clock = Clock()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.model.generate(torch.tensor([ids]), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                       do_sample=False, streamer=clock, pad_token_id=0)
        end = time.perf_counter()
        tokens["theirs"] = out[0, len(ids):].tolist()
        first = clock.times[1]
        n = len(tokens["theirs"])
        return first - start, (n - 1) / (end - first), n

    rows = compare(f"HF {src.name} f32 (greedy)", ours, theirs, args.reps)
    rows[0]["same_tokens"] = tokens["ours"] == tokens["theirs"]
    print(f"{'':34s} same tokens as model.generate: {rows[0]['same_tokens']}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/minicpm-bench-chat"))
    p.add_argument("--layers", type=int, default=12, help="12: the 955 MB checkpoint; MiniCPM-1B has 52")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--skip-gguf", action="store_true")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args()
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()

    src = build_checkpoint(args.work / f"minicpm-1b-width-{args.layers}l", args.layers)
    print(f"model: {src} ({args.layers} layers), {args.tokens} tokens per run, {args.reps} reps, "
          f"{args.threads} threads", flush=True)
    rows = []
    for outtype in () if args.skip_gguf else ("q8_0", "q4_0"):
        rows += bench_gguf(to_gguf(src, outtype), args)
    if not args.skip_hf:
        rows += bench_hf(src, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
