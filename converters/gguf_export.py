"""`minicpm convert --to gguf`: a MiniCPM (or Llama) checkpoint as one GGUF file for llama.cpp.

The header (keys and every tensor's type and shape) is computed before any weight is read; then
tensors are read, converted and written in order, two computed ahead of the write (MoE experts one
expert at a time), so memory stays at a few tensors whatever the model's size. f32/f16/bf16 and the legacy block
formats (q8_0, q4_0, q4_1, q5_0, q5_1) are written here with the `gguf` package; k-quants go through
llama.cpp's own quantizer from a temporary f16 (or f32) GGUF next to OUT.
"""
from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .atomic import atomic_output, check_output
from .errors import UsageError, UserError
from .gguf_kquant import KQUANT_FTYPES, quantize_gguf
from .gguf_plan import GGUFPlan, GGUFTensor, plan_gguf
from .tensors import F32
from .gguf_vocab import add_vocab, read_vocab

# Outtypes written here: --outtype -> (GGML tensor type, GGUF file type), by the gguf package's enum names.
# Adding one that gguf.quants can encode is one entry; k-quants live in gguf_kquant.KQUANT_FTYPES.
DIRECT_OUTTYPES = {
    "f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
}
OUTTYPES = tuple(DIRECT_OUTTYPES) + tuple(KQUANT_FTYPES)


@dataclass
class GGUFResult:
    source_family: str
    architecture: str
    outtype: str
    tensors: int
    bytes_written: int
    files: list[str] = field(default_factory=list)


