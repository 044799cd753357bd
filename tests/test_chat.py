"""`minicpm chat`: prompt rendering, history trimming, sampling, streaming decode, one-shot and a real terminal."""
from __future__ import annotations

import codecs
import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, shared_path

CHINESE = "北京欢迎你，世界你好。"
TWO_TURNS = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Red."},
             {"role": "user", "content": "Another 中文 one?"}]


def fake_model(folder: Path, family: str = "minicpm"):
    """A LoadedModel with a real tokenizer and no weights: enough for prompt formatting."""
    from converters.tokenizer import load_tokenizer
    from runtime.load import HFModel

    return HFModel(folder, "hf", family, None, load_tokenizer(folder), eos_ids=[2])


def copy_without_weights(src: Path, dst: Path, chat_template=...) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copyfile(f, dst / f.name)
    if chat_template is not ...:
        config = json.loads((dst / "tokenizer_config.json").read_text())
        if chat_template is None:
            config.pop("chat_template", None)
        else:
            config["chat_template"] = chat_template
        (dst / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return dst


def with_template(src: Path, dst: Path, chat_template) -> Path:
    """A copy of a tiny model whose tokenizer_config.json has another chat template (weights copied:
    a symlink out of the folder is refused, see converters.limits)."""
    copy_without_weights(src, dst, chat_template)
    for f in src.iterdir():
        if not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
    return dst


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread per model (torch here, llama.cpp via threads=1 / --threads 1).

    Worker threads spin while they wait for each other; on a busy 2-core machine that turns a tiny
    model's milliseconds per token into seconds (training the tiny model here took 3.5 min with one
    thread, 11 min with two). These tests check replies, not speed.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- prompt rendering ----------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["MiniCPM-2B-sft-bf16", "MiniCPM3-4B", "MiniCPM4-8B"])
def test_two_turn_prompt_equals_the_published_templates_rendering(folder):
    from runtime.chat_prompt import chat_format

    src = shared_path("minicpm-hf", folder)
    model = fake_model(src)
    fmt = chat_format(model)
    assert fmt.source.endswith("tokenizer_config.json")
    # transformers' own apply_chat_template is the reference rendering
    expected = model.tokenizer.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert fmt.render(TWO_TURNS) == expected
    if folder == "MiniCPM-2B-sft-bf16":
        assert expected == "You are terse.<用户>Name a colour.<AI>Red.<用户>Another 中文 one?<AI>"
        assert fmt.end_of_turn == []  # <用户> is three pieces in the real vocabulary: </s> ends a reply
    else:
        assert expected.endswith("<|im_start|>user\nAnother 中文 one?<|im_end|>\n<|im_start|>assistant\n")
        assert fmt.end_of_turn == ["<|im_end|>"]


def test_prompt_ids_parse_chatml_markers_as_special_tokens(tiny):
    from runtime.chat_prompt import chat_format, encode_prompt, end_of_turn_ids

    model = fake_model(tiny("minicpm4"))
    fmt = chat_format(model)
    ids = encode_prompt(model, fmt, TWO_TURNS)
    text = model.tokenizer.apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True)
    assert ids == [1] + model.tokenizer.encode(text, add_special_tokens=False)  # BOS, as MiniCPM's chat() adds
    assert ids.count(2047) == 5 and ids.count(2046) == 4  # 4 messages + the reply's opening, one id each
    assert end_of_turn_ids(model, fmt) == {2, 2046}


@pytest.mark.parametrize("family, marker, source", [("dense-gqa-tied", "<用户>", "<用户>…<AI>"),
                                                    ("minicpm4", "<|im_start|>", "ChatML")])
def test_missing_template_falls_back_to_the_familys_format(family, marker, source, tiny, tmp_path):
    from runtime.chat_prompt import CHATML_TEMPLATE, USER_AI_TEMPLATE, chat_format

    model = fake_model(copy_without_weights(tiny(family, trained=family == "dense-gqa-tied"), tmp_path / family,
                                            chat_template=None))
    fmt = chat_format(model)
    assert source in fmt.source and "built-in" in fmt.source
    # the built-in templates are MiniCPM's published ones
    published = "MiniCPM-2B-sft-bf16" if marker == "<用户>" else "MiniCPM3-4B"
    config = json.loads(shared_path("minicpm-hf", published, "tokenizer_config.json").read_text())
    assert (USER_AI_TEMPLATE if marker == "<用户>" else CHATML_TEMPLATE) == config["chat_template"]
    assert marker in fmt.render(TWO_TURNS)


