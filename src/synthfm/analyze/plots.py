"""Figures for the analysis stage: image grids and scatter plots (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from synthfm.io import atomic_path


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write a figure as PNG atomically and close it."""
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def image_grid(rows: list[list[np.ndarray]], titles: list[str], path: str | Path,
               row_labels: list[str] | None = None) -> Path:
    """A grid of images (one list per row, columns titled) saved as PNG."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(row[j], cmap="gray" if row[j].ndim == 2 else None)
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
        if row_labels:
            axes[i][0].text(-0.05, 0.5, row_labels[i], transform=axes[i][0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=7)
    return save_figure(fig, path)


def scatter_by(points: np.ndarray, values: pd.Series, title: str, path: str | Path) -> Path:
    """2-D points coloured by a column: a colour bar for numbers, a legend for categories."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > 8
    if numeric:
        sc = ax.scatter(points[:, 0], points[:, 1], c=values.astype(float), s=6, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=str(values.name))
    else:
        cats = values.astype(str)
        for k, cat in enumerate(sorted(cats.unique())):
            sel = (cats == cat).to_numpy()
            ax.scatter(points[sel, 0], points[sel, 1], s=6, label=cat, color=plt.cm.tab10(k % 10))
        ax.legend(fontsize=7, markerscale=2, title=str(values.name), title_fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
