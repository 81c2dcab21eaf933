"""Figures for the HTML report, as PNG data URIs (matplotlib, Agg backend), so the page is one file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def data_uri(fig: Figure) -> str:
    """Encode a figure as a PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def png_uri(data: bytes) -> str:
    """A PNG file's bytes as a data URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], title: str, cols: int = 8) -> str:
    """Thumbnails in rows of `cols` with a caption under each."""
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions, strict=False):
        ax.imshow(img if img.ndim == 3 and img.shape[2] == 3 else img.squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(cap, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return data_uri(fig)


def loss_curves(metrics: pd.DataFrame, title: str) -> str:
    """Loss against global step, one colour per curriculum stage, with the lr on a second axis."""
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for stage, g in metrics.groupby("stage", sort=False):
        ax.plot(g["global_step"], g["loss"], marker=".", label=f"stage {stage}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    if "lr" in metrics:
        ax2 = ax.twinx()
        ax2.plot(metrics["global_step"], metrics["lr"], color="grey", alpha=0.4, linestyle="--")
        ax2.set_ylabel("learning rate", color="grey")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return data_uri(fig)


def efficiency_curves(curves: pd.DataFrame, title: str, ylabel: str) -> str:
    """Mean ± 95% CI band against label fraction, one line per model."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for model, g in curves.groupby("model", sort=False):
        g = g.sort_values("fraction")
        ax.plot(g["fraction"] * 100, g["mean"], marker="o", label=model)
        ax.fill_between(g["fraction"] * 100, g["ci_low"], g["ci_high"], alpha=0.2)
    ax.set_xlabel("labelled training images used (%)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return data_uri(fig)


def subgroup_bars(summary: pd.DataFrame, title: str) -> str:
    """Subgroup metric with 95% CI whiskers, grouped by attribute; groups too small to report are labelled so."""
    rows = summary.reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ok = ~rows["too_small"].astype(bool)
    err = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]).clip(min=0)
    ax.barh(y[ok], rows["mean"][ok], xerr=err[:, ok.to_numpy()], color="#3b6fd6", alpha=0.8)
    for i in y[~ok]:
        ax.text(0.01, i, "too small to report", va="center", fontsize=7, color="grey")
    ax.set_yticks(y, [f"{a}: {g}" for a, g in zip(rows["attribute"], rows["group"], strict=True)], fontsize=7)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(str(rows["metric"].iat[0]) if len(rows) else "")
    ax.set_title(title, fontsize=9)
    return data_uri(fig)


def step_curve(curve: pd.DataFrame, title: str, ylabel: str) -> str:
    """Mean ± CI against pretraining step."""
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    curve = curve.sort_values("pretrain_step")
    ax.plot(curve["pretrain_step"], curve["mean"], marker="o")
    ax.fill_between(curve["pretrain_step"], curve["ci_low"], curve["ci_high"], alpha=0.2)
    ax.set_xlabel("pretraining step of the checkpoint")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    return data_uri(fig)
