"""`minicpm chat`: a streaming terminal chat with any MiniCPM artifact (folder or GGUF).

Interactive on a terminal; with --prompt (or text piped on stdin) it prints one reply and exits.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.text import Text

from converters.atomic import atomic_output
from converters.errors import UsageError, UserError
from .ui import console, err_console, stage

HELP = """commands:
  /reset          forget the conversation (the system prompt stays)
  /system TEXT    set the system prompt (/system alone removes it)
  /save FILE      write the conversation as JSON
  /help           this help
  /exit           quit (or Ctrl-D); Ctrl-C stops a reply"""
DEFAULT_CONTEXT = 4096


class ChatSession:
    """A conversation with one model: history, prompt rendering, trimming and generation."""

    def __init__(self, model, fmt, generator, sampling, system: str | None):
        self.model, self.fmt, self.generator, self.sampling = model, fmt, generator, sampling
        self.system = system
        self.messages: list[dict] = []  # user / assistant turns, oldest first
        self.dropped = 0  # messages left out of the last prompt to fit the context

    def conversation(self, user: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + [{"role": "user", "content": user}]

    def prompt_ids(self, user: str) -> list[int]:
        from runtime.chat_prompt import encode_prompt, trim_history

        # leave the reply room to grow: its budget, but never more than half the context
        budget = self.generator.n_ctx - min(self.sampling.max_new_tokens, self.generator.n_ctx // 2)
        messages = self.conversation(user)
        kept, _ = trim_history(messages, lambda m: len(encode_prompt(self.model, self.fmt, m)), budget)
        self.dropped = len(messages) - len(kept)
        return encode_prompt(self.model, self.fmt, kept)

    def reply(self, user: str, write) -> str:
        """Stream one reply through write(text); it joins the history even if Ctrl-C cut it short."""
        ids = self.prompt_ids(user)
        parts: list[str] = []
        stream = self.generator.stream(ids, self.sampling)
        try:
            for piece in stream:
                if not parts:  # a reply starts at its first visible character ("▁The" -> "The")
                    piece = piece.lstrip()
                    if not piece:
                        continue
                parts.append(piece)
                write(piece)
        except KeyboardInterrupt:  # it may land here, between tokens, rather than in the generator
            self.generator.stats.stop = "interrupted"
            self._remember(user, parts)
            raise
        finally:
            stream.close()  # settles the stats
        return self._remember(user, parts)

    def _remember(self, user: str, parts: list[str]) -> str:
        reply = "".join(parts)
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return reply

    def close(self) -> None:
        """Free llama.cpp's model now (left to interpreter shutdown, its finaliser prints a traceback)."""
        self.model.close()

    def transcript(self) -> dict:
        s = self.sampling
        return {"model": str(self.model.path), "backend": self.model.backend, "template": self.fmt.source,
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


def save_transcript(session: ChatSession, arg: str) -> str:
    import json

    if not arg:
        raise UsageError("/save needs a file name: /save FILE")
    path = Path(arg).expanduser()
    with atomic_output(path, force=True, is_dir=False) as tmp:
        tmp.write_text(json.dumps(session.transcript(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
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
    elif name == "/save":
        try:
            console.print(save_transcript(session, arg), style="dim", highlight=False, markup=False)
        except UserError as exc:
            err_console.print(f"error: {exc}", style="red", highlight=False, markup=False)
    else:
        err_console.print(f"unknown command {name} (type /help)", style="red", highlight=False, markup=False)
    return True


def interactive(session: ChatSession) -> None:
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
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line
            sys.stdout.write("\n")
            continue
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not command(session, line):
                    return
                continue
            turn(session, line)
        except KeyboardInterrupt:  # Ctrl-C just after a reply or during a command: back to the prompt
            sys.stdout.write("\n")


def turn(session: ChatSession, line: str) -> None:
    """One exchange: stream the reply, then the dim stats line. Ctrl-C ends the reply early."""
    try:
        session.reply(line, write_stream)
    except KeyboardInterrupt:
        pass
    except UserError as exc:  # e.g. a message too long for the context: the chat goes on
        err_console.print(f"error: {exc}", style="red", highlight=False, markup=False)
        return
    sys.stdout.write("\n")
    console.print(stats_line(session.generator.stats, session.dropped))


def one_shot(session: ChatSession, text: str) -> None:
    try:
        session.reply(text, write_stream)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        raise typer.Exit(130) from None
    sys.stdout.write("\n")


def open_session(model_path: Path, sampling, system: str | None = None, device: str = "auto",
                 context: int | None = None, template: Path | None = None, threads: int | None = None):
    """Load a model and its chat format: a ChatSession ready for reply()."""
    from transformers.utils import logging as transformers_logging

    from runtime.chat_prompt import chat_format, end_of_turn_ids
    from runtime.generate import Generator
    from runtime.load import open_model

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
    transformers_logging.set_verbosity_error()  # config advice and loading bars are not for a chat screen
    transformers_logging.disable_progress_bar()
    with err_console.status(f"loading {model_path.name}"):
        # GGUF: llama.cpp allocates the context up front (no more than trained for, at most
        # DEFAULT_CONTEXT), and chat needs logits for the last token only (logits_all costs prefill time)
        model = open_model(model_path, device, n_ctx=context, threads=threads, logits_all=False)
    n_ctx = model.context_room(context or min(model.max_positions or DEFAULT_CONTEXT, DEFAULT_CONTEXT))
    fmt = chat_format(model, template_text)
    generator = Generator(model, n_ctx, end_of_turn_ids(model, fmt))
    return ChatSession(model, fmt, generator, sampling, system)


@stage
def chat(
    model: Path = typer.Argument(..., help="MiniCPM / llama-format / quantized / MiniCPM3 folder, or a .gguf file."),
    system: str = typer.Option(None, "--system", help="System prompt."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Print one reply to this and exit (also: pipe text on stdin)."),
    temperature: float = typer.Option(0.7, help="0: greedy, deterministic."),
    top_p: float = typer.Option(0.8, "--top-p", help="Nucleus sampling mass (1: off)."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k likeliest tokens (0: off)."),
    repetition_penalty: float = typer.Option(1.02, "--repetition-penalty", help="Over the last 64 reply tokens (1: off)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest reply, in tokens."),
    seed: int = typer.Option(None, "--seed", help="Random seed for sampling (default: a fresh one)."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    context: int = typer.Option(None, "--context", help=f"Context window in tokens (default: the model's, at most {DEFAULT_CONTEXT})."),
    template: Path = typer.Option(None, "--template", help="A Jinja chat template file to use instead of the model's."),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default: every core)."),
):
    """Chat with a model in the terminal; the reply streams as it is generated."""
    from runtime.generate import Sampling

    sampling = Sampling(temperature, top_p, top_k, repetition_penalty, max_new_tokens, seed).check()
    if prompt is None and sys.stdin.isatty():
        session = open_session(model, sampling, system, device, context, template, threads)
        console.print(Text(f"{model} · {session.model.backend} · template: {session.fmt.source} · "
                           f"context {session.generator.n_ctx} · /help for commands, Ctrl-D to quit", style="dim"))
        try:
            interactive(session)
        finally:
            session.close()
        return
    if prompt is None:
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise UsageError("no prompt: give --prompt TEXT or pipe text on stdin")
    session = open_session(model, sampling, system, device, context, template, threads)
    try:
        one_shot(session, prompt)
    finally:
        session.close()
