"""`minicpm inspect`: what a model folder or GGUF file holds, read from metadata only."""
from __future__ import annotations

import json

from collections import Counter
from pathlib import Path

from .checkpoint import Checkpoint, model_folder, read_config
from .errors import UsageError
from .gguf_read import is_gguf, metadata, open_gguf
from .families import family_of
from .official import runtime_notes
from .shapes import check_checkpoint
from .tensors import element_count


def disk_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rope(config: dict) -> str:
    rs = config.get("rope_scaling") or {}
    kind = rs.get("rope_type") or rs.get("type")
    theta = config.get("rope_theta", 10000.0)
    return f"{kind} (theta {theta:g})" if kind else f"default (theta {theta:g})"


def _quantization(config: dict) -> str:
    q = config.get("quantization_config")
    if not q:
        return "none"
    method = q.get("quant_method", "?")
    if method == "bitsandbytes":
        return f"bitsandbytes {q.get('bnb_4bit_quant_type', 'nf4') if q.get('load_in_4bit') else 'int8'}"
    groups = (q.get("config_groups") or {}).values()
    for g in groups:
        w = g.get("weights") or {}
        return f"{method} {q.get('format', '')} w{w.get('num_bits')} group {w.get('group_size')}".replace("  ", " ")
    return method


def _tokenizer(folder: Path) -> tuple[str, int | None, dict | None]:
    """(kind, size, agreement of the folder's two tokenizers or None)."""
    if (folder / "tokenizer.model").is_file():
        from .tokenizer import load_tokenizer, tokenizer_agreement

        tokenizer = load_tokenizer(folder)
        return "sentencepiece", len(tokenizer), tokenizer_agreement(folder, tokenizer)
    if (folder / "tokenizer.json").is_file():
        from .tokenizer import read_tokenizer_json

        data = read_tokenizer_json(folder / "tokenizer.json")
        model = data["model"]
        # ids, not entries: a padded vocabulary (MiniCPM5's <|im_start|> at 130072) has unused ids between
        ids = [int(i) for i in (model.get("vocab") or {}).values()] + [int(t["id"]) for t in data.get("added_tokens", [])]
        return str(model.get("type", "?")).lower(), max(ids) + 1 if ids else 0, None
    return "none", None, None


INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def inspect_folder(path: Path, weights: bool = True) -> dict:
    """weights=False describes the folder from config.json (and an index) alone, reading no tensor file."""
    folder = model_folder(path)
    config = read_config(folder)
    quantized = "quantization_config" in config
    size = disk_size(folder)
    if not weights:
        # a hub name, fetched without its weights: everything from config.json (and the index's total)
        family = family_of(config, folder / "config.json")
        config, defaults = family.complete(config)
        params = sum(element_count(s) for s in family.shapes(config, folder / "config.json").values())
        if not config.get("tie_word_embeddings", family.tied_by_default):
            params += config["vocab_size"] * config["hidden_size"]
        dtypes = sorted({str(config.get("torch_dtype", config.get("dtype", "?")))})
        index = next((folder / f for f in INDEX_FILES if (folder / f).is_file()), None)
        total = (json.loads(index.read_text()).get("metadata") or {}).get("total_size") if index else None
        size = int(total) if isinstance(total, (int, float)) else None
    elif quantized:  # packed tensors do not show the parameter count: derive it from the config
        family = family_of(config, folder / "config.json")
        config, defaults = family.complete(config)
        params = sum(element_count(s) for s in family.shapes(config, folder / "config.json").values())
        params += 0 if config.get("tie_word_embeddings") else config["vocab_size"] * config["hidden_size"]
        dtypes = sorted({str(config.get("torch_dtype", config.get("dtype", "?")))})
    else:
        ckpt = Checkpoint(folder)
        check_checkpoint(ckpt)  # a checkpoint that disagrees with its config is reported, not described
        family, config, defaults = ckpt.family, ckpt.config, ckpt.defaults
        params = sum(element_count(ckpt.info(n).shape) for n in ckpt.names if not n.endswith("inv_freq"))
        dtypes = sorted({str(ckpt.info(n).dtype).removeprefix("torch.") for n in ckpt.names})
    tok_kind, tok_size, agreement = _tokenizer(folder)
    from .tokenizer import chat_template, which_tokenizer

    mup = {k: config[k] for k in ("scale_emb", "scale_depth", "dim_model_base") if k in config}
    return {
        "path": str(folder), "format": "hf", "family": family.name,
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "parameters": params, "dtypes": dtypes, "mup": mup, "defaults_used": defaults,
        "activation": config.get("hidden_act", "silu") + (
            f" (threshold {config['hidden_act_param']})" if "hidden_act_param" in config else ""),
        "notes": runtime_notes(config, folder),
        "quantization": _quantization(config),
        "context_length": config.get("max_position_embeddings"), "rope": _rope(config),
        "tokenizer": tok_kind, "tokenizer_used": which_tokenizer(folder), "tokenizer_agreement": agreement,
        "vocab_size": tok_size, "chat_template": chat_template(folder) is not None,
        "size_bytes": size,
    }


def inspect_gguf(path: Path) -> dict:
    reader = open_gguf(path)
    meta = metadata(reader)
    arch = meta.get("general.architecture", "?")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    mup = {k.removeprefix(f"{arch}."): meta[k] for k in
           (f"{arch}.embedding_scale", f"{arch}.residual_scale", f"{arch}.logit_scale") if k in meta}
    rope = meta.get(f"{arch}.rope.scaling.type")
    tokens = meta.get("tokenizer.ggml.tokens")
    return {
        "path": str(path), "format": "gguf", "family": arch, "architecture": arch,
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "dtypes": [f"{name} x{n}" for name, n in types.most_common()], "mup": mup,
        "quantization": _gguf_file_type(meta.get("general.file_type")),
        "context_length": meta.get(f"{arch}.context_length"),
        "rope": f"{rope or 'default'} (theta {meta.get(f'{arch}.rope.freq_base', 10000.0):g})",
        "tokenizer": meta.get("tokenizer.ggml.model", "none"), "vocab_size": len(tokens) if tokens else None,
        "chat_template": "tokenizer.chat_template" in meta, "size_bytes": path.stat().st_size,
    }


def _gguf_file_type(value) -> str:
    if value is None:
        return "unknown"
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return str(value)


def inspect_model(path: Path | str, weights: bool = True) -> dict:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_file():
        if not is_gguf(path):
            raise UsageError(f"{path}: neither a model folder nor a GGUF file")
        return inspect_gguf(path)
    return inspect_folder(path, weights)
