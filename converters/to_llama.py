"""`minicpm convert --to llama`: a MiniCPM checkpoint as a plain Llama (or Mixtral) checkpoint."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import atomic_output
from .checkpoint import Checkpoint
from .errors import UsageError
from .mup import folded_config
from .safetensors_out import write_sharded
from .tensors import DType, OutTensor, declared_dtype, nbytes, resolve_dtype
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


def output_dtype(name: str, ckpt: Checkpoint) -> DType:
    """auto: the dtype config.json declares, else the embedding's."""
    return resolve_dtype(name, lambda: declared_dtype(ckpt.config) or ckpt.info("model.embed_tokens.weight").dtype)


@dataclass
class LlamaPlan:
    """Everything `--to llama` writes, checked and sized before any weight is read."""
    ckpt: Checkpoint
    dtype: DType
    config: dict
    tensors: list[OutTensor]

    @property
    def total_bytes(self) -> int:
        return sum(nbytes(t, self.dtype) for t in self.tensors)


def plan_llama(src: Path | str, dtype: str = "auto") -> LlamaPlan:
    """Read and check SRC: the folded tensors, their dtype and the output config."""
    ckpt = Checkpoint(src)
    tensors = ckpt.family.fold_plan(ckpt)
    out_dtype = output_dtype(dtype, ckpt)
    return LlamaPlan(ckpt, out_dtype, folded_config(ckpt, out_dtype), tensors)


def write_llama(plan: LlamaPlan, out: Path | str, force: bool = False, max_shard_size: str = "4GB",
                on_tensor: Callable[[str, int], None] | None = None) -> ConvertResult:
    """Write a plan as a Llama/Mixtral folder at OUT (atomically)."""
    limit = parse_size(max_shard_size)
    with atomic_output(Path(out), force, "model", [plan.ckpt.path]) as tmp:
        files = write_sharded(tmp, plan.tensors, plan.dtype, limit, on_tensor)
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2) + "\n")
        files += ["config.json"] + copy_tokenizer_files(plan.ckpt.path, tmp)
    return ConvertResult(plan.ckpt.family.name, plan.config["architectures"][0],
                         plan.dtype.name, len(plan.tensors), plan.total_bytes, files)


def convert_to_llama(src: Path | str, out: Path | str, dtype: str = "auto", force: bool = False,
                     max_shard_size: str = "4GB",
                     on_tensor: Callable[[str, int], None] | None = None) -> ConvertResult:
    return write_llama(plan_llama(src, dtype), out, force, max_shard_size, on_tensor)
