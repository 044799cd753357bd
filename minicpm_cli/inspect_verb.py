"""`minicpm inspect`: one table describing a model folder or GGUF file."""
from __future__ import annotations

from pathlib import Path

import typer

from converters.atomic import check_output
from .sources import check_revision, model_source, revision_option
from .ui import console, human_bytes, stage, table, write_json


@stage
def inspect(
    model: Path = typer.Argument(..., help="A model folder (MiniCPM, Llama, quantized), a .gguf file, or a hub "
                                 "name (org/name, modelscope:org/name): only its config and tokenizer are fetched."),
    json_out: Path = typer.Option(None, "--json", help="Also write the description as JSON to this file."),
    force: bool = typer.Option(False, "--force", help="Replace --json FILE if it is a JSON file."),
    revision: str = revision_option(),
):
    """Describe a model: family, parameters, dtypes, muP scalars, quantization, context, tokenizer, size."""
    from converters.describe import inspect_model
    from converters.hub import is_hub_name

    if json_out:
        check_output(json_out, force, "json", [model])
    check_revision([model], revision)
    with model_source(model, revision, weights=False) as folder:
        info = inspect_model(folder, weights=not is_hub_name(model))
    shown = dict(info)
    shown["parameters"] = f"{info['parameters'] / 1e6:,.2f} M"
    shown["size_bytes"] = ("weights not downloaded" if info["size_bytes"] is None
                           else human_bytes(info["size_bytes"]))
    shown["dtypes"] = ", ".join(info["dtypes"])
    shown["mup"] = ", ".join(f"{k}={v:g}" for k, v in info["mup"].items()) or "none"
    console.print(table(f"inspect {model}", ["field", "value"],
                        [[k.replace("_bytes", ""), v] for k, v in shown.items() if k != "path"]))
    if json_out:
        write_json(json_out, info, force, [model])
