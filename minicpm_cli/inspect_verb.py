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
    if "defaults_used" in info:
        shown["defaults_used"] = (", ".join(info["defaults_used"]) + " (config omits them: OpenBMB's defaults)"
                                  if info["defaults_used"] else "none")
        shown["notes"] = "; ".join(info["notes"]) or "none"
    if "tokenizer_agreement" in info:
        shown["tokenizer_agreement"] = agreement_line(info["tokenizer_agreement"])
    console.print(table(f"inspect {model}", ["field", "value"],
                        [[k.replace("_bytes", ""), v] for k, v in shown.items() if k != "path"]))
    if json_out:
        write_json(json_out, info, force, [model])


def agreement_line(agreement: dict | None) -> str:
    """One cell: do tokenizer.model and the shipped tokenizer.json give the same ids on the probes?"""
    if agreement is None:
        return "one tokenizer file only"
    probes = agreement["probes"]
    if not agreement["disagree"]:
        return f"tokenizer.json agrees on all {len(probes)} probe strings"
    first = next(p for p in probes if not p["agree"])
    ids = lambda key: " ".join(map(str, first[key]))  # noqa: E731
    return (f"tokenizer.json differs on {agreement['disagree']} of {len(probes)} probe strings, e.g. "
            f"{first['text']!r}: {ids('tokenizer.model')} (used) vs {ids('tokenizer.json')}")
