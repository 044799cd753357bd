"""`minicpm eval-ppl`: perplexity against an independent forward, every backend on the same ids, errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sentencepiece as spm
import torch

from conftest import assert_one_line_error, shared_path
from reference import load_minicpm, minicpm_logits

WIKI = shared_path("data", "wikitext-2-raw-v1", "test-00000-of-00001.parquet")
REQUIRED = {"model", "backend", "ppl", "stderr", "tokens", "tokens_per_s", "peak_mem_bytes", "size_bytes"}


@pytest.fixture(scope="module")
def trained(tiny):
    return tiny("dense-gqa-tied", trained=True)


def wiki_text() -> str:
    from calib_data import load_wikitext2_text

    return load_wikitext2_text("test", WIKI)


def sp_ids(folder, text: str) -> list[int]:
    """Ids straight from the sentencepiece model (the tokenizer's ground truth), no BOS."""
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)


def reference_nll(folder, ids: list[int], ctx: int, stride: int) -> np.ndarray:
    """Chunks of `stride` targets, each scored after up to ctx-1 preceding text tokens and BOS."""
    config, weights = load_minicpm(folder)
    out = []
    for first in range(0, len(ids), stride):
        stop = min(first + stride, len(ids))
        seq = [1] + ids[max(0, stop - ctx): stop]
        logp = minicpm_logits(config, weights, seq)[:-1].double().log_softmax(-1)
        nll = -logp.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
        out.append(nll[-(stop - first):].numpy())
    return np.concatenate(out)


def run_json(cli, tmp_path, *args, name="out.json"):
    out = tmp_path / name
    result = cli("eval-ppl", *args, "--device", "cpu", "--json", out)
    assert result.code == 0, result
    return json.loads(out.read_text()), result


# --- windows ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("n, ctx, stride", [(1000, 128, None), (1000, 128, 32), (129, 128, None), (500, 7, 1)])
def test_windows_score_every_token_once_within_ctx(n, ctx, stride, bos):
    from runtime.perplexity import windows

    scored = []
    for w in windows(n, ctx, stride, bos):
        inputs = (1 if bos else 0) + (w.stop - 1 - w.begin)
        assert inputs <= ctx
        assert w.begin <= w.first - (0 if bos else 1)  # every target's predecessor is in the input
        if w.stop > ctx:  # past the first window, each target sees at least ctx - stride tokens
            assert w.first - w.begin + (1 if bos else 0) >= ctx - (stride or ctx)
        scored += range(w.first, w.stop)
    assert scored == list(range(0 if bos else 1, n))


# --- numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride, batch", [(None, 1), (64, 3)])
@pytest.mark.slow
def test_ppl_and_stderr_match_an_independent_reference(trained, cli, tmp_path, stride, batch):
    ctx, n = 128, 512
    args = [trained, "--dataset", WIKI, "--ctx", ctx, "--max-tokens", n, "--batch-size", batch]
    data, _ = run_json(cli, tmp_path, *args, *(["--stride", stride] if stride else []))
    (row,) = data["models"]
    nll = reference_nll(trained, sp_ids(trained, wiki_text()[:20000])[:n], ctx, stride or ctx)
    ppl = math.exp(nll.mean())
    assert row["tokens"] == n
    assert row["ppl"] == pytest.approx(ppl, rel=1e-4)
    assert row["stderr"] == pytest.approx(ppl * nll.std() / math.sqrt(n), rel=1e-3)
    assert 0 < row["stderr"] < row["ppl"] < 400  # trained: far better than chance (2048)


@pytest.mark.slow
def test_stderr_is_positive_and_shrinks_with_more_tokens(trained):
    from runtime.perplexity import evaluate

    text = wiki_text()
    few, many = (evaluate([trained], text, ctx=128, max_tokens=m, device="cpu").results[0] for m in (256, 4096))
    assert (few.tokens, many.tokens) == (256, 4096)
    assert 0 < many.stderr < few.stderr


