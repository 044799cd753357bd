"""The input policy: what a model folder may claim, checked before anything is allocated for it.

A config.json, tokenizer or GGUF header is a list of promises (layers, experts, vocabulary, context,
tensor shapes). Each claimed size must be a positive integer under a limit far above any published
model (MiniCPM-MoE-8x2B: 40 layers x 8 experts; MiniCPM3: vocab 73448), and the product that decides
how many tensors or tokens get built (layers x experts) is bounded too, so a one-line edit cannot make
a verb build millions of objects. Whether the claims match the bytes actually present is checked
afterwards against the tensor headers (converters.shapes), which cost nothing to read.

Every file a verb reads through a model folder must resolve inside it: a symbolic link out, an
absolute weight_map entry or `../x` is refused (except Hugging Face cache snapshots, whose files
link into the cache's own `blobs/`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import UserError

# config.json key -> the largest value accepted (published MiniCPMs are 10-1000x below each)
INT_LIMITS = {
    "hidden_size": 2**16, "num_hidden_layers": 1024, "num_attention_heads": 1024, "num_key_value_heads": 1024,
    "intermediate_size": 2**20, "vocab_size": 2**22, "head_dim": 4096, "num_experts": 1024,
    "num_local_experts": 1024, "num_experts_per_tok": 1024, "max_position_embeddings": 2**24,
    "q_lora_rank": 2**16, "kv_lora_rank": 2**16, "qk_nope_head_dim": 4096, "qk_rope_head_dim": 4096,
    "v_head_dim": 4096,
}
POSITIVE_FLOATS = ("scale_emb", "scale_depth", "dim_model_base", "rope_theta", "rms_norm_eps")
MAX_LAYER_EXPERTS = 2**16  # layers x experts: DeepSeek-V3's 61 x 256 = 15616 fits
MAX_ROPE_FACTORS = 4096


def _positive_int(value, key: str, where, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: {key} must be a positive integer, got {value!r}"[:300])
    if value < 1:
        raise UserError(f"{where}: {key} must be a positive integer, got {value}")
    if value > limit:
        raise UserError(f"{where}: {key} {value} is beyond the limit {limit} (a damaged or hostile config)")
    return value


def _check_types(config: dict, where) -> None:
    """The keys that name things: the type transformers and the converters expect, or one clear error."""
    def bad(key, expected):
        return UserError(f"{where}: {key} must be {expected}, got {config[key]!r}"[:300])

    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise bad("architectures", "a list of class names")
    for key in ("model_type", "torch_dtype", "dtype"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    for key in ("tie_word_embeddings", "use_cache"):
        if config.get(key) is not None and not isinstance(config[key], bool):
            raise bad(key, "true or false")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = config.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise bad(key, "a token id or a list of them")


def check_config(config: dict, where) -> None:
    """Every size config.json claims: a positive integer under its limit; every muP/RoPE scalar finite > 0."""
    _check_types(config, where)
    for key, limit in INT_LIMITS.items():
        if config.get(key) is not None:
            _positive_int(config[key], key, where, limit)
    for key in POSITIVE_FLOATS:
        value = config.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UserError(f"{where}: {key} must be a finite number above 0, got {value!r}"[:300])
    experts = config.get("num_experts") or config.get("num_local_experts") or 1
    if config.get("num_hidden_layers", 1) * experts > MAX_LAYER_EXPERTS:
        raise UserError(f"{where}: {config['num_hidden_layers']} layers x {experts} experts is beyond the limit "
                        f"{MAX_LAYER_EXPERTS}")
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise UserError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if heads and config.get("hidden_size") and not config.get("head_dim") and config["hidden_size"] % heads:
        raise UserError(f"{where}: hidden_size {config['hidden_size']} is not a multiple of "
                        f"num_attention_heads {heads}")
    rs = config.get("rope_scaling")
    if rs is not None and not isinstance(rs, dict):
        raise UserError(f"{where}: rope_scaling must be an object, got {rs!r}"[:300])
    for key in ("long_factor", "short_factor"):
        factors = (rs or {}).get(key)
        if factors is None:
            continue
        if not isinstance(factors, list) or len(factors) > MAX_ROPE_FACTORS or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and f > 0
                for f in factors):
            raise UserError(f"{where}: rope_scaling.{key} must be a list of finite numbers above 0")
    original = (rs or {}).get("original_max_position_embeddings")
    if original is not None:
        _positive_int(original, "rope_scaling.original_max_position_embeddings", where, 2**24)


# --- files stay inside the model folder -----------------------------------------------------------
def _hf_cache_blobs(folder: Path) -> Path | None:
    """`…/models--org--name/snapshots/REV` links its files into `…/models--org--name/blobs`."""
    if folder.parent.name == "snapshots":
        return folder.parent.parent / "blobs"
    return None


def inside(folder: Path, name: str, what: str = "file") -> Path:
    """folder/name, refused unless it is a relative name that resolves inside the folder."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise UserError(f"{folder}: {what} {name!r} is not a file name inside the model folder"[:300])
    path = folder / name
    check_inside(folder, path, what)
    return path


