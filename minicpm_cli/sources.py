"""Where a verb's MODEL comes from: a path, a hub name (`org/name`, `modelscope:org/name`), plus --lora.

The verbs call `model_source` once per MODEL; it yields a local folder (or file) that the stages read
like any other: a hub snapshot in the standard cache, or a --lora view (converters/lora.py) of it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from converters import hub, lora

REVISION_HELP = "For a hub MODEL (org/name): the branch, tag or commit to fetch (default: main)."
LORA_HELP = ("A PEFT LoRA adapter folder merged into MODEL (float32, before muP folding); repeat to apply "
             "several in order. The adapter's base_model_name_or_path is reported, never read.")


def revision_option():
    return typer.Option(None, "--revision", help=REVISION_HELP)


def lora_option():
    return typer.Option(None, "--lora", help=LORA_HELP)


@contextlib.contextmanager
def model_source(arg: Path | str, revision: str | None = None, adapters: list[Path] | None = None,
                 weights: bool = True):
    """The local path for MODEL, downloaded if it is a hub name, with the adapters merged on read."""
    folder = hub.resolve(arg, revision, weights)
    with lora.lora_view(folder, list(adapters or [])) as view:
        yield view


def check_revision(args: list, revision: str | None) -> None:
    """--revision names a hub revision: at least one MODEL must be a hub name."""
    if revision is not None and not any(hub.is_hub_name(a) for a in args):
        from converters.errors import UsageError

        raise UsageError(f"--revision {revision}: applies to a hub name (org/name), and no MODEL is one")


def adapter_rows(adapters: list[Path] | None) -> list[list[str]]:
    """Table rows naming each merged adapter (and the base it says it was trained on)."""
    return [["lora", line] for line in lora.describe(list(adapters or []))]
