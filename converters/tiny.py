"""Tiny MiniCPM checkpoints in the exact published layout, for tests and `make demo`.

Families: dense-gqa-tied (MiniCPM-1B-like), dense-mha-untied (MiniCPM-2B-like), minicpm4 (GQA,
untied, LongRoPE, eos list, mup_denominator), moe (MiniCPM-MoE-8x2B-like) and minicpm3 (MLA with
LongRoPE factors). Widths are multiples of 128 so every quantizer accepts them. Dense models can be
trained briefly on real text (`train_steps`) so that perplexity means something.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .safetensors_out import write_state

FAMILIES = ("dense-gqa-tied", "dense-mha-untied", "minicpm4", "moe", "minicpm3")
MINICPM_AUTO_MAP = {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                    "AutoModel": "modeling_minicpm.MiniCPMModel",
                    "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"}
USER_ASSISTANT = "{% for message in messages %}{% if message['role'] == 'user' %}{{'<用户>' + message['content'].strip() + '<AI>'}}{% else %}{{message['content'].strip()}}{% endif %}{% endfor %}"
CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
CHATML_TOKENS = ["<|im_end|>", "<|im_start|>"]


def stdlib_text() -> str:
    """English prose every Python install ships: the documentation topics behind help(), without the
    grammar rules, tables and heading underlines a tiny model would learn to repeat instead."""
    from pydoc_data.topics import topics

    def prose(line: str) -> bool:
        bare = line.strip()
        return not (bare.startswith(("|", "+-", "+=", "::=")) or "::=" in bare or (bare and set(bare) <= set("=-*~^+| ")))

    return "\n\n".join("\n".join(filter(prose, topics[k].splitlines())) for k in sorted(topics))


def read_text(path: Path | None) -> str:
    if path is None:
        return stdlib_text()
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return "".join(pq.read_table(path, columns=["text"]).column("text").to_pylist())
    return path.read_text(encoding="utf-8")


def base_config(family: str, vocab_size: int) -> dict:
    common = {
        "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "auto_map": MINICPM_AUTO_MAP,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 256,
        "initializer_range": 0.1, "intermediate_size": 768, "max_position_embeddings": 1024,
        "num_attention_heads": 4, "num_hidden_layers": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "rope_scaling": None, "torch_dtype": "bfloat16", "use_cache": True,
        "vocab_size": vocab_size, "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 64,
        "tie_word_embeddings": True,
    }
    if family == "dense-mha-untied":
        return common | {"num_key_value_heads": 4, "num_hidden_layers": 3, "tie_word_embeddings": False}
    if family == "minicpm4":
        factors = [round(1.0 + 0.05 * i, 4) for i in range(32)]  # head_dim 64 -> 32 frequencies
        return common | {"tie_word_embeddings": False, "eos_token_id": [2, vocab_size - 2], "pad_token_id": 2,
                         "mup_denominator": 32, "rope_scaling": {
                             "rope_type": "longrope", "long_factor": factors, "short_factor": factors,
                             "original_max_position_embeddings": 1024}}
    if family == "moe":
        return common | {"num_key_value_heads": 4, "num_hidden_layers": 2, "intermediate_size": 384,
                         "num_experts": 4, "num_experts_per_tok": 2}
    if family == "minicpm3":
        factors = [round(1.0 + 0.3 * i, 4) for i in range(8)]  # qk_rope_head_dim 16 -> 8
        return common | {
            "architectures": ["MiniCPM3ForCausalLM"], "model_type": "minicpm3",
            "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPM3Config",
                         "AutoModelForCausalLM": "modeling_minicpm.MiniCPM3ForCausalLM"},
            "num_hidden_layers": 2, "num_key_value_heads": 4, "q_lora_rank": 128, "kv_lora_rank": 128,
            "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32, "eos_token_id": [2, vocab_size - 2],
            "rope_scaling": {"type": "longrope", "long_factor": factors, "short_factor": factors,
                             "original_max_position_embeddings": 1024}}
    return common


def weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    H, V, I, L = config["hidden_size"], config["vocab_size"], config["intermediate_size"], config["num_hidden_layers"]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = H // nh
    shapes = {"model.embed_tokens.weight": (V, H)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)}
        if config["model_type"] == "minicpm3":
            qk = config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
            ql, kvl = config["q_lora_rank"], config["kv_lora_rank"]
            shapes |= {
                p + "self_attn.q_a_proj.weight": (ql, H), p + "self_attn.q_a_layernorm.weight": (ql,),
                p + "self_attn.q_b_proj.weight": (nh * qk, ql),
                p + "self_attn.kv_a_proj_with_mqa.weight": (kvl + config["qk_rope_head_dim"], H),
                p + "self_attn.kv_a_layernorm.weight": (kvl,),
                p + "self_attn.kv_b_proj.weight": (nh * (config["qk_nope_head_dim"] + config["v_head_dim"]), kvl),
                p + "self_attn.o_proj.weight": (H, nh * config["v_head_dim"])}
        else:
            shapes |= {p + "self_attn.q_proj.weight": (nh * hd, H), p + "self_attn.k_proj.weight": (nkv * hd, H),
                       p + "self_attn.v_proj.weight": (nkv * hd, H), p + "self_attn.o_proj.weight": (H, nh * hd)}
        if config.get("num_experts"):
            shapes[p + "mlp.gate.weight"] = (config["num_experts"], H)
            for e in range(config["num_experts"]):
                q = p + f"mlp.experts.{e}."
                shapes |= {q + "w1.weight": (I, H), q + "w2.weight": (H, I), q + "w3.weight": (I, H)}
        else:
            shapes |= {p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                       p + "mlp.down_proj.weight": (H, I)}
    shapes["model.norm.weight"] = (H,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, H)
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], generator: torch.Generator,
                   scale_emb: float | None = None) -> dict[str, torch.Tensor]:
    """Random float32 weights for a shape table, drawn from `generator` in the table's order: the same
    table and seed give bit-identical tensors (the trained test fixtures rely on it).

    Vectors (norms) are 1 + 0.1·N(0, 1): near 1 but not 1, so a skipped norm shows. Matrices are
    N(0, 1) / sqrt(fan_in), fan_in = shape[1]. With `scale_emb` (muP) the embedding is then scaled by
    sqrt(H) / scale_emb: unit-RMS rows after the model's x scale_emb, so activations stay in range at every depth.
    """
    weights = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            weights[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            weights[name] = torch.randn(shape, generator=generator) / math.sqrt(shape[1])
    if scale_emb is not None:
        embed = weights["model.embed_tokens.weight"]
        embed *= math.sqrt(embed.shape[1]) / scale_emb
    return weights


# --- tokenizers -------------------------------------------------------------------------------
def train_sentencepiece(text: str, out: Path, vocab_size: int, extra_symbols: list[str]) -> None:
    """A MiniCPM-style sentencepiece BPE: byte fallback, no dummy prefix, whitespace kept."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
            normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=["<用户>", "<AI>"] + extra_symbols, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            max_sentence_length=1 << 16, input_sentence_size=200000, shuffle_input_sentence=True,
            minloglevel=2, num_threads=2)
        shutil.copyfile(Path(tmp) / "sp.model", out / "tokenizer.model")


