"""Llama checkpoints (and MiniCPM5, a plain Llama): nothing to fold; GGUF architecture `llama`."""
from __future__ import annotations

from .base import Family


class Llama(Family):
    name = "llama"
    architecture = "LlamaForCausalLM"
    model_type = "llama"
