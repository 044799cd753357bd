"""MiniCPM3 (multi-head latent attention): native in transformers (`minicpm3`) and llama.cpp (`minicpm3`).

MLA has no Llama equivalent, so there is no fold: `--to llama` and `--fold` refuse it. llama.cpp's
graph hard-codes MiniCPM3-4B's muP scalars (scale_emb 12, scale_depth 1.4, dim_model_base 256); a
model with other values gets the ratio folded into its embedding, o_proj/down_proj and head weights,
in float32. Chat: ChatML when the model ships no template. AWQ needs its own norm -> projection map.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pathlib import Path


from ..errors import UsageError, UserError
from ..gguf_plan import GGUFPlan, GGUFTensor, _common_keys, _rope_keys, _scaled, model_name
from ..mup import fold_rope_scaling, tied
from ..official import MUP_DEFAULTS, check_activation
from ..shapes import check_shape, check_shapes
from .base import Family

if TYPE_CHECKING:
    import torch


class MiniCPM3(Family):
    name = "minicpm3"
    architecture = "MiniCPM3ForCausalLM"
    model_type = "minicpm3"
    tied_by_default = True
    gguf_arch = "minicpm3"
    chat_style = "chatml"
    lora_refusal = "multi-head latent attention: adapters target its low-rank projections"

    official_defaults = MUP_DEFAULTS  # MiniCPM3Config: scale_emb = scale_depth = dim_model_base = 1

    def complete(self, config: dict) -> tuple[dict, list[str]]:
        """The muP defaults, and v_head_dim = hidden_size // heads: OpenBMB's attention sizes the value head
        so whatever the config says (MiniCPM3-4B's config.json has no v_head_dim)."""
        config, used = super().complete(config)
        H, nh = config.get("hidden_size"), config.get("num_attention_heads")
        if config.get("v_head_dim") is None and isinstance(H, int) and isinstance(nh, int) and nh > 0:
            config = config | {"v_head_dim": H // nh}
            used.append(f"v_head_dim={H // nh}")
        return config, used

    def shapes(self, config: dict, where) -> dict[str, tuple[int, ...]]:
        return mla_shapes(config, where)

    def fold_plan(self, ckpt) -> list:
        raise UserError(
            f"{ckpt.path}: MiniCPM3 uses multi-head latent attention, which has no Llama equivalent; "
            "convert it with --to gguf, or load it directly (transformers has native minicpm3)", code=2)

    def gguf_plan(self, ckpt, fold: bool):
        if fold:
            raise UsageError(f"{ckpt.path}: MiniCPM3 uses multi-head latent attention, which has no Llama "
                             "equivalent; convert it without --fold (GGUF architecture minicpm3)")
        return plan_minicpm3(ckpt)

    def hf_config(self, config: dict):
        return minicpm3_config(config)

    def load_float(self, folder: Path, config: dict, dtype: torch.dtype):
        from transformers import MiniCPM3ForCausalLM

        check_activation(config, folder / "config.json")
        return MiniCPM3ForCausalLM.from_pretrained(folder, config=minicpm3_config(config), dtype=dtype)

    def awq_mappings(self):
        return minicpm3_awq_mappings()

    def layer_widths(self, config: dict) -> dict[str, int]:
        heads = config.get("num_attention_heads")
        widths = {"hidden size": config.get("hidden_size"), "intermediate size": config.get("intermediate_size"),
                  "q_lora_rank": config.get("q_lora_rank"), "kv_lora_rank": config.get("kv_lora_rank"),
                  "attention output width (heads x v_head_dim)": (heads or 0) * config.get("v_head_dim", 0)}
        return {k: v for k, v in widths.items() if isinstance(v, int) and v > 0}


MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def mla_shapes(config: dict, where) -> dict[str, tuple[int, ...]]:
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "vocab_size") + MLA_KEYS if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(f"{where}: config lacks {', '.join(missing)}")
    H, L, V, I, nh = (config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size",
                                          "num_attention_heads"))
    ql, kvl, nope, rope, vd = (config[k] for k in MLA_KEYS)
    out = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(L):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_a_proj.weight": (ql, H), p + "self_attn.q_a_layernorm.weight": (ql,),
            p + "self_attn.q_b_proj.weight": (nh * (nope + rope), ql),
            p + "self_attn.kv_a_proj_with_mqa.weight": (kvl + rope, H),
            p + "self_attn.kv_a_layernorm.weight": (kvl,),
            p + "self_attn.kv_b_proj.weight": (nh * (nope + vd), kvl),
            p + "self_attn.o_proj.weight": (H, nh * vd),
            p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
        }
    return out


LLAMA_CPP_MINICPM3 = {"scale_emb": 12.0, "scale_depth": 1.4, "dim_model_base": 256.0}  # minicpm3.cpp constants


