"""Read calibration and evaluation text: WikiText-2, Alpaca and the user's own files.

Everything here returns plain strings (rows or documents); turning them into token samples is
`calib_data.samples`. Named sets come from the Hugging Face `datasets` hub when it is reachable;
offline, a local copy is named by path:

- WikiText-2: a `.parquet` or `.arrow` file with a `text` column (one row per line, as in the HF
  dataset), the raw `wiki.<split>.raw` text, or a folder holding one such file per split.
- Alpaca: the instruction/input/output JSON list (`alpaca_data_cleaned.json`).
- Custom: `.txt` (one document per paragraph), `.jsonl` (`text`, chat `messages`, or Alpaca keys per
  line), or `.parquet`/`.arrow` with a `text` column.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from converters.errors import UsageError, UserError

NAMED = ("wikitext2", "alpaca")
HUB = {"wikitext2": ("wikitext", "wikitext-2-raw-v1"), "alpaca": ("yahma/alpaca-cleaned", None)}
TABLE_SUFFIXES = (".parquet", ".arrow")
OPTIONS = ("pass a local copy instead: a WikiText-2 .parquet/.arrow/.raw file or folder, an Alpaca .json, "
           "or your own .txt (one document per paragraph), .jsonl (text or messages) or .parquet (text column)")


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick check before asking `datasets`, which otherwise retries for half a minute offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", ""):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_rows(name: str, split: str) -> list:
    """Rows of a named set from the Hugging Face hub (or an error naming the offline options)."""
    repo, config = HUB[name]
    if not hub_reachable():
        raise UserError(f"{name}: the Hugging Face hub is not reachable (offline); {OPTIONS}")
    try:
        import datasets
    except ImportError:
        raise UserError(f"{name}: downloading it needs the `datasets` package; {OPTIONS}") from None
    try:
        data = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:
        raise UserError(f"{name}: could not load {repo} from the hub ({type(exc).__name__}); {OPTIONS}") from None
    return list(data)


def read_table_column(path: Path, column: str = "text") -> list[str]:
    """One column of a parquet file or an Arrow IPC file/stream (what `datasets` caches) as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            try:
                table = pa.ipc.open_stream(path).read_all()  # datasets' cache files are streams
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(path).read_all()
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{path}: not a readable {path.suffix[1:]} table ({exc})") from None
    if column not in table.column_names:
        raise UserError(f"{path}: no '{column}' column (columns: {', '.join(table.column_names)})")
    return [r if isinstance(r, str) else "" for r in table.column(column).to_pylist()]


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def raw_lines_as_rows(text: str) -> list[str]:
    """WikiText raw text as the HF dataset's rows: each line keeps its newline, blank lines are ''."""
    return [line if line.strip() else "" for line in text.splitlines(keepends=True)]


def split_file(folder: Path, split: str) -> Path:
    """The one file of `split` in a WikiText folder (test-0000.parquet, wiki.test.raw, wikitext-test.arrow…)."""
    suffixes = TABLE_SUFFIXES + (".raw", ".txt")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes and split in p.name)
    if not found:
        have = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise UserError(f"{folder}: no WikiText-2 {split} file (.parquet/.arrow/.raw with '{split}' in its name); it holds {have}")
    return found[0]


def wikitext2_rows(split: str = "test", path: Path | str | None = None) -> list[str]:
    """WikiText-2 (raw) rows of one split: the hub set, or a local file or folder."""
    if path is None:
        return [r["text"] for r in hub_rows("wikitext2", split)]
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    if path.is_dir():
        path = split_file(path, split)
    if path.suffix in TABLE_SUFFIXES:
        return read_table_column(path)
    return raw_lines_as_rows(read_utf8(path))


def load_wikitext2_text(split: str = "test", path: Path | str | None = None) -> str:
    """The evaluation text of a WikiText-2 split, joined the standard way ("\\n\\n".join of the rows).

    This is what Hugging Face's perplexity recipe and the GPTQ/AWQ papers' scripts score.
    """
    rows = wikitext2_rows(split, path)
    text = "\n\n".join(rows)
    if not text.strip():
        raise UserError(f"{path or 'wikitext2'}: the {split} split holds no text")
    return text


def paragraphs(text: str) -> list[str]:
    """Documents of a .txt file: paragraphs separated by blank (or whitespace-only) lines."""
    docs, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    if current:
        docs.append("\n".join(current))
    return docs


def read_alpaca_json(path: Path) -> list[dict]:
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) and "instruction" in r for r in data):
        raise UserError(f"{path}: expected a JSON list of Alpaca records with 'instruction', 'input', 'output'")
    return data


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not ({"text", "messages", "instruction"} & record.keys()):
            raise UserError(f"{path}:{lineno}: expected an object with 'text', 'messages' or 'instruction'")
        records.append(record)
    return records