@pytest.mark.slow
def test_template_file_overrides_the_models(tiny, tmp_path):
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    session = open_session(tiny("dense-gqa-tied", trained=True), Sampling(), device="cpu", template=template)
    assert session.fmt.source == "--template"
    tok = session.model.tokenizer
    assert session.prompt_ids("Hi there") == tok.encode("user: Hi there\nassistant:", add_special_tokens=True)
    template.write_text("{{ bos_token }}" + template.read_text())  # a template that writes BOS itself
    session = open_session(tiny("dense-gqa-tied", trained=True), Sampling(), device="cpu", template=template)
    ids = session.prompt_ids("Hi there")
    assert ids[:2] != [1, 1] and ids == tok.encode("user: Hi there\nassistant:", add_special_tokens=True)


def test_history_trimming_keeps_the_system_prompt_and_the_newest_turns():
    from converters.errors import UserError
    from runtime.chat_prompt import trim_history

    turns = [{"role": "system", "content": "sys"}]
    for i in range(5):
        turns += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    turns.append({"role": "user", "content": "newest"})
    size = lambda messages: sum(len(m["content"]) for m in messages)
    kept, n = trim_history(turns, size, budget=size(turns[:1] + turns[-5:]))
    assert kept == turns[:1] + turns[-5:] and n == size(kept)  # system + exchanges 3, 4 + newest
    kept, _ = trim_history(turns, size, budget=size(turns[:1] + turns[-5:]) - 1)
    assert kept == turns[:1] + turns[-3:]
    assert trim_history(turns, size, budget=10_000)[0] == turns  # nothing dropped when it fits
    with pytest.raises(UserError, match="does not fit the context"):
        trim_history(turns, size, budget=size(turns[:1] + turns[-1:]) - 1)


# --- sampling and streaming decode ---------------------------------------------------------------
def test_sampler_follows_llama_cpp_order():
    from runtime.generate import Sampling, sample_token

    logits = torch.tensor([2.0, 1.9, -1.0, 0.5, 0.4])
    greedy = Sampling(temperature=0, repetition_penalty=1.0)
    assert sample_token(logits, [], greedy, None) == 0
    # penalty divides positive logits: 2.0/1.1 < 1.9; only the last 64 reply tokens count
    penalised = Sampling(temperature=0, repetition_penalty=1.1)
    assert sample_token(logits, [0], penalised, None) == 1
    assert sample_token(logits, [0] + [4] * 64, penalised, None) == 0
    # top-p on the untempered distribution: p = softmax(logits); keep tokens until the mass reaches 0.85
    # (tempered first, as transformers does, all 5 tokens would stay)
    p = torch.softmax(logits, -1).sort(descending=True)
    head = int((p.values.cumsum(0) < 0.85).sum()) + 1
    allowed = set(p.indices[:head].tolist())
    g = torch.Generator().manual_seed(0)
    draws = {sample_token(logits, [], Sampling(temperature=5.0, top_p=0.85, repetition_penalty=1.0), g)
             for _ in range(300)}
    assert draws == allowed and len(allowed) == 3
    draws = {sample_token(logits, [], Sampling(temperature=5.0, top_p=1.0, top_k=2, repetition_penalty=1.0), g)
             for _ in range(200)}
    assert draws == {0, 1}


@pytest.mark.slow
def test_streaming_never_shows_half_a_chinese_character(tiny):
    from converters.tokenizer import load_tokenizer
    from runtime.generate import HFTextStream

    tok = load_tokenizer(tiny("dense-gqa-tied", trained=True))
    text = f" Hello {CHINESE} ok"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert sum(p.startswith("<0x") for p in pieces) >= 3 * len(CHINESE)  # Chinese arrives byte by byte
    stream = HFTextStream(tok, context=tok.encode("<用户>hi<AI>", add_special_tokens=False))
    out = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(out) == text
    assert not any("\ufffd" in piece for piece in out)
    assert out[0] == " Hello"[:len(out[0])] and len([p for p in out if p]) > 5  # streamed, leading space kept


