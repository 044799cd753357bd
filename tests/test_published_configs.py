"""Every published MiniCPM config, and every family known only from facts, through every verb.

Each case is a tiny checkpoint built by converters.tiny_like from a config in ../shared/minicpm-hf (every
key kept, only sizes shrunk) with the real tokenizer files (tests/published.py). Logits of every path
(in-memory runtime, `--to llama` in transformers, GGUF native and folded in llama.cpp) are checked
against tests/reference.py, an independent forward written from OpenBMB's formulas (incl. MLA).
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_one_line_error
from published import CASES, build
from reference import load_minicpm, minicpm_logits

IDS = [1] + [int(i) for i in torch.randint(3, 1400, (47,), generator=torch.Generator().manual_seed(3))]
NAMES = list(CASES)
REFUSED = {"MiniCPM-S-1B"}  # FATReLU: no Llama / llama.cpp equivalent
FOLDABLE = [n for n in NAMES if CASES[n].family == "minicpm" and n not in REFUSED]


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    """published(name) -> the tiny checkpoint of that case (built once per session)."""
    root, cache = tmp_path_factory.mktemp("published"), {}

    def get(name: str):
        if name not in cache:
            cache[name] = build(name, root)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference(published):
    cache = {}

    def get(name: str) -> torch.Tensor:
        if name not in cache:
            cache[name] = minicpm_logits(*load_minicpm(published(name)), IDS)
        return cache[name]

    return get


def close_to(logits: torch.Tensor, reference: torch.Tensor, rel: float = 1e-4) -> None:
    err = (logits - reference).abs().max().item()
    assert err <= rel * reference.abs().max().item(), f"max |Δlogit| {err:.3g} vs max |logit| {reference.abs().max():.3g}"
    assert (logits.argmax(-1) == reference.argmax(-1)).all()


def gguf_logits(path) -> torch.Tensor:
    from runtime.load import load_gguf

    model = load_gguf(path, n_ctx=64, threads=2)
    try:
        return model.logits(IDS)
    finally:
        model.model.close()


@pytest.mark.parametrize("name", NAMES)
def test_inspect_names_the_family_defaults_tokenizer_and_notes(name, published, cli, tmp_path):
    result = cli("inspect", published(name), "--json", tmp_path / "i.json")
    assert result.code == 0, result
    info = json.loads((tmp_path / "i.json").read_text())
    case = CASES[name]
    assert info["family"] == case.family
    assert tuple(info["defaults_used"]) == case.defaults
    if case.defaults:
        assert "OpenBMB's defaults" in result.out
    has_sp = (published(name) / "tokenizer.model").is_file()
    assert info["tokenizer_used"].startswith("tokenizer.model" if has_sp else "tokenizer.json")
    sparse = "sparse_config" in case.overrides
    assert bool(info["notes"]) == sparse
    assert result.err.count("attention runs dense") == (1 if sparse else 0)
    assert info["activation"] == ("fatrelu (threshold 0.0)" if name in REFUSED else "silu")


@pytest.mark.parametrize("name", NAMES)
def test_runtime_loads_every_case_like_openbmbs_code(name, published, reference):
    """eval-ppl, chat and quantize load through runtime.load: MiniCPM folded, MiniCPM3 native."""
    from converters.errors import UserError
    from runtime.load import load_model

    if name in REFUSED:
        with pytest.raises(UserError, match="hidden_act fatrelu .* refusing rather than running SiLU"):
            load_model(published(name))
        return
    model = load_model(published(name))
    assert model.family == CASES[name].family
    close_to(model.logits(IDS), reference(name))


@pytest.mark.parametrize("name", NAMES)
def test_convert_to_llama_loads_in_transformers_with_the_same_logits(name, published, reference, cli, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "llama"
    result = cli("convert", published(name), "--to", "llama", "-o", out, "--dtype", "f32")
    if CASES[name].family == "minicpm3":
        assert_one_line_error(result, "multi-head latent attention", "--to gguf", code=2)
        return
    if name in REFUSED:
        assert_one_line_error(result, "hidden_act fatrelu", "refusing rather than running SiLU")
        assert not out.exists()
        return
    assert result.code == 0, result
    config = json.loads((out / "config.json").read_text())
    rs = config.get("rope_scaling") or {}
    if rs.get("rope_type") == "longrope":  # what transformers 4.43+, 5.x and vLLM's Llama each read
        assert {"factor", "long_factor", "short_factor", "original_max_position_embeddings"} <= set(rs)
        assert config["original_max_position_embeddings"] == rs["original_max_position_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        close_to(model(torch.tensor([IDS])).logits[0], reference(name))


@pytest.mark.parametrize("name,fold", [(n, False) for n in NAMES] + [(n, True) for n in FOLDABLE])
def test_gguf_native_and_folded_match_the_reference(name, fold, published, reference, cli, tmp_path):
    out = tmp_path / "m.gguf"
    result = cli("convert", published(name), "--to", "gguf", "--outtype", "f32", "-o", out,
                 *(["--fold"] if fold else []))
    if name in REFUSED:
        assert_one_line_error(result, "hidden_act fatrelu", "refusing rather than running SiLU")
        assert not out.exists()
        return
    assert result.code == 0, result
    close_to(gguf_logits(out), reference(name))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    from converters.tiny import stdlib_text

    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(stdlib_text()[:20_000])
    return path


@pytest.mark.parametrize("name", NAMES)
def test_eval_ppl_and_chat_agree_between_the_folder_and_its_gguf(name, published, cli, text_file, tmp_path):
    src, gguf = published(name), tmp_path / "m.gguf"
    if name in REFUSED:
        result = cli("eval-ppl", src, "--dataset", text_file, "--ctx", 32, "--max-tokens", 64)
        assert_one_line_error(result, "hidden_act fatrelu")
        return
    assert cli("convert", src, "--to", "gguf", "--outtype", "f32", "-o", gguf).code == 0
    result = cli("eval-ppl", src, gguf, "--dataset", text_file, "--ctx", 32, "--max-tokens", 64,
                 "--device", "cpu", "--json", tmp_path / "p.json")
    assert result.code == 0, result
    hf, gg = json.loads((tmp_path / "p.json").read_text())["models"]
    assert hf["tokens"] == gg["tokens"] == 64
    assert gg["ppl"] == pytest.approx(hf["ppl"], rel=1e-3)
    sparse = "sparse_config" in CASES[name].overrides
    assert result.err.count("attention runs dense") == (1 if sparse else 0)
    args = ["--prompt", "Hello, who are you?", "--temperature", "0", "--max-new-tokens", "6", "--threads", "1"]
    replies = [cli("chat", path, *args) for path in (src, gguf)]
    assert all(r.code == 0 for r in replies), replies
    assert replies[0].out == replies[1].out
    assert replies[0].err.count("attention runs dense") == (1 if sparse else 0)


@pytest.mark.parametrize("name", NAMES)
def test_quantize_bnb_int8_reloads(name, published, cli, tmp_path):
    result = cli("quantize", published(name), "--method", "bnb", "--bits", "8", "-o", tmp_path / "q")
    if name in REFUSED:
        assert_one_line_error(result, "hidden_act fatrelu")
        return
    assert result.code == 0, result
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["method"] == "bnb"
