"""The input policy (converters.limits, converters.checkpoint), row by row: a hostile or broken model
folder gets one stderr line and a non-zero exit, before anything is allocated for what it claims, and
nothing outside the folder is read through it.

| row                                                          | expected                                   |
|--------------------------------------------------------------|--------------------------------------------|
| each config size zero, negative, huge, wrong type (matrix)   | 1, "<key> must be a positive integer" / "beyond the limit" |
| muP / RoPE scalars zero, NaN, a string                       | 1, "must be a finite number above 0"       |
| num_hidden_layers 1e8 / 10**8 (each verb)                    | 1, at once                                 |
| added_tokens.json {"<x>": 1000000000} (convert gguf, chat)   | 1, "token id 1000000000 is outside"        |
| weight_map "../x", an absolute path                          | 1, "is not a file name inside the model folder" |
| config/tokenizer/weights a symbolic link out of the folder   | 1, "links outside the model folder"        |
| safetensors: negative, overlapping, gapped offsets; dtype x shape != bytes; unknown dtype; header not an object; header length beyond the limit | 1, one line |
| pytorch_model.bin: a list, a zip bomb, not a zip, empty      | 1, one line, before torch.load inflates it |
| NaN / inf weights                                            | convert, quantize: 1; chat, eval-ppl: warning, 0 |
| empty tokenizer.model; malformed tokenizer.json              | 1, "no pieces" / "malformed"               |
| Latin-1 chat_template.jinja / --template                     | 1 / 2, "not UTF-8 text"                    |
| chat template: nested loops, 'x' * 10**10                    | 1, "exceeds its budget", within seconds    |
| the same templates, and one that does not compile (convert gguf) | 1, nothing written               |
| --temperature nan / inf                                      | 2, "must be a finite number"               |
| GGUF with block_count 10**9 (chat, eval-ppl)                 | 1, "block_count", no SIGABRT               |
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, leftovers, shared_path


@pytest.fixture
def model(tiny, tmp_path):
    """A private copy of a tiny MiniCPM (two safetensors shards and an index), free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny("dense-mha-untied"), dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def convert_gguf(cli, model: Path, tmp_path: Path):
    r = cli("convert", model, "--to", "gguf", "-o", tmp_path / "out.gguf")
    assert leftovers(tmp_path, "out.gguf") == [], "partial output left behind"
    return r


# --- config.json claims ----------------------------------------------------------------------------
SIZES = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size",
         "vocab_size", "max_position_embeddings"]


@pytest.mark.parametrize("value,needle", [(0, "must be a positive integer"), (-4, "must be a positive integer"),
                                          (10**12, "beyond the limit"), ("64", "must be a positive integer"),
                                          (2.5, "must be a positive integer"), (True, "must be a positive integer")])
@pytest.mark.parametrize("key", SIZES)
def test_each_config_size_zero_negative_huge_or_of_the_wrong_type_is_one_line(key, value, needle, cli, model):
    edit_json(model / "config.json", **{key: value})
    assert_one_line_error(cli("inspect", model), "config.json", key, needle, code=1)


@pytest.mark.parametrize("value", [0, float("nan"), float("inf"), "1.4", -1.0])
@pytest.mark.parametrize("key", ["scale_emb", "scale_depth", "dim_model_base", "rope_theta", "rms_norm_eps"])
def test_each_config_scalar_zero_nan_or_of_the_wrong_type_is_one_line(key, value, cli, model, tmp_path):
    edit_json(model / "config.json", **{key: value})
    assert_one_line_error(convert_gguf(cli, model, tmp_path), key, "must be a finite number above 0", code=1)


@pytest.mark.parametrize("verb", ["convert", "quantize", "eval-ppl", "chat", "inspect"])
@pytest.mark.parametrize("layers", [1e8, 10**8])
def test_a_huge_layer_count_is_refused_by_every_verb_before_allocating(verb, layers, cli, model, tmp_path):
    from test_bad_inputs import assert_no_output, verb_args

    edit_json(model / "config.json", num_hidden_layers=layers)
    assert_one_line_error(cli(*verb_args(verb, model, tmp_path)), "num_hidden_layers", code=1)
    assert_no_output(tmp_path)


def test_layers_times_experts_beyond_the_limit_is_one_line(cli, tiny, tmp_path):
    moe = tmp_path / "moe"
    shutil.copytree(tiny("moe"), moe)
    edit_json(moe / "config.json", num_hidden_layers=1000, num_experts=1000)
    assert_one_line_error(cli("inspect", moe), "1000 layers x 1000 experts is beyond the limit", code=1)


