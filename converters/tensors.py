"""What every writer and reader shares about tensors: a planned output tensor, element and byte
counts, and the one place a `--dtype` name (or "auto") becomes a torch dtype.

An `OutTensor` is computed only when written, so a plan of a whole model holds no weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import UsageError

# --dtype values and config.json's torch_dtype names
DTYPE_NAMES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32,
               "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SHORT_NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


@dataclass
class OutTensor:
    """A tensor of the output model: its name, shape and how to compute it on demand."""
    name: str
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    source_dtype: torch.dtype


def element_count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def nbytes(t: OutTensor, dtype: torch.dtype) -> int:
    return element_count(t.shape) * dtype.itemsize


def declared_dtype(config: dict) -> torch.dtype | None:
    """The dtype config.json declares (torch_dtype, or transformers 5's dtype), if it names one."""
    return DTYPE_NAMES.get(str(config.get("torch_dtype") or config.get("dtype")))


def resolve_dtype(name: str, auto: torch.dtype | Callable[[], torch.dtype]) -> torch.dtype:
    """`--dtype NAME` as a torch dtype; "auto" is `auto` (each verb says what its automatic choice is)."""
    if name == "auto":
        return auto() if callable(auto) else auto
    if name not in DTYPE_NAMES:
        raise UsageError(f"--dtype {name}: expected auto, bf16, f16 or f32")
    return DTYPE_NAMES[name]
