"""`--lora ADAPTER`: adapters made by the real peft, merged by us, equal peft's own merge_and_unload.

transformers 5.17 has no native MiniCPM class (only MiniCPM3), and MiniCPM's own class is remote code.
peft's merge depends only on the module tree (names and layer types) and the weights, so the peft side
is built on `Skeleton`: MiniCPM's exact module tree (model.embed_tokens, model.layers.N.self_attn.q_proj …,
lm_head; nn.Linear / nn.Embedding as in modeling_minicpm.py, lm_head sharing the embedding's parameter
when tied) holding the checkpoint's weights. Adapters made on it carry the key names users' adapters
carry (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight …). peft merges them
(merge_and_unload) and the independent MiniCPM forward (tests/reference.py) scores the merged weights;
our converted outputs (Llama folder, GGUF) and runtime (eval-ppl, chat, quantize) must agree with that.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import assert_one_line_error, leftovers, shared_path
from reference import load_minicpm, minicpm_logits

IDS = [1] + [int(i) for i in torch.randint(3, 2000, (63,), generator=torch.Generator().manual_seed(11))]
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Norm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


class Skeleton(nn.Module):
    """MiniCPM's module tree with a checkpoint's float32 weights (no forward: peft only merges)."""

    def __init__(self, config: dict, weights: dict[str, torch.Tensor]):
        super().__init__()
        H, I, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
        nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
        d = H // nh
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(V, H)
        self.model.layers = nn.ModuleList()
        for _ in range(config["num_hidden_layers"]):
            layer = nn.Module()
            layer.self_attn = nn.Module()
            for name, (o, i) in {"q_proj": (nh * d, H), "k_proj": (nkv * d, H), "v_proj": (nkv * d, H),
                                 "o_proj": (H, nh * d)}.items():
                setattr(layer.self_attn, name, nn.Linear(i, o, bias=False))
            layer.mlp = nn.Module()
            for name, (o, i) in {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}.items():
                setattr(layer.mlp, name, nn.Linear(i, o, bias=False))
            layer.input_layernorm, layer.post_attention_layernorm = Norm(H), Norm(H)
            self.model.layers.append(layer)
        self.model.norm = Norm(H)
        self.lm_head = nn.Linear(H, V, bias=False)
        self.tied = "lm_head.weight" not in weights
        if self.tied:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.load_state_dict({k: v for k, v in weights.items()} | (
            {"lm_head.weight": weights["model.embed_tokens.weight"]} if self.tied else {}), strict=True)


def make_adapter(src, folder, seed=0, **lora):
    """A peft adapter on src's module names, with random (non-zero) A and B; returns (peft model, config)."""
    from peft import LoraConfig, get_peft_model

    lora = dict(lora)
    binary = lora.pop("_bin", False)
    config, weights = load_minicpm(src)
    torch.manual_seed(seed)
    model = get_peft_model(Skeleton(config, weights), LoraConfig(init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)  # keep the fine-tune a perturbation, as trained ones are
            elif "modules_to_save" in name:
                p.add_(0.02 * torch.randn_like(p))  # a trained copy differs from the base
    model.peft_config["default"].base_model_name_or_path = "/home/someone/stale/MiniCPM-2B-sft-bf16"
    model.save_pretrained(folder, safe_serialization=not binary)
    return model, config


def merged_reference(peft_model, config) -> torch.Tensor:
    """The reference forward on peft's merge_and_unload weights."""
    merged = peft_model.merge_and_unload()
    state = {k: v.detach().clone() for k, v in merged.state_dict().items()}
    tied = merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    if tied:
        state.pop("lm_head.weight")
    return minicpm_logits(config | {"tie_word_embeddings": tied}, state, IDS)


def hf_logits(folder) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].float()


