"""`minicpm convert`: MiniCPM checkpoint -> Llama/Mixtral folder or GGUF file."""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer

from converters.atomic import check_output
from .sources import adapter_rows, check_revision, lora_option, model_source, revision_option
from .ui import byte_progress, console, human_bytes, jsonable, stage, table, write_json


class Target(str, Enum):
    llama = "llama"
    gguf = "gguf"


@stage
def convert(
    src: Path = typer.Argument(..., help="MiniCPM Hugging Face folder (config.json + weights + tokenizer), "
                               "or a hub name (org/name, modelscope:org/name) to download."),
    to: Target = typer.Option(..., "--to", help="llama: muP folded into a plain Llama/Mixtral folder; gguf: a GGUF file."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (--to llama) or .gguf file (--to gguf)."),
    dtype: str = typer.Option("auto", help="--to llama: bf16, f16, f32 or auto (the checkpoint's own dtype)."),
    max_shard_size: str = typer.Option("4GB", help="--to llama: largest safetensors shard, e.g. 500MB."),
    outtype: str = typer.Option("f16", "--outtype", help="--to gguf: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, "
                                "or a k-quant through llama.cpp: q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k."),
    fold: bool = typer.Option(False, "--fold", help="--to gguf: write the muP-folded model as plain llama "
                              "(MoE: llama with experts) instead of the native minicpm architecture."),
    imatrix: Path = typer.Option(None, "--imatrix", help="--to gguf k-quants: llama-imatrix importance matrix."),
    force: bool = typer.Option(False, "--force", help="Replace OUT (and --json FILE) if it is an earlier output "
                               "of this kind (a model folder, a GGUF file, a JSON file)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
    revision: str = revision_option(),
    lora: list[Path] = lora_option(),
):
    """Convert a MiniCPM checkpoint: fold muP into a plain Llama (--to llama) or write GGUF (--to gguf)."""
    start = time.perf_counter()
    check_output(out, force, "model" if to is Target.llama else "gguf", [src])
    if json_out:
        check_output(json_out, force, "json", [src])
    check_revision([src], revision)
    with model_source(src, revision, lora) as folder:
        if to is Target.llama:
            result = _convert_llama(folder, out, dtype, max_shard_size, force)
            detail = [["dtype", result.dtype], ["tensors", result.tensors],
                      ["size", human_bytes(result.bytes_written)], ["files", ", ".join(result.files)]]
        else:
            result = _convert_gguf(folder, out, outtype, fold, imatrix, force)
            detail = [["outtype", result.outtype], ["tensors", result.tensors],
                      ["size", human_bytes(result.bytes_written)]]
    seconds = time.perf_counter() - start
    rows = [["source", f"{src} ({result.source_family})"], *adapter_rows(lora),
            ["output", f"{out} ({result.architecture})"], *detail, ["time", f"{seconds:.2f} s"]]
    console.print(table("convert", ["", "value"], rows))
    if json_out:
        write_json(json_out, {"source": str(src), "output": str(out), "seconds": seconds, **jsonable(result)},
                   force, [src])


def _convert_llama(src: Path, out: Path, dtype: str, max_shard_size: str, force: bool):
    from converters.to_llama import plan_llama, write_llama

    plan = plan_llama(src, dtype)  # read and check once, before showing a bar
    with byte_progress(plan.total_bytes, f"folding {src.name} -> {out.name}") as advance:
        return write_llama(plan, out, force, max_shard_size, advance)


def _convert_gguf(src: Path, out: Path, outtype: str, fold: bool, imatrix: Path | None, force: bool):
    from converters.gguf_export import KQUANT_FTYPES, prepare, write_prepared

    prepared = prepare(src, outtype, fold, imatrix)  # read and check once, before showing a bar
    kquant = prepared.outtype in KQUANT_FTYPES
    step = f"writing f16/f32 for {prepared.outtype}" if kquant else f"writing {out.name}"
    with byte_progress(prepared.total_bytes, f"{src.name} -> {step}") as advance:
        return write_prepared(prepared, out, force, advance)
