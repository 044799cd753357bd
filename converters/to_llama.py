"""`minicpm convert --to llama`: a MiniCPM checkpoint as a plain Llama (or Mixtral) checkpoint."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_output
from .checkpoint import Checkpoint
from .errors import UsageError
from .safetensors_out import write_sharded
from .tensors import declared_dtype, nbytes, resolve_dtype
from .tokenizer import copy_tokenizer_files

@dataclass
class ConvertResult:
    source_family: str
    architecture: str
    dtype: str
    tensors: int
    bytes_written: int
    files: list[str]


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise UsageError(f"--max-shard-size {text!r}: expected a size such as 500MB or 4GB")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])


def output_dtype(name: str, ckpt: Checkpoint) -> torch.dtype:
    """auto: the dtype config.json declares, else the embedding's."""
    return resolve_dtype(name, lambda: declared_dtype(ckpt.config) or ckpt.info("model.embed_tokens.weight").dtype)


def plan_llama(src: Path | str, dtype: str = "auto"):
    """Read and check SRC; return (checkpoint, output dtype, output config, folded tensors)."""
    ckpt = Checkpoint(src)
    plan = ckpt.family.fold_plan(ckpt)
    out_dtype = output_dtype(dtype, ckpt)
    return ckpt, out_dtype, ckpt.family.folded_config(ckpt.config, out_dtype), plan


def convert_to_llama(src: Path | str, out: Path | str, dtype: str = "auto", force: bool = False,
                     max_shard_size: str = "4GB",
                     on_tensor: Callable[[str, int], None] | None = None) -> ConvertResult:
    ckpt, out_dtype, config, plan = plan_llama(src, dtype)
    limit = parse_size(max_shard_size)
    with atomic_output(Path(out), force) as tmp:
        files = write_sharded(tmp, plan, out_dtype, limit, on_tensor)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files += ["config.json"] + copy_tokenizer_files(ckpt.path, tmp)
    return ConvertResult(ckpt.family.name, config["architectures"][0], str(out_dtype).removeprefix("torch."),
                         len(plan), sum(nbytes(t, out_dtype) for t in plan), files)
