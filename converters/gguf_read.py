"""Recognise and read GGUF files with the `gguf` package, turning a damaged file into one clear error."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def is_gguf(path: Path | str) -> bool:
    """A file that starts with the GGUF magic (only its first 4 bytes are read)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:  # missing, a folder, unreadable
        return False


def open_gguf(path: Path | str):
    """A GGUFReader over `path` (memory-mapped, tensors not read)."""
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as exc:
        raise UserError(f"{path}: not a readable GGUF file ({exc})") from None


def metadata(reader) -> dict:
    """Every key/value of an open GGUF file as plain Python values (arrays as lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def gguf_metadata(path: Path | str) -> dict:
    """The metadata of a GGUF file about to be run, its claimed sizes checked (converters.limits)."""
    from .limits import check_gguf_metadata

    meta = metadata(open_gguf(path))
    check_gguf_metadata(meta, path)
    return meta
