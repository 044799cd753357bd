"""MiniCPM 1/2/4: a Llama with muP scalars (converters.mup folds them); GGUF architecture `minicpm`.

Recognised by MiniCPMForCausalLM / model_type minicpm without experts. The config class ties
embeddings by default. transformers has no `minicpm`: runtime.load builds the folded Llama in memory.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..official import MUP_DEFAULTS
from .base import Family

if TYPE_CHECKING:
    import torch


class MiniCPM(Family):
    name = "minicpm"
    architecture = "MiniCPMForCausalLM"
    model_type = "minicpm"
    tied_by_default = True
    gguf_arch = "minicpm"
    folds_for_transformers = True
    folded_architecture = ("LlamaForCausalLM", "llama")

    official_defaults = MUP_DEFAULTS  # MiniCPMConfig: scale_emb = scale_depth = dim_model_base = 1

    def matches(self, config: dict) -> bool:
        return self.named_by(config) and bool(config.get("num_experts")) == self.moe

    def mup_scales(self, config: dict, where):
        from ..mup import MupScales

        return MupScales.from_config(config, where)

    def folded_config(self, config: dict, dtype: torch.dtype) -> dict:
        from ..mup import llama_config

        return llama_config(config, dtype, *self.folded_architecture) | self.folded_extra(config)

    def folded_extra(self, config: dict) -> dict:
        return {"mlp_bias": False}

    def gguf_plan(self, ckpt, fold: bool):
        from ..gguf_plan import plan_llama, plan_minicpm

        return plan_llama(ckpt) if fold else plan_minicpm(ckpt)
