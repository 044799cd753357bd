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

from conftest import assert_one_line_error, shared_path
from published import CASES, IDS, close_to, published, reference  # noqa: F401 (fixtures)

NAMES = list(CASES)
REFUSED = {"MiniCPM-S-1B"}  # FATReLU: no Llama / llama.cpp equivalent
# The costlier verbs run on the published configs and on the cases whose facts they exercise; the fold
# and the Llama-layout GGUF share their code with `--to llama`, which every case goes through.
PUBLISHED = ["MiniCPM-2B-sft-bf16", "MiniCPM3-4B", "MiniCPM4-8B", "MiniCPM5-2B", "MiniCPM-V-4-llm"]
FOLDED = ["MiniCPM-2B-sft-bf16", "MiniCPM4-8B", "MiniCPM4.1-8B", "MiniCPM4-8B-long-no-mup"]
SERVED = PUBLISHED + ["MiniCPM4-8B-sparse", "MiniCPM-S-1B"]


@pytest.fixture(scope="session")
def gguf_f32(published, tmp_path_factory):
    """gguf_f32(name) -> the case's native f32 GGUF, written once through the library call."""
    from converters.gguf_export import convert_to_gguf

    root, cache = tmp_path_factory.mktemp("published-gguf"), {}

    def get(name: str):
        if name not in cache:
            convert_to_gguf(published(name), root / f"{name}.gguf", outtype="f32")
            cache[name] = root / f"{name}.gguf"
        return cache[name]

    return get


def gguf_logits(path) -> torch.Tensor:
    from runtime.load import load_gguf

    model = load_gguf(path, n_ctx=64, threads=2)
    try:
        return model.logits(IDS)
    finally:
        model.model.close()


SIZES = {"hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
         "head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "q_lora_rank", "kv_lora_rank"}


@pytest.mark.parametrize("name", PUBLISHED)
def test_tiny_config_keeps_every_published_key_and_value_except_sizes(name):
    from converters.tiny_like import language_model_config, shrink

    case = CASES[name]
    source = json.loads(shared_path("minicpm-hf", case.config or f"{case.like}/config.json").read_text())
    published = language_model_config(source)
    tiny = shrink(published)
    assert set(tiny) == set(published) and set(published) <= set(source) | {"auto_map"}
    for key, value in published.items():
        if key == "rope_scaling" and value:  # factor lists resampled to the new rotary size, ends kept
            for k in value:
                if k.endswith("_factor"):
                    assert tiny[key][k][0] == value[k][0] and tiny[key][k][-1] == value[k][-1]
                else:
                    assert tiny[key][k] == value[k]
        elif key not in SIZES:
            assert tiny[key] == value, key
    assert tiny["hidden_size"] == 128 and tiny["num_hidden_layers"] == 2
    mha = published.get("num_key_value_heads", published["num_attention_heads"]) == published["num_attention_heads"]
    assert (tiny.get("num_key_value_heads", 4) == 4) == mha
    if "head_dim" in published:  # equal to hidden / heads, or not, as published
        equal = published["head_dim"] == published["hidden_size"] // published["num_attention_heads"]
        assert (tiny["head_dim"] == 32) == equal


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


@pytest.mark.parametrize("name", NAMES)
def test_gguf_native_matches_the_reference(name, published, reference, gguf_f32, cli, tmp_path):
    if name in REFUSED:
        result = cli("convert", published(name), "--to", "gguf", "-o", tmp_path / "m.gguf")
        assert_one_line_error(result, "hidden_act fatrelu", "refusing rather than running SiLU")
        assert not (tmp_path / "m.gguf").exists()
        return
    close_to(gguf_logits(gguf_f32(name)), reference(name))


@pytest.mark.parametrize("name", FOLDED + ["MiniCPM-S-1B"])
def test_gguf_folded_matches_the_reference(name, published, reference, cli, tmp_path):
    out = tmp_path / "m.gguf"
    result = cli("convert", published(name), "--to", "gguf", "--outtype", "f32", "--fold", "-o", out)
    if name in REFUSED:
        assert_one_line_error(result, "hidden_act fatrelu", "refusing rather than running SiLU")
        return
    assert result.code == 0, result
    close_to(gguf_logits(out), reference(name))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    from converters.tiny import stdlib_text

    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text(stdlib_text()[:20_000])
    return path


@pytest.mark.parametrize("name", SERVED)
def test_eval_ppl_and_chat_agree_between_the_folder_and_its_gguf(name, published, gguf_f32, cli, text_file, tmp_path):
    src = published(name)
    if name in REFUSED:
        result = cli("eval-ppl", src, "--dataset", text_file, "--ctx", 32, "--max-tokens", 64)
        assert_one_line_error(result, "hidden_act fatrelu")
        return
    gguf = gguf_f32(name)
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


@pytest.mark.parametrize("name", PUBLISHED + ["MiniCPM-S-1B"])
def test_quantize_bnb_int8_reloads(name, published, cli, tmp_path):
    result = cli("quantize", published(name), "--method", "bnb", "--bits", "8", "-o", tmp_path / "q")
    if name in REFUSED:
        assert_one_line_error(result, "hidden_act fatrelu")
        return
    assert result.code == 0, result
    assert json.loads((tmp_path / "q" / "quantization.json").read_text())["method"] == "bnb"
    generation = published(name) / "generation_config.json"  # MiniCPM3-4B's fails transformers 5's check
    if generation.is_file():
        assert (tmp_path / "q" / "generation_config.json").read_bytes() == generation.read_bytes()
