"""Mixtral checkpoints: a Llama whose MLPs are experts under `block_sparse_moe`; GGUF `llama` with experts."""
from __future__ import annotations

from .base import Family


class Mixtral(Family):
    name = "mixtral"
    architecture = "MixtralForCausalLM"
    model_type = "mixtral"
    moe = True
    expert_block = "block_sparse_moe"