def test_invalid_sampling_is_a_usage_error():
    from converters.errors import UsageError
    from runtime.generate import Sampling

    with pytest.raises(UsageError, match="--top-p 1.5"):
        Sampling(top_p=1.5).check()


# --- generation ----------------------------------------------------------------------------------
def generate(model, prompt_ids, **kw):
    from runtime.chat_prompt import chat_format, end_of_turn_ids
    from runtime.generate import Generator, Sampling

    gen = Generator(model, 1024, end_of_turn_ids(model, chat_format(model)))
    text = "".join(gen.stream(prompt_ids, Sampling(**kw)))
    return gen, text


@pytest.mark.slow
def test_greedy_reply_matches_a_plain_torch_reference(tiny):
    """The KV-cached loop picks the tokens a full recompute of the independent reference picks."""
    from reference import load_minicpm, minicpm_logits
    from runtime.load import load_model

    src = tiny("dense-gqa-tied", trained=True)
    model = load_model(src)
    prompt = model.encode("<用户>Tell me about the history of the city.<AI>")
    gen, text = generate(model, prompt, temperature=0, repetition_penalty=1.0, max_new_tokens=12)
    config, weights = load_minicpm(src)
    ids = list(prompt)
    for _ in range(12):
        ids.append(int(minicpm_logits(config, weights, ids)[-1].argmax()))
    assert gen.last_tokens == ids[len(prompt):]
    assert text == model.tokenizer.decode(gen.last_tokens, skip_special_tokens=True) and text.strip()
    assert gen.stats.new_tokens == 12 and gen.stats.stop == "length" and gen.stats.tokens_per_s > 0


@pytest.mark.parametrize("family", ["dense-gqa-tied", "minicpm4"])
def test_static_cache_decoder_computes_the_models_own_logits(family, tiny):
    """Prefill, a multi-token pass over a warm cache, then single tokens past two cache growths: each
    step's logits are the model's own full forward at that position; fusing q/k/v and gate/up into
    shared weights leaves the model's forward unchanged."""
    from runtime.llama_decode import LlamaDecoder, supports
    from runtime.load import load_model

    model = load_model(tiny(family)).model
    ids = [1] + [int(i) for i in torch.randint(3, 2000, (39,), generator=torch.Generator().manual_seed(3))]
    with torch.no_grad():
        before = model(torch.tensor([ids])).logits[0]
    assert supports(model)
    decoder = LlamaDecoder(model, 64, first_capacity=8)
    steps = [(ids[:10], 0), (ids[10:17], 10)] + [([ids[t]], t) for t in range(17, 40)]
    got = torch.stack([decoder.forward(chunk, start) for chunk, start in steps])
    assert decoder.k.shape[2] == 40  # grew 10 -> 20 -> 40, keeping what it held
    with torch.no_grad():
        after = model(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5 * before.abs().max().item())
    want = before[[9, 16] + list(range(17, 40))]
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    with pytest.raises(ValueError, match="exceed the context of 64"):
        decoder.forward([5], 64)


def test_mixtral_and_quantized_models_keep_the_transformers_loop(tiny):
    from runtime.llama_decode import supports
    from runtime.load import load_model

    assert not supports(load_model(tiny("moe")).model)


@pytest.mark.slow
def test_second_turn_reuses_the_cache_and_matches_a_fresh_run(tiny):
    from minicpm_cli.chat import open_session
    from runtime.generate import Generator, Sampling

    session = open_session(tiny("dense-gqa-tied", trained=True), Sampling(temperature=0, max_new_tokens=16),
                           device="cpu")
    first = session.prompt_ids("What is a river?")
    session.reply("What is a river?", lambda _: None)
    ids, cached = session.prompt_ids("And a lake?"), session.generator._cached_ids
    shared = next(i for i, (a, b) in enumerate(zip(ids + [-1], cached + [-2])) if a != b)
    assert shared > len(first)  # the second prompt starts with the first turn, already in the cache
    warm = "".join(session.generator.stream(ids, session.sampling))
    fresh = Generator(session.model, session.generator.n_ctx, session.generator.stop_ids)
    assert warm == "".join(fresh.stream(ids, session.sampling))
    assert session.generator.last_tokens == fresh.last_tokens


