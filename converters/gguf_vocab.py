"""The tokenizer of a model folder as GGUF `tokenizer.ggml.*` keys, read without transformers.

Two vocabularies are supported:
- sentencepiece (`tokenizer.model`, llama.cpp model "llama"): pieces, scores and piece types come from the
  protobuf; tokens after the sentencepiece vocabulary (MiniCPM3/4's `<|im_end|>` ...) from
  added_tokens.json / tokenizer_config.json. The normalizer's add_dummy_prefix is written as
  `add_space_prefix` (False for MiniCPM), so llama.cpp tokenizes exactly like sentencepiece.
- byte-level BPE (`tokenizer.json` only, llama.cpp model "gpt2"): vocab, merges and the pre-tokenizer
  llama.cpp must use, recognised from the split regex.
The vocabulary is padded with unused `[PAD{id}]` tokens up to the embedding rows.
generation_config.json's sampling values travel as `general.sampling.*` (do_sample false: temperature 0),
so `minicpm chat` samples a GGUF file as it samples its folder.
The chat template is copied only after passing chat's own test (converters.template_sandbox.check_template:
it compiles and renders a message within the budget), so no GGUF carries a template chat would refuse.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import read_json
from .errors import UserError
from .template_sandbox import check_template
from .tokenizer import read_tokenizer_json, added_token_ids, chat_template, chat_template_file, sp_proto

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # GGUF token types


@dataclass
class Vocab:
    model: str  # "llama" (sentencepiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/eot/unk/pad -> id
    add_bos: bool = True
    add_eos: bool = False
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    chat_template: str | None = None
    sampling: dict[str, float] = field(default_factory=dict)  # general.sampling.* key suffix -> value

    def __len__(self) -> int:
        return len(self.tokens)


def _token_id(tokens: list[str], value) -> int | None:
    """A special token named in tokenizer_config.json (a string or {"content": ...}) -> its id."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str):
        return None
    try:
        return tokens.index(value)
    except ValueError:
        return None


def _ids(value) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]  # others name no token


def _sentencepiece(folder: Path, rows: int) -> Vocab:
    path = folder / "tokenizer.model"
    proto = sp_proto(path)
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE: both scored, merged by llama.cpp's SPM
        raise UserError(f"{path}: sentencepiece model type {proto.trainer_spec.model_type} is not supported")
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [p.type for p in proto.pieces]
    for i, (content, special) in sorted(added_token_ids(folder, rows).items()):
        if i < len(tokens):
            if tokens[i] != content:
                raise UserError(f"{folder}: added token {content!r} claims id {i}, which is {tokens[i]!r}")
            continue
        while len(tokens) < i:  # a gap in the added ids
            _pad(tokens, types, scores)
        tokens.append(content)
        types.append(CONTROL if special else USER_DEFINED)
        scores.append(0.0)
    spec = proto.trainer_spec
    special = {k: v for k, v in (("unk", spec.unk_id), ("bos", spec.bos_id), ("eos", spec.eos_id),
                                 ("pad", spec.pad_id)) if v >= 0}
    norm = proto.normalizer_spec
    return Vocab("llama", tokens, types, scores, pre="default", special=special,
                 add_space_prefix=norm.add_dummy_prefix,
                 remove_extra_whitespaces=norm.remove_extra_whitespaces)


# Split regexes of byte-level BPE tokenizers, as tokenizer.json spells them -> llama.cpp pre-tokenizer.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    (GPT2_REGEX,): "gpt-2",
    (_WORDS + r"\p{N}{1,3}" + _REST,): "llama-bpe",
    (_WORDS + r"\p{N}" + _REST,): "qwen2",
    (r"\p{N}{1,3}", _WORDS + r"\p{N}+" + _REST): "minicpm5",
}


def _split_regexes(pre: dict | None) -> tuple[str, ...]:
    """The regexes a tokenizers pre_tokenizer splits by, in order (ByteLevel with use_regex is GPT-2's)."""
    if not pre:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(r for p in pre.get("pretokenizers", []) for r in _split_regexes(p))
    if pre.get("type") == "Split":
        pattern = pre.get("pattern", {})
        return (pattern.get("Regex") or pattern.get("String") or "",)
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return (GPT2_REGEX,)
    return ()


