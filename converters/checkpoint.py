"""Read a Hugging Face model folder tensor by tensor, without loading the whole model.

Safetensors shards are memory-mapped and each tensor is read on demand; `.bin` weights go through
`torch.load(weights_only=True, mmap=True)`. Nothing from the folder is ever executed.
"""
from __future__ import annotations

import contextlib
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import floats
from .copies import BackgroundCopies, pwrite_all
from .errors import UsageError, UserError
from .limits import check_config, check_folder_files, inside
from .official import notice, runtime_notes

MAX_JSON_BYTES = 128 * 2**20  # the largest tokenizer.json published is ~20 MB
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit on its JSON header
from .tensors import BY_CODE as SAFETENSORS_DTYPES, DType, as_bytes, element_count

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorInfo:
    dtype: DType
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * self.dtype.itemsize


def read_json(path: Path) -> dict:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UserError(f"{path}: {path.stat().st_size} bytes is beyond the limit {MAX_JSON_BYTES} for a JSON file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def model_folder(path: Path | str) -> Path:
    """The folder a model argument names, or one clear error."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise UsageError(f"{path}: expected a model folder (with config.json), got a file")
    if not (path / "config.json").is_file():
        raise UsageError(f"{path}: not a model folder (no config.json)")
    check_folder_files(path)  # nothing read through the folder may lead outside it
    return path


def read_config(folder: Path) -> dict:
    """config.json of a model folder, every size it claims within limits (converters.limits)."""
    config = read_json(folder / "config.json")
    check_config(config, folder / "config.json")
    return config


def safetensors_header(path: Path) -> dict[str, dict]:
    """Parse a safetensors header and check it as the format requires, before any tensor is read.

    Every entry: a known dtype, a shape of non-negative integers, data_offsets [begin, end) with
    end - begin = dtype size x elements; sorted by begin, the entries tile the data area from 0 without
    gap or overlap, and the file holds every byte they promise.
    Each entry gains "file_offsets": the absolute [begin, end) of its data in the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise UserError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise UserError(f"{path}: truncated safetensors file (header runs past the end)")
            if n > MAX_HEADER_BYTES:
                raise UserError(f"{path}: safetensors header of {n} bytes is beyond the format's limit")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file (the header is not a JSON object)")
    header.pop("__metadata__", None)
    spans = []
    for name, meta in header.items():
        spans.append((_checked_entry(path, name, meta), name))
    expected = 0
    for (begin, end), name in sorted(spans):
        if begin != expected:
            problem = "overlaps the previous tensor" if begin < expected else "leaves a gap before it"
            raise UserError(f"{path}: tensor {name} {problem} (data_offsets {begin}, expected {expected})")
        expected = end
    if 8 + n + expected > size:
        raise UserError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + expected})")
    for meta in header.values():
        meta["file_offsets"] = [8 + n + meta["data_offsets"][0], 8 + n + meta["data_offsets"][1]]
    return header


