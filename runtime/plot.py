"""Perplexity against size on disk: one labelled point (with its standard error) per model."""
from __future__ import annotations

from pathlib import Path

FORMATS = ("png", "svg", "pdf")


def plot_format(out: Path) -> str:
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        from converters.errors import UsageError

        raise UsageError(f"--plot {out}: expected a .png, .svg or .pdf file name")
    return fmt


def plot_ppl_vs_size(results, out: Path, title: str) -> None:
    """Write the plot to `out` (format from its suffix) through a temporary file beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters.atomic import atomic_output

    fmt = plot_format(out)
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ordered = sorted(results, key=lambda r: r.size_bytes)
    for rank, r in enumerate(ordered):
        mb = r.size_bytes / 2**20
        ax.errorbar(mb, r.ppl, yerr=r.stderr, fmt="o", capsize=3)
        # Labels of the right half point left, and neighbours alternate above/below, so they rarely collide.
        right = rank >= len(ordered) / 2 and len(ordered) > 1
        ax.annotate(f"{Path(r.model).name} ({r.weights})", (mb, r.ppl), textcoords="offset points",
                    xytext=(-6 if right else 6, 6 if rank % 2 == 0 else -12), ha="right" if right else "left",
                    fontsize=8)
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
    with atomic_output(out, force=True, is_dir=False) as tmp:
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
