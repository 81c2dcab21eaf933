"""Draw docs/images/phantom_grid.jpg: phantoms beside real images, one modality per row.

Rows: (1) one fundus phantom eye (same seed) healthy, with DR grades 2 and 4, glaucoma, AMD and
cataract, each with a zoom on the optic disc (inset, bottom left); (2) real CSDI cataract fundus
photographs (CC BY 4.0), one per severity band plus one, cropped to the field of view; (3) four chest
X-ray phantoms and two real paediatric chest X-rays (Kermany et al., CC BY 4.0 at origin); (4) three
RaSD samples, each beside its structure label map.
Usage: python docs/phantom_grid.py [--data ../shared/data] [--out docs/images/phantom_grid.jpg]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from synthfm.data.images import load_image
from synthfm.data.preprocess import apply_geometry, fov_box, fov_mask, resize
from synthfm.synth.cxr import CXRPhantom
from synthfm.synth.fundus import FundusPhantom
from synthfm.synth.rasd import RaSDConfig, render_rasd

REPO = Path(__file__).resolve().parents[1]
TILE = 256  # rendering / resampling size of every panel
Panel = tuple[np.ndarray, str, tuple[int, int, int, int] | None]  # image, title, box (r0, r1, c0, c1) to zoom

FUNDUS_PANELS = [
    ({}, "healthy"), ({"dr_grade": 2}, "DR grade 2"), ({"dr_grade": 4}, "DR grade 4 (PDR)"),
    ({"glaucoma": 1, "cup_to_disc": 0.8}, "glaucoma (CDR 0.8)"), ({"amd": 1}, "AMD"), ({"cataract": 1}, "cataract"),
]
FUNDUS_BASE = {"dr_grade": 0, "glaucoma": 0, "amd": 0, "cataract": 0, "age": 62.0, "ethnicity": "white",
               "device": "topcon"}
CXR_PANELS = [
    ({"tb": 0, "sex": "M", "age": 40.0, "device": "fixed_dr"}, "CXR phantom, normal"),
    ({"tb": 0, "sex": "F", "age": 30.0, "device": "portable_cr"}, "CXR phantom, normal F"),
    ({"tb": 1, "sex": "M", "age": 55.0, "device": "fixed_dr"}, "CXR phantom, TB"),
    ({"tb": 1, "sex": "F", "age": 25.0, "device": "film_scan"}, "CXR phantom, TB"),
]


def disc_box(params: dict, scale: float = 1.6) -> tuple[int, int, int, int]:
    """A square box around the optic disc of a fundus phantom (from its ground-truth params)."""
    (cx, cy), half = params["disc_centre_px"], scale * params["disc_radius_px"]
    return round(cy - half), round(cy + half), round(cx - half), round(cx + half)


def fundus_row() -> list[Panel]:
    """One phantom eye with each disease switched on in turn (at 2x size, for a sharp zoom on the disc and cup)."""
    gen = FundusPhantom()
    samples = [(gen.generate({**FUNDUS_BASE, **cond}, 7, 2 * TILE), title) for cond, title in FUNDUS_PANELS]
    return [(s.image, title, disc_box(s.params)) for s, title in samples]


def real_fundus_row(data: Path) -> list[Panel]:
    """The first CSDI image of each cataract severity band (plus one more), cropped to its field of view."""
    df = pd.read_csv(data / "csdi_cataract" / "manifest.csv")
    picks = [df[df["severity"] == band].iloc[0] for band in ("normal", "acceptable", "mild", "moderate", "severe")]
    picks.append(df[df["severity"] == "moderate"].iloc[1])
    out = []
    for row in picks:
        img = load_image(data / "csdi_cataract" / row["path"])
        mask = fov_mask(img)
        out.append((apply_geometry(img, fov_box(mask), TILE, keep=mask), f"CSDI real, {row['severity']}", None))
    return out


def cxr_row(data: Path) -> list[Panel]:
    """Four CXR phantoms, then one normal and one pneumonia real paediatric chest X-ray."""
    gen = CXRPhantom()
    out: list[Panel] = [(gen.generate(cond, 3 + k, TILE).image, title, None)
                        for k, (cond, title) in enumerate(CXR_PANELS)]
    df = pd.read_csv(data / "pneumonia_kermany_224" / "manifest.csv")
    for label in ("normal", "pneumonia"):
        row = df[(df["split"] == "test") & (df["label_name"] == label)].iloc[0]
        img = load_image(data / "pneumonia_kermany_224" / row["path"], channels=1)
        out.append((resize(img, TILE), f"Kermany real, {label}", None))
    return out


def rasd_row() -> list[Panel]:
    """Three RaSD samples (gray, RGB, gray with more structures), each followed by its label map."""
    configs = [RaSDConfig(size=TILE), RaSDConfig(size=TILE, channels=3), RaSDConfig(size=TILE, n_structures=(8, 12))]
    out: list[Panel] = []
    for k, cfg in enumerate(configs):
        s = render_rasd(cfg, np.random.default_rng(k))
        labels = s.masks["structures"]
        colour = (plt.get_cmap("tab20")(labels % 20)[..., :3] * 255).astype(np.uint8)
        colour[labels == 0] = 0
        out += [(s.image, f"RaSD sample {k + 1}", None), (colour, f"its {int(labels.max())} structures", None)]
    return out


def draw(rows: list[tuple[str, list[Panel]]], out: Path) -> None:
    """Lay the panels out in a grid with titles and row names, and save it."""
    cols = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols, 2.05 * len(rows)), squeeze=False)
    for r, (name, panels) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            img, title, box = panels[c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(title, fontsize=7)
            if box is not None:
                zoom = ax.inset_axes((0.0, 0.0, 0.42, 0.42))
                zoom.imshow(img[box[0]:box[1], box[2]:box[3]])
                zoom.set_xticks([])
                zoom.set_yticks([])
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.tight_layout(pad=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    opts = {"pil_kwargs": {"quality": 85}} if out.suffix.lower() in (".jpg", ".jpeg") else {}
    fig.savefig(out, dpi=100, **opts)
    plt.close(fig)


def main() -> None:
    """Render every row and write the figure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SYNTHFM_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "phantom_grid.jpg")
    args = ap.parse_args()
    rows = [("fundus phantom", fundus_row()), ("real fundus (CSDI)", real_fundus_row(args.data)),
            ("chest X-ray", cxr_row(args.data)), ("RaSD", rasd_row())]
    draw(rows, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
