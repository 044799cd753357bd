"""What a checkpoint becomes in GGUF: an architecture, its hyper-parameter keys and its tensors.

- `minicpm` (MiniCPM 1/2/4, MiniCPM-MoE): weights as published; llama.cpp applies the muP scalars
  from minicpm.embedding_scale (x scale_emb), minicpm.residual_scale (x scale_depth/sqrt(L) on every
  branch) and minicpm.logit_scale (logits / (hidden/dim_model_base)).
- `minicpm3` (MLA): planned by converters/families/minicpm3.py with the key and rope helpers here.
- `llama` (--fold, and Llama/Mixtral input): the muP-folded weights from converters.mup.

llama.cpp's `minicpm` and `llama` graphs rotate adjacent pairs of each head, Hugging Face rotates the
two halves: q/k rows are interleaved here so both compute the same thing. LongRoPE factors become
rope_factors_long/short (minicpm, minicpm3) or rope_freqs (llama); MiniCPM uses one set of factors at
every length (see mup.fold_rope_scaling), so that set is what is written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .checkpoint import Checkpoint
from .errors import UserError
from .mup import MupScales, fold_factors, fold_rope_scaling, tied
from .official import check_activation
from .shapes import check_checkpoint, check_shape
from .tensors import BF16, DType

if TYPE_CHECKING:
    import torch

Make = Callable[[], "torch.Tensor"]


@dataclass
class GGUFTensor:
    """One GGUF tensor: row-major shape, and how to compute it when written: one piece, or (MoE
    experts) one piece per index of dim 0, in any float dtype."""
    name: str
    shape: tuple[int, ...]
    parts: list[Make]
    role: str = "weight"  # "weight"; "head" (the output projection); "f32" (norms, router, rope factors)


@dataclass
class GGUFPlan:
    arch: str
    source_family: str
    name: str
    keys: list[tuple[str, tuple]] = field(default_factory=list)  # GGUFWriter method name, arguments
    tensors: list[GGUFTensor] = field(default_factory=list)
    vocab_rows: int = 0
    source_dtype: DType = BF16

    def key(self, method: str, *args) -> None:
        self.keys.append((method, args))


def _scaled(make: Make, factor: float = 1.0) -> Make:
    """Arithmetic in float32; a tensor that is only copied keeps its dtype until it is encoded."""
    if factor == 1.0:
        return make
    return lambda: make().float() * factor


def interleave_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head from [first half | second half] to pairs (i, i + d/2) side by side."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _interleaved(make: Make, n_heads: int) -> Make:
    return lambda: interleave_rope_rows(make(), n_heads)


def _vector(values: list[float]) -> Make:
    def make():
        import torch

        return torch.tensor(values, dtype=torch.float32)
    return make


def model_name(ckpt: Checkpoint) -> str:
    from .hub import repo_name  # a hub snapshot is named by its repository, not its commit

    return (str(ckpt.config.get("_name_or_path") or "").rstrip("/").split("/")[-1] or repo_name(ckpt.path)
            or ckpt.path.resolve().name)


def rope_plan(config: dict, rotary_dim: int, where) -> tuple[list[float] | None, float, dict]:
    """(frequency factors or None, attention factor, the rope_scaling llama.cpp cannot express as factors)."""
    rs = fold_rope_scaling(config)
    if not rs:
        return None, 1.0, {}
    kind = rs.get("rope_type")
    if kind in (None, "default"):
        return None, 1.0, {}
    if kind == "linear":
        return None, 1.0, {"linear": float(rs["factor"])}
    if kind != "longrope":
        raise UserError(f"{where}: rope_scaling type {kind!r} is not supported for GGUF (supported: longrope, linear)")
    if not rs.get("long_factor"):
        raise UserError(f"{where}: longrope rope_scaling lacks long_factor/short_factor")
    factors = [float(f) for f in rs["long_factor"]]
    if len(factors) != rotary_dim // 2:
        raise UserError(f"{where}: rope_scaling has {len(factors)} factors, expected {rotary_dim // 2}")
    original, longest = rs["original_max_position_embeddings"], config["max_position_embeddings"]
    scale = longest / original
    attn = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
    return factors, attn, {"original": original}


def _head_dim_keys(plan: GGUFPlan, config: dict) -> int:
    """The rotary/head size; written as key/value length when it is not hidden / heads."""
    H, nh = config["hidden_size"], config["num_attention_heads"]
    hd = config.get("head_dim") or H // nh
    plan.key("add_rope_dimension_count", hd)
    if hd != H // nh:
        plan.key("add_key_length", hd)
        plan.key("add_value_length", hd)
    return hd


def _common_keys(plan: GGUFPlan, config: dict, n_ff: int, eps_factor: float = 1.0) -> None:
    plan.key("add_context_length", int(config.get("max_position_embeddings", 4096)))
    plan.key("add_embedding_length", config["hidden_size"])
    plan.key("add_block_count", config["num_hidden_layers"])
    plan.key("add_feed_forward_length", n_ff)
    plan.key("add_head_count", config["num_attention_heads"])
    plan.key("add_head_count_kv", config.get("num_key_value_heads") or config["num_attention_heads"])
    plan.key("add_layer_norm_rms_eps", float(config.get("rms_norm_eps", 1e-6)) * eps_factor)
    plan.key("add_rope_freq_base", float(config.get("rope_theta", 10000.0)))


def _rope_keys(plan: GGUFPlan, config: dict, rotary_dim: int, where, as_freqs: bool) -> None:
    """Write rope scaling; factors as `rope_freqs` (llama) or rope_factors_long/short (MiniCPM archs)."""
    factors, attn, extra = rope_plan(config, rotary_dim, where)
    if "linear" in extra:
        plan.key("add_rope_scaling_type", _rope_type("LINEAR"))
        plan.key("add_rope_scaling_factor", extra["linear"])
    if factors is None:
        return
    if attn != 1.0:
        plan.key("add_rope_scaling_attn_factors", attn)
    if as_freqs:
        plan.tensors.append(GGUFTensor("rope_freqs.weight", (len(factors),), [_vector(factors)], "f32"))
        return
    plan.key("add_rope_scaling_type", _rope_type("LONGROPE"))
    plan.key("add_rope_scaling_orig_ctx_len", int(extra["original"]))
    for slot in ("long", "short"):
        plan.tensors.append(GGUFTensor(f"rope_factors_{slot}.weight", (len(factors),), [_vector(factors)], "f32"))


def _rope_type(name: str):
    from gguf import RopeScalingType

    return RopeScalingType[name]


# --- Llama-layout tensors (minicpm native, and llama folded) ------------------------------------
def _llama_layout(plan: GGUFPlan, config: dict, get: Callable[[str], Make], has: Callable[[str], bool],
                  moe_prefix: str, head: Make | None) -> None:
    """Tensors named as in a Llama/Mixtral checkpoint -> GGUF, q/k rows interleaved for llama.cpp."""
    H, L = config["hidden_size"], config["num_hidden_layers"]
    nh = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    hd, I = config.get("head_dim") or H // nh, config["intermediate_size"]
    plan.tensors.append(GGUFTensor("token_embd.weight", (config["vocab_size"], H),
                                   [get("model.embed_tokens.weight")], "head" if head is None else "weight"))
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        plan.tensors += [
            GGUFTensor(b + "attn_norm.weight", (H,), [get(p + "input_layernorm.weight")], "f32"),
            GGUFTensor(b + "attn_q.weight", (nh * hd, H), [_interleaved(get(p + "self_attn.q_proj.weight"), nh)]),
            GGUFTensor(b + "attn_k.weight", (nkv * hd, H), [_interleaved(get(p + "self_attn.k_proj.weight"), nkv)]),
            GGUFTensor(b + "attn_v.weight", (nkv * hd, H), [get(p + "self_attn.v_proj.weight")]),
            GGUFTensor(b + "attn_output.weight", (H, nh * hd), [get(p + "self_attn.o_proj.weight")]),
            GGUFTensor(b + "ffn_norm.weight", (H,), [get(p + "post_attention_layernorm.weight")], "f32"),
        ]
        if has(p + f"{moe_prefix}.gate.weight"):
            E = config.get("num_experts") or config["num_local_experts"]
            experts = [p + f"{moe_prefix}.experts.{e}." for e in range(E)]
            plan.tensors += [
                GGUFTensor(b + "ffn_gate_inp.weight", (E, H), [get(p + f"{moe_prefix}.gate.weight")], "f32"),
                GGUFTensor(b + "ffn_gate_exps.weight", (E, I, H), [get(x + "w1.weight") for x in experts]),
                GGUFTensor(b + "ffn_down_exps.weight", (E, H, I), [get(x + "w2.weight") for x in experts]),
                GGUFTensor(b + "ffn_up_exps.weight", (E, I, H), [get(x + "w3.weight") for x in experts]),
            ]
        else:
            plan.tensors += [
                GGUFTensor(b + "ffn_gate.weight", (I, H), [get(p + "mlp.gate_proj.weight")]),
                GGUFTensor(b + "ffn_down.weight", (H, I), [get(p + "mlp.down_proj.weight")]),
                GGUFTensor(b + "ffn_up.weight", (I, H), [get(p + "mlp.up_proj.weight")]),
            ]
    plan.tensors.append(GGUFTensor("output_norm.weight", (H,), [get("model.norm.weight")], "f32"))
    if head is not None:
        plan.tensors.append(GGUFTensor("output.weight", (config["vocab_size"], H), [head], "head"))


def _moe_keys(plan: GGUFPlan, config: dict) -> None:
    experts = config.get("num_experts") or config.get("num_local_experts")
    if experts:
        plan.key("add_expert_count", int(experts))
        plan.key("add_expert_used_count", int(config["num_experts_per_tok"]))


def plan_minicpm(ckpt: Checkpoint) -> GGUFPlan:
    config = ckpt.config
    check_checkpoint(ckpt)
    check_activation(config, ckpt.path / "config.json")
    scales = MupScales.from_config(config, ckpt.path / "config.json")
    plan = GGUFPlan("minicpm", ckpt.family.name, model_name(ckpt), vocab_rows=config["vocab_size"])
    _common_keys(plan, config, config["intermediate_size"])
    head_dim = _head_dim_keys(plan, config)
    plan.key("add_embedding_scale", scales.embedding)
    plan.key("add_residual_scale", scales.residual)
    plan.key("add_logit_scale", scales.logit)
    _moe_keys(plan, config)
    _rope_keys(plan, config, head_dim, ckpt.path / "config.json", as_freqs=False)

    def get(name: str) -> Make:
        name = name.replace(".block_sparse_moe.", ".mlp.")
        return _scaled(lambda: ckpt.get(name))

    has = lambda name: name.replace(".block_sparse_moe.", ".mlp.") in ckpt  # noqa: E731
    head = None
    if not tied(config, ckpt):
        check_shape(ckpt, "lm_head.weight", (config["vocab_size"], config["hidden_size"]))
        head = get("lm_head.weight")
    _llama_layout(plan, config, get, has, "block_sparse_moe", head)
    return plan


def plan_llama(ckpt: Checkpoint) -> GGUFPlan:
    """The muP-folded model (or a Llama/Mixtral checkpoint) as llama.cpp's `llama` architecture."""
    config = ckpt.config
    folded = {t.name: t for t in ckpt.family.fold_plan(ckpt)}
    plan = GGUFPlan("llama", ckpt.family.name, model_name(ckpt), vocab_rows=config["vocab_size"])
    _common_keys(plan, config, config["intermediate_size"], eps_factor=fold_factors(ckpt).eps)
    head_dim = _head_dim_keys(plan, config)
    plan.key("add_vocab_size", config["vocab_size"])
    _moe_keys(plan, config)
    _rope_keys(plan, config, head_dim, ckpt.path / "config.json", as_freqs=True)
    get = lambda name: _scaled(folded[name].make)  # noqa: E731
    head = get("lm_head.weight") if "lm_head.weight" in folded else None  # None: token_embd is the head
    _llama_layout(plan, config, get, lambda name: name in folded, "block_sparse_moe", head)
    return plan


def plan_gguf(src, fold: bool = False) -> tuple[Checkpoint, GGUFPlan]:
    """The checkpoint at SRC and its GGUF plan: the family's own architecture, or with `fold` the
    muP-folded `llama` (families that have one)."""
    ckpt = Checkpoint(src)
    plan = ckpt.family.gguf_plan(ckpt, fold)
    plan.source_dtype = ckpt.info("model.embed_tokens.weight").dtype
    return ckpt, plan