def flat(table: str) -> str:
    """A rich table's text with borders and wrapping removed."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", table).split())


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> None:
    err = (a - b).abs().max().item()
    assert err <= rel * b.abs().max().item(), (err, b.abs().max().item())


@pytest.mark.parametrize("family, lora", [
    ("dense-mha-untied", dict(r=8, lora_alpha=16, target_modules=LINEARS, rank_pattern={"down_proj": 4},
                              alpha_pattern={r"layers\.1\.self_attn\.v_proj": 5}, modules_to_save=["lm_head"])),
    ("dense-gqa-tied", dict(r=4, lora_alpha=8, use_rslora=True, target_modules=LINEARS + ["embed_tokens"])),
    ("minicpm4", dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], _bin=True)),
    ("dense-mha-untied", dict(r=4, lora_alpha=8, target_modules=LINEARS, use_dora=True)),
    # a trained copy of the tied head: peft's merged model has its own lm_head, so ours is untied too
    ("dense-gqa-tied", dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"])),
])
def test_merged_conversion_equals_peft_merge_and_unload(family, lora, tiny, cli, tmp_path):
    src = tiny(family)
    peft_model, config = make_adapter(src, tmp_path / "adapter", **lora)
    assert (tmp_path / "adapter" / ("adapter_model.bin" if "_bin" in lora else "adapter_model.safetensors")).is_file()
    reference = merged_reference(peft_model, config)
    base = minicpm_logits(*load_minicpm(src), IDS)
    assert (reference - base).abs().max() > 0.05 * base.abs().max()  # the adapter changes the model
    r = cli("convert", src, "--lora", tmp_path / "adapter", "--to", "llama", "-o", tmp_path / "llama", "--dtype", "f32")
    assert r.code == 0, r
    assert "trained on /home/someone/stale/MiniCPM-2B-sft-bf16, not read" in flat(r.out)
    close(hf_logits(tmp_path / "llama"), reference)
    from test_convert_gguf import gguf_logits

    r = cli("convert", src, "--lora", tmp_path / "adapter", "--to", "gguf", "--outtype", "f32", "-o", tmp_path / "m.gguf")
    assert r.code == 0, r
    close(gguf_logits(tmp_path / "m.gguf", IDS), reference)


def test_two_adapters_apply_in_order_like_two_peft_merges(tiny, cli, tmp_path):
    from peft import LoraConfig, get_peft_model

    src = tiny("dense-mha-untied")
    first, config = make_adapter(src, tmp_path / "a1", seed=1, r=4, lora_alpha=8, target_modules=LINEARS,
                                 modules_to_save=["lm_head"])
    # the second adapter is trained on the first's merge, as a user stacking fine-tunes would
    base = first.merge_and_unload()
    torch.manual_seed(2)
    second = get_peft_model(base, LoraConfig(init_lora_weights=False, r=2, lora_alpha=2, use_rslora=True,
                                             target_modules=["o_proj", "lm_head"]))
    with torch.no_grad():
        for name, p in second.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    second.save_pretrained(tmp_path / "a2")
    reference = merged_reference(second, config)
    out = tmp_path / "llama"
    r = cli("convert", src, "--lora", tmp_path / "a1", "--lora", tmp_path / "a2", "--to", "llama", "-o", out,
            "--dtype", "f32")
    assert r.code == 0, r
    close(hf_logits(out), reference)
    r = cli("convert", src, "--lora", tmp_path / "a2", "--lora", tmp_path / "a1", "--to", "llama", "-o",
            tmp_path / "swapped", "--dtype", "f32")
    assert r.code == 0, r  # a1's saved lm_head now replaces a2's delta on it: a different model
    assert (hf_logits(tmp_path / "swapped") - reference).abs().max() > 1e-3 * reference.abs().max()


def test_eval_ppl_chat_and_quantize_merge_the_same_way(tiny, cli, tmp_path):
    src = tiny("dense-gqa-tied")
    make_adapter(src, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=LINEARS)
    merged = tmp_path / "merged"
    assert cli("convert", src, "--lora", tmp_path / "adapter", "--to", "llama", "-o", merged, "--dtype", "f32").code == 0
    data = shared_path("data", "wikitext-2-raw-v1")
    r = cli("eval-ppl", src, "--lora", tmp_path / "adapter", "--compare", merged, "--dataset", data, "--ctx", "64",
            "--max-tokens", "512", "--device", "cpu", "--json", tmp_path / "c.json")
    assert r.code == 0, r
    c = json.loads((tmp_path / "c.json").read_text())["compare"]
    assert c["a"].endswith("+adapter") and c["max_abs_logit_diff"] < 1e-3 and c["top1_agreement"] == 1.0
    r = cli("eval-ppl", src, "--compare", merged, "--dataset", data, "--ctx", "64", "--max-tokens", "512",
            "--device", "cpu", "--json", tmp_path / "base.json")
    assert json.loads((tmp_path / "base.json").read_text())["compare"]["kl_mean"] > 1e-3  # the base differs
    args = ["--prompt", "The game began", "--temperature", "0", "--max-new-tokens", "12", "--device", "cpu"]
    ours, theirs = cli("chat", src, "--lora", tmp_path / "adapter", *args), cli("chat", merged, *args)
    assert ours.code == theirs.code == 0 and ours.out == theirs.out and ours.out.strip()
    # quantize works in the checkpoint's dtype (bf16): the same single rounding as convert's default
    merged16 = tmp_path / "merged-bf16"
    assert cli("convert", src, "--lora", tmp_path / "adapter", "--to", "llama", "-o", merged16).code == 0
    q1, q2 = tmp_path / "q-lora", tmp_path / "q-merged"
    assert cli("quantize", src, "--lora", tmp_path / "adapter", "--method", "bnb", "--bits", "8", "-o", q1).code == 0
    assert cli("quantize", merged16, "--method", "bnb", "--bits", "8", "-o", q2).code == 0
    a, b = load_file(q1 / "model.safetensors"), load_file(q2 / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _edit_adapter(folder, config=None, tensors=None):
    if config:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | config))
    if tensors:
        weights = load_file(folder / "adapter_model.safetensors")
        save_file(tensors(weights), folder / "adapter_model.safetensors")


@pytest.mark.parametrize("case, needles", [
    ("dora without magnitudes", ["DoRA on model.layers.0.self_attn.q_proj has no magnitude vector"]),
    ("wrong shape", ["has shape [4, 128]", "needs [4, 256]", "made for another model?"]),
    ("missing module", ["targets model.layers.9.self_attn.q_proj", "no 2-D weight"]),
    ("rank disagrees", ["rank 4 in its weights but r=8"]),
    ("not lora", ["a PREFIX_TUNING adapter", "only LoRA"]),
    ("gguf base", ["is a file", "not a GGUF"]),
    ("published minicpm3 base", ["merging into minicpm3 is not supported", "multi-head latent attention"]),
])
def test_bad_adapters_are_one_line_and_leave_nothing(case, needles, tiny, cli, tmp_path):
    src = tiny("dense-gqa-tied")
    adapter = tmp_path / "adapter"
    make_adapter(src, adapter, r=4, lora_alpha=8, target_modules=["q_proj"])
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if case == "dora without magnitudes":
        _edit_adapter(adapter, {"use_dora": True})
    elif case == "wrong shape":
        _edit_adapter(adapter, tensors=lambda w: w | {key: w[key][:, :128].contiguous()})
    elif case == "missing module":
        _edit_adapter(adapter, tensors=lambda w: {k.replace("layers.0.", "layers.9."): v for k, v in w.items()})
    elif case == "rank disagrees":
        _edit_adapter(adapter, {"r": 8})
    elif case == "not lora":
        _edit_adapter(adapter, {"peft_type": "PREFIX_TUNING"})
    base = src
    if case == "published minicpm3 base":  # its config.json names the family by architectures alone
        base = tmp_path / "minicpm3"
        base.mkdir()
        shutil.copy(shared_path("minicpm-hf", "MiniCPM3-4B", "config.json"), base / "config.json")
    if case == "gguf base":
        assert cli("convert", src, "--to", "gguf", "-o", tmp_path / "b.gguf").code == 0
        base = tmp_path / "b.gguf"
    r = cli("convert", base, "--lora", adapter, "--to", "llama", "-o", tmp_path / "out")
    assert_one_line_error(r, *needles)
    assert leftovers(tmp_path, "out") == []


def test_merging_streams_one_tensor_at_a_time(tiny, tmp_path):
    """The merge happens as the converter reads each tensor: no merged tensor is made before it is asked for."""
    from converters.checkpoint import Checkpoint
    from converters.lora import lora_view

    src = tiny("dense-mha-untied")
    make_adapter(src, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=LINEARS)
    with lora_view(src, [tmp_path / "adapter"]) as view:
        ckpt = Checkpoint(view)
        reads = []
        original = ckpt._read
        ckpt._read = lambda name: reads.append(name) or original(name)
        name = "model.layers.2.mlp.down_proj.weight"
        w = ckpt.get(name)
        assert reads == [name] and w.dtype == torch.float32
        base = Checkpoint(src).get(name).float()
        a = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
        p = "base_model.model." + name.removesuffix(".weight")
        assert torch.allclose(w, base + 2.0 * a[p + ".lora_B.weight"] @ a[p + ".lora_A.weight"], atol=1e-6)
        assert ckpt.get("model.norm.weight").dtype == torch.bfloat16  # untouched tensors pass through
    assert not view.exists()


def test_a_merged_tensor_is_written_merged_whatever_the_writer_block_size(tiny, cli, tmp_path, monkeypatch):
    """The writer copies unchanged tensors' stored bytes and scales others in row blocks read from disk;
    under --lora neither may bypass the merge (a block size far below one tensor forces both paths)."""
    import converters.safetensors_out as writer

    src = tiny("dense-gqa-tied")
    make_adapter(src, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"])
    f32 = tmp_path / "f32"
    assert cli("convert", src, "--lora", tmp_path / "adapter", "--to", "llama", "--dtype", "f32", "-o", f32).code == 0
    monkeypatch.setattr(writer, "CHUNK_BYTES", 64)
    bf16 = tmp_path / "bf16"
    assert cli("convert", src, "--lora", tmp_path / "adapter", "--to", "llama", "--dtype", "bf16", "-o", bf16).code == 0
    a, b = load_file(f32 / "model.safetensors"), load_file(bf16 / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:  # one rounding of the same float32 merge
        assert torch.equal(a[name].to(torch.bfloat16), b[name]), name
