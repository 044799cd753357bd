"""`minicpm inspect`: the facts it reports are the ones in the files."""
from __future__ import annotations

import json

from safetensors import safe_open


def numel(folder):
    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
    return total


def test_inspect_minicpm_folder(tiny, cli, tmp_path):
    src = tiny("minicpm4")
    r = cli("inspect", src, "--json", tmp_path / "i.json")
    assert r.code == 0, r
    info = json.loads((tmp_path / "i.json").read_text())
    assert info["family"] == "minicpm" and info["architecture"] == "MiniCPMForCausalLM"
    assert info["parameters"] == numel(src)
    assert info["mup"] == {"scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 64}
    assert info["dtypes"] == ["bfloat16"] and info["quantization"] == "none"
    assert info["rope"].startswith("longrope") and info["context_length"] == 1024
    assert info["tokenizer"] == "sentencepiece" and info["vocab_size"] == 2048
    assert info["chat_template"] is True
    assert info["size_bytes"] == sum(p.stat().st_size for p in src.iterdir())
    assert "MiniCPMForCausalLM" in r.out and "scale_emb=12" in r.out


def test_inspect_minicpm3_and_converted_llama(tiny, cli, tmp_path):
    r = cli("inspect", tiny("minicpm3"), "--json", tmp_path / "m3.json")
    assert r.code == 0, r
    assert json.loads((tmp_path / "m3.json").read_text())["family"] == "minicpm3"
    out = tmp_path / "llama"
    assert cli("convert", tiny("dense-gqa-tied"), "--to", "llama", "-o", out).code == 0
    assert cli("inspect", out, "--json", tmp_path / "l.json").code == 0
    info = json.loads((tmp_path / "l.json").read_text())
    assert info["family"] == "llama" and info["mup"] == {} and info["parameters"] == numel(out)
