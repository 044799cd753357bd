"""Models by hub name: the real huggingface_hub against a local Hub (tests/fake_hub.py) and hand-built caches.

huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE into `constants` when it is imported;
the in-process tests set those constants (ENDPOINT and the /resolve/ URL template, exactly what
HF_ENDPOINT sets), and one test runs the CLI in a fresh process with the environment variables.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, assert_one_line_error
from fake_hub import FakeHub, commit_of, write_cache

CONFIGS = ["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.model",
           "tokenizer_config.json"]


def weight_files(folder):
    return ["model.safetensors.index.json"] + sorted(p.name for p in folder.glob("model-*.safetensors"))


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """An empty cache, online, and an endpoint nothing listens on; point(endpoint) switches endpoint."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)

    def point(endpoint: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")

    def offline(value: bool = True) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", value)

    with socket.socket() as s:  # a port that was free a moment ago: connections are refused at once
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    point(closed)
    return type("HubEnv", (), {"cache": cache, "point": staticmethod(point), "offline": staticmethod(offline),
                               "closed": closed})


def same_tensors(a, b):
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_a_hub_name_downloads_only_what_the_verb_needs_then_works_offline(tiny, cli, hub_env, tmp_path):
    src = tiny("dense-gqa-tied")
    extra = {"modeling_minicpm.py": b"raise SystemExit('remote code ran')\n", "pytorch_model.bin": b"not used"}
    with FakeHub({"openbmb/tiny": src}, extra_files=extra) as hub:
        hub_env.point(hub.endpoint)
        r = cli("convert", "openbmb/tiny", "--to", "llama", "-o", tmp_path / "from-hub", "--dtype", "f32")
        assert r.code == 0, r
        fetched = {p.rsplit("/", 1)[-1] for m, p in hub.requests if m == "GET" and "/resolve/" in p}
    assert fetched == set(CONFIGS + weight_files(src))  # no *.py, no second weight format
    assert "openbmb/tiny (minicpm)" in r.out
    storage = hub_env.cache / "models--openbmb--tiny"
    commit = commit_of("openbmb/tiny", "main")
    assert (storage / "refs" / "main").read_text() == commit
    snapshot = storage / "snapshots" / commit
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(fetched)
    assert all(p.is_symlink() and p.resolve().parent == storage / "blobs" for p in snapshot.iterdir())
    assert cli("convert", src, "--to", "llama", "-o", tmp_path / "local", "--dtype", "f32").code == 0
    same_tensors(tmp_path / "from-hub", tmp_path / "local")
    # the server is gone: offline, and merely unreachable, both reuse the cached snapshot
    hub_env.offline()
    assert cli("convert", "openbmb/tiny", "--to", "llama", "-o", tmp_path / "offline", "--dtype", "f32").code == 0
    same_tensors(tmp_path / "offline", tmp_path / "local")
    hub_env.offline(False)
    assert cli("convert", "openbmb/tiny", "--to", "llama", "-o", tmp_path / "unreachable", "--dtype", "f32").code == 0


def test_a_cache_laid_out_as_huggingface_hub_writes_it_serves_a_revision_offline(tiny, cli, hub_env, tmp_path):
    src = tiny("dense-mha-untied")
    write_cache(hub_env.cache, "openbmb/tiny-2b", src, CONFIGS + weight_files(src), refs=("v1.0",))
    hub_env.offline()
    r = cli("eval-ppl", "openbmb/tiny-2b", src, "--revision", "v1.0", "--dataset",
            ROOT.parent / "shared" / "data" / "wikitext-2-raw-v1", "--ctx", "64", "--max-tokens", "256",
            "--device", "cpu", "--json", tmp_path / "ppl.json")
    assert r.code == 0, r
    rows = json.loads((tmp_path / "ppl.json").read_text())["models"]
    assert rows[0]["ppl"] == pytest.approx(rows[1]["ppl"], rel=1e-6)  # the cached snapshot is the folder
    assert "openbmb/tiny-2b" in r.out
    r = cli("convert", "openbmb/tiny-2b", "--to", "gguf", "-o", tmp_path / "named.gguf", "--revision", "v1.0")
    assert r.code == 0, r
    from converters.gguf_read import gguf_metadata

    assert gguf_metadata(tmp_path / "named.gguf")["general.name"] == "tiny-2b"  # the repository, not the commit
    r = cli("convert", "openbmb/tiny-2b", "--to", "gguf", "-o", tmp_path / "m.gguf", "--revision", "v2.0")
    assert_one_line_error(r, "openbmb/tiny-2b at revision 'v2.0'", "HF_HUB_OFFLINE", "pass a local folder")
    assert not (tmp_path / "m.gguf").exists()


def test_inspect_on_a_hub_name_reads_only_config_and_tokenizer_files(tiny, cli, hub_env, tmp_path):
    src = tiny("minicpm4")
    with FakeHub({"openbmb/tiny4": src}) as hub:
        hub_env.point(hub.endpoint)
        r = cli("inspect", "openbmb/tiny4", "--json", tmp_path / "i.json")
        assert r.code == 0, r
        fetched = {p.rsplit("/", 1)[-1] for m, p in hub.requests if "/resolve/" in p}
    assert not any(f.endswith(".safetensors") for f in fetched), fetched
    info = json.loads((tmp_path / "i.json").read_text())
    local = cli("inspect", src, "--json", tmp_path / "l.json")
    expected = json.loads((tmp_path / "l.json").read_text())
    for key in ("family", "architecture", "parameters", "mup", "rope", "tokenizer", "vocab_size", "chat_template"):
        assert info[key] == expected[key], key
    index = json.loads((src / "model.safetensors.index.json").read_text())
    assert info["size_bytes"] == index["metadata"]["total_size"]


def test_offline_without_the_model_in_the_cache_is_one_line(cli, hub_env, tmp_path):
    hub_env.offline()
    r = cli("convert", "openbmb/MiniCPM4-8B", "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert_one_line_error(r, "openbmb/MiniCPM4-8B", "not in the Hugging Face cache", "HF_HUB_OFFLINE is set: "
                          "pass a local folder, or unset it to download", code=1)


def test_an_unreachable_hub_is_one_line(cli, hub_env, tmp_path):
    r = cli("chat", "openbmb/MiniCPM4-8B", "--prompt", "hi")
    assert_one_line_error(r, "openbmb/MiniCPM4-8B", f"{hub_env.closed} is not reachable: pass a local folder, "
                          "or set HF_ENDPOINT")


def test_an_incomplete_cached_snapshot_is_named_not_used(tiny, cli, hub_env, tmp_path):
    src = tiny("dense-gqa-tied")
    write_cache(hub_env.cache, "openbmb/tiny", src, CONFIGS + weight_files(src)[:-1])  # last shard missing
    hub_env.offline()
    r = cli("quantize", "openbmb/tiny", "--method", "bnb", "--bits", "8", "-o", tmp_path / "q")
    assert_one_line_error(r, "openbmb/tiny: the cached snapshot is incomplete", "run again online")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("case, needles", [
    ("unknown repo", ["openbmb/nope", "no such model on"]),
    ("unknown revision", ["openbmb/tiny", "no revision 'v9'"]),
    ("gated", ["openbmb/tiny", "gated", "HF_TOKEN"]),
    ("no token", ["openbmb/tiny", "HTTP 401", "check HF_TOKEN"]),
])
def test_hub_refusals_are_one_line(case, needles, tiny, cli, hub_env, tmp_path):
    src = tiny("dense-gqa-tied")
    kwargs = {"gated": ("openbmb/tiny",)} if case == "gated" else {"token": "hf_right"} if case == "no token" else {}
    with FakeHub({"openbmb/tiny": src}, **kwargs) as hub:
        hub_env.point(hub.endpoint)
        name = "openbmb/nope" if case == "unknown repo" else "openbmb/tiny"
        extra = ["--revision", "v9"] if case == "unknown revision" else []
        r = cli("convert", name, "--to", "llama", "-o", tmp_path / "out", *extra)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "out").exists()