def write_tokenizer_config(out: Path, template: str, extra: dict) -> None:
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False,
              "legacy": True, "tokenizer_class": "LlamaTokenizer", "chat_template": template} | extra
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def copy_real_tokenizer(src: Path, out: Path) -> None:
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "added_tokens.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)


# --- a MiniCPM forward for training -------------------------------------------------------------
def minicpm_forward(w: dict[str, torch.Tensor], config: dict, ids: torch.Tensor) -> torch.Tensor:
    """Dense MiniCPM logits for a batch of ids (float32, causal, default RoPE), used only to train."""
    H, nh, nkv, L = (config[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                        "num_hidden_layers"))
    hd, eps = H // nh, config["rms_norm_eps"]
    residual = config["scale_depth"] / math.sqrt(L)
    T = ids.shape[1]
    inv = 1.0 / config["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    h = F.embedding(ids, w["model.embed_tokens.weight"]) * config["scale_emb"]
    B = ids.shape[0]
    for i in range(L):
        p = f"model.layers.{i}."
        x = norm(h, w[p + "input_layernorm.weight"])
        q = (x @ w[p + "self_attn.q_proj.weight"].T).view(B, T, nh, hd).transpose(1, 2)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True, enable_gqa=nkv != nh)
        h = h + (a.transpose(1, 2).reshape(B, T, H) @ w[p + "self_attn.o_proj.weight"].T) * residual
        x = norm(h, w[p + "post_attention_layernorm.weight"])
        m = F.silu(x @ w[p + "mlp.gate_proj.weight"].T) * (x @ w[p + "mlp.up_proj.weight"].T)
        h = h + (m @ w[p + "mlp.down_proj.weight"].T) * residual
    h = norm(h, w["model.norm.weight"]) / (H / config["dim_model_base"])
    head = w["model.embed_tokens.weight"] if config["tie_word_embeddings"] else w["lm_head.weight"]
    return h @ head.T


