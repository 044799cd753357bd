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
from .limits import INT_LIMITS, check_token_id


@lru_cache(maxsize=8)
def sp_proto(model_file: Path):
    """The parsed sentencepiece model (shared: read it, do not change it)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as exc:
        raise UserError(f"{model_file}: not a sentencepiece model ({exc})") from None
    if not proto.pieces:  # an empty file parses as an empty model
        raise UserError(f"{model_file}: not a sentencepiece model (no pieces; empty or damaged file)")
    if len(proto.pieces) > INT_LIMITS["vocab_size"]:
        raise UserError(f"{model_file}: {len(proto.pieces)} pieces is beyond the limit {INT_LIMITS['vocab_size']}")
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


def added_token_ids(folder: Path, rows: int) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for tokens added on top of the base vocabulary (added_tokens.json,
    tokenizer_config.json's added_tokens_decoder), each id checked to lie in [0, rows)."""
    added: dict[int, tuple[str, bool]] = {}
    path = folder / "added_tokens.json"
    if path.is_file():
        for content, i in read_json(path).items():
            added[check_token_id(i, path, rows)] = (content, True)
    path = folder / "tokenizer_config.json"
    if path.is_file():
        decoder = read_json(path).get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise UserError(f"{path}: added_tokens_decoder must be an object")
        for i, tok in decoder.items():
            i = int(i) if isinstance(i, str) and i.isdigit() else i
            if not isinstance(tok, dict) or not isinstance(tok.get("content"), str):
                raise UserError(f"{path}: added token {i!r} has no content string"[:300])
            added[check_token_id(i, path, rows)] = (tok["content"], bool(tok.get("special", True)))
    return added


def tokenizer_rows(folder: Path) -> int:
    """How many token ids a folder's tokenizer files may use: its config's vocab_size (limits-checked)."""
    if not (folder / "config.json").is_file():  # a tokenizer-only folder (tests build one before the model)
        return INT_LIMITS["vocab_size"]
    config = read_json(folder / "config.json")
    vocab = config.get("vocab_size")
    return vocab if isinstance(vocab, int) and 0 < vocab <= INT_LIMITS["vocab_size"] else INT_LIMITS["vocab_size"]


def load_tokenizer(folder: Path):
    """A transformers tokenizer for a model folder, never running code from it."""
    from transformers import LlamaTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    sp_model = folder / "tokenizer.model"
    added_token_ids(folder, tokenizer_rows(folder))  # every id in range before transformers allocates for it
    chat_template(folder)  # transformers reads it too: a template that is not UTF-8 is our one line first
    if (folder / "tokenizer.json").is_file() and not sp_model.is_file():
        read_tokenizer_json(folder / "tokenizer.json")
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


def read_tokenizer_json(path: Path) -> dict:
    """tokenizer.json's model: a vocab of token -> id (ids in range) and merges, or one clear error."""
    data = read_json(path)
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("vocab", {}), dict):
        raise UserError(f"{path}: malformed (model.vocab must be an object of token -> id)")
    vocab = model.get("vocab", {})
    limit = INT_LIMITS["vocab_size"]
    for token, i in vocab.items():
        check_token_id(i, path, limit)
    added = data.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                              for t in added):
        raise UserError(f"{path}: malformed (added_tokens must be a list of objects with content and id)")
    for t in added:
        check_token_id(t.get("id"), path, limit)
    if not isinstance(model.get("merges", []), list):
        raise UserError(f"{path}: malformed (model.merges must be a list)")
    return data


MAX_TEMPLATE_CHARS = 1 << 20  # published templates are under 10 KB


def chat_template(folder: Path) -> str | None:
    path = folder / "tokenizer_config.json"
    template = read_json(path).get("chat_template") if path.is_file() else None
    if isinstance(template, list):  # transformers' named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise UserError(f"{path}: chat_template must be a string")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        try:
            if jinja.stat().st_size > MAX_TEMPLATE_CHARS:
                raise UserError(f"{jinja}: beyond the limit of {MAX_TEMPLATE_CHARS} bytes for a chat template")
            template = jinja.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{jinja}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if template is not None and len(template) > MAX_TEMPLATE_CHARS:
        raise UserError(f"{path}: chat template beyond the limit of {MAX_TEMPLATE_CHARS} characters")
    return template


def chat_template_file(folder: Path) -> str:
    """The name of the file `chat_template(folder)` reads: tokenizer_config.json when it holds a template
    (or there is no chat_template.jinja), else chat_template.jinja (MiniCPM5 ships its template so)."""
    config = folder / "tokenizer_config.json"
    in_config = config.is_file() and read_json(config).get("chat_template") is not None
    return "tokenizer_config.json" if in_config or not (folder / "chat_template.jinja").is_file() \
        else "chat_template.jinja"


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