@pytest.mark.slow
def test_folded_llama_folder_scores_like_the_minicpm_folder(trained, cli, tmp_path):
    from converters.to_llama import convert_to_llama
    from runtime.perplexity import size_on_disk

    llama = tmp_path / "llama"
    convert_to_llama(trained, llama, "f32")
    plot = tmp_path / "ppl.png"
    data, result = run_json(cli, tmp_path, trained, llama, trained, "--dataset", WIKI, "--ctx", 256,
                            "--max-tokens", 1024, "--plot", plot)
    minicpm, folded, again = data["models"]
    assert all(REQUIRED <= set(m) for m in data["models"])
    assert [m["backend"] for m in data["models"]] == ["hf"] * 3
    assert minicpm["tokens"] == folded["tokens"] == 1024 and minicpm["ids_group"] == folded["ids_group"]
    assert folded["ppl"] == pytest.approx(minicpm["ppl"], rel=1e-4)
    assert abs(folded["delta_pct"]) < 1e-2
    assert folded["size_bytes"] == size_on_disk(llama) > minicpm["size_bytes"] == size_on_disk(trained)
    f32_weights = sum(f.stat().st_size for f in llama.glob("*.safetensors"))
    for m in data["models"]:  # each model's own peak, even after another model ran and was freed
        assert m["peak_mem_bytes"] >= f32_weights, m
        assert m["tokens_per_s"] > 0
    assert again["ppl"] == minicpm["ppl"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "ppl.svg"  # the same plot as SVG keeps its legend as text
    assert cli("eval-ppl", trained, llama, "--dataset", WIKI, "--ctx", 256, "--max-tokens", 256, "--plot", svg).code == 0
    legend = svg.read_text()
    assert f"{trained.name} (f32)" in legend and "llama (f32)" in legend and "size on disk (MiB)" in legend
    assert "llama" in result.out and "±" in result.out


@pytest.mark.slow
def test_first_model_is_not_charged_for_the_libraries_first_use(trained, tmp_path):
    """A fresh process (as a user runs it): torch's and transformers' one-time set-up on the first forward
    (~20 MB) must not be counted as the first model's memory. Measured (MiB, first - again): 16.8-22 before
    warming, 2-9 after, of ~30 for this model."""
    import subprocess
    import sys

    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "-m", "minicpm_cli", "eval-ppl", trained, trained, "--dataset", WIKI,
                          "--ctx", "256", "--max-tokens", "1024", "--device", "cpu", "--json", out],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first, again = json.loads(out.read_text())["models"]
    assert first["peak_mem_bytes"] - again["peak_mem_bytes"] <= 12 * 2**20, (first, again)


@pytest.mark.slow
def test_gguf_f32_scores_the_same_ids_as_hf(trained, cli, tmp_path):
    from converters.gguf_export import convert_to_gguf

    gguf = tmp_path / "tiny-f32.gguf"
    convert_to_gguf(trained, gguf, outtype="f32")
    data, result = run_json(cli, tmp_path, trained, gguf, "--dataset", WIKI, "--ctx", 256, "--max-tokens", 1024,
                            "--dtype", "bf16")
    hf, gg = data["models"]
    assert gg["backend"] == "gguf" and "warning" not in result.err
    assert gg["ids_group"] == hf["ids_group"] and gg["tokens"] == hf["tokens"] == 1024
    assert gg["ppl"] == pytest.approx(hf["ppl"], rel=5e-3)  # HF computing in bf16, GGUF in f32
    assert gg["ppl"] != hf["ppl"]
    assert gg["delta_pct"] == pytest.approx(100 * (gg["ppl"] / hf["ppl"] - 1), rel=1e-6)
    assert 0 < gg["delta_pct_stderr"] < 100 * hf["stderr"] / hf["ppl"] / 10  # paired: far tighter

    data, _ = run_json(cli, tmp_path, trained, "--compare", gguf, "--dataset", WIKI, "--ctx", 256,
                       "--max-tokens", 512, name="compare.json")
    c = data["compare"]
    assert c["tokens"] == 512 and c["kl_mean"] < 1e-5 and c["top1_agreement"] > 0.99


@pytest.mark.slow
def test_compare_with_itself_is_exact(trained, cli, tmp_path):
    data, result = run_json(cli, tmp_path, trained, "--compare", trained, "--dataset", WIKI, "--ctx", 128,
                            "--max-tokens", 512)
    c = data["compare"]
    assert (c["kl_mean"], c["kl_p99"], c["max_abs_logit_diff"]) == (0.0, 0.0, 0.0)
    assert c["top1_agreement"] == 1.0 and c["tokens"] == 512 and c["ppl_a"] == c["ppl_b"]
    assert "100.00%" in result.out


@pytest.mark.slow
def test_models_with_other_tokenizers_get_their_own_ids(trained, tiny, cli, tmp_path):
    other = tiny("dense-gqa-tied")  # its tokenizer was trained on other text
    data, result = run_json(cli, tmp_path, trained, other, "--dataset", WIKI, "--ctx", 128, "--max-tokens", 256)
    assert [m["ids_group"] for m in data["models"]] == [0, 1]
    assert data["models"][1]["delta_pct"] is None
    assert "tokenize the text differently" in result.err
    compared = cli("eval-ppl", trained, "--compare", other, "--dataset", WIKI, "--ctx", 128, "--max-tokens", 256,
                   "--device", "cpu")
    assert_one_line_error(compared, "tokenize the text differently", "first difference at token")