def test_rope_factors_that_are_not_numbers_are_one_line(cli, tiny, tmp_path):
    src = tmp_path / "m4"
    shutil.copytree(tiny("minicpm4"), src)
    config = json.loads((src / "config.json").read_text())
    config["rope_scaling"]["long_factor"] = ["a"] * 16
    (src / "config.json").write_text(json.dumps(config))
    assert_one_line_error(convert_gguf(cli, src, tmp_path), "rope_scaling.long_factor", code=1)


# --- tokenizer claims ------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["convert", "chat"])
def test_an_added_token_id_beyond_the_vocabulary_is_refused_before_allocating(verb, cli, model, tmp_path):
    from test_bad_inputs import verb_args

    (model / "added_tokens.json").write_text('{"<x>": 1000000000}')
    r = cli(*verb_args(verb, model, tmp_path))
    assert_one_line_error(r, "added_tokens.json", "token id 1000000000 is outside the vocabulary", code=1)


def test_an_empty_tokenizer_model_is_one_line(cli, model, tmp_path):
    (model / "tokenizer.model").write_bytes(b"")
    assert_one_line_error(convert_gguf(cli, model, tmp_path), "tokenizer.model", "no pieces", code=1)


@pytest.mark.parametrize("tokenizer", [
    {"model": {"type": "BPE", "vocab": ["a", "b"]}, "pre_tokenizer": {"type": "ByteLevel"}},
    {"model": {"type": "BPE", "vocab": {"a": "zero"}}, "pre_tokenizer": {"type": "ByteLevel"}},
    {"model": {"type": "BPE", "vocab": {"a": 0}}, "added_tokens": [{"id": 10**9, "content": "x"}],
     "pre_tokenizer": {"type": "ByteLevel"}},
    {"model": "BPE"},
])
@pytest.mark.parametrize("verb", ["convert", "inspect"])
def test_a_malformed_tokenizer_json_is_one_line(tokenizer, verb, cli, model, tmp_path):
    (model / "tokenizer.model").unlink()
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    r = convert_gguf(cli, model, tmp_path) if verb == "convert" else cli("inspect", model)
    assert_one_line_error(r, "tokenizer.json", code=1)


# --- files outside the model folder ----------------------------------------------------------------
@pytest.mark.parametrize("entry", ["../elsewhere/x.safetensors", "{abs}", "sub/../../x.safetensors"])
def test_a_weight_map_entry_outside_the_folder_is_refused(entry, cli, model, tmp_path):
    outside = tmp_path / "elsewhere" / "x.safetensors"
    outside.parent.mkdir()
    shutil.copy(sorted(model.glob("model-*.safetensors"))[0], outside)
    index = model / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = entry.format(abs=outside)
    index.write_text(json.dumps(data))
    for verb in ("convert", "inspect"):
        r = convert_gguf(cli, model, tmp_path) if verb == "convert" else cli("inspect", model)
        assert_one_line_error(r, "is not a file name inside the model folder", code=1)


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.model", "chat_template.jinja",
                                  "model-00001-of-00003.safetensors"])
@pytest.mark.parametrize("verb", ["convert", "inspect", "chat"])
def test_a_file_that_links_out_of_the_folder_is_refused(name, verb, cli, model, tmp_path):
    from test_bad_inputs import verb_args

    secret = tmp_path / "secret" / name
    secret.parent.mkdir()
    shutil.copy(model / name if (model / name).exists() else model / "config.json", secret)
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(secret)
    r = cli(*verb_args(verb, model, tmp_path))
    assert_one_line_error(r, name, "links outside the model folder", code=1)
    assert_no_out(tmp_path)


def assert_no_out(tmp_path: Path) -> None:
    assert not leftovers(tmp_path, "out.gguf") and not leftovers(tmp_path, "out")


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(cli, model, tmp_path):
    """`…/snapshots/REV/config.json -> ../../blobs/HASH` is how the hub cache stores every file."""
    repo = tmp_path / "models--openbmb--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(model, snapshot)
    for path in snapshot.iterdir():
        blob = repo / "blobs" / path.name
        shutil.move(path, blob)
        path.symlink_to(os.path.relpath(blob, snapshot))
    r = cli("inspect", snapshot)
    assert r.code == 0, r


