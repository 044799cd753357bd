"""Write sharded safetensors one tensor at a time.

The header is computed from shapes before any data is read, so every tensor's place in the file is
known and each is written at its offset. A tensor that is a checkpoint tensor times a factor
(`OutTensor.source`) is never held whole: kept as is (factor 1, same dtype) its bytes are copied by
the kernel in a second thread (converters/copies.py) while this one reads and checks them, never
decoded; otherwise row blocks of at most CHUNK_BYTES are read, scaled in float32, cast and written.
Other tensors are computed whole, one at a time. So memory stays at one block (or one computed
tensor) whatever the model's size.

From safetensors shards the blocks go through numpy (converters/floats.py, bit-identical to torch),
so a fold with no `.bin` and no --lora never imports torch: its start-up was most of the time of
`--to llama` (the copies themselves run at `cp` speed).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable

from . import floats
from .copies import BackgroundCopies, pwrite_all
from .tensors import BF16, DType, OutTensor, as_bytes, nbytes

CHUNK_BYTES = 16 << 20  # source bytes per scaled block: 64 MiB of float32 temporaries at most


def split_shards(tensors: list[OutTensor], dtype: DType, max_shard_bytes: int) -> list[list[OutTensor]]:
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


def write_shard(path: Path, tensors: Iterable[OutTensor], dtype: DType,
                on_tensor: Callable[[str, int], None] | None = None) -> None:
    tensors = list(tensors)
    header, offset = {}, 0
    for t in tensors:
        n = nbytes(t, dtype)
        header[t.name] = {"dtype": dtype.code, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the format recommends
    with open(path, "wb", buffering=0) as f:
        fd = f.fileno()
        at = pwrite_all(fd, struct.pack("<Q", len(raw)) + raw, 0)
        scaled = floats.Scratch()
        with BackgroundCopies(fd) as copies:
            for t in tensors:
                at = write_tensor(fd, at, t, dtype, copies, scaled)
                copies.check()
                if on_tensor:
                    on_tensor(t.name, nbytes(t, dtype))


def write_tensor(fd: int, at: int, t: OutTensor, dtype: DType, copies: BackgroundCopies,
                 scaled: floats.Scratch) -> int:
    """Write one tensor's data in `dtype` at offset `at` of `fd`; returns the offset after it
    (`scaled`: the buffer scaled blocks are written from)."""
    ckpt = t.checkpoint
    if t.source is not None and ckpt is not None:
        if t.factor == 1.0 and t.source_dtype == dtype:
            return ckpt.copy_bytes(t.source, fd, at, copies, CHUNK_BYTES)
        if ckpt.stored(t.source) and t.source_dtype in floats.CODECS and dtype in floats.CODECS:
            for block in ckpt.byte_blocks(t.source, CHUNK_BYTES, reuse=True):
                at = pwrite_all(fd, floats.scale(block, t.source_dtype, t.factor, dtype, scaled), at)
            return at
        for block in ckpt.row_chunks(t.source, CHUNK_BYTES):
            at = pwrite_all(fd, as_bytes(block.float() * t.factor if t.factor != 1.0 else block, dtype), at)
        return at
    value = t.make()
    if tuple(value.shape) != t.shape:
        raise AssertionError(f"{t.name}: computed shape {tuple(value.shape)} != planned {t.shape}")
    return pwrite_all(fd, as_bytes(value, dtype), at)


def write_sharded(out_dir: Path, tensors: list[OutTensor], dtype: DType, max_shard_bytes: int,
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


def write_state(out_dir: Path, state: dict, max_shard_bytes: int = 1 << 40, dtype: DType = BF16) -> list[str]:
    """In-memory torch tensors (name -> tensor) as safetensors in `dtype`, as `write_sharded` writes them."""
    tensors = [OutTensor(n, tuple(t.shape), (lambda t=t: t), DType.of(t.dtype)) for n, t in state.items()]
    return write_sharded(out_dir, tensors, dtype, max_shard_bytes)
