"""`minicpm quantize`: AWQ / GPTQ (llm-compressor, compressed-tensors) or bitsandbytes, on CPU or GPU."""
from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from converters.atomic import check_output
from .sources import adapter_rows, check_revision, lora_option, model_source, revision_option
from .ui import console, err_console, human_bytes, stage, table, write_json


class Method(str, Enum):
    awq = "awq"
    gptq = "gptq"
    bnb = "bnb"


class BnbType(str, Enum):
    nf4 = "nf4"
    fp4 = "fp4"


def passive_thread_wait(method: str) -> None:
    """For AWQ, have torch's OpenMP workers sleep at once when they wait, instead of spinning first.

    libgomp (torch's OpenMP) spins a waiting worker for 300,000 iterations before it sleeps
    (GOMP_SPINCOUNT '300000'; OMP_WAIT_POLICY=PASSIVE makes it '0'). AWQ's scale search runs
    ~20,000 torch ops large enough to be split across threads per decoder layer (counted at MiniCPM-1B
    widths, 8 x 256 tokens: 24,700 aten ops, 19,800 on >= 32,768 elements; the MSE clip search 2,800
    more): 20 grid points x 3 mappings, each re-scaling, re-observing and fake-quantizing the weights and
    running the parent module on every calibration row. On the 2 shared cores a spinning worker holds
    the core that the lagging worker or another job needs. bench_quantize.py --layers 2 --num-samples 8
    --seq-len 256 --methods awq beside two 2-thread torch jobs (load 5.5-5.8), alternating: 202 / 212 s
    before, 96 / 99 s passive; idle (load 1.5-1.9) 32.3 s before, 33.3 / 34.3 s passive. Running both
    searches in one thread instead (same model and rows, one process each): loaded 189 s default, 104 s
    one thread, 78 s passive; idle 24.9 / 36.7 / 27.0 s. The thread count and the work split stay the same:
    the saved weights are bit-identical. It only takes effect before torch is imported (libgomp reads it
    when it loads), so the verb sets it first; a user's own OMP_WAIT_POLICY wins.
    """
    if method == "awq" and "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextlib.contextmanager
def layer_progress():
    """Rich bars (terminals only), one per quantizing pass; yields progress(description, total) -> advance().

    The display starts with the first bar, so an early error stays a single stderr line.
    """
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, disable=not err_console.is_terminal)

    def progress(description: str, total: int):
        if not bars.live.is_started:
            bars.start()
        task = bars.add_task(description, total=total)
        return lambda: bars.advance(task, 1)

    try:
        yield progress
        for task in bars.tasks:  # the last pass (final norm + lm_head) is not a decoder layer
            bars.update(task.id, completed=task.total)
    finally:
        if bars.live.is_started:
            bars.stop()