def test_minicpm3_and_moe_folders(tiny, cli, tmp_path):
    data, _ = run_json(cli, tmp_path, tiny("minicpm3"), tiny("moe"), "--dataset", WIKI, "--ctx", 64,
                       "--max-tokens", 128)
    for m in data["models"]:  # untrained: near chance over a 2048-token vocabulary
        assert math.isfinite(m["ppl"]) and 100 < m["ppl"] < 20000 and m["tokens"] == 128


def wait_for_samples(mem, n: int) -> None:
    """Wait until PeakMemory's sampling thread has taken n more samples (the timeout only ends a hang)."""
    import time

    target, deadline = len(mem._samples) + n, time.monotonic() + 600
    while len(mem._samples) < target:
        assert time.monotonic() < deadline, "the memory sampler took no sample in 600 s"
        time.sleep(0.001)


@pytest.mark.parametrize("exact", [True, False])
def test_peak_memory_is_the_growth_during_the_block(exact, monkeypatch):
    from runtime import perplexity

    if not exact:  # where /proc/self/clear_refs is refused, RSS is sampled instead
        monkeypatch.setattr(perplexity, "_reset_peak_rss", lambda: False)
    mib = 2**20
    for size in (300, 100):  # the second, smaller block must not inherit the first one's peak
        with perplexity.PeakMemory() as mem:
            block = torch.ones(size * mib // 4)  # float32, touched
            if not exact:
                wait_for_samples(mem, 2)  # the second began after the block was allocated
            del block
        assert size * mib * 0.9 <= mem.rss_growth <= size * mib * 1.3, (size, mem.rss_growth / mib)


# --- bad input ---------------------------------------------------------------------------------------
def test_missing_dataset_file(tiny, cli, tmp_path):
    result = cli("eval-ppl", tiny("dense-gqa-tied"), "--dataset", tmp_path / "nope.parquet")
    assert_one_line_error(result, "--dataset", "no such file", code=2)


def test_wikitext2_offline_names_the_local_options(tiny, cli, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = cli("eval-ppl", tiny("dense-gqa-tied"), "--dataset", "wikitext2")
    assert_one_line_error(result, "wikitext2", "local copy")


def test_dataset_shorter_than_one_window_says_how_many_tokens(tiny, cli, tmp_path):
    model = tiny("dense-gqa-tied")
    short = tmp_path / "short.txt"
    short.write_text("The quick brown fox jumps over the lazy dog.\n")
    n = len(sp_ids(model, short.read_text()))
    result = cli("eval-ppl", model, "--dataset", short, "--ctx", 64)
    assert_one_line_error(result, f"has {n} tokens", "--ctx 64", code=2)
    result = cli("eval-ppl", model, "--dataset", WIKI, "--ctx", 64, "--max-tokens", 10)
    assert_one_line_error(result, "--max-tokens 10 leaves 10 tokens", code=2)


def test_ctx_beyond_the_models_maximum_position(tiny, cli):
    result = cli("eval-ppl", tiny("dense-gqa-tied"), "--dataset", WIKI, "--ctx", 4096)
    assert_one_line_error(result, "--ctx 4096", "maximum position (1024)", code=2)


def test_a_folder_or_file_that_is_not_a_model(tiny, cli, tmp_path):
    result = cli("eval-ppl", tiny("dense-gqa-tied"), tmp_path, "--dataset", WIKI, "--ctx", 64)
    assert_one_line_error(result, str(tmp_path), "not a model folder", code=2)
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\0" * 64)
    assert_one_line_error(cli("eval-ppl", junk, "--dataset", WIKI), "not a model", code=2)
    # checked before the dataset: offline, the default wikitext2 would otherwise be the error shown
    assert_one_line_error(cli("eval-ppl", junk), "weights.bin", "not a model", code=2)
    assert_one_line_error(cli("eval-ppl", tiny("dense-gqa-tied"), "--compare", tmp_path / "nope.gguf"),
                          "nope.gguf", "no such file", code=2)


@pytest.mark.parametrize("args, needle", [
    (["--stride", 200, "--ctx", 128], "--stride 200"),
    (["--plot", "out.jpg"], ".png"),
    (["--compare", "B"], "exactly one MODEL"),
    (["--json", "no/such/folder/out.json"], "does not exist"),
])
def test_bad_options(tiny, cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    model = tiny("dense-gqa-tied")
    models = [model, model] if "--compare" in args else [model]
    assert_one_line_error(cli("eval-ppl", *models, "--dataset", WIKI, *args), needle, code=2)
