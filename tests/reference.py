"""An independent MiniCPM forward, written from the published formulas for these tests only.

It shares no code with the project: weights come straight from the checkpoint's safetensors, and
every step (muP scalars, RoPE incl. LongRoPE, GQA, MoE routing, MiniCPM3's multi-head latent
attention) is spelled out here. Missing keys take the defaults of OpenBMB's configuration classes
(scale_emb = scale_depth = dim_model_base = 1, tied head); a Llama config has no muP at all.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_minicpm(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update({k: v.float() for k, v in load_file(f).items()})
    if not weights:
        weights = {k: v.float() for k, v in torch.load(folder / "pytorch_model.bin", weights_only=True).items()}
    return config, weights


def _rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps))


def _rope_tables(config: dict, positions: int, head_dim: int):
    base = config.get("rope_theta", 10000.0)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    inv_freq = base ** (-exponents)
    scale = 1.0
    rs = config.get("rope_scaling") or {}
    if (rs.get("rope_type") or rs.get("type")) == "longrope":
        max_pos = config["max_position_embeddings"]
        orig = rs["original_max_position_embeddings"]
        factors = rs["long_factor"] if max_pos > orig else rs["short_factor"]
        inv_freq = inv_freq / torch.tensor(factors, dtype=torch.float64)
        if max_pos > orig:
            scale = math.sqrt(1 + math.log(max_pos / orig) / math.log(orig))
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return (angles.cos() * scale).float(), (angles.sin() * scale).float()


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _attention(x, w, prefix, config, cos, sin):
    T, H = x.shape
    n_heads = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_heads
    d = config.get("head_dim") or H // n_heads
    q = (x @ w[prefix + "q_proj.weight"].t()).reshape(T, n_heads, d).permute(1, 0, 2)
    k = (x @ w[prefix + "k_proj.weight"].t()).reshape(T, n_kv, d).permute(1, 0, 2)
    v = (x @ w[prefix + "v_proj.weight"].t()).reshape(T, n_kv, d).permute(1, 0, 2)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    group = n_heads // n_kv
    k, v = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0)
    scores = torch.einsum("htd,hsd->hts", q, k) / math.sqrt(d)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.einsum("hts,hsd->htd", scores.softmax(dim=-1), v)
    return out.permute(1, 0, 2).reshape(T, n_heads * d) @ w[prefix + "o_proj.weight"].t()


def _latent_attention(x, w, prefix, config, cos, sin):
    """MiniCPM3's MLA: queries and keys/values pass through low-rank bottlenecks (each RMS-normed);
    every head's key = [its own no-rope part | one rotary part shared by all heads]; the value width
    is hidden_size // heads in OpenBMB's code (a config's v_head_dim, where given, as transformers
    reads it); scores are scaled by 1/sqrt(nope + rope)."""
    T, H = x.shape
    nh, eps = config["num_attention_heads"], config["rms_norm_eps"]
    nope, rope, kv_rank = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["kv_lora_rank"]
    vd = config.get("v_head_dim") or H // nh
    q_latent = _rms(x @ w[prefix + "q_a_proj.weight"].t(), w[prefix + "q_a_layernorm.weight"], eps)
    q = (q_latent @ w[prefix + "q_b_proj.weight"].t()).reshape(T, nh, nope + rope).permute(1, 0, 2)
    kv_a = x @ w[prefix + "kv_a_proj_with_mqa.weight"].t()
    kv_latent, k_rot = kv_a[:, :kv_rank], kv_a[:, kv_rank:]
    kv = (_rms(kv_latent, w[prefix + "kv_a_layernorm.weight"], eps) @ w[prefix + "kv_b_proj.weight"].t())
    kv = kv.reshape(T, nh, nope + vd).permute(1, 0, 2)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    q = torch.cat([q[..., :nope], _rotate(q[..., nope:], cos, sin)], dim=-1)
    k_rot = _rotate(k_rot[None], cos, sin).expand(nh, T, rope)
    k = torch.cat([k_nope, k_rot], dim=-1)
    scores = torch.einsum("htd,hsd->hts", q, k) / math.sqrt(nope + rope)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    out = torch.einsum("hts,hsd->htd", scores.masked_fill(~mask, float("-inf")).softmax(dim=-1), v)
    return out.permute(1, 0, 2).reshape(T, nh * vd) @ w[prefix + "o_proj.weight"].t()


def _mlp(x, w, prefix, config):
    if config.get("num_experts"):
        router = (x @ w[prefix + "gate.weight"].t()).softmax(dim=-1)
        top_w, top_i = router.topk(config["num_experts_per_tok"], dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for weight, e in zip(top_w[t], top_i[t]):
                p = prefix + f"experts.{int(e)}."
                xt = x[t]
                hidden = torch.nn.functional.silu(w[p + "w1.weight"] @ xt) * (w[p + "w3.weight"] @ xt)
                out[t] += weight * (w[p + "w2.weight"] @ hidden)
        return out
    gate = torch.nn.functional.silu(x @ w[prefix + "gate_proj.weight"].t())
    return (gate * (x @ w[prefix + "up_proj.weight"].t())) @ w[prefix + "down_proj.weight"].t()


@torch.no_grad()
def minicpm_logits(config: dict, w: dict[str, torch.Tensor], ids: list[int]) -> torch.Tensor:
    """Logits [T, vocab] of a MiniCPM 1/2/3/4, MiniCPM-MoE or Llama checkpoint, float32."""
    L, H, eps = config["num_hidden_layers"], config["hidden_size"], config["rms_norm_eps"]
    arch = (config.get("architectures") or ["MiniCPMForCausalLM"])[0]
    llama = not arch.startswith("MiniCPM")
    mup = {k: 1.0 if llama else float(config.get(k) or 1) for k in ("scale_emb", "scale_depth", "dim_model_base")}
    branch_scale = 1.0 if llama else mup["scale_depth"] / math.sqrt(L)
    h = w["model.embed_tokens.weight"][torch.tensor(ids)] * mup["scale_emb"]
    mla = arch == "MiniCPM3ForCausalLM"
    rotary = config["qk_rope_head_dim"] if mla else config.get("head_dim") or H // config["num_attention_heads"]
    cos, sin = _rope_tables(config, len(ids), rotary)
    attention = _latent_attention if mla else _attention
    for i in range(L):
        p = f"model.layers.{i}."
        h = h + branch_scale * attention(_rms(h, w[p + "input_layernorm.weight"], eps), w, p + "self_attn.",
                                         config, cos, sin)
        h = h + branch_scale * _mlp(_rms(h, w[p + "post_attention_layernorm.weight"], eps), w, p + "mlp.", config)
    h = _rms(h, w["model.norm.weight"], eps) / (1.0 if llama else H / mup["dim_model_base"])
    tied = config.get("tie_word_embeddings", not llama) or "lm_head.weight" not in w
    head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    return h @ head.t()
