"""Draw docs/images/prepare_fit.jpg: one fundus photograph through `data prepare`'s --fit and --fov options.

The source is CHASE_DB1 Image_01L with its rows cut to the central 800 of 960, so that the frame clips the
round field of view at the top and bottom, as HRF's and many smartphone fundus frames do. Panels: that
frame; --fit pad (the default: the field of view's box letterboxed to a square); --fit crop (the box's
central square); --fov drop (the largest centred square inside the field of view: no black corners).
Each panel is exactly what `preprocess` returns at 256 px; the fraction of black pixels is in its title.
Usage: python docs/prepare_fit.py [--data ../shared/data] [--out docs/images/prepare_fit.jpg]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from synthfm.data.images import load_image
from synthfm.data.preprocess import PrepareConfig, preprocess

REPO = Path(__file__).resolve().parents[1]
PANELS = [("--fit pad (default)", {"fit": "pad"}), ("--fit crop", {"fit": "crop"}), ("--fov drop", {"fov": "drop"})]


def clipped_frame(data: Path) -> np.ndarray:
    """CHASE_DB1 Image_01L with its rows cut to the central 800, clipping the field of view top and bottom."""
    img = load_image(data / "chase_db1" / "images" / "Image_01L.jpg")
    top = (img.shape[0] - 800) // 2
    return img[top:top + 800]


def main() -> None:
    """Render the four panels side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("SYNTHFM_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "prepare_fit.jpg")
    args = parser.parse_args()
    src = clipped_frame(args.data)
    ratios = [src.shape[1] / src.shape[0], 1, 1, 1]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.1), gridspec_kw={"width_ratios": ratios})
    axes[0].imshow(src)
    axes[0].set_title(f"source frame {src.shape[1]}x{src.shape[0]}", fontsize=10)
    for ax, (title, opts) in zip(axes[1:], PANELS, strict=True):
        out, _, _ = preprocess(src, "fundus", PrepareConfig(size=256, **opts))
        black = float((out.max(axis=2) < 8).mean())
        ax.imshow(out)
        ax.set_title(f"{title}\n{black:.0%} black", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, pil_kwargs={"quality": 85})
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