def _ggml_type(outtype: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[DIRECT_OUTTYPES[outtype][0]]


def _file_type(outtype: str) -> int:
    from gguf import LlamaFileType

    return LlamaFileType[DIRECT_OUTTYPES[outtype][1]]


def check_outtype(outtype: str) -> str:
    outtype = outtype.lower()
    if outtype not in OUTTYPES:
        raise UsageError(f"--outtype {outtype}: expected one of {', '.join(OUTTYPES)}")
    return outtype


def tensor_type(t: GGUFTensor, outtype: str):
    """The GGML type a tensor is stored as: 1-D tensors, the MoE router and rope factors stay f32;
    in 4/5-bit files the output projection is q8_0 (llama-quantize keeps it at 6+ bits too);
    rows that do not split into whole blocks fall back to f16."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if outtype == "f32" or len(t.shape) == 1 or t.role == "f32":
        return Q.F32
    qtype = _ggml_type(outtype)
    if qtype in (Q.F16, Q.BF16):
        return qtype
    if t.role == "head" and outtype != "q8_0":
        qtype = Q.Q8_0
    block = GGML_QUANT_SIZES[qtype][0]
    return qtype if t.shape[-1] % block == 0 else Q.F16


def tensor_nbytes(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * (shape[-1] // block) * size


def encode(x: torch.Tensor, qtype) -> np.ndarray:
    """Values (any float dtype) -> the bytes GGML stores for `qtype` (a numpy array to write as is)."""
    from gguf import GGMLQuantizationType as Q, quants

    if qtype == Q.F32:
        return x.to(torch.float32).contiguous().numpy()
    if qtype == Q.F16:
        return x.to(torch.float16).contiguous().numpy()
    if qtype == Q.BF16:  # round to nearest even, as ggml's fp32 -> bf16
        return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    if qtype == Q.Q8_0:
        return q8_0(x)
    return quants.quantize(x.to(torch.float32).contiguous().numpy(), qtype)


def q8_0(x: torch.Tensor, chunk: int = 1 << 17) -> np.ndarray:
    """Q8_0 blocks (f16 scale, 32 int8) bit-identical to ggml's reference quantizer (and gguf.quants).
    Written in torch over large chunks because q8_0 is the common case: two converter threads run it
    in parallel (gguf.quants loops in Python over 16-row groups and ran ~1.8x slower that way), and
    its temporaries stay at a few MB whatever the tensor's size."""
    blocks = x.reshape(-1, 32)
    out = torch.empty((blocks.shape[0], 34), dtype=torch.uint8)
    step = max(1, chunk // 32)
    for i in range(0, blocks.shape[0], step):
        b = blocks[i: i + step].to(torch.float32)
        d = b.abs().amax(dim=1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
        q = b * inv
        a = q.abs()
        whole = a.floor()
        q = torch.copysign(whole + (2 * (a - whole)).floor(), q)  # roundf: halves away from zero
        out[i: i + step, :2] = d.to(torch.float16).view(torch.uint8)
        out[i: i + step, 2:] = q.to(torch.int8).view(torch.uint8)
    return out.reshape(*x.shape[:-1], -1).numpy()


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch ops single-threaded meanwhile: the converter parallelises across tensors instead,
    and intra-op threads on a busy 2-core machine spin against each other (q8_0 ran 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _release_freed_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it in per-thread arenas otherwise, and the
    converter's resident memory would creep up tensor by tensor)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _encoded(t: GGUFTensor, qtype, part) -> np.ndarray:
    value = part()
    piece_shape = t.shape if len(t.parts) == 1 else t.shape[1:]
    if tuple(value.shape) != piece_shape:
        raise AssertionError(f"{t.name}: computed shape {tuple(value.shape)} != planned {piece_shape}")
    return encode(value, qtype).reshape(-1).view(np.uint8)


def _write_tensors(f, plan: GGUFPlan, types: list, alignment: int,
                   on_tensor: Callable[[str, int], None] | None) -> int:
    """Tensor data in file order. Two threads read and encode the next pieces while this one writes,
    so reading, converting and the disk write overlap; at most two pieces are held at once."""
    workers = ahead = 2
    jobs = iter([(t, qtype, i, part) for t, qtype in zip(plan.tensors, types) for i, part in enumerate(t.parts)])
    total = 0
    f.write(b"\0" * (-f.tell() % alignment))
    with torch_threads(1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gguf") as pool:
        pending: deque = deque()
        try:
            for t, qtype, i, part in itertools.islice(jobs, ahead):
                pending.append((t, qtype, i, pool.submit(_encoded, t, qtype, part)))
            while pending:
                t, qtype, i, future = pending.popleft()
                job = next(jobs, None)
                if job is not None:
                    pending.append((*job[:3], pool.submit(_encoded, job[0], job[1], job[3])))
                f.write(future.result().data)
                _release_freed_memory()
                if i == len(t.parts) - 1:
                    f.write(b"\0" * (-f.tell() % alignment))
                    n = tensor_nbytes(t.shape, qtype)
                    total += n
                    if on_tensor:
                        on_tensor(t.name, n)
        except BaseException:
            for *_, future in pending:
                future.cancel()
            raise
    return total


def write_gguf(path: Path, plan: GGUFPlan, vocab, outtype: str,
               on_tensor: Callable[[str, int], None] | None = None) -> int:
    """Write `plan` as a GGUF file at `path`; return the number of tensor data bytes."""
    from gguf import GGML_QUANT_VERSION, GGUFWriter

    writer = GGUFWriter(None, plan.arch)
    writer.add_name(plan.name)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for method, args in plan.keys:
        getattr(writer, method)(*args)
    add_vocab(writer, vocab)
    types = [tensor_type(t, outtype) for t in plan.tensors]
    for t, qtype in zip(plan.tensors, types):
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_nbytes(t.shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        return _write_tensors(writer.fout[0], plan, types, writer.data_alignment, on_tensor)
    finally:
        writer.close()


def plan_bytes(plan: GGUFPlan, outtype: str) -> int:
    """Tensor bytes the direct write produces (for k-quants: the intermediate file)."""
    base = intermediate_type(plan) if outtype in KQUANT_FTYPES else outtype
    return sum(tensor_nbytes(t.shape, tensor_type(t, base)) for t in plan.tensors)


def intermediate_type(plan: GGUFPlan) -> str:
    """What k-quants start from: f32 for an f32 checkpoint, else f16 (exact for bf16 weights in f16's range)."""
    return "f32" if plan.source_dtype == F32 else "f16"


@dataclass
class Prepared:
    """Everything `--to gguf` writes, read and checked once, before any output exists."""
    ckpt: object
    plan: GGUFPlan
    vocab: object
    outtype: str
    imatrix: Path | None = None

    @property
    def total_bytes(self) -> int:
        """Tensor bytes the direct write produces (for k-quants: the intermediate file)."""
        return plan_bytes(self.plan, self.outtype)


def prepare(src, outtype: str = "f16", fold: bool = False, imatrix: Path | str | None = None) -> Prepared:
    """Read and check everything before any output is written: checkpoint, plan, vocabulary, outtype."""
    outtype = check_outtype(outtype)
    if imatrix is not None and outtype not in KQUANT_FTYPES:
        raise UsageError(f"--imatrix only applies to k-quants ({', '.join(KQUANT_FTYPES)}), not {outtype}")
    ckpt, plan = plan_gguf(src, fold)
    vocab = read_vocab(ckpt.path, plan.vocab_rows, ckpt.config)
    return Prepared(ckpt, plan, vocab, outtype, None if imatrix is None else Path(imatrix))


def check_imatrix(path: Path, plan: GGUFPlan) -> dict[str, np.ndarray]:
    """The importance matrix, checked to be for this model: known tensor names, one value per input column."""
    from .gguf_kquant import read_imatrix

    entries = read_imatrix(path)
    shapes = {t.name: t.shape for t in plan.tensors if len(t.shape) > 1}
    if not set(entries) & set(shapes):
        raise UserError(f"--imatrix {path}: names none of this model's tensors (made for another model?)")
    for name, values in entries.items():
        shape = shapes.get(name)
        if shape is None or name == "token_embd.weight":  # llama.cpp ignores both as well
            continue
        expected = shape[-1] * (shape[0] if len(shape) == 3 else 1)
        if values.size != expected:
            raise UserError(f"--imatrix {path}: {values.size} values for {name}, which has {expected} "
                            "input columns (made for another model?)")
    return entries


def convert_to_gguf(src, out, outtype: str = "f16", fold: bool = False, force: bool = False,
                    imatrix: Path | str | None = None,
                    on_tensor: Callable[[str, int], None] | None = None) -> GGUFResult:
    check_output(Path(out), force, "gguf", [src])
    return write_prepared(prepare(src, outtype, fold, imatrix), out, force, on_tensor)


def write_prepared(prepared: Prepared, out, force: bool = False,
                   on_tensor: Callable[[str, int], None] | None = None) -> GGUFResult:
    """Write a prepared conversion as one GGUF file at OUT (atomically)."""
    out = Path(out)
    check_output(out, force, "gguf", [prepared.ckpt.path])
    ckpt, plan, vocab, outtype = prepared.ckpt, prepared.plan, prepared.vocab, prepared.outtype
    importance = None if prepared.imatrix is None else check_imatrix(prepared.imatrix, plan)  # fail before writing
    with atomic_output(out, force, "gguf", [ckpt.path]) as tmp:
        if outtype in KQUANT_FTYPES:
            base = tmp.with_name(tmp.name + "." + intermediate_type(plan))
            try:
                write_gguf(base, plan, vocab, intermediate_type(plan), on_tensor)
                quantize_gguf(base, tmp, outtype, importance)
            finally:
                base.unlink(missing_ok=True)
        else:
            write_gguf(tmp, plan, vocab, outtype, on_tensor)
        size = os.path.getsize(tmp)
    return GGUFResult(ckpt.family.name, plan.arch, outtype, len(plan.tensors), size, [out.name])