def test_hf_token_is_sent(tiny, cli, hub_env, monkeypatch, tmp_path):
    src = tiny("dense-gqa-tied")
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    with FakeHub({"openbmb/tiny": src}, token="hf_right") as hub:
        hub_env.point(hub.endpoint)
        assert cli("inspect", "openbmb/tiny").code == 0


def test_environment_variables_alone_point_a_fresh_process_at_the_cache(tiny, tmp_path):
    """HF_HOME and HF_HUB_OFFLINE as a user sets them, read by huggingface_hub at import."""
    src = tiny("dense-gqa-tied")
    write_cache(tmp_path / "home" / "hub", "openbmb/tiny", src, CONFIGS)  # configs only: inspect needs no more
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "minicpm_cli", "inspect", "openbmb/tiny", "--json",
                          tmp_path / "i.json"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "i.json").read_text())["family"] == "minicpm"
    env["HF_HOME"] = str(tmp_path / "elsewhere")
    run = subprocess.run([sys.executable, "-m", "minicpm_cli", "inspect", "openbmb/tiny"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "not in the Hugging Face cache" in run.stderr


def test_a_local_folder_is_never_taken_for_a_hub_name(tiny, cli, hub_env, tmp_path, monkeypatch):
    src = tiny("dense-gqa-tied")
    (tmp_path / "openbmb").mkdir()
    os.symlink(src, tmp_path / "openbmb" / "tiny")
    monkeypatch.chdir(tmp_path)
    assert cli("inspect", "openbmb/tiny").code == 0  # no hub reachable: it read the folder
    r = cli("inspect", "openbmb/tiny", "--revision", "v1")
    assert_one_line_error(r, "--revision v1", "no MODEL is one", code=2)


def test_a_modelscope_id_goes_through_the_modelscope_package(cli, monkeypatch, tmp_path):
    """ModelScope is not reachable from here: its endpoint is a closed port, its retries stay off stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", closed)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    r = cli("convert", "modelscope:OpenBMB/MiniCPM4-8B", "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert_one_line_error(r, "modelscope:OpenBMB/MiniCPM4-8B: ModelScope not reachable", "MODELSCOPE_ENDPOINT")
    monkeypatch.setitem(sys.modules, "modelscope.hub.snapshot_download", None)  # as if not installed
    r = cli("inspect", "modelscope:OpenBMB/MiniCPM4-8B")
    assert_one_line_error(r, "needs the modelscope package", "pip install 'minicpm[modelscope]'", code=2)


def test_a_full_disk_during_download_leaves_no_model_and_a_rerun_finishes(tiny, tmp_path):
    """A file-size limit (RLIMIT_FSIZE) makes the 3 MB shards fail to write, as a full disk would."""
    import resource

    src = tiny("dense-gqa-tied")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "minicpm_cli", "convert", "openbmb/tiny", "--to", "llama", "-o", tmp_path / "out"]

    def one_megabyte():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    with FakeHub({"openbmb/tiny": src}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=one_megabyte)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        last = run.stderr.strip().splitlines()[-1]  # above it: huggingface_hub's own progress bars
        assert last.startswith("error: openbmb/tiny: disk full while downloading into") and "HF_HOME" in last
        assert not (tmp_path / "out").exists()
        snapshot = next((tmp_path / "home" / "hub" / "models--openbmb--tiny" / "snapshots").iterdir())
        assert not list(snapshot.glob("model-0000[12]*"))  # the shards that did not fit are not in the model
        offline = subprocess.run(cmd, env=env | {"HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
        assert "the cached snapshot is incomplete" in offline.stderr and offline.returncode == 1
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in snapshot.glob("model-*")) == sorted(p.name for p in src.glob("model-*"))
