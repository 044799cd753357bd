"""`minicpm chat`: a streaming terminal chat with any MiniCPM artifact (folder or GGUF).

Interactive on a terminal; with --prompt (or text piped on stdin) it prints one reply and exits.
With a thinking template (one that reads `enable_thinking`) the reasoning streams dimmed and set apart from
the answer; the one-shot reply prints only the answer unless --show-thinking asks for the reasoning too.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

import typer
from rich.text import Text

from converters.atomic import write_json
from converters.errors import UsageError, UserError
from .sources import check_revision, lora_option, model_source, revision_option
from .ui import console, err_console, stage

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (/system alone removes it)
  /save FILE      write the conversation as JSON to a new FILE
  /save --force FILE   replace FILE if it is a JSON file (an earlier transcript)
  /think          thinking on (templates that read enable_thinking)
  /no_think       thinking off
  /help           this help
  /exit           quit (or Ctrl-D); Ctrl-C stops a reply"""
DEFAULT_CONTEXT = 4096


class ChatSession:
    """A conversation with one model: history, prompt rendering, trimming and generation."""

    def __init__(self, model, fmt, generator, sampling, system: str | None, thinking: bool | None = None,
                 sampling_sources: dict[str, str] | None = None):
        self.model, self.fmt, self.generator, self.sampling = model, fmt, generator, sampling
        self.system = system
        self.thinking = thinking  # enable_thinking for the template; None: the template's own default
        self.sampling_sources = sampling_sources or {}
        self.messages: list[dict] = []  # user / assistant turns, oldest first
        self.dropped = 0  # messages left out of the last prompt to fit the context
        self.opens_thinking = False  # the last prompt ended inside <think>

    def conversation(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + [{"role": "user", "content": user}]

    def prompt_ids(self, user: str) -> list[int]:
        from runtime.chat_prompt import encode_prompt, trim_history

        # leave the reply room to grow: its budget, but never more than half the context
        budget = self.generator.n_ctx - min(self.sampling.max_new_tokens, self.generator.n_ctx // 2)
        messages = self.conversation(user)
        think = self.thinking
        kept, _ = trim_history(messages, lambda m: len(encode_prompt(self.model, self.fmt, m, think)), budget)
        self.dropped = len(messages) - len(kept)
        if self.fmt.thinks:
            from runtime.thinking import prompt_opens_thinking

            self.opens_thinking = prompt_opens_thinking(self.fmt.render(kept, enable_thinking=think))
        return encode_prompt(self.model, self.fmt, kept, think)

    def reply(self, user: str, write, write_reasoning=None, interrupted=lambda: False) -> str:
        """Stream one reply's answer through write(text) and, with a thinking template, its reasoning
        through write_reasoning(text) (if given), until it ends or interrupted() turns true (asked after
        every token); it joins the history even if Ctrl-C cut it short."""
        from runtime.thinking import ThinkingSplitter

        ids = self.prompt_ids(user)
        split = ThinkingSplitter(self.opens_thinking) if self.fmt.thinks else None
        parts: list[str] = []

        def show(segments):
            for kind, text in segments:
                if kind == "answer":
                    write(text)
                elif write_reasoning is not None:
                    write_reasoning(text)

        stream = self.generator.stream(ids, self.sampling, interrupted)
        try:
            for piece in stream:
                if split is not None:
                    show(split.push(piece))
                    continue
                if not parts:  # a reply starts at its first visible character ("▁The" -> "The")
                    piece = piece.lstrip()
                    if not piece:
                        continue
                parts.append(piece)
                write(piece)
            if split is not None:
                show(split.flush())
        except KeyboardInterrupt:  # it may land here, between tokens, rather than in the generator
            self.generator.stats.stop = "interrupted"
            self._remember(user, parts, split)
            raise
        finally:
            stream.close()  # settles the stats
        return self._remember(user, parts, split)

    def _remember(self, user: str, parts: list[str], split=None) -> str:
        """Keep the turn; a reasoning goes in `reasoning_content`, for the template to keep or drop."""
        answer = "".join(split.answer if split is not None else parts)
        message = {"role": "assistant", "content": answer}
        if split is not None and split.reasoning:
            message["reasoning_content"] = "".join(split.reasoning)
        self.messages += [{"role": "user", "content": user}, message]
        return answer

    def close(self) -> None:
        """Free llama.cpp's model now (left to interpreter shutdown, its finaliser prints a traceback)."""
        self.model.close()

    def transcript(self) -> dict:
        s = self.sampling
        return {"model": str(self.model.path), "backend": self.model.backend, "template": self.fmt.source,
                "enable_thinking": self.thinking,
                "sampling": {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                             "repetition_penalty": s.repetition_penalty, "max_new_tokens": s.max_new_tokens,
                             "seed": s.seed},
                "messages": self.conversation("")[:-1]}


def stats_line(stats, dropped: int) -> Text:
    parts = [f"{stats.new_tokens} tokens", f"{stats.tokens_per_s:.1f} tokens/s",
             f"first token {stats.first_token_s:.2f} s"]
    parts += {"interrupted": ["stopped (Ctrl-C)"], "length": ["hit --max-new-tokens"],
              "context": ["context full"]}.get(stats.stop, [])
    if dropped:
        parts.append(f"{dropped} oldest messages left out to fit the context")
    return Text(" · ".join(parts), style="dim")


def write_stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class ReplyWriter:
    """Writes one reply to stdout: the reasoning (if shown) set apart, then the answer.

    On a terminal the reasoning is dim (SGR 2) and a blank line separates it from the answer; in a pipe it
    keeps the model's own `<think>` … `</think>` markers, so the two stay apart in plain text too.
    """

    def __init__(self, show_reasoning: bool):
        self.show = show_reasoning
        self.tty = sys.stdout.isatty()
        self.open = False

    def reasoning(self, text: str) -> None:
        if not self.show:
            return
        if not self.open:
            write_stream("\033[2m" if self.tty else "<think>\n")
            self.open = True
        write_stream(text)

    def answer(self, text: str) -> None:
        self.close()
        write_stream(text)

    def close(self) -> None:
        if self.open:
            write_stream("\033[22m\n\n" if self.tty else "\n</think>\n\n")
            self.open = False


def save_transcript(session: ChatSession, arg: str) -> str:
    """`/save [--force] FILE`: the same output policy as every verb's OUT (converters.atomic)."""
    force = arg.startswith("--force ") or arg == "--force"
    arg = arg.removeprefix("--force").strip() if force else arg
    if not arg:
        raise UsageError("/save needs a file name: /save FILE")
    path = Path(arg).expanduser()
    write_json(path, session.transcript(), force, [session.model.path])
    return f"saved {len(session.messages)} messages to {path}"


def command(session: ChatSession, line: str) -> bool:
    """Run one /command; False means quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/help":
        console.print(HELP, highlight=False, markup=False)
    elif name == "/reset":
        session.messages.clear()
        console.print("history cleared", style="dim")
    elif name == "/system":
        session.system = arg or None
        console.print(f"system prompt set: {arg}" if arg else "system prompt removed", style="dim",
                      highlight=False, markup=False)
    elif name in ("/think", "/no_think"):
        if not session.fmt.thinks:
            err_console.print(f"{name}: the chat template ({session.fmt.source}) does not read enable_thinking",
                              style="red", highlight=False, markup=False)
        else:
            session.thinking = name == "/think"
            console.print(f"thinking {'on' if session.thinking else 'off'}", style="dim")
    elif name == "/save":
        try:
            console.print(save_transcript(session, arg), style="dim", highlight=False, markup=False)
        except UserError as exc:
            err_console.print(f"error: {exc}", style="red", highlight=False, markup=False)
    else:
        err_console.print(f"unknown command {name} (type /help)", style="red", highlight=False, markup=False)
    return True


def _unless_terminated(exc: KeyboardInterrupt) -> None:
    """Ctrl-C stops a reply; SIGTERM/SIGHUP (app.Terminated) end the chat."""
    if hasattr(exc, "signum"):
        raise exc


def interactive(session: ChatSession, show_reasoning: bool = True) -> None:
    try:
        import readline  # noqa: F401  (gives input() line editing and history)
    except ImportError:  # pragma: no cover - Windows
        pass
    prompt = "\001\033[1;32m\002>>> \001\033[0m\002"  # \001..\002 tell readline the colour takes no room
    while True:
        try:
            line = input(prompt).strip()
        except EOFError:  # Ctrl-D
            sys.stdout.write("\n")
            return
        except KeyboardInterrupt as exc:  # Ctrl-C at the prompt: a fresh line
            _unless_terminated(exc)
            sys.stdout.write("\n")
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not command(session, line):
                    return
                continue
            turn(session, line, show_reasoning)
        except KeyboardInterrupt as exc:  # Ctrl-C just after a reply or during a command: back to the prompt
            _unless_terminated(exc)
            sys.stdout.write("\n")


@contextlib.contextmanager
def ctrl_c_ends_reply():
    """While a reply streams, Ctrl-C ends it after the token in progress; a second Ctrl-C raises
    KeyboardInterrupt at once (e.g. during a long prompt's prefill). Yields interrupted() for reply().

    A flag asked between tokens rather than Python's own KeyboardInterrupt: that exception is raised
    in whatever Python code runs when the handler runs, and code called from C that discards errors
    (finalizers, __eq__ under a dictionary lookup, attribute probes) drops it, and the reply goes on
    to its end (issue 11 saw a ^C echoed mid-reply, then 150 more tokens until the context was full).
    A flag cannot be dropped.
    """
    pressed = False

    def on_sigint(signum, frame):
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def turn(session: ChatSession, line: str, show_reasoning: bool = True) -> None:
    """One exchange: stream the reply, then the dim stats line. Ctrl-C ends the reply early."""
    out = ReplyWriter(show_reasoning)
    try:
        with ctrl_c_ends_reply() as interrupted:
            session.reply(line, out.answer, out.reasoning, interrupted)
    except KeyboardInterrupt as exc:
        _unless_terminated(exc)
    except UserError as exc:  # e.g. a message too long for the context: the chat goes on
        out.close()
        err_console.print(f"error: {exc}", style="red", highlight=False, markup=False)
        return
    finally:
        out.close()
    sys.stdout.write("\n")
    console.print(stats_line(session.generator.stats, session.dropped))


def one_shot(session: ChatSession, text: str, show_reasoning: bool = False) -> None:
    out = ReplyWriter(show_reasoning)
    try:
        with ctrl_c_ends_reply() as interrupted:
            session.reply(text, out.answer, out.reasoning, interrupted)
        stopped = interrupted()
    except KeyboardInterrupt as exc:
        _unless_terminated(exc)
        stopped = True
    out.close()
    sys.stdout.write("\n")
    if stopped:
        raise typer.Exit(130)


def open_session(model_path: Path, sampling, system: str | None = None, device: str = "auto",
                 context: int | None = None, template: Path | None = None, threads: int | None = None,
                 thinking: bool | None = None):
    """Load a model and its chat format: a ChatSession ready for reply().

    sampling: a Sampling, or a dict of the values the user gave (None: not given), completed from the
    model's generation config and then the project's defaults."""
    from transformers.utils import logging as transformers_logging

    from runtime.chat_prompt import chat_format, end_of_turn_ids
    from runtime.generate import Generator
    from runtime.load import open_model
    from runtime.model_defaults import generation_stop_ids, resolve_sampling

    if not model_path.exists():
        raise UsageError(f"{model_path}: no such file or directory")
    if context is not None and context < 16:
        raise UsageError(f"--context {context}: must be at least 16")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads}: must be at least 1")
    template_text = None
    if template is not None:
        try:
            template_text = template.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--template {template}: cannot be read ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"--template {template}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    transformers_logging.set_verbosity_error()  # config advice and loading bars are not for a chat screen
    transformers_logging.disable_progress_bar()
    with err_console.status(f"loading {model_path.name}"):
        # GGUF: llama.cpp allocates the context up front (no more than trained for, at most
        # DEFAULT_CONTEXT), and chat needs logits for the last token only (logits_all costs prefill time)
        model = open_model(model_path, device, n_ctx=context, threads=threads, logits_all=False)
    n_ctx = model.context_room(context or min(model.max_positions or DEFAULT_CONTEXT, DEFAULT_CONTEXT))
    fmt = chat_format(model, template_text)
    if thinking is not None and not fmt.thinks:
        raise UsageError(f"--{'think' if thinking else 'no-think'}: the chat template ({fmt.source}) does not "
                         "read enable_thinking")
    sources = None
    if isinstance(sampling, dict):
        sampling, sources = resolve_sampling(sampling, model)
    generator = Generator(model, n_ctx, end_of_turn_ids(model, fmt) | generation_stop_ids(model))
    return ChatSession(model, fmt, generator, sampling, system, thinking, sources)


@stage
def chat(
    model: Path = typer.Argument(..., help="MiniCPM / llama-format / quantized / MiniCPM3 folder, a .gguf file, "
                                 "or a hub name (org/name, modelscope:org/name) to download."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Print one reply to this and exit (also: pipe text on stdin)."),
    temperature: float = typer.Option(None, help="0: greedy, deterministic. Default: the model's generation config, else 0.7."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling mass (1: off). Default: the model's, else 0.8."),
    top_k: int = typer.Option(None, "--top-k", help="Sample from the k likeliest tokens (0: off). Default: the model's, else 0."),
    repetition_penalty: float = typer.Option(None, "--repetition-penalty", help="Over the last 64 reply tokens (1: off). Default: the model's, else 1.02."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest reply, in tokens."),
    seed: int = typer.Option(None, "--seed", help="Random seed for sampling (default: a fresh one)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    context: int = typer.Option(None, "--context", help=f"Context window in tokens (default: the model's, at most {DEFAULT_CONTEXT})."),
    template: Path = typer.Option(None, "--template", help="A Jinja chat template file to use instead of the model's."),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: every core)."),
    revision: str = revision_option(),
    lora: list[Path] = lora_option(),
    think: bool = typer.Option(None, "--think/--no-think", help="Thinking on or off (templates that read enable_thinking; default: the template's own)."),
    show_thinking: bool = typer.Option(None, "--show-thinking/--hide-thinking", help="Show the reasoning, dimmed (default: shown in the chat, hidden with --prompt)."),
):
    """Chat with a model in the terminal; the reply streams as it is generated."""
    from runtime.generate import Sampling
    from runtime.model_defaults import describe

    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k,
             "repetition_penalty": repetition_penalty, "max_new_tokens": max_new_tokens, "seed": seed}
    Sampling(**{k: v for k, v in given.items() if v is not None}).check()  # bad flags fail before loading
    check_revision([model], revision)
    import atexit
    import contextlib

    sources = contextlib.ExitStack()  # a hub snapshot or --lora view for this process's whole chat
    atexit.register(sources.close)
    model_dir = sources.enter_context(model_source(model, revision, lora))
    if prompt is None and sys.stdin.isatty():
        session = open_session(model_dir, given, system, device, context, template, threads, think)
        mode = ""
        if session.fmt.thinks:
            mode = " · thinking " + {True: "on", False: "off", None: "as the template decides"}[think] + " (/think, /no_think)"
        console.print(Text(f"{model} · {session.model.backend} · template: {session.fmt.source} · "
                           f"context {session.generator.n_ctx}{mode} · /help for commands, Ctrl-D to quit\n"
                           f"sampling: {describe(session.sampling, session.sampling_sources)}", style="dim"))
        try:
            interactive(session, show_thinking is not False)
        finally:
            session.close()
        return
    if prompt is None:
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise UsageError("no prompt: give --prompt TEXT or pipe text on stdin")
    session = open_session(model_dir, given, system, device, context, template, threads, think)
    try:
        one_shot(session, prompt, bool(show_thinking))
    finally:
        session.close()
