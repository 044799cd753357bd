"""Write sharded safetensors one tensor at a time.

The header is computed from shapes before any data is read. A tensor that is a checkpoint tensor
times a factor (`OutTensor.source`) is never held whole: kept as is (factor 1, same dtype) its bytes
are copied block by block, never decoded; otherwise row blocks of at most CHUNK_BYTES are read, scaled in
float32, cast and appended. Other tensors are computed whole, one at a time. So memory stays at
one block (or one computed tensor) whatever the model's size.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

from .checkpoint import write_all
from .tensors import OutTensor, nbytes

DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
CHUNK_BYTES = 16 << 20  # source bytes per scaled block: 64 MiB of float32 temporaries at most


def split_shards(tensors: list[OutTensor], dtype: torch.dtype, max_shard_bytes: int) -> list[list[OutTensor]]:
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        n = nbytes(t, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def write_shard(path: Path, tensors: Iterable[OutTensor], dtype: torch.dtype,
                on_tensor: Callable[[str, int], None] | None = None) -> None:
    tensors = list(tensors)
    header, offset = {}, 0
    for t in tensors:
        n = nbytes(t, dtype)
        header[t.name] = {"dtype": DTYPE_CODES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the format recommends
    with open(path, "wb", buffering=0) as f:  # unbuffered: byte copies append at the fd's position
        write_all(f.fileno(), struct.pack("<Q", len(raw)) + raw)
        for t in tensors:
            write_tensor(f, t, dtype)
            if on_tensor:
                on_tensor(t.name, nbytes(t, dtype))


def write_tensor(f, t: OutTensor, dtype: torch.dtype) -> None:
    """Append one tensor's data in `dtype` to the unbuffered file `f`."""
    if t.source is not None and t.checkpoint is not None:
        if t.factor == 1.0 and t.source_dtype == dtype:
            t.checkpoint.copy_bytes(t.source, f.fileno(), CHUNK_BYTES)
            return
        for block in t.checkpoint.row_chunks(t.source, CHUNK_BYTES):
            if t.factor != 1.0:
                block = block.to(torch.float32) * t.factor
            write_all(f.fileno(), block.to(dtype).contiguous().reshape(-1).view(torch.uint8).numpy().data)
        return
    value = t.make().to(dtype).contiguous()
    if tuple(value.shape) != t.shape:
        raise AssertionError(f"{t.name}: computed shape {tuple(value.shape)} != planned {t.shape}")
    write_all(f.fileno(), value.reshape(-1).view(torch.uint8).numpy().data)


def write_sharded(out_dir: Path, tensors: list[OutTensor], dtype: torch.dtype, max_shard_bytes: int,
                  on_tensor: Callable[[str, int], None] | None = None) -> list[str]:
    """Write model.safetensors, or model-0000i-of-0000n.safetensors and their index; return file names."""
    shards = split_shards(tensors, dtype, max_shard_bytes)
    if len(shards) == 1:
        write_shard(out_dir / "model.safetensors", shards[0], dtype, on_tensor)
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        write_shard(out_dir / name, shard, dtype, on_tensor)
        weight_map |= {t.name: name for t in shard}
    total = sum(nbytes(t, dtype) for t in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names + ["model.safetensors.index.json"]
