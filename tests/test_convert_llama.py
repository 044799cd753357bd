"""`minicpm convert --to llama`: the folded model computes what MiniCPM computes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import shared_path
from reference import load_minicpm, minicpm_logits

IDS = [1] + [int(i) for i in torch.randint(3, 2000, (63,), generator=torch.Generator().manual_seed(7))]
DENSE = ["dense-gqa-tied", "dense-mha-untied", "minicpm4", "moe"]


def hf_logits(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].float(), model


@pytest.mark.parametrize("family", DENSE)
def test_folded_f32_matches_reference(family, tiny, cli, tmp_path):
    src = tiny(family)
    out = tmp_path / "llama"
    result = cli("convert", src, "--to", "llama", "-o", out, "--dtype", "f32")
    assert result.code == 0, result
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("mixtral" if family == "moe" else "llama")
    source_tied = json.loads((src / "config.json").read_text())["tie_word_embeddings"]
    assert config["tie_word_embeddings"] is source_tied
    assert not {"scale_emb", "scale_depth", "dim_model_base", "auto_map"} & set(config)
    reference = minicpm_logits(*load_minicpm(src), IDS)
    logits, model = hf_logits(out)
    assert type(model).__name__ == ("MixtralForCausalLM" if family == "moe" else "LlamaForCausalLM")
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is source_tied
    err = (logits - reference).abs().max().item()
    assert err <= 1e-4 * reference.abs().max().item(), err


@pytest.mark.parametrize("family", ["dense-gqa-tied", "moe"])
def test_folded_bf16_within_bf16_tolerance(family, tiny, cli, tmp_path):
    src = tiny(family)
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out).code == 0  # auto keeps the checkpoint's bf16
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    reference = minicpm_logits(*load_minicpm(src), IDS)
    logits, _ = hf_logits(out, torch.bfloat16)
    assert (logits - reference).abs().max().item() <= 0.05 * reference.abs().max().item()
    agree = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


@pytest.mark.parametrize("family", ["dense-gqa-tied", "moe"])
def test_tied_checkpoint_folds_to_a_tied_llama_with_its_embedding_bytes_unchanged(family, tiny, cli, tmp_path):
    """Tied: the residual stream is carried / scale_emb, so the embedding is copied as is and stays the head;
    o_proj/down_proj/w2 take residual/scale_emb, eps takes 1/scale_emb**2, the final norm 1/(H/base)."""
    src = tiny(family)
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out).code == 0
    source, config = (json.loads((d / "config.json").read_text()) for d in (src, out))
    s_emb = source["scale_emb"]
    assert config["tie_word_embeddings"] is True
    assert config["rms_norm_eps"] == pytest.approx(source["rms_norm_eps"] / s_emb ** 2, rel=1e-12)
    residual = source["scale_depth"] / source["num_hidden_layers"] ** 0.5
    logit = source["hidden_size"] / source["dim_model_base"]
    source_weights = {}
    for shard in src.glob("*.safetensors"):
        source_weights |= load_file(shard)  # bf16, as stored
    with safe_open(out / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        names = {k.replace(".block_sparse_moe.", ".mlp."): k for k in f.keys()}
        assert set(names) == set(source_weights)
        for name, out_name in names.items():
            got, want = f.get_tensor(out_name), source_weights[name]
            if name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
                want = (want.float() * (residual / s_emb)).to(torch.bfloat16)
            elif name == "model.norm.weight":
                want = (want.float() / logit).to(torch.bfloat16)
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), name  # bit for bit


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
@pytest.mark.parametrize("dtype", ["auto", "f32"])
def test_row_blocks_and_byte_copies_write_what_whole_tensors_would(weights_format, dtype, tiny, cli, tmp_path,
                                                                      monkeypatch):
    """The writer copies unchanged tensors' bytes and scales the others in row blocks: with blocks of a
    few rows, every tensor equals the whole tensor computed in float32 and cast (bit for bit)."""
    import converters.safetensors_out as writer
    from converters.checkpoint import Checkpoint
    from converters.mup import fold_plan

    src = tiny("dense-mha-untied", weights_format=weights_format)
    monkeypatch.setattr(writer, "CHUNK_BYTES", 3000)  # 1-5 rows per block at these widths
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out, "--dtype", dtype).code == 0
    want_dtype = torch.float32 if dtype == "f32" else torch.bfloat16
    plan = fold_plan(Checkpoint(src))
    with safe_open(out / "model.safetensors", "pt") as f:
        assert set(f.keys()) == {t.name for t in plan}
        for t in plan:
            got, want = f.get_tensor(t.name), t.make().to(want_dtype)
            assert got.dtype == want_dtype and torch.equal(got.view(torch.uint8), want.view(torch.uint8)), t.name


def test_longrope_past_original_length_uses_long_factor(minicpm4_long, cli, tmp_path):
    """max_position_embeddings > original: MiniCPM uses long_factor and sqrt(1+ln s/ln L0) everywhere."""
    src = minicpm4_long
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out, "--dtype", "f32").code == 0
    reference = minicpm_logits(*load_minicpm(src), IDS)
    logits, _ = hf_logits(out)
    assert (logits - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


def test_shards_and_index_round_trip(tiny, cli, tmp_path):
    src = tiny("dense-mha-untied")
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out, "--dtype", "f32", "--max-shard-size", "3MB").code == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards == sorted(p.name for p in out.glob("model-*.safetensors"))
    config, w = load_minicpm(src)
    residual = config["scale_depth"] / config["num_hidden_layers"] ** 0.5
    expected = {k: v for k, v in w.items()}
    expected["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] * config["scale_emb"]
    expected["lm_head.weight"] = w["lm_head.weight"] / (config["hidden_size"] / config["dim_model_base"])
    for k in w:
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            expected[k] = w[k] * residual
    total = 0
    seen = set()
    for shard in shards:
        with safe_open(out / shard, "pt") as f:
            for name in f.keys():
                assert index["weight_map"][name] == shard
                t = f.get_tensor(name)
                total += t.numel() * t.element_size()
                torch.testing.assert_close(t, expected[name], rtol=1e-6, atol=0)
                seen.add(name)
    assert seen == set(expected) and total == index["metadata"]["total_size"]


def test_bin_weights_convert_like_safetensors(tiny, cli, tmp_path):
    src = tiny("dense-gqa-tied", weights_format="bin")
    assert (src / "pytorch_model.bin").exists() and not list(src.glob("*.safetensors"))
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out, "--dtype", "f32").code == 0
    reference = minicpm_logits(*load_minicpm(src), IDS)
    logits, _ = hf_logits(out)
    assert (logits - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


MIXED = "<用户>Tell me about 北京 in 2 words...  Ok\n<AI>北京是中国的首都。\t<b>Thanks!</b>"


def wikitext_sample() -> str:
    import pyarrow.parquet as pq

    rows = pq.read_table(shared_path("data", "wikitext-2-raw-v1", "test-00000-of-00001.parquet")).column("text")
    return "".join(rows.to_pylist()[:400])


@pytest.mark.parametrize("tokenizer", [None, "MiniCPM-2B-sft-bf16", "MiniCPM4-8B"])
def test_tokenizer_round_trip_keeps_sentencepiece_ids(tokenizer, tiny, cli, tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from converters.tokenizer import load_tokenizer

    kw = {"tokenizer": shared_path("minicpm-hf", tokenizer)} if tokenizer else {}
    src = tiny("minicpm4" if tokenizer == "MiniCPM4-8B" else "dense-gqa-tied", **kw)
    out = tmp_path / "llama"
    assert cli("convert", src, "--to", "llama", "-o", out).code == 0
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    converted = AutoTokenizer.from_pretrained(out)  # what a user of the output gets, no remote code
    text = MIXED + "\n\n" + wikitext_sample()
    assert converted(text)["input_ids"] == [1] + sp.encode(text)
    assert converted.decode(sp.encode(text)) == text
    assert load_tokenizer(src)(text)["input_ids"] == [1] + sp.encode(text)  # the source, as we run it
    source_cfg = json.loads((src / "tokenizer_config.json").read_text())
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == source_cfg["chat_template"]


def test_minicpm3_is_refused_with_a_pointer_to_gguf(tiny, cli, tmp_path):
    result = cli("convert", tiny("minicpm3"), "--to", "llama", "-o", tmp_path / "x")
    assert result.code == 2 and "--to gguf" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "x").exists()


def test_minicpm3_tiny_loads_in_native_transformers(tiny):
    """The tiny MiniCPM3 layout is what transformers' own MiniCPM3ForCausalLM expects."""
    from transformers import MiniCPM3Config, MiniCPM3ForCausalLM

    src = tiny("minicpm3")
    config = json.loads((src / "config.json").read_text())
    # transformers 5.17's MLA scaling reads rope_parameters["factor"], absent from the published config
    config["rope_scaling"]["factor"] = 1.0
    model, info = MiniCPM3ForCausalLM.from_pretrained(
        src, config=MiniCPM3Config(**config), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    _, weights = load_minicpm(src)
    state = model.state_dict()
    for name, value in weights.items():
        torch.testing.assert_close(state[name], value)
    logits = model(torch.tensor([IDS])).logits
    assert torch.isfinite(logits).all()


def test_a_byte_copied_tensor_is_still_checked_for_nan(tiny, cli, tmp_path):
    """The tied embedding is copied without decoding; a NaN in it is refused all the same."""
    import shutil

    from conftest import assert_one_line_error

    src = tmp_path / "src"
    shutil.copytree(tiny("dense-gqa-tied"), src)
    shard = next(s for s in sorted(src.glob("model-*.safetensors")) if "model.embed_tokens.weight" in load_file(s))
    state = load_file(shard)
    state["model.embed_tokens.weight"][5, 3] = float("nan")
    from safetensors.torch import save_file

    save_file(state, shard)
    result = cli("convert", src, "--to", "llama", "-o", tmp_path / "out")
    assert_one_line_error(result, "model.embed_tokens.weight", "NaN or infinite values", code=1)
    assert not (tmp_path / "out").exists()
