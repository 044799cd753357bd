"""`minicpm convert`: MiniCPM checkpoint -> Llama/Mixtral folder or GGUF file."""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer

from converters.atomic import check_output
from converters.errors import UsageError
from .app import app
from .ui import byte_progress, console, human_bytes, stage, table, write_json


class Target(str, Enum):
    llama = "llama"
    gguf = "gguf"


@app.command()
@stage
def convert(
    src: Path = typer.Argument(..., help="MiniCPM Hugging Face folder (config.json + weights + tokenizer)."),
    to: Target = typer.Option(..., "--to", help="llama: muP folded into a plain Llama/Mixtral folder; gguf: a GGUF file."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (--to llama) or .gguf file (--to gguf)."),
    dtype: str = typer.Option("auto", help="--to llama: bf16, f16, f32 or auto (the checkpoint's own dtype)."),
    max_shard_size: str = typer.Option("4GB", help="--to llama: largest safetensors shard, e.g. 500MB."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    json_out: Path = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
):
    """Convert a MiniCPM checkpoint: fold muP into a plain Llama (--to llama) or write GGUF (--to gguf)."""
    from converters.to_llama import convert_to_llama, plan_llama
    from converters.safetensors_out import nbytes

    start = time.perf_counter()
    check_output(out, force)
    if to is Target.llama:
        _, out_dtype, _, plan = plan_llama(src, dtype)  # validate before showing a bar
        total = sum(nbytes(t, out_dtype) for t in plan)
        with byte_progress(total, f"folding {src.name} -> {out.name}") as advance:
            result = convert_to_llama(src, out, dtype, force, max_shard_size, advance)
    else:
        raise UsageError("--to gguf is not available yet")
    seconds = time.perf_counter() - start
    rows = [["source", f"{src} ({result.source_family})"], ["output", f"{out} ({result.architecture})"],
            ["dtype", result.dtype], ["tensors", result.tensors], ["size", human_bytes(result.bytes_written)],
            ["files", ", ".join(result.files)], ["time", f"{seconds:.2f} s"]]
    console.print(table("convert", ["", "value"], rows))
    if json_out:
        write_json(json_out, {"source": str(src), "output": str(out), "seconds": seconds, **vars(result)})
