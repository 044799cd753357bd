"""The bad-input matrix: every row is one clear stderr line, exit 2 (usage) or 1 (runtime), no
traceback, and nothing partial left on disk.

| row                                    | expected                                           | every verb |
|----------------------------------------|----------------------------------------------------|------------|
| nonexistent path                       | 2, "no such file or directory"                     | yes        |
| a file where a folder is expected      | 2, "expected a model folder"                       | yes        |
| folder without config.json             | 2, "no config.json"                                |            |
| config.json that is not JSON           | 1, "config.json: not valid JSON"                   | yes        |
| config of another architecture (GPT-2) | 2, "architecture GPT2LMHeadModel is not supported" | yes        |
| MiniCPM config without scale_emb       | 0: OpenBMB's default 1 (not an error)              |            |
| index naming a missing shard           | 1, "<shard>: shard named in ... is missing"        | yes        |
| safetensors truncated in the middle    | 1, "<file>: truncated safetensors file"            | yes        |
| tensor shape disagreeing with config   | 1, "<tensor> has shape [...] but config.json ..."  | yes        |
| GGUF truncated                         | 1, "<file>: not a readable GGUF file"              | yes        |
| OUT exists                             | 2, "already exists (use --force ...)"              |            |
| --force onto a folder that is not ours | 2, "not a model folder this command writes"        |            |
| OUT in a read-only folder              | 1, "not writable"                                  |            |
| disk full during write                 | 1, "could not write output: No space left"         |            |
| Ctrl-C (SIGINT) mid-conversion         | 130, "interrupted", no OUT, no temporary           |            |

"every verb": the row runs again for convert, quantize, eval-ppl, chat and inspect (convert and quantize
read folders only, so a GGUF is "expected a model folder" there). The OUT rows concern the verbs that
write one (convert here; quantize in test_quantize.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_line_error, leftovers


def convert(cli, src, out, *extra):
    result = cli("convert", src, "--to", "llama", "-o", out, *extra)
    assert not leftovers(Path(out).parent, Path(out).name), "partial output left behind"
    return result


@pytest.fixture
def model(tiny, tmp_path):
    """A private copy of a tiny MiniCPM, free to damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny("dense-mha-untied"), dst)
    return dst


def edit_config(folder: Path, **changes):
    config = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (folder / "config.json").write_text(json.dumps(config))


def test_nonexistent_path(cli, tmp_path):
    r = convert(cli, tmp_path / "nope", tmp_path / "out")
    assert_one_line_error(r, "nope", "no such file or directory", code=2)


def test_file_where_folder_expected(cli, model, tmp_path):
    r = convert(cli, model / "config.json", tmp_path / "out")
    assert_one_line_error(r, "config.json", "expected a model folder", code=2)


def test_missing_config_json(cli, model, tmp_path):
    (model / "config.json").unlink()
    assert_one_line_error(convert(cli, model, tmp_path / "out"), str(model), "no config.json", code=2)


def test_config_not_json(cli, model, tmp_path):
    (model / "config.json").write_text('{"hidden_size": 256,')
    assert_one_line_error(convert(cli, model, tmp_path / "out"), "config.json", "not valid JSON", code=1)


