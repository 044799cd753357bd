"""converters/floats.py (numpy, no torch) against torch itself: `--to llama` writes through it."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from converters import floats
from converters.tensors import BF16, F16, F32, DType

from conftest import ROOT

FLOATS = [F32, F16, BF16]


def awkward_values() -> torch.Tensor:
    """float32 values that exercise every rounding path: ties to even in bf16 and f16 (bit patterns
    with the dropped half exactly 0x8000), subnormals of each type, values that overflow f16/bf16 after
    scaling, signed zeros, and a spread of ordinary magnitudes."""
    g = torch.Generator().manual_seed(0)
    ordinary = torch.randn(4000, generator=g) * torch.logspace(-30, 30, 4000)
    ties = (torch.randint(0, 2**15, (500,), generator=g, dtype=torch.int32) * 65536 + 32768).view(torch.float32)
    f16_ties = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 6e-8, 3e-8, 2**-25])
    special = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.3e38, -3.3e38, 1.0, -1.0, 2**-133, 2**-149])
    return torch.cat([ordinary, ties, -ties, f16_ties, special]).to(torch.float32)


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("factor", [1.0, 0.0923, 12.0, 1 / 9])
@pytest.mark.parametrize("out", FLOATS, ids=str)
@pytest.mark.parametrize("source", FLOATS, ids=str)
def test_scaling_stored_bytes_is_bit_identical_to_torch(source, out, factor, monkeypatch):
    """`factor * t` from stored bytes, in float32, cast: the bytes torch's own path (mup/safetensors_out
    before numpy) gives, for every pair of dtypes, including ties, subnormals and overflow to inf;
    cache-sized slices of 777 elements, so that slices and a ragged last one are joined too."""
    monkeypatch.setattr(floats, "SLICE", 777)
    stored = awkward_values().to(source.torch)
    stored = stored[torch.isfinite(stored)]
    want = (stored.to(torch.float32) * factor).to(out.torch)
    got = floats.scale(bytearray(raw(stored)), source, factor, out)
    assert bytes(got) == raw(want)


@pytest.mark.parametrize("dtype", FLOATS + [DType.of(torch.float64)], ids=str)
def test_finiteness_is_read_from_the_exponent_bits_as_torch_sees_it(dtype, monkeypatch):
    """In slices of 777 elements: a damaged value in the first, a middle or the ragged last slice."""
    monkeypatch.setattr(floats, "SLICE", 777)
    values = awkward_values().to(torch.float64)
    values = values[torch.isfinite(values.to(dtype.torch))]
    assert len(values) % 777 and floats.finite(raw(values.to(dtype.torch)), dtype)
    for bad in (float("inf"), float("-inf"), float("nan")):
        for where in (0, 1234, len(values) - 1):
            damaged = values.clone()
            damaged[where] = bad
            assert not floats.finite(raw(damaged.to(dtype.torch)), dtype), (bad, where)
    assert floats.finite(np.arange(10, dtype=np.int64).tobytes(), DType.of(torch.int64))  # not a float type


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_convert_to_llama_and_help_never_import_torch(tiny, tmp_path):
    """`minicpm --help` and a whole `convert --to llama` (scaled and byte-copied tensors, f32 output)
    run without importing torch, and write what the torch path writes (tests/test_convert_llama.py
    checks that path against the reference)."""
    src, out = tiny("dense-mha-untied"), tmp_path / "llama"
    code = f"""
import sys
from minicpm_cli.app import main
for args in (["--help"], ["convert", {str(src)!r}, "--to", "llama", "-o", {str(out)!r}, "--dtype", "f32"]):
    sys.argv = ["minicpm", *args]
    try:
        main()
    except SystemExit as exit:
        assert exit.code in (0, None), exit.code
print("torch imported:", "torch" in sys.modules)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch imported: False" in result.stdout

    from converters.checkpoint import Checkpoint
    from converters.mup import fold_plan

    plan = fold_plan(Checkpoint(src))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert set(f.keys()) == {t.name for t in plan}
        for t in plan:
            assert torch.equal(f.get_tensor(t.name), t.make().to(torch.float32)), t.name


def test_a_byte_copy_the_kernel_gives_up_part_way_is_finished_by_reading_and_writing(tiny, cli, tmp_path,
                                                                                      monkeypatch):
    """Unchanged tensors go file to file by copy_file_range; where the kernel cannot (another file
    system, an old kernel) after copying part of a block, the rest is read and written."""
    import errno
    import os

    import converters.copies as copies

    src = tiny("dense-gqa-tied")
    monkeypatch.setattr(copies, "BLOCK", 3000)  # many blocks per tensor
    assert cli("convert", src, "--to", "llama", "-o", tmp_path / "kernel").code == 0
    calls = []

    def gives_up(src_fd, dst_fd, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) % 2:  # every other call copies 100 bytes, the next one fails
            return os.copy_file_range(src_fd, dst_fd, min(count, 100), offset_src, offset_dst)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", gives_up)
    assert cli("convert", src, "--to", "llama", "-o", tmp_path / "mixed").code == 0
    assert len(calls) > 10
    assert (tmp_path / "mixed" / "model.safetensors").read_bytes() == (tmp_path / "kernel" / "model.safetensors").read_bytes()
