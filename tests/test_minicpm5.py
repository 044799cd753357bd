"""MiniCPM5 end to end: the tiny model's published layout, its BPE tokenizer in GGUF, thinking chat, every verb.

References: the published files in ../shared/minicpm-hf (config keys, template and special-token bytes, the
pre-tokenizer regex SOURCES.md quotes), the `tokenizers` library for ids, transformers' apply_chat_template
for renderings, and the HF folder itself for what its GGUF must reproduce.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, shared_path

M5 = ("minicpm-hf", "MiniCPM5-1B")
WIKI_TEST = ("data", "wikitext-2-raw-v1", "test-00000-of-00001.parquet")
PROBES = [
    "北京欢迎你，世界你好。中文分词：大语言模型",
    "Hello world! It's a test, isn't it? We'll see; THEY'RE here.",
    "1234567 and 12 then 1234567890 and ٣٤٥٦ ½",
    "def f(x):\n    return x ** 2  # square\n\tif a != b: pass\r\n",
    "a  b   c\n\n\n  \t x    \n ",
    "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nok</s><unk>",
    "naïve café 😀 — “quotes” ...",
]


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_chat.one_thread: spinning workers slow a busy 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def m5(tiny, tmp_path_factory) -> dict[str, Path]:
    """The trained tiny MiniCPM5 folder and its f32 GGUF."""
    from converters.gguf_export import convert_to_gguf

    src = tiny("minicpm5", trained=True)
    gguf = tmp_path_factory.mktemp("m5") / "tiny-m5-f32.gguf"
    convert_to_gguf(src, gguf, outtype="f32")
    return {"hf": src, "gguf": gguf}


# --- the tiny model is the published layout ---------------------------------------------------------
def test_tiny_minicpm5_has_the_published_files_and_keys(m5):
    from safetensors import safe_open

    src = m5["hf"]
    published = json.loads(shared_path("minicpm-hf", "MiniCPM5-2B-MLX", "config.json").read_text())
    published = {k: v for k, v in published.items() if not k.startswith("quantization")}
    config = json.loads((src / "config.json").read_text())
    assert config.keys() == published.keys()
    for key in ("architectures", "model_type", "bos_token_id", "eos_token_id", "pad_token_id", "vocab_size",
                "tie_word_embeddings", "rope_scaling", "rope_theta", "hidden_act", "torch_dtype"):
        assert config[key] == published[key], key
    for name in ("chat_template.jinja", "special_tokens_map.json"):
        assert (src / name).read_bytes() == shared_path(*M5, name).read_bytes(), name
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    published_tok = json.loads(shared_path("minicpm-hf", "MiniCPM5-2B-MLX", "tokenizer_config.json").read_text())
    assert tok_config == published_tok | {"add_bos_token": False}
    gen = json.loads((src / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (0, [1, 130073], 1)
    with safe_open(src / "model.safetensors", "pt") as f:
        assert f.get_slice("model.embed_tokens.weight").get_shape() == [130560, config["hidden_size"]]
        assert f.get_slice("lm_head.weight").get_shape() == [130560, config["hidden_size"]]


def test_tokenizer_is_byte_level_bpe_with_the_published_split_and_special_ids(m5):
    from tokenizers import Tokenizer

    data = json.loads((m5["hf"] / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and len(data["model"]["merges"]) > 3000
    # the regexes SOURCES.md quotes for MiniCPM5 (llama.cpp's `minicpm5` pre-type), in order
    quoted = re.search(r"Pre-tokenizer regex \(llama\.cpp's `minicpm5`[^)]*\): `([^`]+)` then\s+`([^`]+)`",
                       shared_path("minicpm-hf", "SOURCES.md").read_text()).groups()
    splits = [p for p in data["pre_tokenizer"]["pretokenizers"] if p["type"] == "Split"]
    assert tuple(p["pattern"]["Regex"] for p in splits) == quoted
    assert data["pre_tokenizer"]["pretokenizers"][-1]["type"] == "ByteLevel"
    tok = Tokenizer.from_file(str(m5["hf"] / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in ("<s>", "</s>", "<|im_start|>", "<|im_end|>")] == [0, 1, 130072, 130073]
    assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("x 1234567")] == ["x", "Ġ", "123", "456", "7"]


# --- GGUF: llama.cpp tokenizes the file as the tokenizers library does -----------------------------
def test_gguf_carries_the_bpe_vocabulary_and_the_template(m5):
    from converters.gguf_read import gguf_metadata

    meta = gguf_metadata(m5["gguf"])
    data = json.loads((m5["hf"] / "tokenizer.json").read_text())
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "minicpm5")
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == 130560
    for content, i in (("<s>", 0), ("</s>", 1), ("<unk>", 2), ("<|im_start|>", 130072), ("<|im_end|>", 130073)):
        assert (tokens[i], types[i]) == (content, 3), content  # control
    assert types[5000] == 5 and types[100] == 1  # an unused id past the merges; a normal token
    ids = {k: meta[f"tokenizer.ggml.{k}_token_id"] for k in ("bos", "eos", "eot", "padding")}
    assert ids == {"bos": 0, "eos": 1, "eot": 130073, "padding": 1}
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == shared_path(*M5, "chat_template.jinja").read_text(encoding="utf-8")


def test_llama_cpp_tokenization_equals_the_tokenizers_library(m5):
    from tokenizers import Tokenizer

    from runtime.load import load_gguf

    tok = Tokenizer.from_file(str(m5["hf"] / "tokenizer.json"))
    model = load_gguf(m5["gguf"], n_ctx=64, threads=1)
    try:
        for text in PROBES:
            expected = tok.encode(text, add_special_tokens=False).ids
            assert model.encode(text) == expected, text  # add_bos false in the GGUF: no <s> added
            assert model.decode(expected) == text
        specials = "".join(PROBES[5:6])
        assert {0, 1, 2, 130072, 130073} <= set(model.encode(specials))
    finally:
        model.model.close()


def test_eval_ppl_scores_the_same_ids_on_both_backends(m5, cli, tmp_path):
    out = tmp_path / "ppl.json"
    result = cli("eval-ppl", m5["hf"], m5["gguf"], "--dataset", shared_path(*WIKI_TEST), "--ctx", "128",
                 "--max-tokens", "512", "--device", "cpu", "--json", out)
    assert result.code == 0, result
    hf, gg = json.loads(out.read_text())["models"]
    assert gg["ids_group"] == hf["ids_group"] and gg["tokens"] == hf["tokens"] == 512
    assert gg["ppl"] == pytest.approx(hf["ppl"], rel=5e-3)
    assert hf["ppl"] < 2000  # trained: far below the 130560-way uniform guess


# --- chat: rendering, thinking, stops ---------------------------------------------------------------
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "天气 for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 你好"},
           {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
           {"role": "user", "content": "Weather in Paris?"}]


@pytest.mark.parametrize("thinking", [True, False, None])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_minicpm5_template_renders_like_transformers(m5, thinking, tools):
    from converters.tokenizer import load_tokenizer
    from runtime.chat_prompt import ChatFormat

    tok = load_tokenizer(m5["hf"])
    kw = {} if thinking is None else {"enable_thinking": thinking}
    expected = tok.apply_chat_template(HISTORY, tools=tools, tokenize=False, add_generation_prompt=True, **kw)
    fmt = ChatFormat((m5["hf"] / "chat_template.jinja").read_text(encoding="utf-8"), "test", "<s>", "</s>")
    assert fmt.thinks
    assert fmt.render(HISTORY, tools=tools, enable_thinking=thinking) == expected
    assert "Greet back." not in expected  # earlier turns lose their reasoning
    if tools:
        assert '"description": "天气 for a city"' in expected  # tojson(ensure_ascii=False)
    tail = {True: "assistant\n<think>\n", False: "assistant\n<think>\n\n</think>\n\n", None: "assistant\n"}
    assert expected.endswith(tail[thinking])


def test_template_filters_and_globals_match_transformers():
    from converters.tokenizer import load_tokenizer
    from runtime.chat_prompt import ChatFormat

    template = ("{{ x | tojson }}|{{ x | tojson(ensure_ascii=True) }}|{{ x | tojson(indent=2, sort_keys=true) }}|"
                "{{ x | tojson(separators=(',', ':')) }}|{{ strftime_now('%Y') }}")
    x = {"b": "é 中", "a": [1, 2]}
    tok = load_tokenizer(shared_path("minicpm-hf", "MiniCPM4-8B"))
    expected = tok.apply_chat_template([{"role": "user", "content": ""}], chat_template=template, tokenize=False, x=x)
    fmt = ChatFormat(template, "test")
    assert fmt.render([{"role": "user", "content": ""}], x=x) == expected
    assert not fmt.thinks
    with pytest.raises(Exception, match="boom"):
        ChatFormat("{{ raise_exception('boom') }}", "test").render([])


REPLY = "<think>\nFirst, a plan.\nThen more.\n</think>\n\nThe answer 北京."


@pytest.mark.parametrize("inside,text", [(True, REPLY[len("<think>\n"):]), (False, REPLY)])
def test_thinking_splitter_gives_the_same_parts_however_the_stream_is_cut(inside, text):
    from runtime.thinking import ThinkingSplitter

    for step in (1, 2, 3, 5, len(text)):
        split = ThinkingSplitter(inside)
        parts = [p for i in range(0, len(text), step) for p in split.push(text[i:i + step])] + split.flush()
        reasoning = "".join(t for k, t in parts if k == "reasoning")
        answer = "".join(t for k, t in parts if k == "answer")
        assert (reasoning, answer) == ("First, a plan.\nThen more.", "The answer 北京."), step
        assert "".join(split.reasoning) == reasoning and "".join(split.answer) == answer


@pytest.mark.parametrize("thinking", [True, False])
def test_greedy_chat_is_the_same_from_the_folder_and_its_gguf(m5, thinking):
    from converters.tokenizer import load_tokenizer
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    replies, prompts, stops = {}, {}, {}
    for kind, path in m5.items():
        session = open_session(path, Sampling(temperature=0, max_new_tokens=80), device="cpu", threads=1,
                               thinking=thinking)
        try:
            assert {1, 130073} <= session.generator.stop_ids  # both ids of the list-valued eos
            reasoning: list[str] = []
            answer = session.reply("Give three tips for staying healthy.", lambda _: None, reasoning.append)
            prompts[kind] = session.prompt_ids("next")
            replies[kind] = ("".join(reasoning), answer, session.generator.last_tokens)
            stops[kind] = session.generator.stats.stop
        finally:
            session.close()
    assert replies["hf"] == replies["gguf"] and prompts["hf"] == prompts["gguf"]
    reasoning, answer, _ = replies["hf"]
    assert answer and stops["hf"] == stops["gguf"]
    assert bool(reasoning) == thinking
    if not thinking:  # this tiny model ends a short answer with <|im_end|>; its thinking runs longer
        assert stops["hf"] == "eos" and replies["hf"][2][-1] != 130073
    # the next prompt keeps the answer and drops the reasoning, as the template does
    next_prompt = load_tokenizer(m5["hf"]).decode(prompts["hf"])
    assert answer in next_prompt and (not reasoning or reasoning not in next_prompt)


def test_one_shot_prints_only_the_answer_unless_asked(m5, cli):
    args = ["--prompt", "Give three tips for staying healthy.", "--temperature", "0", "--max-new-tokens", "40",
            "--threads", "1", "--think"]
    answer_only = cli("chat", m5["gguf"], *args)
    both = cli("chat", m5["gguf"], *args, "--show-thinking")
    assert answer_only.code == both.code == 0 and answer_only.err == both.err == ""
    assert "<think>" not in answer_only.out and both.out.startswith("<think>\n")
    reasoning, _, answer = both.out.partition("\n</think>\n\n")
    assert answer == answer_only.out and reasoning[len("<think>\n"):].strip()


def test_think_flags_need_a_thinking_template(tiny, m5, cli):
    result = cli("chat", tiny("minicpm4"), "--prompt", "hi", "--think")
    assert_one_line_error(result, "--think", "does not read enable_thinking", code=2)


def test_repl_think_commands_switch_the_prompt(m5, capsys):
    from minicpm_cli.chat import command, open_session
    from runtime.generate import Sampling

    session = open_session(m5["hf"], Sampling(temperature=0), device="cpu")
    assert session.thinking is None
    assert command(session, "/think") and session.thinking is True
    assert session.fmt.render([{"role": "user", "content": "q"}], enable_thinking=session.thinking).endswith("<think>\n")
    tokens = session.prompt_ids("q")
    assert tokens[-3:] != session.model.tokenizer.encode("assistant\n", add_special_tokens=False)[-3:]
    assert command(session, "/no_think") and session.thinking is False
    assert "thinking on" in capsys.readouterr().out


def test_sampling_defaults_come_from_generation_config_then_the_project(m5):
    from minicpm_cli.chat import open_session
    from runtime.model_defaults import describe

    given = {"temperature": None, "top_p": None, "top_k": 5, "repetition_penalty": None, "max_new_tokens": 8,
             "seed": None}
    session = open_session(m5["hf"], given, device="cpu")
    s, sources = session.sampling, session.sampling_sources
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (0.8, 0.8, 5, 1.02)
    assert describe(s, sources) == ("temperature 0.8, top_p 0.8 (generation_config.json); top_k 5 (--top-k); "
                                    "repetition_penalty 1.02 (default)")


# --- every verb ---------------------------------------------------------------------------------------
def test_inspect_names_the_family_and_the_bpe_tokenizer(m5, cli, tmp_path):
    result = cli("inspect", m5["hf"], "--json", tmp_path / "i.json")
    assert result.code == 0, result
    info = json.loads((tmp_path / "i.json").read_text())
    assert (info["family"], info["architecture"], info["tokenizer"]) == ("llama", "LlamaForCausalLM", "bpe")
    assert info["chat_template"] is True and info["context_length"] == 2048


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_k_m"])
def test_convert_to_gguf_types_keep_the_tokenizer_and_the_predictions(m5, outtype, cli, tmp_path):
    from runtime.load import load_gguf

    out = tmp_path / f"m5-{outtype}.gguf"
    result = cli("convert", m5["hf"], "--to", "gguf", "--outtype", outtype, "-o", out)
    assert result.code == 0, result
    ids = load_gguf(m5["gguf"], n_ctx=64, threads=1)
    low = load_gguf(out, n_ctx=64, threads=1)
    try:
        text = "The history of the city begins in the"
        assert low.encode(text) == ids.encode(text)
        a, b = ids.logits(ids.encode(text)), low.logits(ids.encode(text))
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
    finally:
        ids.model.close()
        low.model.close()


@pytest.mark.parametrize("method,extra", [("awq", ["--bits", "4"]), ("gptq", ["--bits", "4"]), ("bnb", ["--bits", "8"])])
def test_quantize_methods_reload_and_chat(m5, method, extra, cli, tmp_path):
    out = tmp_path / method
    result = cli("quantize", m5["hf"], "--method", method, *extra, "--num-samples", "4", "--seq-len", "64",
                 "--calib", shared_path("data", "wikitext-2-raw-v1", "train-subset-500.parquet"), "--device", "cpu",
                 "-o", out)
    assert result.code == 0, result
    assert (out / "chat_template.jinja").read_bytes() == (m5["hf"] / "chat_template.jinja").read_bytes()
    assert (out / "tokenizer.json").read_bytes() == (m5["hf"] / "tokenizer.json").read_bytes()
    reply = cli("chat", out, "--prompt", "Hi", "--temperature", "0", "--max-new-tokens", "4", "--no-think")
    assert reply.code == 0 and reply.err == "", reply
