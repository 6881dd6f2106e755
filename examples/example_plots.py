"""The plotting the examples share (matplotlib, headless): grouped bars per model, and saving a figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grouped_bars(ax: Any, table: Mapping[str, Sequence[float]], labels: Sequence[str]) -> None:
    """One group of bars per label, one bar per row of `table` (`{series name: a value per label}`) in each."""
    width = 0.8 / len(table)
    for i, (name, values) in enumerate(table.items()):
        ax.bar([j + (i - (len(table) - 1) / 2) * width for j in range(len(labels))], list(values), width, label=name)
    ax.set_xticks(range(len(labels)), labels)


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