@pytest.mark.slow
def test_long_conversations_drop_the_oldest_turns(tiny):
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    session = open_session(tiny("dense-gqa-tied", trained=True), Sampling(temperature=0, max_new_tokens=16),
                           system="Be brief.", device="cpu", context=160)
    questions = [f"Question number {i}: tell me about the history of the city." for i in range(6)]
    for q in questions:
        session.reply(q, lambda _: None)
    assert len(session.messages) == 12 and session.dropped > 0  # the history is kept, the prompt trimmed
    ids = session.prompt_ids("Last one?")
    assert len(ids) <= 160 - 16
    text = session.model.tokenizer.decode(ids)
    assert text.startswith("<s> Be brief.") or text.startswith("<s>Be brief.")
    assert "Last one?" in text and questions[-1] in text and questions[0] not in text


class RaisesSigintWhenCollected:
    """Ctrl-C handled inside a finalizer: Python prints and drops any exception raised there."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # the handler runs before raise_signal returns


@pytest.fixture
def greedy_session(tiny):
    """A chat session of the trained tiny model: greedy, 40 new tokens at most."""
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    return open_session(tiny("dense-gqa-tied", trained=True), Sampling(temperature=0, max_new_tokens=40),
                        device="cpu")


def reply_with_ctrl_c(session, pieces: list[str], at_piece: int, ctrl_c) -> None:
    """One reply under chat's Ctrl-C handling; its pieces go to `pieces`, and `ctrl_c()` runs as the
    `at_piece`-th arrives."""
    from minicpm_cli.chat import ctrl_c_ends_reply

    def write(piece):
        pieces.append(piece)
        if len(pieces) == at_piece:
            ctrl_c()

    with ctrl_c_ends_reply() as interrupted:
        session.reply("Tell me about the history of England.", write, interrupted=interrupted)


def assert_partial_reply_kept(session, pieces: list[str]) -> None:
    assert session.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the reply


@pytest.mark.slow
def test_ctrl_c_ends_a_reply_after_the_token_in_progress_even_inside_a_finalizer(greedy_session):
    # 40 tokens of budget and Ctrl-C at the 5th piece: the reply cannot run out before it. The object is
    # collected at once, inside a finalizer, where a KeyboardInterrupt would be lost.
    pieces = []
    reply_with_ctrl_c(greedy_session, pieces, 5, RaisesSigintWhenCollected)
    stats = greedy_session.generator.stats
    assert stats.stop == "interrupted" and len(pieces) == 5, (stats, pieces)
    assert stats.new_tokens == len(greedy_session.generator.last_tokens) < 40
    assert_partial_reply_kept(greedy_session, pieces)


@pytest.mark.slow
def test_a_second_ctrl_c_raises_at_once(greedy_session):
    def twice():
        signal.raise_signal(signal.SIGINT)  # asks the reply to end after this token
        signal.raise_signal(signal.SIGINT)  # does not wait for it: KeyboardInterrupt here

    pieces = []
    with pytest.raises(KeyboardInterrupt):
        reply_with_ctrl_c(greedy_session, pieces, 3, twice)
    assert greedy_session.generator.stats.stop == "interrupted" and len(pieces) == 3
    assert_partial_reply_kept(greedy_session, pieces)


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(tiny):
    from runtime.load import load_model

    model = load_model(tiny("dense-gqa-tied", trained=True))
    prompt = model.encode("<用户>Write about music.<AI>")
    runs = [generate(model, prompt, temperature=1.0, top_p=0.95, seed=s, max_new_tokens=24)[0].last_tokens
            for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


# --- one reply, three formats ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tiny, tmp_path_factory):
    """The trained tiny MiniCPM folder, its llama-format conversion and its GGUF f32 conversion."""
    from converters.gguf_export import convert_to_gguf
    from converters.to_llama import convert_to_llama

    src = tiny("dense-gqa-tied", trained=True)
    out = tmp_path_factory.mktemp("chat-artifacts")
    convert_to_llama(src, out / "llama", "f32", False, "4GB", None)
    convert_to_gguf(src, out / "tiny-f32.gguf", outtype="f32")
    return {"hf": src, "llama": out / "llama", "gguf": out / "tiny-f32.gguf"}


@pytest.mark.slow
def test_greedy_replies_are_the_same_tokens_in_every_format(artifacts, cli):
    from minicpm_cli.chat import open_session
    from runtime.generate import Sampling

    sampling = Sampling(temperature=0, max_new_tokens=40)  # default repetition penalty 1.02 on both backends
    question = "Tell me about the history of England."
    tokens, prompts = {}, {}
    for kind, path in artifacts.items():
        session = open_session(path, sampling, device="cpu", threads=1)
        try:
            assert session.model.backend == ("gguf" if kind == "gguf" else "hf")
            prompts[kind] = session.prompt_ids(question)
            session.reply(question, lambda _: None)
            tokens[kind] = session.generator.last_tokens
            assert session.generator.stats.new_tokens == 40
        finally:
            session.close()
    assert prompts["hf"] == prompts["llama"] == prompts["gguf"]
    assert tokens["hf"] == tokens["llama"] == tokens["gguf"]
    # and the command line prints the same reply for each
    args = ["--prompt", question, "--temperature", "0", "--max-new-tokens", "40", "--threads", "1"]
    results = [cli("chat", path, *args) for path in artifacts.values()]
    assert all(r.code == 0 and r.err == "" for r in results), results
    assert results[0].out.strip() and len(results[0].out.split()) >= 5
    assert results[0].out == results[1].out == results[2].out


@pytest.mark.slow
def test_gguf_streaming_never_shows_half_a_chinese_character(artifacts):
    from runtime.generate import Generator
    from runtime.load import load_gguf

    model = load_gguf(artifacts["gguf"], n_ctx=256, threads=1, logits_all=False)
    try:
        text = f" Hello {CHINESE} ok"
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) > 3 * len(CHINESE)  # byte pieces
        stream = Generator(model, 256).text_stream([1])
        out = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(out) == text and not any("\ufffd" in piece for piece in out)
    finally:
        model.model.close()


@pytest.mark.slow
def test_gguf_seeded_sampling_is_reproducible(artifacts):
    from runtime.generate import set_gguf_threads
    from runtime.load import load_gguf

    model = load_gguf(artifacts["gguf"], n_ctx=256, threads=1, logits_all=False)
    set_gguf_threads(model.model, 1)
    try:
        prompt = model.encode("<用户>Write about music.<AI>")
        runs = [generate(model, prompt, temperature=1.0, top_p=0.95, seed=s, max_new_tokens=24)[0].last_tokens
                for s in (7, 7, 8)]
        assert runs[0] == runs[1] and runs[0] != runs[2]
    finally:
        model.model.close()


def test_gguf_parses_chatml_markers_like_the_hf_tokenizer(tiny, tmp_path):
    from converters.gguf_export import convert_to_gguf
    from runtime.chat_prompt import chat_format, encode_prompt, end_of_turn_ids
    from runtime.load import load_gguf, load_model

    src = tiny("minicpm4")
    convert_to_gguf(src, tmp_path / "m4.gguf", outtype="f32")
    hf, gguf = load_model(src), load_gguf(tmp_path / "m4.gguf", n_ctx=256, threads=1, logits_all=False)
    try:
        formats = chat_format(hf), chat_format(gguf)
        assert formats[1].source.endswith("GGUF metadata") and formats[0].template == formats[1].template
        ids = [encode_prompt(m, f, TWO_TURNS) for m, f in zip((hf, gguf), formats)]
        assert ids[0] == ids[1] and ids[0].count(2047) == 5
        assert end_of_turn_ids(hf, formats[0]) == end_of_turn_ids(gguf, formats[1]) == {2, 2046}
    finally:
        gguf.model.close()


@pytest.mark.slow
def test_stdin_prompt_and_system_prompt(tiny, cli, monkeypatch):
    import io

    src = tiny("dense-gqa-tied", trained=True)
    args = ["--temperature", "0", "--max-new-tokens", "8", "--system", "Be brief."]
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me a story."))
    piped = cli("chat", src, *args)
    assert piped.code == 0 and piped.out == cli("chat", src, *args, "--prompt", "Tell me a story.").out
    assert piped.out != cli("chat", src, "--temperature", "0", "--max-new-tokens", "8",
                            "--prompt", "Tell me a story.").out  # the system prompt reached the model


@pytest.mark.slow
def test_bad_input_is_one_clear_line(tiny, tmp_path, cli, monkeypatch):
    import io

    src = tiny("dense-gqa-tied", trained=True)
    assert_one_line_error(cli("chat", tmp_path / "nope", "--prompt", "hi"), "nope", "no such file", code=2)
    assert_one_line_error(cli("chat", src, "--prompt", "hi", "--max-new-tokens", "0"), "--max-new-tokens", code=2)
    assert_one_line_error(cli("chat", src, "--prompt", "hi", "--top-p", "0"), "--top-p", code=2)
    broken = with_template(src, tmp_path / "broken", "{{ raise_exception('no user turns here') }}")
    assert_one_line_error(cli("chat", broken, "--prompt", "hi"), "failed to render", "no user turns here", code=1)
    unclosed = with_template(src, tmp_path / "unclosed", "{% for m in messages %}{{ m.content }}")
    assert_one_line_error(cli("chat", unclosed, "--prompt", "hi"), "does not compile", code=1)
    assert_one_line_error(cli("chat", src, "--prompt", "hi", "--template", tmp_path / "none.jinja"), "--template",
                          "cannot be read", code=2)
    assert_one_line_error(cli("chat", src, "--prompt", "hi", "--device", "tpu"), "--device tpu", code=2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert_one_line_error(cli("chat", src), "no prompt", code=2)


# --- a real terminal -----------------------------------------------------------------------------
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x01\x02]")


class Terminal:
    """A process on a pseudo-terminal: type keys, read what the screen shows (ANSI codes removed)."""

    def __init__(self, argv: list[str]):
        import fcntl
        import struct
        import termios

        env = dict(os.environ, TERM="xterm-256color", COLUMNS="200", LINES="50")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child: the pty is its controlling terminal, so Ctrl-C becomes SIGINT
            try:
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.raw = ""
        self.reads = 0  # how many reads brought output: a streamed reply takes many
        self.mark = 0  # start of the text not yet consumed by expect()

    @property
    def screen(self) -> str:
        return ANSI.sub("", self.raw).replace("\r", "")

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child exited
            data = b""
        if not data:
            raise EOFError(self.screen[-2000:])
        self.raw += self.utf8.decode(data)
        self.reads += 1
        return True

    def expect(self, needle: str, timeout: float) -> str:
        """Wait until needle shows after the mark; return the text up to it and move the mark past it."""
        end = time.monotonic() + timeout
        while (i := self.screen.find(needle, self.mark)) < 0:
            if time.monotonic() > end:
                raise AssertionError(f"{needle!r} not shown within {timeout}s; screen:\n{self.screen[-2000:]}")
            self.read(0.1)
        text, self.mark = self.screen[self.mark:i], i + len(needle)
        return text

    def wait_for_text(self, timeout: float) -> None:
        """Wait until some non-blank text shows after the mark (without consuming it)."""
        end = time.monotonic() + timeout
        while not self.screen[self.mark:].strip():
            assert time.monotonic() < end, f"nothing shown within {timeout}s"
            self.read(0.1)

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def command(self, line: str, answer: str) -> None:
        """Type `line` and Enter; wait for `answer`, then for the next prompt."""
        self.send(f"{line}\r")
        self.expect(answer, PATIENCE)
        self.expect(PROMPT, PATIENCE)

    def close(self) -> int | None:
        """Wait (600 s at most, then kill) for the process to end; its exit code."""
        if self.fd < 0:
            return self.code
        self.code = None
        end = time.monotonic() + 600
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            try:
                self.read(0.05)
            except EOFError:  # the terminal closed: the process is on its way out
                time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.fd = -1
        return self.code


@contextlib.contextmanager
def chat_terminal(src: Path, *options: str):
    """`minicpm chat SRC` (greedy, one thread) in a terminal; after the block, Ctrl-D must end it with status 0."""
    exe = str(Path(sys.executable).with_name("minicpm"))
    term = Terminal([exe, "chat", str(src), "--temperature", "0", "--device", "cpu", "--threads", "1", *options])
    try:
        yield term
        term.send("\x04")  # Ctrl-D quits
        assert term.close() == 0
    finally:
        term.close()


PROMPT = ">>> "
PATIENCE = 600  # seconds: every wait ends as soon as the text shows; this only turns a hang into a failure


@pytest.mark.slow
def test_interactive_terminal_streams_saves_and_resets(tiny, tmp_path):
    # a long reply budget: the tiny model does not stop by itself, the full context (256) stops it
    with chat_terminal(tiny("dense-gqa-tied", trained=True), "--max-new-tokens", "100000",
                       "--context", "256") as term:
        banner = term.expect(PROMPT, PATIENCE)
        assert "template:" in banner and "tokenizer_config.json" in banner

        # 1. a reply streams: it arrives in many pieces, then the stats line and the prompt
        term.send("Tell me about the history of England.\r")
        term.expect("Tell me about the history of England.\n", PATIENCE)  # the echo of what was typed
        reads = term.reads
        reply = term.expect("tokens/s", PATIENCE)
        assert len(reply.split()) > 20 and term.reads - reads >= 5
        assert "context full" in term.expect(PROMPT, PATIENCE)

        # 2. /save writes the transcript; /reset clears it
        term.command(f"/save {tmp_path / 'one.json'}", "saved 2 messages")
        saved = json.loads((tmp_path / "one.json").read_text())
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
        assert saved["messages"][1]["content"].split()[:5] == reply.split()[:5]
        term.command("/reset", "history cleared")
        term.command("/system Answer like a sailor.", "system prompt set")
        term.command(f"/save {tmp_path / 'two.json'}", "saved 0 messages")
        assert json.loads((tmp_path / "two.json").read_text())["messages"] == [
            {"role": "system", "content": "Answer like a sailor."}]
        term.command("/help", "/system TEXT")


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_ends_the_reply_within_a_token_and_the_chat_goes_on(tiny, tmp_path):
    # A reply budget that cannot run out before the interrupt (100000 tokens, a context as large; the
    # model does not stop by itself): whenever the Ctrl-C lands, the reply is still being generated.
    with chat_terminal(tiny("dense-gqa-tied", trained=True), "--max-new-tokens", "100000",
                       "--context", "100000") as term:
        term.expect(PROMPT, PATIENCE)
        term.send("Write a long story about the sea.\r")
        term.expect("Write a long story about the sea.\n", PATIENCE)
        term.wait_for_text(PATIENCE)  # the reply is on screen while it is still being generated
        term.send("\x03")
        # The terminal echoes ^C where the reply was when the signal went out (and drops what was still
        # unread, as a real terminal does): at most the token in progress may follow it.
        shown = term.expect(" tokens/s", PATIENCE)
        before_stats, stats = shown.rsplit("\n", 1)
        assert "^C" in before_stats, shown
        assert len(before_stats.split("^C", 1)[1].split()) <= 2, shown
        assert "stopped (Ctrl-C)" in stats + term.expect(PROMPT, PATIENCE)
        n = int(re.search(r"(\d+) tokens", stats).group(1))
        # the cut reply is part of the conversation
        term.command(f"/save {tmp_path / 'story.json'}", "saved 2 messages")
        story = json.loads((tmp_path / "story.json").read_text())["messages"][1]["content"]
        assert 0 < len(story.split()) <= n
        term.command("/reset", "history cleared")  # the session goes on
