"""Tiny checkpoints shaped like a published MiniCPM: every config key kept, only sizes shrunk.

`make_tiny_like(OUT, LIKE)` reads LIKE's config.json (or `config=`, e.g. MiniCPM-V-2B-llm's for
MiniCPM-2B-sft-bf16, whose own config.json is not public), keeps every key and value that is not a
size, and shrinks the sizes consistently:

- layers -> 2; attention heads -> 4, key/value heads keep MHA (= heads) or GQA (4 // group, >= 1);
- every per-head width (implied H/heads, explicit head_dim, MLA's qk_nope/qk_rope) x s, where
  s = 32 / (H / heads), so hidden_size is 128; an explicit head_dim that differs from H/heads still
  differs (rounded up to a multiple of 32); MLA ranks -> 256 / 128; intermediate_size keeps its ratio to hidden, in multiples of 128
  (every quantizer's group size accepts the widths);
- LongRoPE factor lists are resampled at evenly spaced indices to the new rotary size (first and
  last factor kept), so the long/short relation (equal or not) and the curve's range survive;
- vocab_size, max_position_embeddings, rope_theta, muP scalars, eos lists, tie flags: unchanged.

A multimodal config (model_type minicpmv) becomes its language model's: the vision keys go, the
architecture is the one its modeling code instantiates (MiniCPM-V 2: MiniCPM; MiniCPM-V 4: Llama). The
tokenizer files are copied byte for byte from LIKE (or `tokenizer=`). Weights are random, bf16.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from .checkpoint import TOKENIZER_FILES
from .families import family_of
from .safetensors_out import write_state
from .tiny import random_weights

VISION_KEYS = ("vision_config", "slice_config", "slice_mode", "image_size", "patch_size", "query_num",
               "batch_vision_input", "drop_vision_last_layer", "use_image_id", "vision_batch_size",
               "version", "vision_encoder")
DROPPED_KEYS = ("quantization", "quantization_config")  # MLX re-serialisation of a bf16 config
MINICPM_AUTO_MAP = {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                    "AutoModel": "modeling_minicpm.MiniCPMModel",
                    "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"}
HIDDEN, HEADS, LAYERS = 128, 4, 2


def language_model_config(config: dict) -> dict:
    """A published config as its language model's config (a MiniCPM-V config loses its vision part)."""
    config = {k: v for k, v in config.items() if k not in DROPPED_KEYS}
    if config.get("model_type") != "minicpmv":
        return config
    config = {k: v for k, v in config.items() if k not in VISION_KEYS}
    if config.get("scale_emb") is not None:  # MiniCPM-V 2: a MiniCPM-2B language model
        return config | {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm",
                         "auto_map": MINICPM_AUTO_MAP}
    # MiniCPM-V 4: modeling_minicpmv instantiates transformers' LlamaForCausalLM with this config
    config.pop("auto_map", None)
    return config | {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def resample(values: list[float], n: int) -> list[float]:
    if len(values) == n:
        return list(values)
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))


def shrink(config: dict) -> dict:
    """The same config at test size (see the module docstring for the rules)."""
    out = dict(config)
    H, nh = config["hidden_size"], config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    s = (HIDDEN / HEADS) / (H / nh)
    out["hidden_size"], out["num_attention_heads"], out["num_hidden_layers"] = HIDDEN, HEADS, LAYERS
    if "num_key_value_heads" in config:
        out["num_key_value_heads"] = HEADS if nkv == nh else max(1, HEADS // (nh // nkv))
    out["intermediate_size"] = max(128, 128 * round(config["intermediate_size"] / H * HIDDEN / 128))
    rotary = HIDDEN // HEADS
    if config.get("head_dim"):
        # a head_dim that differs from H/heads stays different: rounded up to a multiple of 32
        out["head_dim"] = HIDDEN // HEADS if config["head_dim"] == H // nh else 32 * math.ceil(config["head_dim"] * s / 32)
        rotary = out["head_dim"]
    if config.get("qk_rope_head_dim"):  # MLA
        for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if config.get(key):
                out[key] = _even(config[key] * s)
        out["q_lora_rank"], out["kv_lora_rank"] = 256, 128
        rotary = out["qk_rope_head_dim"]
    rs = config.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("long_factor"):
        out["rope_scaling"] = rs | {k: resample(rs[k], rotary // 2) for k in ("long_factor", "short_factor")
                                    if rs.get(k)}
    return out


def weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the published layout, as OpenBMB's / transformers' modeling code names it
    (sizes from the config as OpenBMB's code completes it: MiniCPM3's v_head_dim = hidden // heads)."""
    family = family_of(config, "config")
    config = family.complete(config)[0]
    out = family.shapes(config, "config")
    if not config.get("tie_word_embeddings", family.tied_by_default):
        out["lm_head.weight"] = (config["vocab_size"], config["hidden_size"])
    return out


def make_tiny_like(out: Path | str, like: Path | str, config: Path | str | None = None,
                   tokenizer: Path | str | None = None, overrides: dict | None = None, seed: int = 0) -> Path:
    """Write a tiny checkpoint shaped like the published model in `like` to `out` (which must not exist).

    `overrides` change published values before shrinking (families known only from facts: a MiniCPM-1B
    is MiniCPM-2B's config with vocab 73440, 52 layers and 8 kv heads); None deletes a key.
    """
    like, out = Path(like), Path(out)
    published = json.loads(Path(config or like / "config.json").read_text(encoding="utf-8"))
    published = language_model_config(published)
    for key, value in (overrides or {}).items():
        if value is None:
            published.pop(key, None)
        else:
            published[key] = value
    tiny = shrink(published)
    out.mkdir(parents=True)
    for name in TOKENIZER_FILES + ("chat_template.jinja",):
        src = Path(tokenizer or like) / name
        if src.is_file():
            shutil.copyfile(src, out / name)
    (out / "config.json").write_text(json.dumps(tiny, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    weights = random_weights(weight_shapes(tiny), torch.Generator().manual_seed(seed),
                             float(tiny.get("scale_emb") or 1))  # Llama-style configs: no muP, x 1
    total = sum(t.numel() * 2 for t in weights.values())
    write_state(out, weights, total // 2 + 1)  # two shards and an index, as published
    return out
