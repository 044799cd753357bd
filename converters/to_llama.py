"""`minicpm convert --to llama`: a MiniCPM checkpoint as a plain Llama (or Mixtral) checkpoint."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_output
from .checkpoint import DTYPE_NAMES, Checkpoint
from .errors import UsageError
from .mup import fold_factors, fold_plan, folded_config
from .safetensors_out import nbytes, write_sharded
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
    if name == "auto":
        declared = ckpt.config.get("torch_dtype") or ckpt.config.get("dtype")
        return DTYPE_NAMES.get(declared) or ckpt.info("model.embed_tokens.weight").dtype
    if name not in DTYPE_NAMES:
        raise UsageError(f"--dtype {name}: expected one of auto, bf16, f16, f32")
    return DTYPE_NAMES[name]


def plan_llama(src: Path | str, dtype: str = "auto"):
    """Read and check SRC; return (checkpoint, output dtype, output config, folded tensors)."""
    ckpt = Checkpoint(src)
    plan = fold_plan(ckpt)
    out_dtype = output_dtype(dtype, ckpt)
    return ckpt, out_dtype, folded_config(ckpt.config, ckpt.family, out_dtype, fold_factors(ckpt)), plan


def convert_to_llama(src: Path | str, out: Path | str, dtype: str = "auto", force: bool = False,
                     max_shard_size: str = "4GB",
                     on_tensor: Callable[[str, int], None] | None = None) -> ConvertResult:
    ckpt, out_dtype, config, plan = plan_llama(src, dtype)
    limit = parse_size(max_shard_size)
    with atomic_output(Path(out), force) as tmp:
        files = write_sharded(tmp, plan, out_dtype, limit, on_tensor)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files += ["config.json"] + copy_tokenizer_files(ckpt.path, tmp)
    return ConvertResult(ckpt.family, config["architectures"][0], str(out_dtype).removeprefix("torch."),
                         len(plan), sum(nbytes(t, out_dtype) for t in plan), files)
