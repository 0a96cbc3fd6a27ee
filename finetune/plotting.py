"""Figures drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display) and saved as
PNG atomically. matplotlib is imported inside the functions: it costs ~0.5 s."""

from __future__ import annotations

from pathlib import Path

from .files import atomic_write


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path, dpi: int = 110) -> Path:
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path