def _byte_level_bpe(folder: Path, rows: int) -> Vocab:
    path = folder / "tokenizer.json"
    data = read_tokenizer_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise UserError(f"{path}: only byte-level BPE tokenizer.json is supported without a tokenizer.model")
    regexes = _split_regexes(data.get("pre_tokenizer"))
    pre = PRE_TOKENIZERS.get(regexes)
    if pre is None:
        raise UserError(f"{path}: pre-tokenizer {list(regexes)} is not one llama.cpp knows "
                        f"(known: {', '.join(PRE_TOKENIZERS.values())})")
    by_id = {i: tok for tok, i in model.get("vocab", {}).items()}
    specials = {}
    for tok in data.get("added_tokens", []):
        by_id[tok["id"]] = tok["content"]
        specials[tok["id"]] = bool(tok.get("special"))
    if not by_id:
        raise UserError(f"{path}: empty vocabulary")
    if max(by_id) >= rows:
        raise UserError(f"{path}: token id {max(by_id)} is beyond the embedding's {rows} rows "
                        "(tokenizer and weights do not belong together)")
    for i, (content, special) in added_token_ids(folder, rows).items():
        by_id.setdefault(i, content)
        specials.setdefault(i, special)
    tokens, types = [], []
    for i in range(max(by_id) + 1):
        if i not in by_id:
            _pad(tokens, types, None)
            continue
        tokens.append(by_id[i])
        types.append((CONTROL if specials[i] else USER_DEFINED) if i in specials else NORMAL)
    if not all(isinstance(m, str) or (isinstance(m, list) and all(isinstance(p, str) for p in m))
               for m in model.get("merges", [])):
        raise UserError(f"{path}: malformed merges (expected strings or pairs of strings)")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    vocab = Vocab("gpt2", tokens, types, merges=merges, pre=pre, add_bos=False)
    # a post-processor that starts every sequence with a special token is how tokenizer.json adds BOS
    post = data.get("post_processor") or {}
    processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for proc in processors:
        first = (proc.get("single") or [{}])[0] if proc.get("type") == "TemplateProcessing" else {}
        if "SpecialToken" in first:
            bos = _token_id(tokens, first["SpecialToken"]["id"])
            if bos is not None:
                vocab.add_bos, vocab.special["bos"] = True, bos
    return vocab


def _pad(tokens: list[str], types: list[int], scores: list[float] | None) -> None:
    tokens.append(f"[PAD{len(tokens)}]")
    types.append(UNUSED)
    if scores is not None:
        scores.append(-1000.0)


def read_vocab(folder: Path, rows: int, config: dict) -> Vocab:
    """The folder's tokenizer padded to `rows` embedding rows; a larger tokenizer is an error."""
    folder = Path(folder)
    if (folder / "tokenizer.model").is_file():
        vocab = _sentencepiece(folder, rows)
    elif (folder / "tokenizer.json").is_file():
        vocab = _byte_level_bpe(folder, rows)
    else:
        raise UserError(f"{folder}: no tokenizer (tokenizer.model or tokenizer.json)")
    if len(vocab) > rows:
        raise UserError(f"{folder}: the tokenizer has {len(vocab)} tokens but the embedding has only {rows} "
                        "rows (tokenizer and weights do not belong together)")
    while len(vocab) < rows:
        _pad(vocab.tokens, vocab.types, vocab.scores)

    tok_config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    vocab.add_bos = bool(tok_config.get("add_bos_token", vocab.add_bos))
    vocab.add_eos = bool(tok_config.get("add_eos_token", vocab.add_eos))
    for key in ("bos", "eos", "unk", "pad"):
        i = _token_id(vocab.tokens, tok_config.get(f"{key}_token"))
        if i is not None:
            vocab.special[key] = i
    # config.json (and generation_config.json) name the ids generation stops at: the first is eos,
    # another one (MiniCPM3/4's <|im_end|>) is written as end-of-turn so llama.cpp stops there too.
    gen = folder / "generation_config.json"
    stops = _ids(config.get("eos_token_id")) + (_ids(read_json(gen).get("eos_token_id")) if gen.is_file() else [])
    stops = [i for i in dict.fromkeys(stops) if 0 <= i < rows]
    if stops:
        vocab.special["eos"] = stops[0]
        others = [i for i in stops[1:] if i != stops[0]]
        if others:
            vocab.special["eot"] = others[0]
    for key in ("bos", "pad"):
        i = config.get(f"{key}_token_id")
        if isinstance(i, int) and 0 <= i < rows:
            vocab.special[key] = i
    vocab.chat_template = chat_template(folder)
    if vocab.chat_template is not None:
        bos, eos = (vocab.tokens[vocab.special[k]] if k in vocab.special else "" for k in ("bos", "eos"))
        check_template(vocab.chat_template, f"{folder.name}/{chat_template_file(folder)}", bos, eos)
    vocab.sampling = _sampling(read_json(gen) if gen.is_file() else {})
    return vocab


GGUF_SAMPLING = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "penalty_repeat"}


def _sampling(gen: dict) -> dict[str, float]:
    values = {key: gen[name] for name, key in GGUF_SAMPLING.items()
              if isinstance(gen.get(name), (int, float)) and not isinstance(gen.get(name), bool)}
    if gen.get("do_sample") is False:
        values["temp"] = 0.0
    return values


def add_vocab(writer, vocab: Vocab) -> None:
    """Write the tokenizer.ggml.* keys."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    add_id = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, i in vocab.special.items():
        add_id[key](i)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    for key, value in vocab.sampling.items():
        if key == "top_k":
            writer.add_int32(f"general.sampling.{key}", int(value))
        else:
            writer.add_float32(f"general.sampling.{key}", float(value))
