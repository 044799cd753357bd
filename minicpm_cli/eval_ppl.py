"""`minicpm eval-ppl`: perplexity, memory and speed of MiniCPM artifacts side by side, or the
next-token agreement of two of them (--compare)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from converters.atomic import check_output
from converters.errors import UsageError
from .sources import check_revision, model_source, revision_option
from .ui import console, err_console, human_bytes, stage, table, write_json


@contextlib.contextmanager
def token_progress(label: str, total: int):
    """A progress bar over scored tokens (terminals only, as every verb's)."""
    with Progress(TextColumn("scoring {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("tokens"), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _print_wide(renderable) -> None:
    """In a terminal rich fits the table to its width; into a file or pipe, print it unwrapped."""
    if console.is_terminal:
        return console.print(renderable)
    width = console.width
    console.width = max(width, console.measure(renderable, options=console.options.update_width(1000)).maximum)
    try:
        console.print(renderable)
    finally:
        console.width = width


def _letter(group: int) -> str:
    return chr(ord("A") + group) if group < 26 else str(group)


def _pm(value: float, err: float) -> str:
    return f"{value:.4f} ± {err:.4f}" if value < 100 else f"{value:.2f} ± {err:.2f}"


@stage
def eval_ppl(
    models: list[Path] = typer.Argument(..., help="MiniCPM/Llama/MiniCPM3 folders, quantized folders, .gguf files, "
                                        "or hub names (org/name, modelscope:org/name) to download."),
    dataset: str = typer.Option("wikitext2", help="wikitext2 (downloaded), a local WikiText copy (.parquet/.arrow "
                                "with a `text` column, .raw, or a folder of those), or any UTF-8 text file."),
    split: str = typer.Option("test", help="Split of wikitext2 or of a WikiText folder."),
    ctx: int = typer.Option(2048, min=2, help="Tokens per window (BOS included)."),
    stride: int = typer.Option(None, min=1, help="Slide windows by N tokens and score only the new ones "
                               "(default: --ctx, non-overlapping windows)."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Score only the first N tokens of the text."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Windows per forward pass (HF backend)."),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    dtype: str = typer.Option("auto", help="HF weights: f32, bf16, f16 or auto (f32 on CPU, bf16 on GPU)."),
    threads: int = typer.Option(None, min=1, help="CPU threads for torch and llama.cpp (default: torch's)."),
    compare: Path = typer.Option(None, "--compare", help="Score B on the same ids as MODEL: KL, top-1 agreement."),
    json_out: Path = typer.Option(None, "--json", help="Also write the results as JSON to this file."),
    plot: Path = typer.Option(None, "--plot", help="Draw perplexity against size on disk (.png, .svg, .pdf)."),
    revision: str = revision_option(),
    lora: list[Path] = typer.Option(None, "--lora", help="A PEFT LoRA adapter merged into the first MODEL (A with "
                                    "--compare), so `eval-ppl BASE --lora X --compare BASE` measures the fine-tune; "
                                    "repeat to apply several in order."),
    force: bool = typer.Option(False, "--force", help="Replace --json / --plot files that are earlier outputs."),
):
    """Perplexity (± stderr), tokens/s, peak memory and size of each MODEL on the same text."""
    from runtime.plot import plot_format

    sources = [*models, *([compare] if compare else [])]
    if plot is not None:
        plot_format(plot)
    for out, kind in ((json_out, "json"), (plot, "plot")):
        if out is not None:
            check_output(out, force, kind, sources)  # before minutes of scoring
    if compare is not None and len(models) != 1:
        raise UsageError("--compare B takes exactly one MODEL (the reference A)")
    given = [*models, *([compare] if compare else [])]
    check_revision(given, revision)
    with contextlib.ExitStack() as stack:
        local = [stack.enter_context(model_source(m, revision, lora if i == 0 else None))
                 for i, m in enumerate(given)]
        labels = {str(path): label for i, (arg, path) in enumerate(zip(given, local))
                  if (label := _label(arg, path, bool(lora) and i == 0))}
        _evaluate(local[: len(models)], local[-1] if compare else None, labels, dataset, split, ctx, stride,
                  max_tokens, batch_size, device, dtype, threads, json_out, plot, force, sources)


def _label(arg: Path, path: Path, merged: bool) -> str | None:
    """What tables call a downloaded or merged model: the hub name, not a cache snapshot; BASE+ADAPTER."""
    from converters.hub import is_hub_name

    if merged:
        return path.name
    return str(arg) if is_hub_name(arg) else None


def _evaluate(models, compare, labels, dataset, split, ctx, stride, max_tokens, batch_size, device, dtype, threads,
              json_out, plot, force, sources) -> None:
    from runtime.perplexity import check_model_path, compare as compare_models, evaluate, load_text

    for path in [*models, *([compare] if compare else [])]:
        check_model_path(path)  # a mistyped MODEL is named before the dataset is looked for
    text, source = load_text(dataset, split)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar per model, ours
    options = dict(ctx=ctx, stride=stride, max_tokens=max_tokens, batch_size=batch_size, device=device,
                   dtype=dtype, threads=threads, progress=token_progress)
    if compare is not None:
        c = compare_models(models[0], compare, text, **options)
        c.a, c.b = labels.get(c.a, c.a), labels.get(c.b, c.b)
        return _render_compare(c, source, ctx, json_out, force, sources)
    result = evaluate(models, text, **options)
    for warning in result.warnings:
        err_console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    rows, groups = [], {r.ids_group for r in result.results}
    for r in result.results:
        name = escape(labels.get(r.model, Path(r.model).name)) + (f" (ids {_letter(r.ids_group)})" if len(groups) > 1 else "")
        backend = f"{r.backend} {r.weights}"
        if r is result.results[0]:
            delta = "ref"
        elif r.delta_pct is None:
            delta = "—"
        else:
            delta = f"{r.delta_pct:+.2f}% ± {r.delta_pct_stderr:.2f}"
        rows.append([name, backend, _pm(r.ppl, r.stderr), delta, r.tokens, round(r.tokens_per_s),
                     human_bytes(r.peak_mem_bytes) + (" GPU" if r.peak_mem_kind == "cuda" else ""),
                     human_bytes(r.size_bytes)])
    stride_text = f", stride {stride}" if stride else ""
    _print_wide(table(f"perplexity on {source}: ctx {ctx}{stride_text}, {result.device}",
                      ["model", "backend", "ppl ± stderr", "Δ% (paired)", "tokens", "tok/s", "peak mem", "size"],
                      rows))
    if len(groups) > 1:
        console.print("(ids A), (ids B)…: models with different letters were scored on different token ids "
                      "(different tokenizers); Δ% is shown only for those with the first model's ids.",
                      highlight=False, markup=False)
    if json_out:
        write_json(json_out, {"dataset": source, "ctx": ctx, "stride": stride, "device": result.device,
                              "models": result.results}, force, sources)
    if plot:
        from runtime.plot import plot_ppl_vs_size

        plot_ppl_vs_size(result.results, plot, f"perplexity vs size: {source}, ctx {ctx}", force, sources)


def _render_compare(c, source: str, ctx: int, json_out: Path | None, force: bool, sources) -> None:
    rows = [["A", escape(c.a)], ["B", escape(c.b)], ["dataset", escape(source)], ["tokens", f"{c.tokens} (ctx {ctx})"],
            ["KL(A‖B) mean", f"{c.kl_mean:.3e} nats"], ["KL(A‖B) p99", f"{c.kl_p99:.3e} nats"],
            ["KL(A‖B) max", f"{c.kl_max:.3e} nats"], ["top-1 agreement", f"{100 * c.top1_agreement:.2f}%"],
            ["max |Δlogit|", f"{c.max_abs_logit_diff:.3e}"],
            ["ppl A", _pm(c.ppl_a, c.stderr_a)], ["ppl B", _pm(c.ppl_b, c.stderr_b)],
            ["time", f"{c.seconds:.2f} s"]]
    _print_wide(table("next-token agreement of B with A", ["", "value"], rows))
    if c.note:
        console.print(f"note: {c.note}", highlight=False, markup=False)
    if json_out:
        write_json(json_out, {"dataset": source, "ctx": ctx, "compare": c}, force, sources)
