"""Rich output shared by the verbs: one console for results, stderr for errors and progress."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from converters.errors import UserError
from converters.official import forget_notices

console = Console()
err_console = Console(stderr=True)


def stage(fn):
    """Run a verb: a UserError becomes one stderr line and its exit code; Ctrl-C exits 130."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        forget_notices()  # each verb says its notes once
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (app.Terminated, which has .signum)
            err_console.print("[bold red]interrupted[/]: nothing was written", highlight=False)
            raise typer.Exit(128 + getattr(exc, "signum", 2)) from None
    return run


@contextlib.contextmanager
def byte_progress(total: int, description: str):
    """A progress bar over bytes (terminals only); yields a callback (name, nbytes) for the stages."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=err_console, disable=not err_console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda name, n: progress.advance(task, n)


def table(title: str, columns: list[str], rows: list[list]) -> Table:
    """A rich table; columns whose cells are all numbers are right-aligned."""
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        numeric = rows and all(isinstance(r[i], (int, float)) for r in rows)
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def jsonable(data):
    """Results as JSON values: dataclasses become objects of their fields (less those marked
    metadata={"json": False}), paths strings; the one conversion every verb's --json goes through."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return {f.name: jsonable(getattr(data, f.name)) for f in dataclasses.fields(data)
                if f.metadata.get("json", True)}
    if isinstance(data, dict):
        return {k: jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [jsonable(v) for v in data]
    if isinstance(data, Path):
        return str(data)
    return data


def write_json(path, data, force: bool = False, sources=()) -> None:
    """--json FILE under the output policy (converters.atomic)."""
    from converters.atomic import write_json as write_output

    write_output(Path(path), jsonable(data), force, sources)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
