"""`minicpm inspect`: one table describing a model folder or GGUF file."""
from __future__ import annotations

from pathlib import Path

import typer

from .ui import console, human_bytes, stage, table, write_json


@stage
def inspect(
    model: Path = typer.Argument(..., help="A model folder (MiniCPM, Llama, quantized) or a .gguf file."),
    json_out: Path = typer.Option(None, "--json", help="Also write the description as JSON to this file."),
):
    """Describe a model: family, parameters, dtypes, muP scalars, quantization, context, tokenizer, size."""
    from converters.describe import inspect_model

    info = inspect_model(model)
    shown = dict(info)
    shown["parameters"] = f"{info['parameters'] / 1e6:,.2f} M"
    shown["size_bytes"] = human_bytes(info["size_bytes"])
    shown["dtypes"] = ", ".join(info["dtypes"])
    shown["mup"] = ", ".join(f"{k}={v:g}" for k, v in info["mup"].items()) or "none"
    console.print(table(f"inspect {model}", ["field", "value"],
                        [[k.replace("_bytes", ""), v] for k, v in shown.items() if k != "path"]))
    if json_out:
        write_json(json_out, info)
