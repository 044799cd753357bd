"""`minicpm convert --to gguf`: llama.cpp itself (llama-cpp-python) runs the files we write.

Logits come from llama.cpp with an f32 KV cache (runtime.load.load_gguf) and are compared with the
independent reference forward (tests/reference.py, MiniCPM3's MLA included).
"""
from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, leftovers, shared_path
from reference import load_minicpm, minicpm_logits

IDS = [1] + [int(i) for i in torch.randint(3, 2000, (63,), generator=torch.Generator().manual_seed(7))]
MIXED = "<用户>Tell me about 北京 in 2 words.  Ok\n<AI>北京是中国的首都。 Thanks!  \n\n  tab\there 12345 naïve café"
CHATML = "<|im_start|>user\n你好, who are you?<|im_end|>\n<|im_start|>assistant\n"
# user-defined sentencepiece pieces of the real MiniCPM vocabularies (sentencepiece never splits them)
SP_SYMBOLS = "a <table> b <SEP> c\n\td <img>x</img>"
FAMILIES = ["dense-gqa-tied", "dense-mha-untied", "minicpm4", "moe", "minicpm3"]


def convert(cli, src, out, *args):
    result = cli("convert", src, "--to", "gguf", "-o", out, *args)
    assert result.code == 0, result
    return out


def gguf_model(path, n_ctx=128):
    from runtime.load import load_gguf

    return load_gguf(path, n_ctx=n_ctx, threads=2)


def gguf_logits(path, ids=IDS, n_ctx=128) -> torch.Tensor:
    model = gguf_model(path, n_ctx)
    try:
        return model.logits(ids)
    finally:
        model.model.close()


def reference_logits(src, family, ids=IDS) -> torch.Tensor:
    return minicpm_logits(*load_minicpm(src), ids)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


def metadata(path) -> dict:
    from converters.gguf_read import gguf_metadata

    return gguf_metadata(path)


