"""What a model says about its own generation: sampling values and the ids that end a reply.

Precedence for each sampling value: what the user passed, else the model's (generation_config.json of a
folder; `general.sampling.*` of a GGUF file that carries them), else the project's default (`Sampling()`).
transformers' meaning is kept: `do_sample: false` is greedy (temperature 0) whatever temperature says.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from converters.checkpoint import read_json
from converters.errors import UserError
from .generate import Sampling

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")
GGUF_KEYS = {"temperature": "general.sampling.temp", "top_p": "general.sampling.top_p",
             "top_k": "general.sampling.top_k", "repetition_penalty": "general.sampling.penalty_repeat"}


def generation_config(model) -> dict:
    """generation_config.json of a folder model ({} when it has none)."""
    path = Path(model.path) / "generation_config.json"
    if model.backend == "gguf" or not path.is_file():
        return {}
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object")
    return config


def model_sampling(model) -> tuple[dict, str]:
    """(sampling values the model ships, where they came from)."""
    if model.backend == "gguf":
        meta = model.model.metadata or {}
        values = {k: meta[key] for k, key in GGUF_KEYS.items() if key in meta}
        return values, "GGUF metadata"
    config = generation_config(model)
    values = {k: config[k] for k in SAMPLING_KEYS if isinstance(config.get(k), (int, float))}
    if config.get("do_sample") is False:
        values["temperature"] = 0.0
    return values, "generation_config.json"


def resolve_sampling(given: dict, model) -> tuple[Sampling, dict[str, str]]:
    """(Sampling, name -> "--option" | the model's file | "default") for the values the banner shows."""
    shipped, where = model_sampling(model)
    defaults = Sampling()
    values, sources = {}, {}
    for f in fields(Sampling):
        if given.get(f.name) is not None:
            values[f.name], sources[f.name] = given[f.name], f"--{f.name.replace('_', '-')}"
        elif f.name in shipped:
            cast = type(getattr(defaults, f.name))
            values[f.name], sources[f.name] = cast(shipped[f.name]), where
        else:
            values[f.name], sources[f.name] = getattr(defaults, f.name), "default"
    return Sampling(**values).check(), sources


def generation_stop_ids(model) -> set[int]:
    """eos ids generation_config.json names besides config.json's (a single id or a list)."""
    eos = generation_config(model).get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return {int(i) for i in ids if isinstance(i, int)}


def describe(sampling: Sampling, sources: dict[str, str]) -> str:
    """One line for the banner: each value with where it came from, grouped."""
    groups: dict[str, list[str]] = {}
    for name in SAMPLING_KEYS:
        groups.setdefault(sources[name], []).append(f"{name} {getattr(sampling, name):g}")
    return "; ".join(f"{', '.join(items)} ({source})" for source, items in groups.items())