def fit(weights: dict, forward, data: torch.Tensor, steps: int, generator: torch.Generator, seq_len: int,
        batch: int, lr: float, log=None) -> tuple[dict, list[float]]:
    """Train copies of `weights` on next-token cross-entropy of `forward(params, ids) -> logits`; return them
    (detached) and each step's loss.

    Each step reads `batch` windows of seq_len + 1 tokens of `data`, their starts drawn from `generator` (one
    randint a step, nothing else drawn: a seed gives the same run). AdamW without weight decay; the learning
    rate warms up linearly over 20 steps, then decays as a cosine towards 0 at `steps`.
    """
    params = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        x = torch.stack([data[s: s + seq_len + 1] for s in starts])
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits = forward(params, x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}  loss {loss.item():.3f}")
    return {k: v.detach() for k, v in params.items()}, losses


def train(weights: dict, config: dict, token_ids: list[int], steps: int, generator: torch.Generator,
          seq_len: int = 128, batch: int = 16, lr: float = 3e-3, log=None) -> tuple[dict, list[float]]:
    """A dense MiniCPM trained on `token_ids` (see `fit`)."""
    return fit(weights, lambda params, ids: minicpm_forward(params, config, ids), torch.tensor(token_ids), steps,
               generator, seq_len, batch, lr, log)


def make_tiny(out: Path | str, family: str = "dense-gqa-tied", tokenizer: Path | str | None = None,
              train_steps: int = 0, text: Path | str | None = None, seed: int = 0, vocab_size: int = 2048,
              shards: int = 2, weights_format: str = "safetensors", log=None) -> Path:
    """Write a tiny MiniCPM checkpoint to `out` (which must not exist) and return its path."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if train_steps and family in ("moe", "minicpm3"):
        raise ValueError("only the dense families can be trained")
    out = Path(out)
    out.mkdir(parents=True)
    corpus = read_text(Path(text) if text else None)
    chatml = family in ("minicpm4", "minicpm3")
    if tokenizer:
        copy_real_tokenizer(Path(tokenizer), out)
        from .tokenizer import load_tokenizer

        vocab = len(load_tokenizer(out))
    else:
        train_sentencepiece(corpus[:2_000_000], out, vocab_size - (2 if chatml else 0), [])
        vocab = vocab_size
        extra = {}
        if chatml:  # ChatML markers as added tokens after the sentencepiece vocabulary, as MiniCPM3/4 do
            added = {tok: vocab_size - 2 + i for i, tok in enumerate(CHATML_TOKENS)}
            (out / "added_tokens.json").write_text(json.dumps(added) + "\n")
            extra = {"eos_token": "<|im_end|>", "additional_special_tokens": CHATML_TOKENS,
                     "added_tokens_decoder": {str(i): {"content": t, "special": True, "normalized": False,
                                                       "lstrip": False, "rstrip": False, "single_word": False}
                                              for t, i in added.items()}}
        write_tokenizer_config(out, CHATML if chatml else USER_ASSISTANT, extra)
    config = base_config(family, vocab)
    g = torch.Generator().manual_seed(seed)
    weights = random_weights(weight_shapes(config), g, config["scale_emb"])
    if train_steps:
        from .tokenizer import load_tokenizer

        ids = load_tokenizer(out)(corpus[:1_000_000], add_special_tokens=False)["input_ids"]
        weights, _ = train(weights, config, ids, train_steps, g, log=log)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": 1, "eos_token_id": config["eos_token_id"], "do_sample": True,
           "temperature": 0.8, "top_p": 0.8}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if weights_format == "bin":
        torch.save({n: t.to(torch.bfloat16) for n, t in weights.items()}, out / "pytorch_model.bin")
    else:
        total = sum(t.numel() * 2 for t in weights.values())
        write_state(out, weights, max(1, math.ceil(total / shards)) + 1)
    return out
