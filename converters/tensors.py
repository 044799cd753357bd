"""What every writer and reader shares about tensors: dtypes, a planned output tensor, element and
byte counts, and the one place a `--dtype` name (or "auto") becomes a dtype.

A `DType` names a dtype without importing torch: reading safetensors headers, planning a conversion
and writing `--to llama` (numpy) never need it, and importing torch is most of a short command's
time (4-6 s of `minicpm --help` at load 3, before it stopped importing torch). `.torch` imports it
when a verb computes with tensors.

An `OutTensor` is computed only when written, so a plan of a whole model holds no weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import UsageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    name: str  # torch's and config.json's: "bfloat16"
    code: str  # safetensors': "BF16"
    itemsize: int
    short: str = ""  # --dtype's: "bf16" (float types only)

    @property
    def torch(self):
        import torch

        return getattr(torch, self.name)

    @property
    def is_float(self) -> bool:
        return self.name.startswith(("float", "bfloat"))

    @classmethod
    def of(cls, torch_dtype) -> "DType":
        """The DType of a torch dtype (a .bin's tensors, a loaded model)."""
        return BY_NAME[str(torch_dtype).removeprefix("torch.")]

    def __str__(self) -> str:
        return self.name


F32, F16, BF16 = DType("float32", "F32", 4, "f32"), DType("float16", "F16", 2, "f16"), DType("bfloat16", "BF16", 2, "bf16")
DTYPES = (F32, F16, BF16, DType("float64", "F64", 8), DType("int64", "I64", 8), DType("int32", "I32", 4),
          DType("int16", "I16", 2), DType("int8", "I8", 1), DType("uint8", "U8", 1), DType("bool", "BOOL", 1))
BY_NAME = {d.name: d for d in DTYPES}
BY_CODE = {d.code: d for d in DTYPES}  # safetensors header codes
# --dtype values and config.json's torch_dtype names
DTYPE_NAMES = {d.short: d for d in (F32, F16, BF16)} | {d.name: d for d in (F32, F16, BF16)}


@dataclass
class OutTensor:
    """A tensor of the output model: its name, shape and how to compute it on demand.

    When `source` is set the tensor is exactly `factor * checkpoint[source]`, so a writer may copy
    its bytes (factor 1, dtype kept) or scale row blocks instead of calling `make`."""
    name: str
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    source_dtype: DType
    source: str | None = None
    factor: float = 1.0
    checkpoint: object = None  # converters.checkpoint.Checkpoint that `source` is read from


def element_count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def nbytes(t: OutTensor, dtype: DType) -> int:
    return element_count(t.shape) * dtype.itemsize


def as_bytes(value: torch.Tensor, dtype: DType) -> memoryview:
    """A torch tensor's data in `dtype`, as bytes."""
    import torch

    return value.to(dtype.torch).contiguous().reshape(-1).view(torch.uint8).numpy().data


def declared_dtype(config: dict) -> DType | None:
    """The dtype config.json declares (torch_dtype, or transformers 5's dtype), if it names one."""
    return DTYPE_NAMES.get(str(config.get("torch_dtype") or config.get("dtype")))


def resolve_dtype(name: str, auto: DType | Callable[[], DType]) -> DType:
    """`--dtype NAME` as a DType; "auto" is `auto` (each verb says what its automatic choice is)."""
    if name == "auto":
        return auto() if callable(auto) else auto
    if name not in DTYPE_NAMES:
        raise UsageError(f"--dtype {name}: expected auto, bf16, f16 or f32")
    return DTYPE_NAMES[name]
