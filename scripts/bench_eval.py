#!/usr/bin/env python
"""Scoring speed of `minicpm eval-ppl` against the plain loops it replaces, one run, same machine.

- GGUF: eval-ppl's scorer vs llama.cpp's perplexity loop written directly against llama-cpp-python
  (one Llama with the same n_ctx, n_batch and threads; reset, eval a window, cross-entropy of its
  logits with torch, the fastest log-softmax at hand, so the ratio shows eval-ppl's own overhead).
- HF: eval-ppl's scorer vs the plain transformers recipe (model(ids).logits, cross-entropy, one window
  at a time) on the same folded Llama folder.

Both sides score the same token ids with the same windows (BOS + ctx-1 text tokens, all scored);
perplexities are printed so that a mismatch shows. Only scoring is timed, not loading. Each side runs
twice (ours, reference, reference, ours) and its faster run counts.

    python scripts/bench_eval.py [--hidden 1024 --layers 8 --ctx 512 --tokens 2048 --threads N]

The model is a random MiniCPM (default ~210M parameters with the real 122,753-token MiniCPM
vocabulary, whose LM head dominates scoring as it does in MiniCPM-1B/2B), written to --work.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"


def make_model(out: Path, hidden: int, layers: int, tokenizer: Path) -> Path:
    """A random MiniCPM checkpoint of the given width and depth with a real MiniCPM tokenizer."""
    from converters.safetensors_out import write_state
    from converters.tiny import base_config, copy_real_tokenizer, random_weights, weight_shapes
    from converters.tokenizer import load_tokenizer

    out.mkdir(parents=True)
    copy_real_tokenizer(tokenizer, out)
    config = base_config("dense-gqa-tied", len(load_tokenizer(out))) | {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
        "num_key_value_heads": hidden // 256, "intermediate_size": hidden * 5 // 2,
        "max_position_embeddings": 4096, "dim_model_base": 256}
    weights = random_weights(weight_shapes(config), torch.Generator().manual_seed(0), config["scale_emb"])
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_state(out, weights, 2 << 30)
    return out


def reference_gguf(path: Path, prefix: list[int], ids: list[int], ctx: int, threads: int) -> tuple[float, float]:
    """llama.cpp's perplexity loop through llama-cpp-python: (ppl, tokens/s)."""
    from llama_cpp import Llama

    llama = Llama(str(path), n_ctx=ctx, n_batch=min(ctx, 512), n_threads=threads, logits_all=True,
                  type_k=0, type_v=0, verbose=False)
    nll, n = 0.0, 0
    start = time.perf_counter()
    for i in range(0, len(ids), ctx):
        targets = np.array(ids[i: i + ctx])
        llama.reset()
        llama.eval(prefix + ids[i: i + len(targets) - 1])
        logits = torch.from_numpy(llama.scores[: len(targets)])  # torch's log-softmax: faster than numpy's
        nll += float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(targets), reduction="sum"))
        n += len(targets)
    seconds = time.perf_counter() - start
    return math.exp(nll / n), n / seconds


def reference_hf(folder: Path, prefix: list[int], ids: list[int], ctx: int) -> tuple[float, float]:
    """The plain transformers recipe, one window at a time: (ppl, tokens/s)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(ids), ctx):
            targets = torch.tensor(ids[i: i + ctx])
            logits = model(torch.tensor([prefix + ids[i: i + len(targets) - 1]])).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            n += len(targets)
    seconds = time.perf_counter() - start
    return math.exp(nll / n), n / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--tokens", type=int, default=2048, help="tokens scored (a multiple of --ctx)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--gguf-type", default="f16")
    p.add_argument("--work", type=Path, default=None, help="folder for the models (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from calib_data import load_wikitext2_text
    from converters.gguf_export import convert_to_gguf
    from converters.to_llama import convert_to_llama
    from runtime.perplexity import Encoder, evaluate

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_eval-"))
    src, llama, gguf = work / "minicpm", work / "llama", work / f"model-{args.gguf_type}.gguf"
    if not src.exists():
        make_model(src, args.hidden, args.layers, SHARED / "minicpm-hf" / "MiniCPM-2B-sft-bf16")
        convert_to_llama(src, llama, "f32")
        convert_to_gguf(src, gguf, outtype=args.gguf_type)
    text = load_wikitext2_text("test", SHARED / "data" / "wikitext-2-raw-v1")
    enc = Encoder(llama)
    ids = enc.text_ids(text, args.tokens)[: args.tokens]
    params = sum(f.stat().st_size for f in llama.glob("*.safetensors")) / 4
    print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {enc.vocab_size}, {params / 1e6:.0f}M params; "
          f"ctx {args.ctx}, {len(ids)} tokens, {args.threads} threads, torch {torch.__version__}")

    def ours(path: Path) -> tuple[float, float]:
        r = evaluate([path], text, ctx=args.ctx, max_tokens=args.tokens, device="cpu", threads=args.threads).results[0]
        return r.ppl, r.tokens_per_s

    # Each side runs twice, in the order ours, reference, reference, ours, and keeps its faster run, so that
    # neither gains from running second (page cache, allocator, a neighbour's load on a shared machine).
    sides = [("gguf " + args.gguf_type, lambda: ours(gguf), "llama-cpp-python loop",
              lambda: reference_gguf(gguf, enc.prefix, ids, args.ctx, args.threads)),
             ("hf f32", lambda: ours(llama), "transformers loop",
              lambda: reference_hf(llama, enc.prefix, ids, args.ctx))]
    print(f"{'backend':<10} {'eval-ppl ppl':>14} {'tok/s':>9}   {'reference':<22} {'ppl':>14} {'tok/s':>9}  {'ratio':>6}")
    for name, run_ours, ref_name, run_ref in sides:
        first, ref1, ref2, second = run_ours(), run_ref(), run_ref(), run_ours()
        (ppl, speed), (ref_ppl, ref_speed) = max(first, second, key=lambda r: r[1]), max(ref1, ref2, key=lambda r: r[1])
        print(f"{name:<10} {ppl:>14.4f} {speed:>9.1f}   {ref_name:<22} {ref_ppl:>14.4f} {ref_speed:>9.1f}  "
              f"{speed / ref_speed:>5.2f}x   (runs: ours {first[1]:.1f}, {second[1]:.1f}; "
              f"reference {ref1[1]:.1f}, {ref2[1]:.1f} tok/s)", flush=True)


if __name__ == "__main__":
    main()
