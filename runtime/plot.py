"""Perplexity against size on disk: one point (with its standard error) per model, named in a legend."""
from __future__ import annotations

from pathlib import Path

FORMATS = ("png", "svg", "pdf")


def plot_format(out: Path) -> str:
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        from converters.errors import UsageError

        raise UsageError(f"--plot {out}: expected a .png, .svg or .pdf file name")
    return fmt


def plot_ppl_vs_size(results, out: Path, title: str, force: bool = False, sources=()) -> None:
    """Write the plot to `out` (format from its suffix) through a temporary file beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters.atomic import atomic_output

    fmt = plot_format(out)
    from matplotlib.ticker import ScalarFormatter

    plt.rcParams["svg.fonttype"] = "none"  # SVG keeps its labels as text: searchable, smaller
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    # A legend, not labels beside the points: models of about the same size would share one spot.
    for r in sorted(results, key=lambda r: r.size_bytes):
        ax.errorbar(r.size_bytes / 2**20, r.ppl, yerr=r.stderr, fmt="o", capsize=3,
                    label=f"{Path(r.model).name} ({r.weights})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)  # beside the axes
    sizes = [r.size_bytes for r in results]
    if max(sizes) > 4 * min(sizes):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.margins(x=0.08)
    ax.set_xlabel("size on disk (MiB)")
    ax.set_ylabel("perplexity (± stderr)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_output(out, force, "plot", sources) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
