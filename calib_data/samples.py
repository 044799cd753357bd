"""Calibration samples: documents from a named set or file, shuffled with a seed, packed into token rows.

Each document is tokenized with a leading BOS (as the model sees text at inference), cut to
`seq_len`, and the shuffled documents are concatenated and split into rows of exactly `seq_len`
tokens, so short documents share a row instead of padding it. Only the last row can be shorter,
and only when the source runs out before `num_samples` rows.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UsageError, UserError
from converters.template_sandbox import compile_template, render_budgeted

from . import sources


@dataclass
class CalibrationSet:
    samples: list[list[int]]  # token ids, each row seq_len long (the last may be shorter)
    source: str  # what the rows came from, for quantization.json
    documents: int  # documents read from the source
    used_documents: int  # documents that went into the rows

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.samples)


@functools.lru_cache(maxsize=4)
def compiled_template(template: str):
    return compile_template(template, "the model's chat template")


def render_chat(messages: list[dict], tokenizer, template: str | None) -> str:
    """A conversation as the model's chat template writes it (plain lines without a template), in
    chat's budgeted sandbox: a hostile template is one error line here too, not a hang or an OOM."""
    if template:
        return render_budgeted(compiled_template(template), "calibration conversation", messages,
                               add_generation_prompt=False, bos_token=getattr(tokenizer, "bos_token", None) or "",
                               eos_token=getattr(tokenizer, "eos_token", None) or "")
    return "\n".join(m.get("content", "") for m in messages)


def alpaca_messages(record: dict) -> list[dict]:
    prompt = record.get("instruction", "")
    if record.get("input"):
        prompt += "\n" + record["input"]
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record.get("output", "")}]


def jsonl_documents(records: list[dict], tokenizer, template: str | None) -> list[str]:
    docs = []
    for r in records:
        if "text" in r:
            docs.append(str(r["text"]))
        elif "messages" in r:
            docs.append(render_chat(r["messages"], tokenizer, template))
        else:
            docs.append(render_chat(alpaca_messages(r), tokenizer, template))
    return docs


def documents(calib: str, tokenizer=None, template: str | None = None, split: str = "train") -> tuple[list[str], str]:
    """(documents, description) for `--calib`: 'wikitext2', 'alpaca', or a path (its format by suffix)."""
    if calib == "wikitext2":
        return [r for r in sources.wikitext2_rows(split) if r.strip()], f"wikitext2 ({split}, hub)"
    if calib == "alpaca":
        rows = sources.hub_rows("alpaca", "train")
        return [render_chat(alpaca_messages(r), tokenizer, template) for r in rows], "alpaca (hub)"
    path = Path(calib)
    if not path.exists():
        raise UsageError(f"--calib {calib}: no such file or directory (expected wikitext2, alpaca or a path)")
    if path.is_dir():
        chosen = sources.split_file(path, split)
        return [r for r in sources.wikitext2_rows(split, chosen) if r.strip()], f"{chosen}"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return [render_chat(alpaca_messages(r), tokenizer, template) for r in sources.read_alpaca_json(path)], f"{path} (alpaca)"
    if suffix == ".jsonl":
        return jsonl_documents(sources.read_jsonl(path), tokenizer, template), f"{path}"
    if suffix in sources.TABLE_SUFFIXES:
        return [r for r in sources.read_table_column(path) if r.strip()], f"{path}"
    if suffix in (".txt", ".raw", ".md", ""):
        return sources.paragraphs(sources.read_utf8(path)), f"{path}"
    raise UsageError(f"--calib {calib}: unknown file type '{suffix}' (expected .txt, .jsonl, .json, .parquet or .arrow)")


def encode(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids.insert(0, bos)
    return ids


def pack(docs: list[str], tokenizer, num_samples: int, seq_len: int, seed: int = 0) -> tuple[list[list[int]], int]:
    """Rows of seq_len tokens from the documents in a seeded random order; returns (rows, documents used)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if len(rows) == num_samples:
            break
        ids = encode(tokenizer, docs[i])[:seq_len]
        if len(ids) <= 1 and len(docs[i].strip()) == 0:
            continue
        used += 1
        current.extend(ids)
        while len(current) >= seq_len and len(rows) < num_samples:
            rows.append(current[:seq_len])
            current = current[seq_len:]
    if len(rows) < num_samples and len(current) > 1:
        rows.append(current)  # the source ran out: keep what is left rather than drop it
    return rows, used


def calibration_samples(calib: str, tokenizer, num_samples: int = 128, seq_len: int = 512, seed: int = 0,
                        template: str | None = None) -> CalibrationSet:
    """Token rows for quantizer calibration from `--calib` (see `documents`).

    Conversations are rendered with `template`, else the tokenizer's own chat template.
    """
    if num_samples < 1:
        raise UsageError(f"--num-samples {num_samples}: must be at least 1")
    if seq_len < 2:
        raise UsageError(f"--seq-len {seq_len}: must be at least 2")
    template = template or getattr(tokenizer, "chat_template", None)
    docs, description = documents(calib, tokenizer, template)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"--calib {calib}: holds no text to calibrate on")
    rows, used = pack(docs, tokenizer, num_samples, seq_len, seed)
    return CalibrationSet(rows, description, len(docs), used)