@stage
def quantize(
    src: Path = typer.Argument(..., help="MiniCPM 1/2/4, MiniCPM-MoE or MiniCPM3 folder, a Llama/Mixtral folder, "
                               "or a hub name (org/name, modelscope:org/name) to download."),
    method: Method = typer.Option(..., "--method", help="awq or gptq (llm-compressor, compressed-tensors) or bnb (bitsandbytes)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (loads with AutoModelForCausalLM, no remote code)."),
    bits: int = typer.Option(4, "--bits", help="4 or 8 (bnb: 4 = nf4/fp4, 8 = LLM.int8)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="awq/gptq: weights sharing one scale (default 128; -1 = per output channel)."),
    calib: str = typer.Option("wikitext2", "--calib", help="awq/gptq calibration text: wikitext2, alpaca, or a path (.parquet/.arrow/.raw file or WikiText folder, Alpaca .json, .txt, .jsonl)."),
    num_samples: int = typer.Option(128, "--num-samples", help="awq/gptq: calibration rows."),
    seq_len: int = typer.Option(512, "--seq-len", help="awq/gptq: tokens per calibration row (short documents are packed)."),
    sym: Optional[bool] = typer.Option(None, "--sym/--asym", help="awq/gptq: symmetric scales or scales + zero points (default: awq asym, gptq sym)."),
    act_order: Optional[bool] = typer.Option(None, "--act-order/--no-act-order", help="gptq: quantize columns in activation order (default on)."),
    bnb_type: Optional[BnbType] = typer.Option(None, "--bnb-type", help="bnb 4-bit: nf4 or fp4 (default nf4)."),
    double_quant: Optional[bool] = typer.Option(None, "--double-quant/--no-double-quant", help="bnb 4-bit: also quantize the scales (default off)."),
    ignore: list[str] = typer.Option(["lm_head"], "--ignore", help="Module names left in float (repeat the option; 'none' for none)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto: where each layer is computed (awq/gptq keep the model in CPU RAM and onload one layer at a time)."),
    seed: int = typer.Option(0, "--seed", help="Calibration sampling seed."),
    force: bool = typer.Option(False, "--force", help="Replace OUT (and --json FILE) if it is an earlier output "
                               "of this kind (a model folder, a JSON file)."),
    json_out: Path = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
    revision: str = revision_option(),
    lora: list[Path] = lora_option(),
):
    """Quantize a model to 4/8 bits with AWQ, GPTQ or bitsandbytes; OUT loads in transformers and vLLM.

    Memory. The model is held in CPU RAM in its own dtype (bf16: 2 bytes per parameter; MiniCPM
    folds in memory without a second copy). awq/gptq run one decoder layer at a time on --device
    (llm-compressor's sequential pipeline onloads it), so the device needs one layer's weights plus
    that layer's calibration activations (about 2 x num-samples x seq-len x hidden x 2 bytes) and,
    for gptq, one Hessian per Linear (in_features^2 x 4 bytes): a model larger than the GPU
    quantizes; on the CPU the peak is the model plus that. bnb loads the model with transformers onto
    --device and quantizes while loading: the device holds the quantized model (about 0.6 bytes per
    parameter at 4 bits) plus one float layer. On the CPU, torch's threads (all cores) bound the speed.
    """
    passive_thread_wait(method.value)
    from quant.quantize import QuantizeOptions, quantize as run_quantize

    opts = QuantizeOptions(
        method=method.value, bits=bits, group_size=group_size, calib=calib, num_samples=num_samples,
        seq_len=seq_len, sym=sym, act_order=act_order, bnb_type=bnb_type.value if bnb_type else None,
        double_quant=double_quant, ignore=tuple(i for i in ignore if i.lower() != "none"), device=device, seed=seed)
    if json_out:
        check_output(json_out, force, "json", [src])
    check_revision([src], revision)
    from quant.quantize import resolve_options

    resolve_options(opts)  # option and OUT errors before any download
    check_output(out, force, "model", [src])
    with layer_progress() as progress, model_source(src, revision, lora) as folder:
        result = run_quantize(folder, out, opts, force=force, progress=progress)
        result.source = str(src)
    calibration = result.calibration
    ratio = result.bytes_before / result.bytes_after if result.bytes_after else 0
    rows = [["source", f"{src} ({result.source_family})"], *adapter_rows(lora), ["output", f"{out} ({result.architecture}, {result.format})"],
            ["method", result.scheme], ["bits", result.bits],
            ["calibration", f"{calibration['samples']} x {calibration['seq_len']} tokens from {calibration['source']}"
             if calibration else "none (bitsandbytes)"],
            ["quantized layers", result.quantized_layers],
            ["size before", human_bytes(result.bytes_before)], ["size after", f"{human_bytes(result.bytes_after)} ({ratio:.2f}x smaller)"],
            ["device", result.device], ["time", f"{result.seconds:.1f} s"]] + [["note", n] for n in result.notes]
    console.print(table("quantize", ["", "value"], rows))
    if json_out:
        write_json(json_out, result, force, [src])
