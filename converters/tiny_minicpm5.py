"""A tiny MiniCPM5 in the published layout, for tests and the demo.

MiniCPM5 is a plain `LlamaForCausalLM` (no muP) with a byte-level BPE tokenizer and a thinking chat template.
What is published, and kept here key for key:
- config.json: MiniCPM5-2B's (the MLX copy without its `quantization*` keys) with the sizes shrunk; vocab_size
  stays 130560, bos 0, eos [1, 130073], pad 1, untied head.
- tokenizer.json: byte-level BPE with MiniCPM5's two-step split (`\\p{N}{1,3}`, then the llama-bpe-like regex
  with `\\p{N}+`: llama.cpp's `minicpm5` pre-type), trained here with the `tokenizers` library on real text.
  Specials at their real ids: `<s>`=0, `</s>`=1, `<|im_start|>`=130072, `<|im_end|>`=130073; `<unk>`=2 is this
  tiny tokenizer's choice (the real id is not known here). The ids between the trained merges and 130072 are
  unused, as a padded vocabulary's are.
- tokenizer_config.json: MiniCPM5-2B's (TokenizersBackend, no template inside) with add_bos_token false,
  because the chat template writes `<s>` itself; special_tokens_map.json byte-identical to the published one;
  chat_template.jinja byte-identical to MiniCPM5-1B's (sha256 7451a05c…).
- generation_config.json: bos/eos/pad as published. MiniCPM5's sampling values are not available here, so
  do_sample/temperature/top_p follow MiniCPM4-8B's published file (0.8 / 0.8).

Training (optional) teaches the model text and the chat format in both thinking modes, exactly as the
template renders them at inference: `prompt(enable_thinking=True) + reasoning + "\\n</think>\\n\\n" + answer +
"<|im_end|>"` and `prompt(enable_thinking=False) + answer + "<|im_end|>"`. A 130560-row head costs 16.7M
multiply-adds per token, ~18x everything else (0.9M), so training runs in a compact id space: the trained BPE ids, the two
ChatML markers, and one class standing for all ~126k unused ids. Every unused row of lm_head is set to that
class's weight w, so their summed probability is exactly exp(h·w + ln N) / Z: the compact loss is the full
model's loss, not an approximation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .safetensors_out import write_state
from .tiny import fit, minicpm_forward, random_weights, read_text

TEMPLATE_FILE = Path(__file__).parent / "templates" / "minicpm5-chat_template.jinja"
VOCAB_SIZE = 130560
BOS, EOS, UNK, IM_START, IM_END = "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"
SPECIAL_IDS = {BOS: 0, EOS: 1, UNK: 2, IM_START: 130072, IM_END: 130073}
# the tokenizer.json spelling of MiniCPM5's split regexes (the second is llama-bpe's with \p{N}+)
DIGITS_REGEX = r"\p{N}{1,3}"
WORDS_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# MiniCPM5-2B's config.json (MLX copy, quantization* keys dropped) with the sizes shrunk. hidden 128 and
# intermediate 384 are multiples of AWQ/GPTQ's group size 128; 4 heads over 1 kv head keep it GQA.
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 0, "eos_token_id": [1, 130073], "head_dim": 32,
    "hidden_act": "silu", "hidden_size": 128, "initializer_range": 0.02, "intermediate_size": 384,
    "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 1, "pad_token_id": 1, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 5000000, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "5.6.2", "use_cache": True, "vocab_size": VOCAB_SIZE,
}
TOKENIZER_CONFIG = {  # MiniCPM5-2B's, plus the published add_bos_token false
    "add_bos_token": False, "add_prefix_space": None, "backend": "tokenizers", "bos_token": BOS,
    "clean_up_tokenization_spaces": False, "eos_token": EOS, "is_local": True, "legacy": True,
    "local_files_only": False, "model_max_length": 131072, "pad_token": EOS, "sp_model_kwargs": {},
    "spaces_between_special_tokens": False, "tokenizer_class": "TokenizersBackend", "unk_token": UNK,
    "use_default_system_prompt": False,
}
SPECIAL_TOKENS_MAP = {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
                      for k, v in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", EOS), ("unk_token", UNK))}
GENERATION_CONFIG = {"bos_token_id": 0, "do_sample": True, "eos_token_id": [1, 130073], "pad_token_id": 1,
                     "temperature": 0.8, "top_p": 0.8}


def train_bpe(texts: list[str], merges_vocab: int) -> dict:
    """tokenizer.json (as a dict) of a byte-level BPE trained on `texts`, MiniCPM5's split and specials."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DIGITS_REGEX), behavior="isolated"),
        pre_tokenizers.Split(Regex(WORDS_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=merges_vocab, special_tokens=[BOS, EOS, UNK], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    # The ChatML markers live at their real ids, far past the trained merges. tokenizers re-numbers an added
    # token that the model's vocabulary lacks, so they go into the vocabulary too, at the same ids.
    for content in (IM_START, IM_END):
        data["model"]["vocab"][content] = SPECIAL_IDS[content]
    data["added_tokens"] = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for c, i in sorted(SPECIAL_IDS.items(),
                                                                                    key=lambda kv: kv[1])]
    return data


def chat_examples(path: Path) -> list[tuple[str, str, str]]:
    """(user message, reasoning, answer) from an Alpaca-style JSON list of {instruction, input, output}."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    examples = []
    for row in rows:
        user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        examples.append((user, f"The user asks: {row['instruction']} I answer briefly.", row["output"]))
    return examples


def chat_texts(tokenizer, examples: list[tuple[str, str, str]]) -> list[str]:
    """Each example rendered by the model's own template, with thinking on and with it off."""
    texts = []
    for (user, reasoning, answer), think in ((e, think) for e in examples for think in (True, False)):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=think)
        texts.append(prompt + (f"{reasoning}\n</think>\n\n" if think else "") + answer + IM_END + "\n")
    return texts


