"""Fold MiniCPM's muP scalars into the weights, giving a plain Llama (dense) or Mixtral (MoE).

MiniCPM computes  h0 = embed[x] * scale_emb,  h += branch(h) * scale_depth / sqrt(L)  for every
attention and MLP branch, and  logits = lm_head(norm(h) / (hidden_size / dim_model_base)).
Every scalar sits next to a linear map or a norm, so multiplying it into that weight gives the same
function with none of the scalars. Two exact folds, chosen by whether the head is tied:

- untied: embed *= scale_emb; o_proj, down_proj (experts' w2) *= residual scale;
  lm_head /= hidden_size / dim_model_base.
- tied (the embedding is also the head): the whole residual stream is carried divided by scale_emb,
  so the embedding stays as it is and stays tied. o_proj, down_proj (w2) *= residual / scale_emb;
  every RMSNorm's eps /= scale_emb**2, because RMSNorm(c*x) with eps*c**2 equals RMSNorm(x) with eps
  exactly ((c*x) / sqrt(mean((c*x)**2) + eps*c**2) = x / sqrt(mean(x**2) + eps)); the final norm's
  weight /= hidden_size / dim_model_base. One vocabulary-sized tensor instead of two, and the
  embedding is never rounded again.

A plain Llama/Mixtral (scales 1) is copied, tied or not as it was. Arithmetic is float32. Each output
tensor records its source tensor and factor, so a writer can copy an unchanged tensor's bytes and
scale the others in bounded chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UserError
from .official import check_activation
from .shapes import check_shapes
from .tensors import DType, OutTensor


@dataclass(frozen=True)
class MupScales:
    embedding: float
    residual: float
    logit: float  # the final hidden state is divided by this

    @classmethod
    def from_config(cls, config: dict, where) -> "MupScales":
        """From a config completed with the official defaults (Checkpoint.config)."""
        return cls(
            embedding=float(config["scale_emb"]),
            residual=float(config["scale_depth"]) / math.sqrt(config["num_hidden_layers"]),
            logit=config["hidden_size"] / float(config["dim_model_base"]),
        )


def tied(config: dict, ckpt) -> bool:
    # MiniCPM's config classes default to tied embeddings, Llama's and Mixtral's to untied;
    # a tied checkpoint may omit lm_head.
    return config.get("tie_word_embeddings", ckpt.family.tied_by_default) or "lm_head.weight" not in ckpt


@dataclass(frozen=True)
class FoldFactors:
    """What each weight of the folded model is multiplied by (see the module docstring)."""
    embed: float = 1.0
    branch_out: float = 1.0  # o_proj, down_proj, experts' w2
    final_norm: float = 1.0
    head: float | None = 1.0  # None: the head is tied to the embedding and not written
    eps: float = 1.0  # rms_norm_eps is multiplied by this

    @classmethod
    def of(cls, s: MupScales, is_tied: bool) -> "FoldFactors":
        if is_tied:
            return cls(branch_out=s.residual / s.embedding, final_norm=1.0 / s.logit, head=None,
                       eps=1.0 / s.embedding ** 2)
        return cls(embed=s.embedding, branch_out=s.residual, head=1.0 / s.logit)


def fold_factors(ckpt) -> FoldFactors:
    return FoldFactors.of(ckpt.family.mup_scales(ckpt.config, ckpt.path / "config.json"), tied(ckpt.config, ckpt))


def source_tensor(ckpt, out_name: str, name: str, shape, factor: float) -> OutTensor:
    """`factor * ckpt[name]`, computed in float32 when factor is not 1, else the stored tensor."""
    if factor == 1.0:
        make = lambda: ckpt.get(name)  # noqa: E731
    else:
        make = lambda: ckpt.get(name).float() * factor  # noqa: E731
    return OutTensor(out_name, tuple(shape), make, ckpt.info(name).dtype, name, factor, ckpt)


def fold_rope_scaling(config: dict) -> dict | None:
    """MiniCPM's rope_scaling as Llama reads it.

    MiniCPM's LongRoPE builds its cos/sin cache once for max_position_embeddings and so uses
    long_factor at every length whenever max_position_embeddings > original_max_position_embeddings;
    transformers' Llama picks short or long by the current length. Writing the factor MiniCPM really
    uses into both slots gives the same function at every length.

    The attention scale sqrt(1 + ln(max/original) / ln(original)) is what every runtime derives, each
    from different keys: transformers 4.43-4.5x needs `factor` (a TypeError without it) and takes
    `original` from the config's top level (else it uses max, giving 1.0801 for 1.0954 at 64k/32k);
    transformers 5 reads both from rope_parameters; vLLM's Llama reads original from rope_scaling and
    max from the config. So `factor` = max / original goes inside, and rope_fields repeats
    original_max_position_embeddings at the top level.
    """
    rs = config.get("rope_scaling")
    if not rs:
        return None
    rs = dict(rs)
    kind = rs.get("rope_type") or rs.get("type")
    rs["rope_type"] = rs["type"] = kind
    if kind == "longrope":
        original = (rs.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
                    or config["max_position_embeddings"])
        used = rs["long_factor"] if config["max_position_embeddings"] > original else rs["short_factor"]
        rs["long_factor"], rs["short_factor"] = list(used), list(used)
        rs["original_max_position_embeddings"] = original
        rs.setdefault("factor", config["max_position_embeddings"] / original)
    return rs


def rope_fields(config: dict, fold_factors: bool) -> dict:
    """rope_scaling as every Llama runtime reads it, and LongRoPE's original context at the top level.

    A MiniCPM gets the factor set its own code uses in both slots (fold_factors); a Llama input keeps
    its factors (its semantics are Llama's) and only gains the keys it lacks."""
    rs = fold_rope_scaling(config)
    if rs and not fold_factors:
        rs = config["rope_scaling"] | {k: v for k, v in rs.items() if k not in config["rope_scaling"]}
    if not rs or rs.get("rope_type") != "longrope":
        return {"rope_scaling": rs} if rs else {}
    return {"rope_scaling": rs, "original_max_position_embeddings": rs["original_max_position_embeddings"]}


def llama_config(config: dict, dtype: DType, architecture: str, model_type: str) -> dict:
    """The Llama-shaped config.json fields of a MiniCPM config, with no muP fields (a family adds its
    own: Mixtral's experts, Llama's mlp_bias)."""
    H, nh = config["hidden_size"], config["num_attention_heads"]
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": H,
        "intermediate_size": config["intermediate_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": nh,
        "num_key_value_heads": config.get("num_key_value_heads") or nh,
        "head_dim": config.get("head_dim") or H // nh,
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config.get("max_position_embeddings", 4096),
        "rms_norm_eps": config.get("rms_norm_eps", 1e-6),
        "rope_theta": config.get("rope_theta", 10000.0),
        **rope_fields(config, fold_factors=True),
        "hidden_act": config.get("hidden_act", "silu"),
        "initializer_range": config.get("initializer_range", 0.02),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": config.get("bos_token_id", 1),
        "eos_token_id": config.get("eos_token_id", 2),
        "pad_token_id": config.get("pad_token_id"),
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),  # a DType or a torch dtype
    }


