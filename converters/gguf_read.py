"""Read GGUF metadata with the `gguf` package, turning a damaged file into one clear error."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def gguf_metadata(path: Path | str) -> dict:
    """Every key/value of a GGUF file as plain Python values (arrays as lists)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:
        raise UserError(f"{path}: not a readable GGUF file ({exc})") from None
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        meta[name] = field.contents()
    return meta