def llama_forward(w: dict, config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Llama logits: MiniCPM's forward with every muP scalar at 1."""
    L = config["num_hidden_layers"]
    return minicpm_forward(w, config | {"scale_emb": 1, "scale_depth": math.sqrt(L),
                                        "dim_model_base": config["hidden_size"]}, ids)


def compact_shapes(config: dict, rows: int) -> dict[str, tuple[int, ...]]:
    """Compact weights' shapes: `rows` embedding rows; lm_head has one more, the class of every unused id."""
    H, I, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (rows, H), "lm_head.weight": (rows + 1, H), "model.norm.weight": (H,)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                   p + "self_attn.q_proj.weight": (q, H), p + "self_attn.k_proj.weight": (kv, H),
                   p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.o_proj.weight": (H, q),
                   p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                   p + "mlp.down_proj.weight": (H, I)}
    return shapes


def train_compact(w: dict, config: dict, ids: torch.Tensor, unused: int, steps: int, g: torch.Generator,
                  seq_len: int = 128, batch: int = 8, lr: float = 1e-2, log=None) -> dict:
    """Compact weights trained on compact `ids` (see tiny.fit): the last logit stands for `unused` ids at once."""
    log_unused = math.log(unused)

    def forward(params: dict, x: torch.Tensor) -> torch.Tensor:
        logits = llama_forward(params, config, x)
        return torch.cat([logits[..., :-1], logits[..., -1:] + log_unused], -1)

    return fit(w, forward, ids, steps, g, seq_len, batch, lr, log)[0]


def expand(w: dict, real_ids: list[int], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Compact weights -> published shapes: used rows in place, every other lm_head row = the unused class."""
    H = CONFIG["hidden_size"]
    index = torch.tensor(real_ids)
    embed = torch.randn(VOCAB_SIZE, H, generator=g) * CONFIG["initializer_range"]
    embed[index] = w["model.embed_tokens.weight"]
    head = w["lm_head.weight"][-1].expand(VOCAB_SIZE, H).clone()
    head[index] = w["lm_head.weight"][:-1]
    return w | {"model.embed_tokens.weight": embed, "lm_head.weight": head}


def make_tiny_minicpm5(out: Path | str, text: Path | str | None = None, chats: Path | str | None = None,
                       train_steps: int = 0, merges_vocab: int = 4096, seed: int = 0, log=None) -> Path:
    """Write a tiny MiniCPM5 to `out` (which must not exist) and return its path.

    text: training text (.txt / .parquet `text` column; default Python's own docs); chats: an Alpaca-style
    JSON file whose records also train the chat format (both thinking modes)."""
    from .tokenizer import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True)
    corpus = [p for p in read_text(Path(text) if text else None).split("\n") if p.strip()]
    examples = chat_examples(Path(chats)) if chats else []
    tokenizer_json = train_bpe(corpus + [f"{u}\n{r}\n{a}" for u, r, a in examples], merges_vocab)
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2) + "\n")
    (out / "chat_template.jinja").write_bytes(TEMPLATE_FILE.read_bytes())
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")

    trained = len(tokenizer_json["model"]["vocab"]) - 2  # BPE ids 0..trained-1, then the two markers
    real_ids = list(range(trained)) + [SPECIAL_IDS[IM_START], SPECIAL_IDS[IM_END]]
    g = torch.Generator().manual_seed(seed)
    weights = random_weights(compact_shapes(CONFIG, len(real_ids)), g)  # no muP: embeddings as drawn
    if train_steps:
        tokenizer = load_tokenizer(out)
        texts = corpus + chat_texts(tokenizer, examples)
        order = torch.randperm(len(texts), generator=g).tolist()
        ids = [i for n in order for i in tokenizer.encode(texts[n] + "\n", add_special_tokens=False)]
        compact = {real: c for c, real in enumerate(real_ids)}
        weights = train_compact(weights, CONFIG, torch.tensor([compact[i] for i in ids]),
                                VOCAB_SIZE - len(real_ids), train_steps, g, log=log)
    full = expand(weights, real_ids, g)
    write_state(out, full)
    return out
