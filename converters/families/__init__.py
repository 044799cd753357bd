"""Model families: one module per architecture, one table of them.

A `Family` (base.py) holds everything that differs between architectures: how config.json names
it, the tensors and shapes it implies, its muP scalars and the folded Llama/Mixtral config, its GGUF
plan, how transformers builds it, what quantizers must leave in float and map for AWQ, and its chat
default. Adding a family is one module here and one line in `FAMILIES`; nothing else names families.
"""
from __future__ import annotations

from ..errors import UserError
from .base import Family
from .llama import Llama
from .minicpm import MiniCPM
from .minicpm3 import MiniCPM3
from .minicpm_moe import MiniCPMMoE
from .mixtral import Mixtral

# Asked in order: the first family whose `matches(config)` holds is the checkpoint's.
FAMILIES: tuple[Family, ...] = (MiniCPM(), MiniCPMMoE(), MiniCPM3(), Llama(), Mixtral())


def family_of(config: dict, where) -> Family:
    """The family config.json describes, or one clear error naming what is supported."""
    for family in FAMILIES:
        if family.matches(config):
            return family
    archs = config.get("architectures") or []
    name = archs[0] if archs else config.get("model_type", "") or "unknown"
    supported = ", ".join(dict.fromkeys(f.architecture for f in FAMILIES))
    raise UserError(f"{where}: architecture {name} is not supported (supported: {supported})", code=2)


def family_named(name: str) -> Family | None:
    """A family by its name or its GGUF architecture (what a loaded model reports), else None."""
    return next((f for f in FAMILIES if name == f.name), None) or next(
        (f for f in FAMILIES if name == f.gguf_arch), None)


__all__ = ["FAMILIES", "Family", "family_named", "family_of"]