def folded_config(ckpt, dtype: DType) -> dict:
    """The family's folded config.json, tied or not as the fold is, with the tied fold's eps."""
    f = fold_factors(ckpt)
    out = ckpt.family.folded_config(ckpt.config, dtype) | {"tie_word_embeddings": f.head is None}
    if f.eps != 1.0:
        out["rms_norm_eps"] = float(ckpt.config.get("rms_norm_eps", 1e-6)) * f.eps
    return out


def fold_plan(ckpt) -> list[OutTensor]:
    """The folded model's tensors, in order, each computed from the checkpoint when asked for.

    A Llama-shaped family folds its scales (none for a plain Llama); a family with no Llama
    equivalent (MLA) refuses in its own `fold_plan`, which calls this one otherwise. A tied
    checkpoint gives no lm_head (`folded_config` ties it)."""
    config, family = ckpt.config, ckpt.family
    expected = family.shapes(config, ckpt.path / "config.json")
    check_shapes(ckpt, expected)
    check_activation(config, ckpt.path / "config.json")
    f = fold_factors(ckpt)
    plan = []
    for name, shape in expected.items():
        out_name = name.replace(".mlp.gate.", ".block_sparse_moe.gate.").replace(
            ".mlp.experts.", ".block_sparse_moe.experts.")
        if name == "model.embed_tokens.weight":
            factor = f.embed
        elif name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
            factor = f.branch_out
        elif name == "model.norm.weight":
            factor = f.final_norm
        else:
            factor = 1.0
        plan.append(source_tensor(ckpt, out_name, name, shape, factor))
    if f.head is not None:
        head_shape = (config["vocab_size"], config["hidden_size"])
        if ckpt.info("lm_head.weight").shape != head_shape:
            raise UserError(f"{ckpt.path}: tensor lm_head.weight has shape {list(ckpt.info('lm_head.weight').shape)} "
                            f"but config.json implies {list(head_shape)}")
        plan.append(source_tensor(ckpt, "lm_head.weight", "lm_head.weight", head_shape, f.head))
    return plan