def plan_minicpm3(ckpt) -> GGUFPlan:
    config, where = ckpt.config, ckpt.path / "config.json"
    expected = mla_shapes(config, where)
    check_shapes(ckpt, expected)
    check_activation(config, where)
    H, L = config["hidden_size"], config["num_hidden_layers"]
    ql, kvl, nope, rope, vd = (config[k] for k in MLA_KEYS)
    plan = GGUFPlan("minicpm3", ckpt.family.name, model_name(ckpt), vocab_rows=config["vocab_size"])
    _common_keys(plan, config, config["intermediate_size"])
    plan.key("add_vocab_size", config["vocab_size"])
    plan.key("add_q_lora_rank", ql)
    plan.key("add_kv_lora_rank", kvl)
    plan.key("add_key_length", nope + rope)
    plan.key("add_value_length", vd)
    plan.key("add_rope_dimension_count", rope)
    _rope_keys(plan, config, rope, where, as_freqs=False)

    # the config's muP values (OpenBMB's defaults filled in), as ratios to llama.cpp's constants
    emb = float(config["scale_emb"]) / LLAMA_CPP_MINICPM3["scale_emb"]
    residual = float(config["scale_depth"]) / LLAMA_CPP_MINICPM3["scale_depth"]
    logit = float(config["dim_model_base"]) / LLAMA_CPP_MINICPM3["dim_model_base"]

    get = lambda name, factor=1.0: _scaled(lambda: ckpt.get(name), factor)  # noqa: E731
    plan.tensors.append(GGUFTensor("token_embd.weight", expected["model.embed_tokens.weight"],
                                   [get("model.embed_tokens.weight", emb)], "weight"))
    names = {"q_a_proj": "attn_q_a", "q_a_layernorm": "attn_q_a_norm", "q_b_proj": "attn_q_b",
             "kv_a_proj_with_mqa": "attn_kv_a_mqa", "kv_a_layernorm": "attn_kv_a_norm", "kv_b_proj": "attn_kv_b",
             "o_proj": "attn_output"}
    for i in range(L):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        plan.tensors.append(GGUFTensor(b + "attn_norm.weight", (H,), [get(p + "input_layernorm.weight")], "f32"))
        for hf, gg in names.items():
            src = p + f"self_attn.{hf}.weight"
            role = "f32" if hf.endswith("layernorm") else "weight"
            plan.tensors.append(GGUFTensor(b + f"{gg}.weight", expected[src],
                                           [get(src, residual if hf == "o_proj" else 1.0)], role))
        plan.tensors += [
            GGUFTensor(b + "ffn_norm.weight", (H,), [get(p + "post_attention_layernorm.weight")], "f32"),
            GGUFTensor(b + "ffn_gate.weight", expected[p + "mlp.gate_proj.weight"], [get(p + "mlp.gate_proj.weight")]),
            GGUFTensor(b + "ffn_down.weight", expected[p + "mlp.down_proj.weight"],
                       [get(p + "mlp.down_proj.weight", residual)]),
            GGUFTensor(b + "ffn_up.weight", expected[p + "mlp.up_proj.weight"], [get(p + "mlp.up_proj.weight")]),
        ]
    plan.tensors.append(GGUFTensor("output_norm.weight", (H,), [get("model.norm.weight")], "f32"))
    is_tied = tied(config, ckpt)
    if is_tied and emb == logit == 1.0:
        plan.tensors[0].role = "head"  # llama.cpp reuses token_embd as the output projection
    else:
        src = "model.embed_tokens.weight" if is_tied else "lm_head.weight"
        check_shape(ckpt, src, expected["model.embed_tokens.weight"])
        plan.tensors.append(GGUFTensor("output.weight", expected["model.embed_tokens.weight"],
                                       [get(src, logit)], "head"))
    return plan


def minicpm3_config(config: dict):
    """transformers' MiniCPM3Config for a MiniCPM3 checkpoint's completed config (Checkpoint.config).

    Its muP keys and v_head_dim carry OpenBMB's defaults (transformers' config class has 12 / 1.4 / 256).
    OpenBMB's LongRoPE uses one factor set at every length (long_factor when max_position_embeddings >
    original), transformers' picks by the current length: fold_rope_scaling writes the used set into
    both slots, and the `factor` (max / original) transformers 5.17's MLA reads for the attention scale.
    """
    from transformers import MiniCPM3Config

    config = {k: v for k, v in config.items() if k not in ("auto_map", "architectures", "model_type")}
    if config.get("rope_scaling"):
        config["rope_scaling"] = fold_rope_scaling(config)
    if isinstance(config.get("dim_model_base"), float) and config["dim_model_base"].is_integer():
        config["dim_model_base"] = int(config["dim_model_base"])  # transformers' class accepts int only
    return MiniCPM3Config(**config)


def minicpm3_awq_mappings():
    """Which norm/linear feeds which layers in MiniCPM3's MLA attention, for AWQ's scale search.

    llm-compressor picks mappings by architecture and falls back to Llama's (q/k/v_proj), which
    MLA does not have. Each norm's output feeds the listed projections only; the attention output
    path (kv_b_proj's value half -> o_proj) is mixed per head with the key half, so it is not smoothed.
    """
    from llmcompressor.modifiers.transform.awq import AWQMapping

    return [AWQMapping("re:.*input_layernorm$", ["re:.*q_a_proj$", "re:.*kv_a_proj_with_mqa$"]),
            AWQMapping("re:.*q_a_layernorm$", ["re:.*q_b_proj$"]),
            AWQMapping("re:.*kv_a_layernorm$", ["re:.*kv_b_proj$"]),
            AWQMapping("re:.*post_attention_layernorm$", ["re:.*gate_proj$", "re:.*up_proj$"]),
            AWQMapping("re:.*up_proj$", ["re:.*down_proj$"])]
