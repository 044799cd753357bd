"""The `minicpm` command: parse arguments, call a stage, render its result."""
from __future__ import annotations

import contextlib
import inspect
import signal
import sys

import typer

try:  # typer >= 0.24 vendors its own click
    import typer._click as click
except ImportError:  # pragma: no cover
    import click

app = typer.Typer(
    name="minicpm",
    help="Convert, quantize, measure and chat with MiniCPM models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Convert, quantize, measure and chat with MiniCPM models."""


def reflowed(verb) -> str:
    """A verb's docstring as --help prose: typer keeps the source's line breaks inside every paragraph
    after the first, so `quantize --help` printed 90-column source lines re-wrapped at the terminal's."""
    paragraphs = inspect.cleandoc(verb.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


# Each verb lives in its own module, which never imports this one; the table below registers them.
from . import chat, convert, eval_ppl, inspect_verb, quantize  # noqa: E402

for name, verb in (("chat", chat.chat), ("convert", convert.convert), ("eval-ppl", eval_ppl.eval_ppl),
                   ("inspect", inspect_verb.inspect), ("quantize", quantize.quantize)):
    app.command(name, help=reflowed(verb))(verb)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so every temporary is removed; exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_like_ctrl_c():
    """SIGTERM and SIGHUP raise Terminated for the duration (main thread only, as Python requires)."""
    previous = {s: signal.signal(s, _terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main() -> None:
    """Entry point: usage errors are one stderr line and exit 2, like every other bad input."""
    try:
        with terminate_like_ctrl_c():
            code = app(standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        code = 0
    except click.exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "minicpm"
        message = exc.format_message().replace("Value error, ", "")
        print(f"error: {where}: {message} (see '{where} --help')", file=sys.stderr)
        code = 2
    except click.exceptions.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        code = exc.exit_code
    except typer.Abort:
        code = 130
    sys.exit(code or 0)