def check_inside(folder: Path, path: Path, what: str = "file") -> None:
    """Refuse a path (typically a symbolic link) whose target lies outside the model folder."""
    if not os.path.lexists(path):
        return
    from .lora import view_base  # a --lora view links each file to the same name in its base folder

    base = view_base(folder)
    if base is not None and path.parent.absolute() == folder.absolute():
        return check_inside(base, base / path.name, what)
    root = folder.resolve()
    target = path.resolve()
    blobs = _hf_cache_blobs(folder.absolute())
    if root in target.parents or (blobs is not None and blobs.resolve() in target.parents):
        return
    raise UserError(f"{path}: {what} links outside the model folder (to {target}); refusing to read it")


# the files any verb reads from a model folder by name
FOLDER_FILES = ("config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "generation_config.json", "chat_template.jinja",
                "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "vocab.json", "merges.txt")


def check_folder_files(folder: Path) -> None:
    for name in FOLDER_FILES:
        check_inside(folder, folder / name)
    for path in folder.glob("*.safetensors"):
        check_inside(folder, path)
    for path in folder.glob("*.bin"):
        check_inside(folder, path)


# --- token ids ------------------------------------------------------------------------------------
def check_token_id(value, where, rows: int) -> int:
    """An id a tokenizer file claims: an integer in [0, rows)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < rows:
        raise UserError(f"{where}: token id {value!r} is outside the vocabulary of {rows} rows"[:300])
    return value


# --- GGUF metadata --------------------------------------------------------------------------------
GGUF_INT_LIMITS = {
    "block_count": INT_LIMITS["num_hidden_layers"], "embedding_length": INT_LIMITS["hidden_size"],
    "feed_forward_length": INT_LIMITS["intermediate_size"], "attention.head_count": INT_LIMITS["num_attention_heads"],
    "attention.head_count_kv": INT_LIMITS["num_key_value_heads"], "context_length": INT_LIMITS["max_position_embeddings"],
    "expert_count": INT_LIMITS["num_experts"], "expert_used_count": INT_LIMITS["num_experts_per_tok"],
    "vocab_size": INT_LIMITS["vocab_size"],
}


def check_gguf_metadata(meta: dict, where) -> None:
    """The sizes a GGUF header claims, checked before llama.cpp allocates for them (or aborts)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise UserError(f"{where}: GGUF has no general.architecture")
    for key, limit in GGUF_INT_LIMITS.items():
        value = meta.get(f"{arch}.{key}")
        if value is None:
            continue
        if isinstance(value, list):  # per-layer arrays (head counts of some architectures)
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
                    raise UserError(f"{where}: {arch}.{key} holds {v!r}, beyond the limit {limit}"[:300])
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if key in ("expert_count", "expert_used_count", "attention.head_count_kv"):
            lo = 0
        else:
            lo = 1
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= limit:
            raise UserError(f"{where}: {arch}.{key} is {value!r}; expected {lo}..{limit}"[:300])
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and len(tokens) > INT_LIMITS["vocab_size"]:
        raise UserError(f"{where}: {len(tokens)} tokens is beyond the limit {INT_LIMITS['vocab_size']}")
