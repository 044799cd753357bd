#!/usr/bin/env python3
"""Write a tiny MiniCPM checkpoint in the published layout (optionally trained briefly on real text).

    python scripts/make_tiny_minicpm.py OUT [--family dense-gqa-tied] [--train-steps 300] [--text FILE]
    python scripts/make_tiny_minicpm.py OUT --like ../shared/minicpm-hf/MiniCPM3-4B [--config FILE]
    python scripts/make_tiny_minicpm.py OUT --family minicpm5 [--train-steps 300] [--text FILE] [--chats FILE]

--like copies a published model's config (every key; only sizes shrunk) and its tokenizer files.
"""
import argparse

from converters.tiny import FAMILIES, make_tiny
from converters.tiny_minicpm5 import make_tiny_minicpm5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--family", choices=FAMILIES + ("minicpm5",), default="dense-gqa-tied")
    p.add_argument("--train-steps", type=int, default=0, help="train a dense model this many steps")
    p.add_argument("--text", help="training text (.txt or .parquet with a text column); "
                                   "default: the Python standard library's documentation topics")
    p.add_argument("--tokenizer", help="copy a real tokenizer from this folder instead of training one")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--weights", choices=("safetensors", "bin"), default="safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--like", help="a published model folder: its config.json shrunk, its tokenizer files")
    p.add_argument("--config", help="with --like: the published config.json to shrink, when LIKE has none "
                                     "(MiniCPM-2B-sft-bf16: MiniCPM-V-2B-llm/config.json)")
    p.add_argument("--chats", help="minicpm5: Alpaca-style JSON ({instruction, input, output} records) that also "
                                    "trains the chat format, thinking on and off")
    a = p.parse_args()
    if a.like:
        from converters.tiny_like import make_tiny_like

        print(f"wrote {make_tiny_like(a.out, a.like, config=a.config, tokenizer=a.tokenizer, seed=a.seed)}")
        return
    if a.family == "minicpm5":
        out = make_tiny_minicpm5(a.out, text=a.text, chats=a.chats, train_steps=a.train_steps, seed=a.seed, log=print)
        print(f"wrote {out}")
        return
    out = make_tiny(a.out, a.family, tokenizer=a.tokenizer, train_steps=a.train_steps, text=a.text,
                    seed=a.seed, vocab_size=a.vocab_size, weights_format=a.weights, log=print)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
