"""The tiny models of tests/test_published_configs.py: every published config in ../shared/minicpm-hf,
and the families known only from published facts (SOURCES.md), as inputs to converters.tiny_like.

A fact case is the nearest published config with the facts written over it before shrinking; where a
family's tokenizer is not public it is assembled from public files of the same vocabulary.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import shared_path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@dataclass(frozen=True)
class Case:
    like: str  # folder under ../shared/minicpm-hf
    family: str  # what the project must recognise
    config: str | None = None  # the published config.json, when `like` has none
    tokenizer: str | None = None  # "minicpm1b", "chatml-2b", "minicpm5": assembled below
    overrides: dict = field(default_factory=dict)
    defaults: tuple[str, ...] = ()  # official defaults inspect must report as used


def _mup(config: str) -> dict:
    return json.loads(shared_path("minicpm-hf", config).read_text())


MINICPM4_RS = _mup("MiniCPM4-8B/config.json")["rope_scaling"]
MINICPM3_RS = _mup("MiniCPM3-4B/config.json")["rope_scaling"]
CASES = {
    # published configs
    "MiniCPM-2B-sft-bf16": Case("MiniCPM-2B-sft-bf16", "minicpm", config="MiniCPM-V-2B-llm/config.json"),
    "MiniCPM3-4B": Case("MiniCPM3-4B", "minicpm3", defaults=("v_head_dim=32",)),
    "MiniCPM4-8B": Case("MiniCPM4-8B", "minicpm"),
    "MiniCPM5-2B": Case("MiniCPM5-2B-MLX", "llama", tokenizer="minicpm5"),
    "MiniCPM-V-4-llm": Case("MiniCPM-V-4", "llama"),
    # known from facts (SOURCES.md)
    "MiniCPM-1B-sft": Case("MiniCPM-2B-sft-bf16", "minicpm", config="MiniCPM-V-2B-llm/config.json",
                           tokenizer="minicpm1b", overrides={
                               "vocab_size": 73440, "num_hidden_layers": 52, "hidden_size": 1536,
                               "num_attention_heads": 24, "num_key_value_heads": 8, "intermediate_size": 3840,
                               "tie_word_embeddings": True, "_name_or_path": "openbmb/MiniCPM-1B-sft-bf16"}),
    "MiniCPM-2B-128k": Case("MiniCPM-2B-sft-bf16", "minicpm", config="MiniCPM-V-2B-llm/config.json",
                            tokenizer="chatml-2b", overrides={
                                "_name_or_path": "openbmb/CPM-2B", "rope_theta": 4129032.258,
                                "max_position_embeddings": 131072, "tie_word_embeddings": False}),
    "MiniCPM4-0.5B": Case("MiniCPM4-8B", "minicpm", overrides={
        "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 2,
        "intermediate_size": 4096, "tie_word_embeddings": True, "pad_token_id": None,
        "_name_or_path": "openbmb/MiniCPM4-0.5B"}),
    "MiniCPM4.1-8B": Case("MiniCPM4-8B", "minicpm", overrides={"max_position_embeddings": 65536}),
    "MiniCPM4-8B-sparse": Case("MiniCPM4-8B", "minicpm", overrides={"sparse_config": {
        "kernel_size": 32, "kernel_stride": 16, "init_blocks": 1, "block_size": 64, "window_size": 2048,
        "topk": 64, "use_nope": False, "dense_len": 8192}}),
    "MiniCPM-S-1B": Case("MiniCPM-2B-sft-bf16", "minicpm", config="MiniCPM-V-2B-llm/config.json",
                         tokenizer="minicpm1b", overrides={
                             "vocab_size": 73440, "num_attention_heads": 24, "hidden_size": 1536,
                             "num_key_value_heads": 8, "intermediate_size": 3840, "tie_word_embeddings": True,
                             "hidden_act": "fatrelu", "hidden_act_param": 0.0}),
    # not published: muP keys left out (OpenBMB's defaults 1/1/1) and LongRoPE beyond the original context
    "MiniCPM3-4B-long-no-mup": Case("MiniCPM3-4B", "minicpm3", overrides={
        "max_position_embeddings": 131072, "scale_emb": None, "scale_depth": None, "dim_model_base": None,
        "rope_scaling": MINICPM3_RS | {"long_factor": [f * 1.5 for f in MINICPM3_RS["long_factor"]]}},
        defaults=("scale_emb=1", "scale_depth=1", "dim_model_base=1", "v_head_dim=32")),
    "MiniCPM4-8B-long-no-mup": Case("MiniCPM4-8B", "minicpm", overrides={
        "max_position_embeddings": 131072, "scale_emb": None, "scale_depth": None, "dim_model_base": None,
        "rope_scaling": MINICPM4_RS | {"long_factor": [f * 1.5 for f in MINICPM4_RS["long_factor"]]}},
        defaults=("scale_emb=1", "scale_depth=1", "dim_model_base=1")),
}


def tokenizer_folder(kind: str, out: Path) -> Path:
    """A tokenizer folder for a family whose own files are not public."""
    out.mkdir(parents=True)
    hf = shared_path("minicpm-hf")
    if kind == "minicpm1b":  # the 73440-piece MiniCPM vocabulary with MiniCPM-1/2's <用户> template
        shutil.copyfile(hf / "MiniCPM4-8B" / "tokenizer.model", out / "tokenizer.model")
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(hf / "MiniCPM-2B-sft-bf16" / name, out / name)
    elif kind == "chatml-2b":  # MiniCPM-2B's vocabulary with ChatML as text (llama.cpp #6602)
        shutil.copyfile(hf / "MiniCPM-2B-sft-bf16" / "tokenizer.model", out / "tokenizer.model")
        config = json.loads((hf / "MiniCPM-2B-sft-bf16" / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": CHATML}, ensure_ascii=False))
    elif kind == "minicpm5":  # byte-level BPE with MiniCPM5's split, specials at their real ids
        from converters.tiny import stdlib_text
        from converters.tiny_minicpm5 import train_bpe

        (out / "tokenizer.json").write_text(json.dumps(train_bpe([stdlib_text()[:200_000]], 1500)))
        for name in ("chat_template.jinja", "special_tokens_map.json"):
            shutil.copyfile(hf / "MiniCPM5-1B" / name, out / name)
        shutil.copyfile(hf / "MiniCPM5-2B-MLX" / "tokenizer_config.json", out / "tokenizer_config.json")
    else:
        raise ValueError(kind)
    return out


def build(name: str, root: Path) -> Path:
    from converters.tiny_like import make_tiny_like

    case = CASES[name]
    tokenizer = tokenizer_folder(case.tokenizer, root / f"{name}-tokenizer") if case.tokenizer else None
    config = shared_path("minicpm-hf", case.config) if case.config else None
    return make_tiny_like(root / name, shared_path("minicpm-hf", case.like), config=config, tokenizer=tokenizer,
                          overrides=case.overrides)


# --- fixtures shared by the tests that use these cases ------------------------------------------------
IDS = [1] + [int(i) for i in torch.randint(3, 1400, (47,), generator=torch.Generator().manual_seed(3))]


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """published(name) -> the tiny checkpoint of that case (built once per session)."""
    root, cache = tmp_path_factory.mktemp("published"), {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference(published):
    cache = {}

    def get(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = _reference_logits(published(name))
        return cache[name]

    return get


def close_to(logits: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4) -> None:
    err = (logits - reference).abs().max().item()
    assert err <= rel * reference.abs().max().item(), f"max |Δlogit| {err:.3g} vs max |logit| {reference.abs().max():.3g}"
    assert (logits.argmax(-1) == reference.argmax(-1)).all()


def _reference_logits(folder) -> torch.Tensor:
    from reference import load_minicpm, minicpm_logits

    return minicpm_logits(*load_minicpm(folder), IDS)
