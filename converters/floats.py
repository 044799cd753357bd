"""Float tensors as bytes, in numpy: decode to float32, scale, encode, check finiteness.

`convert --to llama` needs no more than this (every tensor of the fold is a stored tensor times a
factor), so it never imports torch. The results are bit-identical to torch's
(`t.to(torch.float32) * factor` then `.to(dtype)`; tests/test_floats.py holds them side by side):
- bfloat16 -> float32 puts the 16 bits on top of a zero low half, exactly;
- float32 * factor is one float32 multiply by the factor rounded to float32, as torch's CPU kernel does;
- float32 -> bfloat16 rounds to nearest, ties to even: (u + 0x7FFF + ((u >> 16) & 1)) >> 16, torch's
  formula, which also carries overflow to infinity; NaN cannot occur (inputs are checked finite and
  a fold's factors are finite and non-zero), so torch's NaN branch is left out;
- float16 <-> float32 is numpy's cast, round to nearest even like torch's.
A value is not finite when its exponent bits are all ones, i.e. when its magnitude bits are at least
the all-ones exponent (infinity; NaN above it).
"""
from __future__ import annotations

import numpy as np

from .tensors import BF16, BY_CODE, BY_NAME, F16, F32, DType

CODECS = (F32, F16, BF16)  # what decode and encode take
BITS = {F32: np.uint32, F16: np.uint16, BF16: np.uint16, BY_CODE["F64"]: np.uint64}
EXPONENT = {F32: 0x7F800000, F16: 0x7C00, BF16: 0x7F80, BY_CODE["F64"]: 0x7FF0000000000000}
SLICE = 1 << 16  # elements per pass: 256 KB of float32 stays in cache (2.5x faster than 16 MB blocks)
MAGNITUDE = {d: (1 << (8 * d.itemsize - 1)) - 1 for d in EXPONENT}  # every bit but the sign


def finite(block, dtype: DType) -> bool:
    """Whether every value in the raw bytes `block` of `dtype` is finite (non-float dtypes: True):
    the largest magnitude (the bits without the sign) is below the all-ones exponent, a cache-sized
    slice at a time into one scratch array (mask-and-compare over 16 MB blocks made two 16 MB
    temporaries per block: 0.27 s of a 2.46 s `--to llama`)."""
    if dtype not in EXPONENT:
        return True
    bits = np.frombuffer(block, BITS[dtype])
    magnitude, limit = BITS[dtype](MAGNITUDE[dtype]), EXPONENT[dtype]
    scratch = np.empty(min(SLICE, bits.size), bits.dtype)
    for start in range(0, bits.size, SLICE):
        part = bits[start: start + SLICE]
        if np.bitwise_and(part, magnitude, out=scratch[:part.size]).max() >= limit:
            return False
    return True


def tensor_finite(t) -> bool:
    """Whether a torch tensor holds no NaN/inf. On the CPU its raw bits are read in place (`finite`):
    `torch.isfinite(t).all()` builds temporaries of ~2.4x the tensor's bytes, which for the 377 MB
    bf16 embedding of a MiniCPM-1B-width model was most of quantize's 1.9 GB peak (a 0.45 GB model).
    Elsewhere (another device, a non-contiguous view, a dtype without a codec) torch checks it in
    slices of 4M elements."""
    import torch

    if not t.is_floating_point():
        return True
    dtype = BY_NAME.get(str(t.dtype).removeprefix("torch."))
    if t.device.type == "cpu" and t.is_contiguous() and dtype in EXPONENT:
        return finite(t.detach().view(torch.uint8).reshape(-1).numpy(), dtype)
    return all(bool(torch.isfinite(rows).all()) for rows in t.detach().reshape(-1).split(1 << 22))


def decode(block, dtype: DType) -> np.ndarray:
    """The raw bytes of a float16/bfloat16/float32 tensor as a new float32 array."""
    if dtype == BF16:
        bits = np.frombuffer(block, np.uint16).astype(np.uint32)
        bits <<= 16  # in place: every temporary of a 16 MB block is 32 MB of fresh memory
        return bits.view(np.float32)
    if dtype == F16:
        return np.frombuffer(block, np.float16).astype(np.float32)
    return np.frombuffer(block, np.float32).copy()


def encode(values: np.ndarray, dtype: DType) -> memoryview:
    """A float32 array's bytes as `dtype`, rounded to nearest even (`values` may be overwritten)."""
    if dtype == BF16:
        bits = values.view(np.uint32)
        bias = bits >> 16
        bias &= 1
        bias += np.uint32(0x7FFF)
        bits += bias
        bits >>= 16
        return memoryview(bits.astype(np.uint16)).cast("B")
    if dtype == F16:
        with np.errstate(over="ignore"):  # overflow is infinity, as in torch
            return memoryview(values.astype(np.float16)).cast("B")
    return memoryview(values).cast("B")



def scale(block, source: DType, factor: float, out: DType, into: Scratch | None = None) -> memoryview:
    """`factor * tensor` from the raw bytes of `source` to the raw bytes of `out`, in float32, a
    cache-sized slice at a time; the result lives in `into` (valid until its next use) if given."""
    data, n = memoryview(block).cast("B"), len(block) // source.itemsize
    result = (into or Scratch()).view(n * out.itemsize)
    for start in range(0, n, SLICE):
        stop = min(n, start + SLICE)
        values = decode(data[start * source.itemsize: stop * source.itemsize], source)
        if factor != 1.0:
            with np.errstate(over="ignore"):  # overflow is infinity, as in torch
                values *= np.float32(factor)
        result[start * out.itemsize: stop * out.itemsize] = encode(values, out)
    return result


class Scratch:
    """A buffer reused block after block, grown when a block needs more.

    In a new process every fresh 16 MB buffer is a fresh mapping whose pages fault in as they are
    first written: `--to llama` of the 909 MB checkpoint took 0.90-1.21 s (median 1.03) with a new
    buffer per block and 0.71-0.97 s (median 0.75) with glibc told to reuse its heap
    (MALLOC_MMAP_THRESHOLD_, alternating, 8 runs each)."""

    def __init__(self):
        self._buffer = bytearray()

    def view(self, nbytes: int) -> memoryview:
        if len(self._buffer) < nbytes:
            self._buffer = bytearray(nbytes)
        return memoryview(self._buffer)[:nbytes]
