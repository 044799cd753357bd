"""Read a Hugging Face model folder tensor by tensor, without loading the whole model.

Safetensors shards are memory-mapped and each tensor is read on demand; `.bin` weights go through
`torch.load(weights_only=True, mmap=True)`. Nothing from the folder is ever executed.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError, UserError
from .official import notice, runtime_notes
from .tensors import element_count

SAFETENSORS_DTYPES = {
    "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return element_count(self.shape) * self.dtype.itemsize


def read_json(path: Path) -> dict:
    try:
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
    return path


def safetensors_header(path: Path) -> dict[str, dict]:
    """Parse a safetensors header and check the file holds every byte it promises.

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
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    for meta in header.values():
        meta["file_offsets"] = [8 + n + meta["data_offsets"][0], 8 + n + meta["data_offsets"][1]]
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise UserError(f"{path}: truncated safetensors file ({size} bytes, header needs {8 + n + end})")
    return header


class Checkpoint:
    """A model folder: its config, tokenizer files and lazily read tensors.

    Safetensors data is read with plain file reads, not a memory map: pages of a mapped file that
    were read stay in the process's resident set until the map closes, so a converter reading
    through mmap peaks at the whole checkpoint; a read copies one tensor out of the page cache.
    """

    def __init__(self, path: Path | str):
        self.path = model_folder(path)
        raw = read_json(self.path / "config.json")
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
        self._index_weights()

    # --- discovery -------------------------------------------------------------------------
    def _index_weights(self) -> None:
        p = self.path
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (p / index_name).exists():
                weight_map = read_json(p / index_name).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise UserError(f"{p / index_name}: has no weight_map")
                files = sorted(set(weight_map.values()))
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
                    self._info[name] = TensorInfo(t.dtype, tuple(t.shape))

    def _load_bin(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._bin:
            try:
                self._bin[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # torch raises many types for a damaged pickle
                raise UserError(f"{path}: cannot be read as PyTorch weights ({exc})") from None
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

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now into its own memory."""
        info = self.info(name)  # a clear error for a missing tensor
        path = self._where[name]
        if path.suffix == ".bin":
            return self._load_bin(path)[name]
        begin, end = self._offsets[name]
        data = bytearray(end - begin)
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(begin)
                got = f.readinto(data)
        except OSError as exc:
            raise UserError(f"{path}: cannot read tensor {name} ({exc.strerror or exc})") from None
        if got != end - begin:
            raise UserError(f"{path}: truncated while reading tensor {name}")
        if not data:
            return torch.empty(info.shape, dtype=info.dtype)
        return torch.frombuffer(data, dtype=info.dtype).reshape(info.shape)

    def file(self, name: str) -> Path:
        return self.path / name

    def tokenizer_files(self) -> list[Path]:
        return [self.path / f for f in TOKENIZER_FILES if (self.path / f).is_file()]


TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json",
)
