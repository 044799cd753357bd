"""The tensors a checkpoint must hold, by name and shape, as its config.json implies them.

Checked before anything is computed or written, so a checkpoint that disagrees with its config fails
with one line naming the tensor instead of a shape error deep inside a fold or a library.
"""
from __future__ import annotations

from .checkpoint import Checkpoint
from .errors import UserError

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def shapes(config: dict, family: str, where) -> dict[str, tuple[int, ...]]:
    """Every tensor name a MiniCPM 1/2/MoE (or Llama/Mixtral) checkpoint must hold, with its shape."""
    missing = [k for k in REQUIRED if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(f"{where}: config lacks {', '.join(missing)}")
    H, L, V, I = (config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"))
    nh = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    hd = config.get("head_dim") or H // nh
    moe = family in ("minicpm-moe", "mixtral")
    mlp = "block_sparse_moe" if family == "mixtral" else "mlp"
    out = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    for i in range(L):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
            p + "self_attn.q_proj.weight": (nh * hd, H), p + "self_attn.k_proj.weight": (nkv * hd, H),
            p + "self_attn.v_proj.weight": (nkv * hd, H), p + "self_attn.o_proj.weight": (H, nh * hd),
        }
        if moe:
            E = config.get("num_experts") or config.get("num_local_experts")
            out[p + f"{mlp}.gate.weight"] = (E, H)
            for e in range(E):
                q = p + f"{mlp}.experts.{e}."
                out |= {q + "w1.weight": (I, H), q + "w2.weight": (H, I), q + "w3.weight": (I, H)}
        else:
            out |= {p + "mlp.gate_proj.weight": (I, H), p + "mlp.up_proj.weight": (I, H),
                    p + "mlp.down_proj.weight": (H, I)}
    return out


def check_shape(ckpt: Checkpoint, name: str, shape: tuple[int, ...]) -> None:
    got = ckpt.info(name).shape
    if got != shape:
        raise UserError(f"{ckpt.path}: tensor {name} has shape {list(got)} but config.json implies {list(shape)}")


def check_shapes(ckpt: Checkpoint, expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        check_shape(ckpt, name, shape)
    ignorable = ("rotary_emb.inv_freq",)
    extra = [n for n in ckpt.names if n not in expected and n != "lm_head.weight" and not n.endswith(ignorable)]
    if extra:
        raise UserError(f"{ckpt.path}: unexpected tensor {extra[0]} for a {ckpt.family} checkpoint")


MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


def minicpm3_shapes(config: dict, where) -> dict[str, tuple[int, ...]]:
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


def check_checkpoint(ckpt: Checkpoint) -> None:
    """Every tensor present with the shape config.json implies, and no unexpected ones."""
    where = ckpt.path / "config.json"
    if ckpt.family == "minicpm3":
        check_shapes(ckpt, minicpm3_shapes(ckpt.config, where))
    else:
        check_shapes(ckpt, shapes(ckpt.config, ckpt.family, where))