def test_config_of_another_architecture(cli, model, tmp_path):
    edit_config(model, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    r = convert(cli, model, tmp_path / "out")
    assert_one_line_error(r, "config.json", "architecture GPT2LMHeadModel is not supported", code=2)


def test_config_without_scale_emb_takes_openbmbs_default_of_1(cli, model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from converters.checkpoint import Checkpoint

    edit_config(model, scale_emb=None)
    assert cli("convert", model, "--to", "llama", "-o", tmp_path / "out", "--dtype", "f32").code == 0
    (written,) = [load_file(f) for f in (tmp_path / "out").glob("*.safetensors")]
    source = Checkpoint(model).get("model.embed_tokens.weight").float()
    assert torch.equal(written["model.embed_tokens.weight"], source)  # x 1: copied, not scaled


def test_index_naming_a_missing_shard(cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    shard.unlink()
    r = convert(cli, model, tmp_path / "out")
    assert_one_line_error(r, shard.name, "shard named in model.safetensors.index.json is missing", code=1)


def test_safetensors_truncated_in_the_middle(cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_one_line_error(convert(cli, model, tmp_path / "out"), shard.name, "truncated safetensors", code=1)


def test_tensor_shape_disagreeing_with_config(cli, model, tmp_path):
    edit_config(model, intermediate_size=1024)
    r = convert(cli, model, tmp_path / "out")
    assert_one_line_error(r, "mlp.gate_proj.weight", "has shape [768, 256]", "[1024, 256]", code=1)


def truncated_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def test_truncated_gguf(cli, tmp_path):
    path = truncated_gguf(tmp_path / "model.gguf")
    assert_one_line_error(cli("inspect", path), "model.gguf", "not a readable GGUF file", code=1)


def test_out_exists_refused_unless_force(cli, model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = cli("convert", model, "--to", "llama", "-o", out)
    assert_one_line_error(r, "already exists", "--force", code=2)
    assert (out / "keep.txt").read_text() == "mine"
    r = cli("convert", model, "--to", "llama", "-o", out, "--force")  # a user's folder: never replaced
    assert_one_line_error(r, "is not a model folder this command writes", code=2)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli("convert", model, "--to", "llama", "-o", out / "ours").code == 0
    r = cli("convert", model, "--to", "llama", "-o", out / "ours", "--force", "--dtype", "f32")  # ours: replaced
    assert r.code == 0 and "replaced" in r.err, r
    assert json.loads((out / "ours" / "config.json").read_text())["torch_dtype"] == "float32"


@pytest.fixture
def mounted(tmp_path):
    """mounted(options) -> a fresh tmpfs folder (read-only or tiny): real file-system failures."""
    points = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        assert done.returncode == 0, f"tests need to mount a tmpfs (root): {done.stderr.decode()}"
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], check=False)


def test_out_in_read_only_folder(cli, model, mounted):
    folder = mounted("ro,size=1m")
    assert_one_line_error(convert(cli, model, folder / "out"), str(folder), "not writable", code=1)


@pytest.mark.parametrize("dtype", ["f32", "auto"])  # scaled and cast blocks; bf16 as stored: kernel copies
def test_disk_full_during_write(dtype, cli, model, mounted):
    folder = mounted("size=2m")  # the output needs ~8 MB (bf16) or ~16 MB (f32)
    r = convert(cli, model, folder / "out", "--dtype", dtype)
    assert_one_line_error(r, "out", "could not write output", "No space left", code=1)
    assert list(folder.iterdir()) == []


@contextlib.contextmanager
def leased(path: Path):
    """Hold a write lease on path: a process that opens it waits until the lease goes away.

    Yields a function that says whether a process is waiting now. The kernel signals the lease
    holder with SIGIO (ignored here) and gives up on it after /proc/sys/fs/lease-break-time (45 s).
    """
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        yield lambda: fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK
    finally:
        os.close(fd)  # releases the lease
        signal.signal(signal.SIGIO, previous)


def test_ctrl_c_mid_conversion_leaves_nothing(model, tmp_path):
    # generation_config.json is the last file a conversion copies: while the test holds a lease on it,
    # the conversion waits there with every shard already written, and cannot finish before Ctrl-C.
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "minicpm_cli", "convert", str(model), "--to", "llama", "-o", str(out),
           "--dtype", "f32", "--max-shard-size", "4MB"]
    with leased(model / "generation_config.json") as conversion_waits:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600  # only turns a hang into a failure
        while not conversion_waits():
            assert proc.poll() is None, f"conversion ended without opening generation_config.json: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "conversion never reached generation_config.json"
            time.sleep(0.01)
        partial = leftovers(tmp_path, "out")
        assert len(partial) == 1 and partial[0] != "out", partial
        written = {p.name for p in (tmp_path / partial[0]).iterdir()}
        assert {"model.safetensors.index.json", "config.json", "tokenizer.model"} <= written, written
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines == ["interrupted: nothing was written"], err
    assert leftovers(tmp_path, "out") == []


# --- the same rows across every verb that reads a model ---------------------------------------
def verb_args(verb: str, model: Path, tmp_path: Path) -> list:
    from conftest import shared_path

    return {
        "convert": ["convert", model, "--to", "gguf", "-o", tmp_path / "out.gguf"],
        "quantize": ["quantize", model, "--method", "gptq", "-o", tmp_path / "out"],
        "eval-ppl": ["eval-ppl", model, "--dataset", shared_path("data", "wikitext-2-raw-v1"), "--max-tokens", "512",
                     "--ctx", "256"],
        "chat": ["chat", model, "--prompt", "hi", "--max-new-tokens", "4"],
        "inspect": ["inspect", model],
    }[verb]


VERBS = ["convert", "quantize", "eval-ppl", "chat", "inspect"]


def assert_no_output(tmp_path: Path) -> None:
    """Neither OUT of verb_args (folder or GGUF) nor a temporary of it exists."""
    assert not leftovers(tmp_path, "out") and not leftovers(tmp_path, "out.gguf")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_nonexistent_path(verb, cli, tmp_path):
    r = cli(*verb_args(verb, tmp_path / "nope", tmp_path))
    assert_one_line_error(r, "nope", code=2)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_config_not_json(verb, cli, model, tmp_path):
    (model / "config.json").write_text("not json")
    assert_one_line_error(cli(*verb_args(verb, model, tmp_path)), "config.json", "not valid JSON")
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_other_architecture(verb, cli, model, tmp_path):
    edit_config(model, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    assert_one_line_error(cli(*verb_args(verb, model, tmp_path)), "GPT2LMHeadModel")
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_truncated_safetensors(verb, cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:5000])
    assert_one_line_error(cli(*verb_args(verb, model, tmp_path)), shard.name, "truncated")
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_file_where_folder_expected(verb, cli, model, tmp_path):
    r = cli(*verb_args(verb, model / "config.json", tmp_path))
    assert_one_line_error(r, "config.json", code=2)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_index_naming_a_missing_shard(verb, cli, model, tmp_path):
    shard = sorted(model.glob("model-*.safetensors"))[-1]
    shard.unlink()
    assert_one_line_error(cli(*verb_args(verb, model, tmp_path)), shard.name, "missing", code=1)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_tensor_shape_disagreeing_with_config(verb, cli, model, tmp_path):
    edit_config(model, intermediate_size=1024)
    r = cli(*verb_args(verb, model, tmp_path))
    assert_one_line_error(r, "mlp.gate_proj.weight", "has shape [768, 256]", "[1024, 256]", code=1)
    assert_no_output(tmp_path)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_truncated_gguf(verb, cli, tmp_path):
    path = truncated_gguf(tmp_path / "model.gguf")
    r = cli(*verb_args(verb, path, tmp_path))
    if verb in ("convert", "quantize"):  # they read Hugging Face folders only
        assert_one_line_error(r, "model.gguf", "expected a model folder", code=2)
    else:
        assert_one_line_error(r, "model.gguf", "not a readable GGUF file", code=1)
    assert_no_output(tmp_path)
