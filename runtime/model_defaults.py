"""What a model says about its own generation: sampling values and the ids that end a reply.

Precedence for each sampling value: what the user passed, else the model's (generation_config.json of a
folder; `general.sampling.*` of a GGUF file that carries them), else the project's default (`Sampling()`).
transformers' meaning is kept: `do_sample: false` is greedy (temperature 0) whatever temperature says.
Each backend reads its own file (`shipped_sampling()` in runtime/load.py).
"""
from __future__ import annotations

from dataclasses import fields

from .generate import Sampling

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def resolve_sampling(given: dict, model) -> tuple[Sampling, dict[str, str]]:
    """(Sampling, name -> "--option" | the model's file | "default") for the values the banner shows."""
    shipped, where, _ = model.shipped_sampling()
    defaults = Sampling()
    values, sources = {}, {}
    for f in fields(Sampling):
        if given.get(f.name) is not None:
            values[f.name], sources[f.name] = given[f.name], f"--{f.name.replace('_', '-')}"
        elif f.name in shipped:
            cast = type(getattr(defaults, f.name))  # GGUF metadata arrives as text
            values[f.name], sources[f.name] = cast(float(shipped[f.name])), where
        else:
            values[f.name], sources[f.name] = getattr(defaults, f.name), "default"
    return Sampling(**values).check(), sources


def generation_stop_ids(model) -> set[int]:
    """eos ids the model's generation config names besides config.json's (a single id or a list)."""
    return {int(i) for i in model.shipped_sampling()[2] if isinstance(i, int)}


def describe(sampling: Sampling, sources: dict[str, str]) -> str:
    """One line for the banner: each value with where it came from, grouped."""
    groups: dict[str, list[str]] = {}
    for name in SAMPLING_KEYS:
        groups.setdefault(sources[name], []).append(f"{name} {getattr(sampling, name):g}")
    return "; ".join(f"{', '.join(items)} ({source})" for source, items in groups.items())