def tensor_types(path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


# --- f32: llama.cpp computes what MiniCPM computes --------------------------------------------------
# MiniCPM3 has no folded form (its refusal is tested in test_fold_refuses_minicpm3)
@pytest.mark.parametrize("family,fold", [(f, fold) for fold in (False, True) for f in FAMILIES
                                         if not (fold and f == "minicpm3")])
def test_f32_logits_match_reference(family, fold, tiny, cli, tmp_path):
    src = tiny(family)
    out = convert(cli, src, tmp_path / "m.gguf", "--outtype", "f32", *(["--fold"] if fold else []))
    reference = reference_logits(src, family)
    logits = gguf_logits(out)
    err = (logits - reference).abs().max().item()
    assert err <= 1e-4 * reference.abs().max().item(), err
    assert agreement(logits, reference) == 1.0

    meta = metadata(out)
    config = json.loads((src / "config.json").read_text())
    arch = "llama" if fold else ("minicpm3" if family == "minicpm3" else "minicpm")
    assert meta["general.architecture"] == arch
    assert meta["general.file_type"] == 0 and meta["general.quantization_version"] == 2
    assert meta["general.name"] == src.name
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "attention.layer_norm_rms_epsilon",
                "rope.freq_base", "rope.dimension_count"):
        assert f"{arch}.{key}" in meta, key
    assert meta[f"{arch}.block_count"] == config["num_hidden_layers"]
    if arch == "minicpm":
        L, H = config["num_hidden_layers"], config["hidden_size"]
        assert meta["minicpm.embedding_scale"] == pytest.approx(config["scale_emb"])
        assert meta["minicpm.residual_scale"] == pytest.approx(config["scale_depth"] / math.sqrt(L))
        assert meta["minicpm.logit_scale"] == pytest.approx(H / config["dim_model_base"])
    else:
        assert not any(k.endswith(("embedding_scale", "residual_scale", "logit_scale")) for k in meta)
    if arch == "minicpm3":
        assert meta["minicpm3.attention.q_lora_rank"] == config["q_lora_rank"]
        assert meta["minicpm3.attention.kv_lora_rank"] == config["kv_lora_rank"]
        assert meta["minicpm3.attention.key_length"] == config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
        assert meta["minicpm3.attention.value_length"] == config["v_head_dim"]
    if family == "moe":
        assert meta[f"{arch}.expert_count"] == config["num_experts"]
        assert meta[f"{arch}.expert_used_count"] == config["num_experts_per_tok"]
        types = tensor_types(out)
        assert {"blk.0.ffn_gate_exps.weight", "blk.0.ffn_up_exps.weight", "blk.0.ffn_down_exps.weight",
                "blk.0.ffn_gate_inp.weight"} <= set(types)
    tokens = meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.model"] == "llama" and len(tokens) == config["vocab_size"]
    assert len(meta["tokenizer.ggml.scores"]) == len(meta["tokenizer.ggml.token_type"]) == len(tokens)
    assert meta["tokenizer.ggml.add_space_prefix"] is False  # MiniCPM's sentencepiece adds no dummy prefix
    assert meta["tokenizer.ggml.bos_token_id"] == 1 and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.eos_token_id"] == 2
    template = json.loads((src / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["tokenizer.chat_template"] == template
    if family in ("minicpm4", "minicpm3"):  # ChatML: <|im_end|> is where a turn ends
        assert tokens[meta["tokenizer.ggml.eot_token_id"]] == "<|im_end|>"
        assert meta["tokenizer.ggml.token_type"][tokens.index("<|im_start|>")] == 3  # control


def test_longrope_factors_are_carried(minicpm4_long, cli, tmp_path):
    """max_position_embeddings > original: long_factor and sqrt(1 + ln s / ln L0) at every context size."""
    src = minicpm4_long
    reference = minicpm_logits(*load_minicpm(src), IDS)
    attn = math.sqrt(1 + math.log(4096 / 1024) / math.log(1024))
    for fold in (False, True):
        out = convert(cli, src, tmp_path / f"m-{fold}.gguf", "--outtype", "f32", *(["--fold"] if fold else []))
        meta, types = metadata(out), tensor_types(out)
        arch = "llama" if fold else "minicpm"
        assert meta[f"{arch}.rope.scaling.attn_factor"] == pytest.approx(attn)
        if fold:  # llama.cpp's llama graph reads rope_freqs
            assert "rope_freqs.weight" in types and not any("rope_factors" in n for n in types)
        else:
            assert meta["minicpm.rope.scaling.type"] == "longrope"
            assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= set(types)
        for n_ctx in (128, 2048):  # below and above original_max_position_embeddings
            logits = gguf_logits(out, n_ctx=n_ctx)
            assert (logits - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


def test_api_returns_result_and_accepts_llama_folder(tiny, tmp_path):
    """convert_to_gguf(...) -> GGUFResult; a `--to llama` folder converts as plain llama."""
    from converters.gguf_export import convert_to_gguf
    from converters.to_llama import convert_to_llama

    src = tiny("moe")
    folder = tmp_path / "mixtral"
    convert_to_llama(src, folder, "f32")
    seen = []
    result = convert_to_gguf(folder, tmp_path / "m.gguf", outtype="f32", on_tensor=lambda n, b: seen.append(b))
    assert (result.architecture, result.source_family, result.outtype) == ("llama", "mixtral", "f32")
    assert result.files == ["m.gguf"] and result.bytes_written == (tmp_path / "m.gguf").stat().st_size
    assert result.tensors == len(seen) == len(tensor_types(tmp_path / "m.gguf"))
    assert sum(seen) < result.bytes_written < sum(seen) + 1_000_000  # tensor data plus header and vocab
    reference = minicpm_logits(*load_minicpm(src), IDS)
    logits = gguf_logits(tmp_path / "m.gguf")
    assert (logits - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


# --- quantized files --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_f16_and_q8_0_agree_with_reference(family, tiny, cli, tmp_path):
    src = tiny(family)
    reference = reference_logits(src, family)
    for outtype in ("f16", "q8_0"):
        out = convert(cli, src, tmp_path / f"{outtype}.gguf", "--outtype", outtype)
        assert metadata(out)["general.file_type"] == {"f16": 1, "q8_0": 7}[outtype]
        assert agreement(gguf_logits(out), reference) >= 0.95, outtype
        types = tensor_types(out)
        for name, kind in types.items():
            one_d = "norm" in name or "rope_factors" in name or "ffn_gate_inp" in name
            assert kind == ("F32" if one_d else outtype.upper()), (name, kind)


@pytest.mark.slow
def test_low_bit_files_are_small_and_still_agree(tiny, cli, tmp_path):
    """q4_0 (our numpy quantizer) and q4_k_m (llama.cpp's) on a model trained on real text."""
    import pyarrow.parquet as pq

    src = tiny("dense-gqa-tied", trained=True)
    rows = pq.read_table(shared_path("data", "wikitext-2-raw-v1", "test-00000-of-00001.parquet")).column("text")
    text = "".join(rows.to_pylist()[:40])
    base = convert(cli, src, tmp_path / "f32.gguf", "--outtype", "f32")
    model = gguf_model(base)
    ids = model.encode(text)[:128]
    reference = model.logits(ids)
    model.model.close()
    f16 = convert(cli, src, tmp_path / "f16.gguf", "--outtype", "f16").stat().st_size
    for outtype in ("q4_0", "q4_k_m"):
        out = convert(cli, src, tmp_path / f"{outtype}.gguf", "--outtype", outtype)
        assert out.stat().st_size <= 0.35 * f16, (outtype, out.stat().st_size / f16)
        assert agreement(gguf_logits(out, ids, n_ctx=256), reference) >= 0.8, outtype
        assert metadata(out)["general.file_type"] == {"q4_0": 2, "q4_k_m": 15}[outtype]
        types = tensor_types(out)
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert ("Q4_K" if outtype == "q4_k_m" else "Q4_0") in types.values()
        assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_q8_0_is_bit_identical_to_gguf_reference_quantizer():
    from gguf import GGMLQuantizationType, quants

    from converters.gguf_export import q8_0

    x = np.random.default_rng(0).standard_normal((96, 256)).astype(np.float32)
    x[0, :32] = 0.0  # a zero block
    x[1, :32] = np.arange(32) - 15.5  # halves to round away from zero
    x[2, :32] = np.linspace(-127, 127, 32)
    x[3] *= 1e-20
    expected = quants.quantize(x, GGMLQuantizationType.Q8_0)
    assert np.array_equal(q8_0(torch.from_numpy(x)), expected)
    assert np.array_equal(q8_0(torch.from_numpy(x).to(torch.bfloat16)),
                          quants.quantize(torch.from_numpy(x).to(torch.bfloat16).float().numpy(),
                                          GGMLQuantizationType.Q8_0))


def _imatrix_entries(path) -> dict[str, np.ndarray]:
    """Positive per-column importances for every quantizable matrix of a GGUF (experts concatenated)."""
    from gguf import GGUFReader

    rng = np.random.default_rng(1)
    out = {}
    for t in GGUFReader(str(path)).tensors:
        if len(t.shape) >= 2:
            n = int(t.shape[0]) * (int(t.shape[2]) if len(t.shape) == 3 else 1)
            out[t.name] = (rng.random(n) ** 6 * 100 + 1e-3).astype(np.float32)
    return out


def test_imatrix_gguf_and_legacy_dat_steer_k_quants(tiny, cli, tmp_path):
    from gguf import GGUFWriter

    src = tiny("moe")
    entries = _imatrix_entries(convert(cli, src, tmp_path / "f32.gguf", "--outtype", "f32"))
    writer = GGUFWriter(str(tmp_path / "imatrix.gguf"), arch="imatrix")
    writer.add_array("imatrix.datasets", ["synthetic"])
    writer.add_uint32("imatrix.chunk_count", 4)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name, values in entries.items():
        writer.add_tensor(name + ".in_sum2", (values * 4).reshape(1, -1))  # sums over 4 calls (exact in f32)
        writer.add_tensor(name + ".counts", np.array([[4.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dat = struct.pack("<i", len(entries))
    for name, values in entries.items():
        dat += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 2, values.size)
        dat += (values * 2).astype("<f4").tobytes()  # legacy: sums over 2 calls
    (tmp_path / "imatrix.dat").write_bytes(dat)

    plain = convert(cli, src, tmp_path / "plain.gguf", "--outtype", "q4_k_m").read_bytes()
    with_gguf = convert(cli, src, tmp_path / "a.gguf", "--outtype", "q4_k_m", "--imatrix", tmp_path / "imatrix.gguf")
    with_dat = convert(cli, src, tmp_path / "b.gguf", "--outtype", "q4_k_m", "--imatrix", tmp_path / "imatrix.dat")
    assert with_gguf.read_bytes() == with_dat.read_bytes() != plain
    assert agreement(gguf_logits(with_gguf), reference_logits(src, "moe")) >= 0.8

    # an importance matrix for another model: one line, nothing left behind
    for name, needle in (("blk.0.attn_q.weight", "7 values for blk.0.attn_q.weight, which has 256"),
                         ("blk.9.attn_q.weight", "names none of this model's tensors")):
        bad = tmp_path / "bad.dat"
        bad.write_bytes(struct.pack("<i", 1) + struct.pack("<i", len(name)) + name.encode()
                        + struct.pack("<ii", 1, 7) + np.ones(7, "<f4").tobytes())
        result = cli("convert", src, "--to", "gguf", "-o", tmp_path / "c.gguf", "--outtype", "q4_k_m",
                     "--imatrix", bad)
        assert_one_line_error(result, needle, code=1)
        assert not leftovers(tmp_path, "c.gguf")


def test_llama_cpp_quantizer_failure_is_one_error_and_its_log_is_captured(tmp_path, capfd):
    from converters.errors import UserError
    from converters.gguf_kquant import quantize_gguf

    src = tmp_path / "not.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(UserError, match="llama.cpp could not quantize to q4_k_m"):
        quantize_gguf(src, tmp_path / "out.gguf", "q4_k_m")
    assert "llama_model_quantize" not in capfd.readouterr().err  # llama.cpp's log did not leak


# --- tokenizers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,tokenizer", [
    ("dense-gqa-tied", None), ("dense-gqa-tied", "MiniCPM-2B-sft-bf16"),
    ("minicpm4", "MiniCPM4-8B"), ("minicpm3", "MiniCPM3-4B")])
def test_llama_cpp_tokenizes_like_hf_and_sentencepiece(family, tokenizer, tiny, cli, tmp_path):
    import sentencepiece as spm

    from converters.tokenizer import load_tokenizer

    kw = {"tokenizer": shared_path("minicpm-hf", tokenizer)} if tokenizer else {}
    src = tiny(family, **kw)
    out = convert(cli, src, tmp_path / "m.gguf", "--outtype", "q8_0")
    hf = load_tokenizer(src)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    model = gguf_model(out)
    try:
        ids = model.encode(MIXED)
        assert ids == hf.encode(MIXED) == [1] + sp.encode(MIXED)
        assert model.decode(ids[1:]) == MIXED
        # sentencepiece's user-defined pieces (`...`, `<table>`) stay whole on every backend
        assert model.encode(SP_SYMBOLS) == hf.encode(SP_SYMBOLS) == [1] + sp.encode(SP_SYMBOLS)
        if family != "dense-gqa-tied":  # ChatML markers are single control tokens
            assert model.encode(CHATML) == hf.encode(CHATML)
            assert model.decode(model.encode(CHATML)[1:]) == CHATML
        assert len(model.tokenizer) == len(hf) == json.loads((src / "config.json").read_text())["vocab_size"]
    finally:
        model.model.close()


def test_vocab_is_padded_to_the_embedding_rows(tiny, cli, tmp_path):
    """A tokenizer smaller than the embedding (here: MiniCPM4's ChatML tokens removed) is padded."""
    src = tmp_path / "short-vocab"
    shutil.copytree(tiny("minicpm4"), src)
    (src / "added_tokens.json").unlink()
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    del tok_config["added_tokens_decoder"], tok_config["additional_special_tokens"]
    tok_config["eos_token"] = "</s>"
    (src / "tokenizer_config.json").write_text(json.dumps(tok_config))
    out = convert(cli, src, tmp_path / "m.gguf", "--outtype", "f32")
    meta = metadata(out)
    assert meta["tokenizer.ggml.tokens"][-2:] == ["[PAD2046]", "[PAD2047]"]
    assert meta["tokenizer.ggml.token_type"][-2:] == [5, 5]  # unused
    reference = minicpm_logits(*load_minicpm(src), IDS)
    assert (gguf_logits(out) - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe"])
def test_plain_llama_folder_with_byte_level_bpe(pre, tiny, cli, tmp_path):
    """A LlamaForCausalLM folder with only a tokenizer.json (as MiniCPM5-1B ships) -> arch llama, gpt2 vocab."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from converters.tiny import stdlib_text
    from converters.to_llama import convert_to_llama
    from converters.tokenizer import load_tokenizer

    src = tiny("dense-gqa-tied")
    folder = tmp_path / "llama"
    convert_to_llama(src, folder, "f32")
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre == "gpt-2")
    tok.pre_tokenizer = byte_level if pre == "gpt-2" else pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([stdlib_text()[:200_000]], trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<|bos|>", "<|eot|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))

    out = convert(cli, folder, tmp_path / "m.gguf", "--outtype", "f32")
    meta = metadata(out)
    assert meta["general.architecture"] == "llama"
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", pre)
    assert len(meta["tokenizer.ggml.tokens"]) == 2048 and meta["tokenizer.ggml.merges"]
    text = "Hello world!  It's 2024: naïve café 北京 12345\n\n  x\ty <|eot|> don't"
    model = gguf_model(out)
    try:
        assert model.encode(text) == load_tokenizer(folder).encode(text)
        assert model.decode(model.encode(text)) == text
        reference = minicpm_logits(*load_minicpm(src), IDS)
        assert (model.logits(IDS) - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()
    finally:
        model.model.close()


# --- bad input --------------------------------------------------------------------------------------
def test_unsupported_outtype(tiny, cli, tmp_path):
    result = cli("convert", tiny("dense-gqa-tied"), "--to", "gguf", "-o", tmp_path / "m.gguf", "--outtype", "q3_k_l")
    assert_one_line_error(result, "--outtype q3_k_l", "q4_k_m", "q8_0", code=2)
    assert not leftovers(tmp_path, "m.gguf")


def test_tokenizer_larger_than_embedding(tiny, cli, tmp_path):
    src = tmp_path / "mismatch"
    shutil.copytree(tiny("dense-gqa-tied"), src)
    shutil.copyfile(shared_path("minicpm-hf", "MiniCPM-2B-sft-bf16", "tokenizer.model"), src / "tokenizer.model")
    result = cli("convert", src, "--to", "gguf", "-o", tmp_path / "m.gguf")
    assert_one_line_error(result, "122753 tokens", "2048 rows", code=1)
    assert not leftovers(tmp_path, "m.gguf")


def test_fold_refuses_minicpm3(tiny, cli, tmp_path):
    result = cli("convert", tiny("minicpm3"), "--to", "gguf", "-o", tmp_path / "m.gguf", "--fold")
    assert_one_line_error(result, "multi-head latent attention", "without --fold", code=2)
    assert not leftovers(tmp_path, "m.gguf")


@pytest.mark.parametrize("args,needles,code", [
    (["--outtype", "f16", "--imatrix", "IMATRIX"], ["--imatrix only applies to k-quants"], 2),
    (["--outtype", "q4_k_m", "--imatrix", "MISSING"], ["no such file"], 2),
    (["--outtype", "q4_k_m", "--imatrix", "CONFIG"], ["not an importance matrix"], 1),
])
def test_bad_imatrix(args, needles, code, tiny, cli, tmp_path):
    src = tiny("dense-gqa-tied")
    (tmp_path / "imatrix.dat").write_bytes(b"\0" * 16)
    paths = {"IMATRIX": tmp_path / "imatrix.dat", "MISSING": tmp_path / "missing.dat", "CONFIG": src / "config.json"}
    result = cli("convert", src, "--to", "gguf", "-o", tmp_path / "m.gguf", *[str(paths.get(a, a)) for a in args])
    assert_one_line_error(result, *needles, code=code)
    assert not leftovers(tmp_path, "m.gguf")


def test_existing_output_needs_force(tiny, cli, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    src = tiny("dense-gqa-tied")
    assert_one_line_error(cli("convert", src, "--to", "gguf", "-o", out), "already exists", code=2)
    assert out.read_bytes() == b"keep me"
    r = cli("convert", src, "--to", "gguf", "-o", out, "--force")  # not a GGUF: not ours to replace
    assert_one_line_error(r, "is not a GGUF file this command writes", code=2)
    assert out.read_bytes() == b"keep me"
    out.unlink()
    convert(cli, src, out, "--outtype", "f16")
    first = out.read_bytes()
    convert(cli, src, out, "--outtype", "q8_0", "--force")  # an earlier GGUF: replaced
    assert out.read_bytes()[:4] == b"GGUF" and out.read_bytes() != first



@pytest.mark.parametrize("family,fold", [("dense-gqa-tied", True), ("moe", False), ("minicpm3", False)])
def test_tensors_are_encoded_in_bounded_row_blocks_with_the_same_bytes(family, fold, tiny, monkeypatch, tmp_path):
    """With a 4 KB block limit, every tensor read straight from the checkpoint (all but q/k, whose
    rows are interleaved) is encoded in row blocks of at most 4 KB of stored data, llama.cpp's
    quantizer gets the same slab limit, and every outtype's file is byte for byte the one written
    with blocks larger than any tensor."""
    from converters import gguf_export, gguf_kquant

    src = tiny(family)
    limit, whole = 4096, 1 << 40
    pieces, slabs = [], []
    encoded, quantize = gguf_export._encoded, gguf_kquant.quantize_gguf

    def recording_encoded(t, qtype, make):
        value = make()
        pieces.append((t, tuple(value.shape)))
        return encoded(t, qtype, lambda: value)

    def recording_quantize(*args, max_buf_bytes=0, **kw):
        slabs.append(max_buf_bytes)
        return quantize(*args, max_buf_bytes=max_buf_bytes, **kw)

    monkeypatch.setattr(gguf_export, "_encoded", recording_encoded)
    monkeypatch.setattr(gguf_export, "quantize_gguf", recording_quantize)
    for outtype in ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m"):
        files = {}
        for chunk in (whole, limit):
            pieces.clear()
            monkeypatch.setattr(gguf_export, "CHUNK_BYTES", chunk)
            out = tmp_path / f"{outtype}-{chunk}.gguf"
            gguf_export.convert_to_gguf(src, out, outtype=outtype, fold=fold)
            files[chunk] = out.read_bytes()
        assert files[limit] == files[whole], outtype
        streamed = 0
        for t, shape in pieces:
            part = t.parts[0]
            if not hasattr(part, "blocks") or len(shape) < 2:
                continue
            row_bytes = shape[-1] * part.ckpt.info(part.name).dtype.itemsize
            assert shape[0] * row_bytes <= max(limit, row_bytes), (outtype, t.name, shape)
            streamed += 1
        embedding_blocks = [shape for t, shape in pieces if t.name == "token_embd.weight"]
        assert len(embedding_blocks) > 1 and streamed > len(pieces) // 2, (outtype, embedding_blocks, streamed)
    assert slabs == [whole, limit]  # q4_k_m
