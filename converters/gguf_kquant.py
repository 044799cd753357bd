"""k-quants (q4_k_m ...) through llama.cpp's own quantizer, in-process via llama-cpp-python.

The k-quant formats and llama.cpp's per-tensor type choices (q6_k output, q4_k/q6_k mix in q4_k_m, ...)
live in llama.cpp only, so we write an f16/f32 GGUF first and hand it to `llama_model_quantize`.
An importance matrix (`--imatrix`, from llama-imatrix: GGUF or the legacy .dat format) is passed
through as llama-quantize does: per tensor, the mean squared activation of each input column.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from pathlib import Path

import numpy as np

from .errors import UserError

KQUANT_FTYPES = {"q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}  # enum llama_ftype


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError("k-quants need llama-cpp-python (pip install llama-cpp-python)") from None
    return llama_cpp


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """tensor name -> importance per input column (per expert, concatenated), as llama-quantize loads it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--imatrix {path}: no such file", code=2)
    with open(path, "rb") as f:
        magic = f.read(4)
    entries = _read_gguf_imatrix(path) if magic == b"GGUF" else _read_legacy_imatrix(path)
    if not entries:
        raise UserError(f"--imatrix {path}: holds no importance data")
    for name, values in entries.items():
        if not np.isfinite(values).all():
            raise UserError(f"--imatrix {path}: non-finite values for {name}")
    return entries


def _read_gguf_imatrix(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    try:
        tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in GGUFReader(str(path)).tensors}
    except Exception as exc:
        raise UserError(f"--imatrix {path}: not a readable imatrix GGUF ({exc})") from None
    entries = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        counts = tensors.get(base + ".counts")
        if counts is None or len(sums) % len(counts):
            raise UserError(f"--imatrix {path}: {base} has sums but no matching counts")
        per = sums.reshape(len(counts), -1)
        values = np.where(counts[:, None] > 0, per / np.maximum(counts[:, None], 1), 1.0)
        entries[base] = values.reshape(-1).astype(np.float32)
    return entries


def _read_legacy_imatrix(path: Path) -> dict[str, np.ndarray]:
    """llama-imatrix's .dat: n, then per entry: name length, name, calls, n values, float32 values."""
    data = path.read_bytes()
    entries, pos = {}, 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise UserError(f"--imatrix {path}: truncated or not an importance matrix")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n,) = take("<i")
    if not 0 < n < 1 << 20:
        raise UserError(f"--imatrix {path}: not an importance matrix (GGUF or llama-imatrix .dat)")
    for _ in range(n):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise UserError(f"--imatrix {path}: not an importance matrix (bad entry name)")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace")
        calls, count = take("<ii")
        if count < 1:
            raise UserError(f"--imatrix {path}: entry {name} has no values")
        values = np.array(take(f"<{count}f"), dtype=np.float32)
        entries[name] = values / calls if calls > 0 else values
    return entries


@contextlib.contextmanager
def _captured_llama_log(llama_cpp, lines: list[str]):
    """Collect llama.cpp's log lines instead of printing them; restore llama-cpp-python's logger after."""
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def quantize_gguf(src: Path, dst: Path, outtype: str, imatrix: dict[str, np.ndarray] | None = None,
                  threads: int | None = None, max_buf_bytes: int = 0) -> None:
    """Quantize the f16/f32 GGUF `src` into `dst` with llama.cpp's `llama_model_quantize`;
    `imatrix`: tensor name -> importances, as read_imatrix returns them. `max_buf_bytes` (0: llama.cpp's
    default, 8 GiB) bounds the rows it holds at once (source, float32 and quantized): by default it
    converts a whole tensor at a time, 754 MB of float32 alone for MiniCPM-1B's embedding. k-quant
    blocks lie within a row, so slabs give the same bytes (tests/test_convert_gguf.py compares)."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KQUANT_FTYPES[outtype]
    params.nthread = threads or os.cpu_count() or 1
    params.max_buf_size = max_buf_bytes
    keep = []  # the ctypes buffers must outlive the call
    if imatrix:
        table = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for slot, (name, values) in zip(table, imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep += [name.encode(), values]
            slot.name = keep[-2]
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            slot.size = values.size
        # the zeroed last slot ends the list
        params.imatrix = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(table)
    log: list[str] = []
    with _captured_llama_log(llama_cpp, log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        lines = [line.strip() for line in "".join(log).splitlines() if line.strip()]
        reasons = [line for line in lines if "failed" in line or "error" in line] or lines[-1:]
        reason = reasons[-1] if reasons else f"llama_model_quantize returned {rc}"
        raise UserError(f"llama.cpp could not quantize to {outtype}: {reason}")
