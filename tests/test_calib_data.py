"""Calibration and evaluation text loaders on the shared WikiText-2 / Alpaca files and custom files."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import shared_path
from converters.errors import UserError

WIKI = ("data", "wikitext-2-raw-v1")


@pytest.fixture(scope="module")
def minicpm2_tokenizer():
    from converters.tokenizer import chat_template, load_tokenizer

    folder = shared_path("minicpm-hf", "MiniCPM-2B-sft-bf16")
    return load_tokenizer(folder), chat_template(folder)


@pytest.fixture(scope="module")
def minicpm3_tokenizer():
    from converters.tokenizer import chat_template, load_tokenizer

    folder = shared_path("minicpm-hf", "MiniCPM3-4B")
    return load_tokenizer(folder), chat_template(folder)


def parquet_rows(split_file: str) -> list[str]:
    return pq.read_table(shared_path(*WIKI, split_file)).column("text").to_pylist()


def test_wikitext2_eval_text_is_the_standard_join_from_file_or_folder():
    from calib_data import load_wikitext2_text

    rows = parquet_rows("test-00000-of-00001.parquet")
    expected = "\n\n".join(rows)
    assert len(rows) == 4358
    assert load_wikitext2_text("test", shared_path(*WIKI)) == expected
    assert load_wikitext2_text("test", shared_path(*WIKI, "test-00000-of-00001.parquet")) == expected
    assert expected.startswith("\n\n = Robert Boulter = \n")
    validation = load_wikitext2_text("validation", shared_path(*WIKI))
    assert validation == "\n\n".join(parquet_rows("validation-00000-of-00001.parquet"))


def test_wikitext2_arrow_stream_and_raw_text_give_the_same_rows(tmp_path):
    from calib_data import wikitext2_rows

    table = pq.read_table(shared_path(*WIKI, "train-subset-500.parquet"))
    rows = table.column("text").to_pylist()
    stream = tmp_path / "wikitext-train.arrow"  # what `datasets` caches: an Arrow IPC stream
    with pa.ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table)
    ipc_file = tmp_path / "as-file.arrow"
    with pa.ipc.new_file(ipc_file, table.schema) as writer:
        writer.write_table(table)
    raw = tmp_path / "wiki.train.raw"  # the original release: blank rows are lines holding one space
    raw.write_text("".join(r if r else " \n" for r in rows), encoding="utf-8")
    assert wikitext2_rows("train", stream) == rows
    assert wikitext2_rows("train", ipc_file) == rows
    assert wikitext2_rows("train", raw) == rows
    assert wikitext2_rows("train", tmp_path) == rows  # folder: the file with 'train' in its name


def test_wikitext2_folder_without_the_split_names_what_it_holds(tmp_path):
    from calib_data import wikitext2_rows

    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(UserError, match=r"no WikiText-2 test file .* it holds notes.md"):
        wikitext2_rows("test", tmp_path)


def test_offline_without_a_path_names_the_options(monkeypatch):
    from calib_data import calibration_samples, load_wikitext2_text, sources

    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    for call in (lambda: load_wikitext2_text("test"), lambda: calibration_samples("alpaca", None)):
        with pytest.raises(UserError) as info:
            call()
        message = str(info.value)
        assert "not reachable (offline)" in message
        for option in (".parquet", "Alpaca .json", ".txt", ".jsonl"):
            assert option in message


def test_hub_offline_environment_is_respected(monkeypatch):
    from calib_data import sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert sources.hub_reachable() is False


def test_wikitext2_calibration_rows_are_packed_seeded_train_text(minicpm2_tokenizer):
    from calib_data import calibration_samples

    tok, _ = minicpm2_tokenizer
    folder = shared_path(*WIKI)
    cs = calibration_samples(str(folder), tok, num_samples=8, seq_len=256, seed=1)
    assert "train-subset-500" in cs.source  # calibrates on train, never on the test split
    assert len(cs.samples) == 8 and all(len(s) == 256 for s in cs.samples)
    assert cs.samples[0][0] == tok.bos_token_id
    assert cs.used_documents > 8  # wikitext paragraphs are shorter than 256 tokens: several per row
    # Independent reconstruction: shuffle the non-empty train rows with the same seed, encode with a
    # BOS each, concatenate, cut into 256-token rows.
    docs = [r for r in parquet_rows("train-subset-500.parquet") if r.strip()]
    order = list(range(len(docs)))
    random.Random(1).shuffle(order)
    stream = []
    for i in order[: cs.used_documents]:
        stream += ([tok.bos_token_id] + tok.encode(docs[i], add_special_tokens=False))[:256]
    assert [t for row in cs.samples for t in row] == stream[: 8 * 256]
    again = calibration_samples(str(folder), tok, num_samples=8, seq_len=256, seed=1)
    other = calibration_samples(str(folder), tok, num_samples=8, seq_len=256, seed=2)
    assert again.samples == cs.samples and other.samples != cs.samples


def test_source_that_runs_out_keeps_its_last_short_row(minicpm2_tokenizer):
    from calib_data import calibration_samples

    tok, _ = minicpm2_tokenizer
    cs = calibration_samples(str(shared_path(*WIKI, "train-subset-500.parquet")), tok, num_samples=10_000, seq_len=512)
    assert cs.used_documents == cs.documents == 338
    assert all(len(s) == 512 for s in cs.samples[:-1]) and 1 < len(cs.samples[-1]) <= 512


def test_alpaca_rendered_with_the_minicpm_chat_template(minicpm2_tokenizer):
    from calib_data import calibration_samples, documents

    tok, template = minicpm2_tokenizer
    path = shared_path("data", "alpaca", "alpaca_data_cleaned_500.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    docs, source = documents(str(path), tok, template)
    assert source.endswith("(alpaca)") and len(docs) == 500
    assert docs[0] == "<用户>" + records[0]["instruction"] + "<AI>" + records[0]["output"]
    with_input = next(i for i, r in enumerate(records) if r["input"])
    r = records[with_input]
    assert docs[with_input] == f"<用户>{r['instruction']}\n{r['input']}<AI>{r['output']}"
    cs = calibration_samples(str(path), tok, num_samples=4, seq_len=128, template=template)
    text = tok.decode(cs.samples[0])
    assert text.startswith("<s><用户>") and "<AI>" in text


def test_custom_jsonl_text_and_chatml_messages(tmp_path, minicpm3_tokenizer):
    from calib_data import calibration_samples, documents

    tok, template = minicpm3_tokenizer
    path = tmp_path / "mine.jsonl"
    lines = [{"text": "Plain document one."},
             {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]},
             {"instruction": "Add", "input": "2 and 3", "output": "5"}]
    path.write_text("\n".join(json.dumps(l, ensure_ascii=False) for l in lines) + "\n\n", encoding="utf-8")
    docs, _ = documents(str(path), tok, template)
    assert docs == ["Plain document one.",
                    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n",
                    "<|im_start|>user\nAdd\n2 and 3<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"]
    cs = calibration_samples(str(path), tok, num_samples=5, seq_len=512)  # template: the tokenizer's own
    # Three short documents are packed into one row instead of three padded ones.
    assert len(cs.samples) == 1 and cs.used_documents == 3
    assert cs.samples[0].count(tok.bos_token_id) == 3
    assert tok.convert_tokens_to_ids("<|im_start|>") in cs.samples[0]


def test_custom_txt_is_one_document_per_paragraph(tmp_path, minicpm2_tokenizer):
    from calib_data import documents

    tok, _ = minicpm2_tokenizer
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\n  \nSecond one.\n\n\nThird.", encoding="utf-8")
    assert documents(str(path), tok)[0] == ["First paragraph\nstill first.", "Second one.", "Third."]


@pytest.mark.parametrize("name,content,needle", [
    ("empty.txt", "\n \n", "holds no text"),
    ("empty.jsonl", "", "holds no text"),
    ("bad.jsonl", '{"text": "ok"}\n{oops\n', "bad.jsonl:2: not valid JSON"),
    ("wrong.jsonl", '{"prompt": "x"}\n', "expected an object with 'text', 'messages' or 'instruction'"),
    ("list.json", '[{"text": "x"}]', "expected a JSON list of Alpaca records"),
    ("table.csv", "a,b\n", "unknown file type '.csv'"),
])
def test_bad_calibration_files_are_one_clear_error(tmp_path, minicpm2_tokenizer, name, content, needle):
    from calib_data import calibration_samples

    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        calibration_samples(str(path), minicpm2_tokenizer[0])


def test_missing_calibration_path_is_a_usage_error(tmp_path):
    from calib_data import calibration_samples

    with pytest.raises(UserError, match="no such file or directory") as info:
        calibration_samples(str(tmp_path / "nope.jsonl"), None)
    assert info.value.code == 2


def test_parquet_without_text_column(tmp_path):
    from calib_data import calibration_samples

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["a"]}), path)
    with pytest.raises(UserError, match="no 'text' column \\(columns: content\\)"):
        calibration_samples(str(path), None)
