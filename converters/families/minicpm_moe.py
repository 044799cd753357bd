"""MiniCPM-MoE-8x2B: MiniCPM with experts (`num_experts` in a minicpm config); folds into Mixtral."""
from __future__ import annotations

from .minicpm import MiniCPM


class MiniCPMMoE(MiniCPM):
    name = "minicpm-moe"
    moe = True
    folded_architecture = ("MixtralForCausalLM", "mixtral")

    def folded_extra(self, config: dict) -> dict:
        return {"num_local_experts": config["num_experts"], "num_experts_per_tok": config["num_experts_per_tok"],
                "router_aux_loss_coef": config.get("router_aux_loss_coef", 0.0), "sliding_window": None,
                "output_router_logits": False}

