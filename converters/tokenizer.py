"""Tokenizer files: copy them without remote code, and load them the way the model was trained.

MiniCPM's sentencepiece models are built without a dummy prefix (`<用户>Tell` -> `<`,`用户`,`>`,`Tell`),
but transformers' converted fast tokenizer prepends `▁` unless told otherwise, and MiniCPM3/4's
shipped tokenizer.json carries a `Prepend ▁` normalizer. Where tokenizer.model exists it is the
truth: we load it with `add_prefix_space` set from the model's own normalizer spec, and write that
setting into every output so each backend (HF, GGUF) produces the same ids.
"""
from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

from .checkpoint import TOKENIZER_FILES, read_json
from .errors import UserError


@lru_cache(maxsize=8)
def sp_proto(model_file: Path):
    """The parsed sentencepiece model (shared: read it, do not change it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as exc:
        raise UserError(f"{model_file}: not a sentencepiece model ({exc})") from None
    return proto


def sp_adds_dummy_prefix(model_file: Path) -> bool:
    return sp_proto(Path(model_file)).normalizer_spec.add_dummy_prefix


def sp_user_defined(model_file: Path) -> dict[int, str]:
    """id -> piece for sentencepiece's user-defined symbols (MiniCPM has 1086: `...`, `<b>`, `\n`).

    sentencepiece matches them in raw text before BPE; transformers' converted tokenizer does not,
    so `...` would become `.`,`.`,`.`. Registering them as (non-special) added tokens restores that.
    """
    USER_DEFINED = 4
    return {i: p.piece for i, p in enumerate(sp_proto(Path(model_file)).pieces) if p.type == USER_DEFINED}


def copy_tokenizer_files(src: Path, out: Path) -> list[str]:
    """Copy tokenizer and generation files, dropping remote-code hooks; return the names written."""
    written = []
    sp_model = src / "tokenizer.model"
    for name in TOKENIZER_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name == "tokenizer.json" and sp_model.is_file():
            continue  # rebuilt from tokenizer.model by transformers, with the prefix setting below
        if name == "tokenizer_config.json":
            config = read_json(path)
            config.pop("auto_map", None)
            if sp_model.is_file():
                config["tokenizer_class"] = "LlamaTokenizer"  # MiniCPMTokenizer is a LlamaTokenizer
                config["add_prefix_space"] = sp_adds_dummy_prefix(sp_model)
                decoder = config.setdefault("added_tokens_decoder", {})
                for i, piece in sp_user_defined(sp_model).items():
                    decoder.setdefault(str(i), {"content": piece, "lstrip": False, "normalized": False,
                                                "rstrip": False, "single_word": False, "special": False})
            (out / name).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            shutil.copyfile(path, out / name)
        written.append(name)
    return written


def load_tokenizer(folder: Path):
    """A transformers tokenizer for a model folder, never running code from it."""
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    sp_model = folder / "tokenizer.model"
    try:
        if sp_model.is_file():
            from transformers import AddedToken

            # fix_mistral_regex=False: transformers 5.17 otherwise warns about a Mistral regex for any
            # local folder whose config.json predates transformers 5 (all published MiniCPMs).
            tokenizer = LlamaTokenizer.from_pretrained(folder, add_prefix_space=sp_adds_dummy_prefix(sp_model),
                                                       fix_mistral_regex=False)
            tokenizer.add_tokens([AddedToken(p, special=False, normalized=False)
                                  for p in sp_user_defined(sp_model).values()])
            return tokenizer
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(folder)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{folder}: tokenizer cannot be loaded ({exc})") from None
    raise UserError(f"{folder}: no tokenizer (tokenizer.model or tokenizer.json)")


def chat_template(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    template = read_json(path).get("chat_template") if path.is_file() else None
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    return template


# Strings on which MiniCPM's two shipped tokenizers are known to part ways (README, "Tokenizer").
PROBES = ("Hello... world", "<|im_start|>user\n你好<|im_end|>\n", "Tell me about 北京.", "  two spaces\n\nnew para")


def which_tokenizer(folder: Path) -> str:
    """The tokenizer file every verb reads for this folder (GGUF outputs embed the same vocabulary)."""
    if (folder / "tokenizer.model").is_file():
        ignored = " (tokenizer.json ignored)" if (folder / "tokenizer.json").is_file() else ""
        return "tokenizer.model (sentencepiece)" + ignored
    if (folder / "tokenizer.json").is_file():
        return "tokenizer.json"
    return "none"


def tokenizer_agreement(folder: Path, used=None) -> dict | None:
    """Where a folder ships both tokenizer.model and tokenizer.json: the ids each gives for PROBES.

    tokenizer.json is read with the `tokenizers` library exactly as shipped; tokenizer.model through
    load_tokenizer, as every verb reads it. None when the folder has only one of them.
    """
    folder = Path(folder)
    if not ((folder / "tokenizer.model").is_file() and (folder / "tokenizer.json").is_file()):
        return None
    from tokenizers import Tokenizer

    try:
        shipped = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as exc:
        raise UserError(f"{folder / 'tokenizer.json'}: cannot be read ({exc})") from None
    used = used or load_tokenizer(folder)
    probes = []
    for text in PROBES:
        ours = used.encode(text, add_special_tokens=False)
        theirs = shipped.encode(text, add_special_tokens=False).ids
        probes.append({"text": text, "tokenizer.model": ours, "tokenizer.json": theirs, "agree": ours == theirs})
    return {"probes": probes, "disagree": sum(not p["agree"] for p in probes)}