def _checked_entry(path: Path, name: str, meta) -> tuple[int, int]:
    def bad(why: str):
        return UserError(f"{path}: tensor {name}: {why} (not a valid safetensors header)"[:300])

    if not isinstance(meta, dict):
        raise bad("entry is not an object")
    if meta.get("dtype") not in SAFETENSORS_DTYPES:
        raise bad(f"unknown dtype {meta.get('dtype')!r}")
    shape, offsets = meta.get("shape"), meta.get("data_offsets")
    ints = lambda xs, k: isinstance(xs, list) and len(xs) in k and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)
    if not ints(shape, range(0, 9)):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not ints(offsets, (2,)) or offsets[0] > offsets[1]:
        raise bad(f"data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    nbytes = SAFETENSORS_DTYPES[meta["dtype"]].itemsize
    for d in shape:
        nbytes *= d
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"{meta['dtype']} {shape} needs {nbytes} bytes, data_offsets span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


class Checkpoint:
    """A model folder: its config, tokenizer files and lazily read tensors.

    Safetensors data is read with plain file reads, not a memory map: pages of a mapped file that
    were read stay in the process's resident set until the map closes, so a converter reading
    through mmap peaks at the whole checkpoint; a read copies one tensor out of the page cache.
    """

    def __init__(self, path: Path | str):
        self.path = model_folder(path)
        raw = read_config(self.path)
        self.check_finite = True  # a NaN/inf weight is an error (converters); loaders warn instead
        from .families import family_of  # families read checkpoints: imported when one is opened

        self.family = family_of(raw, self.path / "config.json")
        # OpenBMB's defaults for keys the config omits (Family.complete); `defaults` names them
        self.config, self.defaults = self.family.complete(raw)
        for note in runtime_notes(raw, self.path):
            notice(note)
        self._where: dict[str, Path] = {}  # tensor name -> file
        self._info: dict[str, TensorInfo] = {}
        self._offsets: dict[str, tuple[int, int]] = {}  # safetensors: [begin, end) in the file
        self._bin: dict[Path, dict] = {}  # .bin files, memory-mapped by torch.load
        self._blocks = floats.Scratch()  # byte_blocks(reuse=True)
        self._index_weights()
        from .lora import merge_for  # --lora: adapters merged as each tensor is read

        self.merge = merge_for(self)
        if self.merge is not None:
            self.config = self.merge.config
            self._info.update(self.merge.extra)

    # --- discovery -------------------------------------------------------------------------
    def _index_weights(self) -> None:
        p = self.path
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (p / index_name).exists():
                weight_map = read_json(p / index_name).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise UserError(f"{p / index_name}: has no weight_map")
                names = set(weight_map.values())
                for f in names:
                    inside(p, f, f"shard named in {index_name}")
                files = sorted(names)
                for f in files:
                    if not (p / f).is_file():
                        raise UserError(f"{p / f}: shard named in {index_name} is missing")
                break
        else:
            files = [f for f in ("model.safetensors", "pytorch_model.bin") if (p / f).is_file()][:1]
            if not files:
                raise UserError(f"{p}: no weights (model.safetensors, an index, or pytorch_model.bin)")
        for f in files:
            path = p / f
            if f.endswith(".safetensors"):
                for name, meta in safetensors_header(path).items():
                    self._where[name] = path
                    self._info[name] = TensorInfo(SAFETENSORS_DTYPES[meta["dtype"]], tuple(meta["shape"]))
                    self._offsets[name] = tuple(meta["file_offsets"])
            else:
                for name, t in self._load_bin(path).items():
                    self._where[name] = path
                    self._info[name] = TensorInfo(DType.of(t.dtype), tuple(t.shape))

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        import torch

        if path not in self._bin:
            check_bin_archive(path)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for a damaged pickle
                raise UserError(f"{path}: cannot be read as PyTorch weights ({exc})"[:400]) from None
            if not isinstance(state, dict) or not all(
                    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
                raise UserError(f"{path}: not a PyTorch state dict (expected tensor names mapped to tensors)")
            self._bin[path] = state
        return self._bin[path]

    # --- access ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._info)

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def info(self, name: str) -> TensorInfo:
        try:
            return self._info[name]
        except KeyError:
            raise UserError(f"{self.path}: tensor {name} is missing from the weights") from None

    def stored(self, name: str) -> bool:
        """Whether the bytes on disk are the tensor: a safetensors shard, and no --lora merge."""
        self.info(name)  # a clear error for a missing tensor
        return self.merge is None and self._where[name].suffix == ".safetensors"

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now into its own memory (with --lora adapters merged, in float32)."""
        if self.merge is not None:
            return self.merge.get(name, self._read)
        return self._read(name)

    def _read(self, name: str) -> torch.Tensor:
        import torch

        info = self.info(name)  # a clear error for a missing tensor
        path = self._where[name]
        if path.suffix == ".bin":
            return self._finite(name, self._load_bin(path)[name])
        for data in self.byte_blocks(name, info.nbytes):  # one block: the whole tensor
            return torch.frombuffer(data, dtype=info.dtype.torch).reshape(info.shape)
        return torch.empty(info.shape, dtype=info.dtype.torch)  # no elements

    def _finite(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if self.check_finite and not floats.tensor_finite(t):
            self._not_finite(name)
        return t

    def _not_finite(self, name: str):
        raise UserError(f"{self._where[name]}: tensor {name} holds NaN or infinite values (a damaged "
                        "or diverged checkpoint); refusing to write a model from it")

    def byte_blocks(self, name: str, max_bytes: int = 16 << 20, reuse: bool = False, source=None):
        """A safetensors tensor's stored bytes (see `stored`) as consecutive row blocks of at most
        ~max_bytes each (at least one row), read one block at a time and checked like `get`.

        reuse: every block is a view of the checkpoint's one read buffer, valid until the next block
        of any tensor is read (for a caller that writes each block out at once: a fresh 16 MB buffer
        per block cost 0.5 s of a 6.6 s fold; see floats.Scratch).
        source: the tensor's shard, already open (else opened here, for this tensor)."""
        info = self.info(name)
        path, (begin, end) = self._where[name], self._offsets[name]
        rows = info.shape[0] if info.shape else 1
        row_bytes = (end - begin) // rows if rows else 0
        step = max(1, max_bytes // row_bytes) if row_bytes else 1
        buffer = self._blocks.view(min(step, rows) * row_bytes) if reuse else None
        with contextlib.nullcontext(source) if source else self._open(path, name) as f:
            for start in range(0, rows if row_bytes else 0, step):
                size = min(step, rows - start) * row_bytes
                data = buffer[:size] if reuse else bytearray(size)
                self._read_at(f, begin + start * row_bytes, data, name)
                if self.check_finite and not floats.finite(data, info.dtype):
                    self._not_finite(name)
                yield data

    def _open(self, path: Path, name: str):
        try:
            return open(path, "rb", buffering=0)
        except OSError as exc:
            raise UserError(f"{path}: cannot read tensor {name} ({exc.strerror or exc})") from None

    def _read_at(self, f, offset: int, data, name: str) -> None:
        """Fill `data` from `offset` (read errors only: a write error while a block is out stays one)."""
        try:
            f.seek(offset)
            got = f.readinto(data)
        except OSError as exc:
            raise UserError(f"{f.name}: cannot read tensor {name} ({exc.strerror or exc})") from None
        if got != len(data):
            raise UserError(f"{f.name}: truncated while reading tensor {name}")

    def row_chunks(self, name: str, max_bytes: int = 16 << 20):
        """The tensor as consecutive row blocks of at most ~max_bytes each (at least one row), read
        from disk one block at a time and checked like `get`: a copy of a vocabulary-sized tensor
        needs one block of memory, not the tensor."""
        import torch

        info = self.info(name)
        if self.merge is not None or len(info.shape) < 2 or info.nbytes <= max_bytes:
            # --lora: the stored bytes are not the merged tensor; `get` merges it (float32), whole
            yield self.get(name)
            return
        path = self._where[name]
        if path.suffix == ".bin":
            whole = self._load_bin(path)[name]  # memory-mapped: slicing reads only those pages
            step = max(1, max_bytes // (info.nbytes // info.shape[0]))
            for start in range(0, info.shape[0], step):
                yield self._finite(name, whole[start: start + step])
            return
        for data in self.byte_blocks(name, max_bytes):
            yield torch.frombuffer(data, dtype=info.dtype.torch).reshape(-1, *info.shape[1:])

    def copy_bytes(self, name: str, out_fd: int, at: int, copies: BackgroundCopies,
                   max_bytes: int = 16 << 20) -> int:
        """Put the tensor's stored bytes at offset `at` of `out_fd`: no decode or re-encode, only the
        finiteness check `get` makes; returns the offset after them.

        From safetensors the kernel copies the file range (copy_file_range, as `cp` does) in the
        `copies` thread while this one reads and checks the same range: writing the bytes from user
        memory took 1.9 s of a 4.3 s `--to llama` of 910 MB on an idle machine, where `cp -r` took
        0.54 s, and in one thread the reads, checks and copies add up."""
        if self.stored(name):
            path, (begin, end) = self._where[name], self._offsets[name]
            with self._open(path, name) as source:
                copies.add(source, begin, end - begin, at, name)
                for _ in self.byte_blocks(name, max_bytes, reuse=True, source=source):
                    pass
            return at + end - begin
        dtype = self.info(name).dtype  # a --lora merge gives float32: rounded once to the stored dtype
        for block in self.row_chunks(name, max_bytes):
            at = pwrite_all(out_fd, as_bytes(block, dtype), at)
        return at

    def file(self, name: str) -> Path:
        return self.path / name

    def tokenizer_files(self) -> list[Path]:
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]


def check_bin_archive(path: Path) -> None:
    """A .bin is a torch.save zip; refuse one whose entries would inflate beyond the bytes on disk.

    torch.save stores its entries uncompressed, so a compressed entry is not a file torch wrote, and a
    few MB of deflated zeros can expand to gigabytes inside torch.load before any check could run."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a PyTorch zip archive ({exc}); only torch.save files since torch 1.6 "
                        "are read") from None
    size = path.stat().st_size
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries) or sum(e.file_size for e in entries) > size:
        inflated = sum(e.file_size for e in entries)
        raise UserError(f"{path}: archive would inflate {size} bytes to {inflated}; torch.save never compresses, "
                        "refusing to load it")


TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json", "chat_template.jinja",
)