# --- safetensors headers, as the format requires ---------------------------------------------------
def rewrite_header(path: Path, change) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header = change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _first(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def negative(h):
    h[_first(h)[0]]["data_offsets"][0] = -8
    return h


def overlapping(h):
    a, b = _first(h)[:2]
    h[b]["data_offsets"] = [h[b]["data_offsets"][0] - 4, h[b]["data_offsets"][1] - 4]
    return h


def gapped(h):
    for k in _first(h)[1:]:
        h[k]["data_offsets"] = [h[k]["data_offsets"][0] + 2, h[k]["data_offsets"][1] + 2]
    return h


def wrong_size(h):
    k = _first(h)[0]
    h[k]["shape"] = [d * 2 for d in h[k]["shape"]]
    return h


def unknown_dtype(h):
    h[_first(h)[0]]["dtype"] = "F128"
    return h


def shape_of_strings(h):
    h[_first(h)[0]]["shape"] = ["256"]
    return h


@pytest.mark.parametrize("change,needle", [
    (negative, "data_offsets"), (overlapping, "overlaps the previous tensor"), (gapped, "leaves a gap"),
    (wrong_size, "needs"), (unknown_dtype, "unknown dtype 'F128'"), (shape_of_strings, "not a list of non-negative"),
    (lambda h: [1, 2], "the header is not a JSON object"), (lambda h: {"x": 5}, "entry is not an object"),
])
@pytest.mark.parametrize("verb", ["convert", "inspect"])
def test_a_malformed_safetensors_header_is_one_line(change, needle, verb, cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[0]
    rewrite_header(shard, change)
    r = convert_gguf(cli, model, tmp_path) if verb == "convert" else cli("inspect", model)
    assert_one_line_error(r, shard.name, needle, code=1)


def test_a_safetensors_header_length_beyond_the_limit_is_refused_unread(cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as f:  # claim a 200 MB header in a sparse 200 MB file
        f.write(struct.pack("<Q", 200 * 2**20))
        f.truncate(210 * 2**20)
    assert_one_line_error(cli("inspect", model), shard.name, "beyond the format's limit", code=1)


# --- pytorch_model.bin -----------------------------------------------------------------------------
@pytest.fixture
def bin_model(tiny, tmp_path):
    dst = tmp_path / "bin"
    shutil.copytree(tiny("dense-mha-untied", weights_format="bin"), dst)
    return dst


def zip_bomb(path: Path) -> None:
    """A torch.save-shaped archive whose one data entry deflates 2 GB of zeros into a few MB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = b"\0" * 2**24
            for _ in range(128):
                f.write(chunk)
        z.writestr("archive/data.pkl", b"")


@pytest.mark.parametrize("damage,needle", [
    (lambda p: torch.save([torch.zeros(2)], p), "not a PyTorch state dict"),
    (lambda p: torch.save({"x": 1}, p), "not a PyTorch state dict"),
    (lambda p: p.write_bytes(b""), "not a PyTorch zip archive"),
    (lambda p: p.write_bytes(b"\x80\x04K\x01."), "not a PyTorch zip archive"),
    (zip_bomb, "would inflate"),
])
@pytest.mark.parametrize("verb", ["convert", "inspect"])
def test_a_bin_that_is_not_a_bounded_state_dict_is_one_line(damage, needle, verb, cli, bin_model, tmp_path):
    damage(bin_model / "pytorch_model.bin")
    r = convert_gguf(cli, bin_model, tmp_path) if verb == "convert" else cli("inspect", bin_model)
    assert_one_line_error(r, "pytorch_model.bin", needle, code=1)


# --- NaN / inf weights -----------------------------------------------------------------------------
def poison(model: Path, value: float, tensor: str = "o_proj.weight") -> str:
    from safetensors.torch import load_file, save_file

    shard = sorted(model.glob("model-*.safetensors"))[0]
    state = load_file(shard)
    name = sorted(n for n in state if n.endswith(tensor))[0]
    state[name][0, 0] = value
    save_file(state, shard)
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("verb", ["convert-llama", "convert-gguf", "quantize"])
def test_non_finite_weights_are_an_error_for_writers(verb, value, cli, model, tmp_path):
    name = poison(model, value)
    args = {"convert-llama": ["convert", model, "--to", "llama", "-o", tmp_path / "out"],
            "convert-gguf": ["convert", model, "--to", "gguf", "-o", tmp_path / "out"],
            "quantize": ["quantize", model, "--method", "gptq", "-o", tmp_path / "out"]}[verb]
    assert_one_line_error(cli(*args), name, "NaN or infinite values", code=1)
    assert_no_out(tmp_path)


def test_a_non_finite_weight_copied_as_bytes_is_an_error_and_leaves_nothing(cli, model, tmp_path):
    """q_proj is unchanged by the fold: the kernel copies it in a second thread while it is checked."""
    name = poison(model, float("inf"), "q_proj.weight")
    assert_one_line_error(cli("convert", model, "--to", "llama", "-o", tmp_path / "out"), name,
                          "NaN or infinite values", code=1)
    assert_no_out(tmp_path)


def test_non_finite_weights_are_a_warning_for_chat(cli, model):
    poison(model, float("nan"))
    r = cli("chat", model, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu", "--temperature", "0")
    assert r.code == 0, r
    warnings = [l for l in r.err.splitlines() if l.startswith("warning:")]
    assert len(warnings) == 1 and "NaN or infinite values" in warnings[0], r.err


def test_non_finite_weights_are_a_warning_for_eval_ppl(cli, model, tmp_path):
    poison(model, float("nan"))
    r = cli("eval-ppl", model, "--dataset", shared_path("data", "wikitext-2-raw-v1"), "--max-tokens", "64",
            "--ctx", "32", "--device", "cpu", "--json", tmp_path / "r.json")
    assert r.code == 0, r
    assert "NaN or infinite values" in r.err and "perplexity is nan" in r.err, r.err
    assert json.loads((tmp_path / "r.json").read_text())["models"][0]["ppl"] is None  # strict JSON, not NaN


# --- chat templates and sampling -------------------------------------------------------------------
def test_a_latin1_chat_template_file_is_one_line(cli, model):
    edit_json(model / "tokenizer_config.json", chat_template=None)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").write_bytes("{{ 'café' }}".encode("latin-1"))
    r = cli("chat", model, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")
    assert_one_line_error(r, "chat_template.jinja", "not UTF-8 text", code=1)


def test_a_latin1_template_option_is_one_line(cli, model, tmp_path):
    (tmp_path / "t.jinja").write_bytes("{{ 'café' }}".encode("latin-1"))
    r = cli("chat", model, "--prompt", "hi", "--template", tmp_path / "t.jinja", "--device", "cpu")
    assert_one_line_error(r, "--template", "not UTF-8 text", code=2)


HOSTILE_TEMPLATES = pytest.mark.parametrize("template,needle", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "took more than"),
    ("{{ 'x' * 10000000000 }}", "a repetition of"),
    ("{% for i in range(100000) %}{{ 'abcdefghijklmnopqrstuvwxyz' * 1000 }}{% endfor %}", "the output passed"),
    ("{{ 10 ** 100000000 }}", "a power with exponent"),
])


@HOSTILE_TEMPLATES
def test_a_hostile_chat_template_renders_under_a_budget(template, needle, cli, model):
    edit_json(model / "tokenizer_config.json", chat_template=template)
    r = cli("chat", model, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")
    assert_one_line_error(r, "exceeds its budget", needle, code=1)


@HOSTILE_TEMPLATES
def test_convert_refuses_a_hostile_chat_template_before_writing(template, needle, cli, model, tmp_path):
    edit_json(model / "tokenizer_config.json", chat_template=template)
    r = convert_gguf(cli, model, tmp_path)  # asserts that neither OUT nor a temporary file is left
    assert_one_line_error(r, "model/tokenizer_config.json", "exceeds its budget", needle, code=1)
    assert not (tmp_path / "out.gguf").exists()


def test_convert_refuses_a_chat_template_that_does_not_compile(cli, model, tmp_path):
    edit_json(model / "tokenizer_config.json", chat_template="{% for m in messages %}{{ m['content'] }}")
    r = convert_gguf(cli, model, tmp_path)
    assert_one_line_error(r, "model/tokenizer_config.json", "chat template does not compile", code=1)
    assert not (tmp_path / "out.gguf").exists()


@HOSTILE_TEMPLATES
def test_quantize_renders_calibration_chats_under_the_same_budget(template, needle, cli, model, tmp_path):
    edit_json(model / "tokenizer_config.json", chat_template=template)
    calib = tmp_path / "chats.json"
    calib.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4))
    r = cli("quantize", model, "--method", "gptq", "--calib", calib, "--num-samples", "2", "--seq-len", "16",
            "-o", tmp_path / "out")
    assert_one_line_error(r, "calibration conversation", "exceeds its budget", needle, code=1)
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("option", ["--temperature", "--top-p", "--repetition-penalty"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_sampling_value_that_is_not_finite_is_one_line(option, value, cli, model):
    r = cli("chat", model, "--prompt", "hi", option, value)
    assert_one_line_error(r, option, "must be a finite number", code=2)


# --- GGUF headers ----------------------------------------------------------------------------------
def finish_gguf(writer, path: Path) -> Path:
    """Give the writer's file one 16 x 64 token_embd.weight of zeros and write it out."""
    import numpy as np

    writer.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def absurd_gguf(path: Path) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(10**9)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    return finish_gguf(writer, path)


@pytest.mark.parametrize("verb", ["chat", "eval-ppl"])
def test_a_gguf_with_an_absurd_block_count_is_refused_before_llama_cpp(verb, cli, tmp_path):
    from test_bad_inputs import verb_args

    path = absurd_gguf(tmp_path / "absurd.gguf")
    assert_one_line_error(cli(*verb_args(verb, path, tmp_path)), "llama.block_count", "1000000000", code=1)


def gguf_missing_tensors(path: Path) -> Path:
    """Plausible llama metadata, a vocabulary, and no layer tensors: llama.cpp itself refuses it."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    for method, value in (("add_block_count", 1), ("add_context_length", 64), ("add_embedding_length", 64),
                          ("add_feed_forward_length", 128), ("add_head_count", 4), ("add_head_count_kv", 4),
                          ("add_layer_norm_rms_eps", 1e-5), ("add_tokenizer_model", "gpt2"),
                          ("add_token_list", [chr(ord("a") + i) for i in range(16)]),
                          ("add_token_types", [1] * 16), ("add_token_merges", ["a b"])):
        getattr(writer, method)(value)
    writer.add_tokenizer_pre("gpt-2")
    return finish_gguf(writer, path)


def test_llama_cpp_load_errors_reach_the_user_as_one_line(cli, tmp_path):
    path = gguf_missing_tensors(tmp_path / "broken.gguf")
    r = cli("chat", path, "--prompt", "hi", "--max-new-tokens", "2", "--device", "cpu")
    assert_one_line_error(r, "broken.gguf", "llama.cpp cannot load this GGUF", "output_norm.weight' not found", code=1)


# --- each file truncated, empty, of the wrong format -----------------------------------------------
FILES = ["config.json", "tokenizer_config.json", "generation_config.json", "model.safetensors.index.json",
         "tokenizer.model", "model-00001-of-00003.safetensors"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong format"])
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("verb", ["convert", "chat"])
def test_each_file_truncated_empty_or_of_the_wrong_format_is_one_line(verb, name, damage, cli, model, tmp_path):
    from test_bad_inputs import verb_args

    path = model / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "wrong format": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4}[damage])
    r = cli(*verb_args(verb, model, tmp_path))  # chat reads generation_config.json for its sampling defaults
    assert_one_line_error(r, name)
    assert_no_out(tmp_path)


@pytest.mark.parametrize("key,value", [
    ("architectures", 5), ("architectures", [["MiniCPMForCausalLM"]]), ("model_type", ["minicpm"]),
    ("torch_dtype", ["bfloat16"]), ("rope_scaling", "longrope"), ("eos_token_id", "</s>"),
    ("bos_token_id", [None]), ("tie_word_embeddings", "yes"), ("num_experts", "8"), ("pad_token_id", -1),
])
@pytest.mark.parametrize("verb", ["convert", "inspect"])
def test_each_config_value_of_the_wrong_type_is_one_line(key, value, verb, cli, model, tmp_path):
    edit_json(model / "config.json", **{key: value})
    r = convert_gguf(cli, model, tmp_path) if verb == "convert" else cli("inspect", model)
    assert_one_line_error(r, "config.json", key, code=1)


@pytest.mark.parametrize("tensor", ["q_proj.weight", "o_proj.weight"])  # copied as stored; scaled in float32
def test_a_non_finite_weight_in_a_bin_is_an_error_for_convert(tensor, cli, bin_model, tmp_path):
    """`.bin` tensors are checked by floats.tensor_finite, on their raw bits in place."""
    state = torch.load(bin_model / "pytorch_model.bin", weights_only=True)
    name = sorted(n for n in state if n.endswith(tensor))[0]
    state[name][0, 0] = float("nan")
    torch.save(state, bin_model / "pytorch_model.bin")
    assert_one_line_error(cli("convert", bin_model, "--to", "llama", "-o", tmp_path / "out"), name,
                          "NaN or infinite values", code=1)
    assert_no_out(tmp_path)
