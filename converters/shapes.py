"""The tensors a checkpoint must hold, by name and shape, as its config.json implies them.

Checked before anything is computed or written, so a checkpoint that disagrees with its config fails
with one line naming the tensor instead of a shape error deep inside a fold or a library.
"""
from __future__ import annotations

from .errors import UserError

REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


def llama_shapes(config: dict, where, moe: bool = False, mlp: str = "mlp") -> dict[str, tuple[int, ...]]:
    """Every tensor name a Llama-shaped checkpoint (MiniCPM 1/2/4/MoE, Llama, Mixtral) must hold, with its
    shape; MoE experts and router live under `mlp` (Mixtral: block_sparse_moe)."""
    missing = [k for k in REQUIRED if not isinstance(config.get(k), int)]
    if missing:
        raise UserError(f"{where}: config lacks {', '.join(missing)}")
    H, L, V, I = (config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"))
    nh = config["num_attention_heads"]
    nkv = config.get("num_key_value_heads") or nh
    hd = config.get("head_dim") or H // nh
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


def check_shape(ckpt, name: str, shape: tuple[int, ...]) -> None:
    got = ckpt.info(name).shape
    if got != shape:
        raise UserError(f"{ckpt.path}: tensor {name} has shape {list(got)} but config.json implies {list(shape)}")


def check_shapes(ckpt, expected: dict[str, tuple[int, ...]]) -> None:
    for name, shape in expected.items():
        check_shape(ckpt, name, shape)
    ignorable = ("rotary_emb.inv_freq",)
    extra = [n for n in ckpt.names if n not in expected and n != "lm_head.weight" and not n.endswith(ignorable)]
    if extra:
        raise UserError(f"{ckpt.path}: unexpected tensor {extra[0]} for a {ckpt.family} checkpoint")


def check_checkpoint(ckpt) -> None:
    """Every tensor present with the shape config.json implies, and no unexpected ones."""
    check_shapes(ckpt, ckpt.family.shapes(ckpt.config, ckpt.path / "config.json"))
