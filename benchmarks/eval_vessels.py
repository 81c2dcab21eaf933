"""Vessel segmentation on CHASE_DB1 (real images, manual masks): classical filters and the small U-Net.

Test set: the last 8 of the 28 images (Image_11L ... Image_14R), a common convention (the source gives no
split); the first 20 are the U-Net's real training images. Reference: the first observer (1stHO). Metrics
per image inside the field of view (derived by thresholding, as CHASE_DB1 ships no FOV masks), then the
mean and sd over the 8 images: Dice, AUC, accuracy, sensitivity, specificity, and seconds per image.

Methods, all measured in this run:
* `sato`, `frangi` - synthfm.analyze.vessels at native resolution (999x960), Otsu threshold.
* `unet_phantom` - the TinyUNet trained only on rendered fundus phantoms (no real image), at 512 px,
  probability upsampled to native size, threshold 0.5.
* `unet_phantom+chase` - the same, also trained on the 20 CHASE_DB1 training images and masks.
* `second_observer` - the 2ndHO manual masks scored against 1stHO (human agreement; no AUC).

Usage: python benchmarks/eval_vessels.py [--steps 400] [--out docs/bench/vessels_chase.json]
Writes the JSON (render_docs format) and docs/bench/vessels_chase.md (a results.md snippet).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from synthfm.analyze.morphology import _resize, read_mask
from synthfm.analyze.unet import UNetConfig, make_example, predict_unet, train_unet
from synthfm.analyze.vessel_study import native_image, upsample
from synthfm.analyze.vessels import field_of_view, segment_classical, segmentation_metrics
from synthfm.data.manifest import ID, load_card
from synthfm.synth.fundus import FundusPhantom

REPO = Path(__file__).resolve().parents[1]
METRICS = ("dice", "auc", "accuracy", "sensitivity", "specificity")
WORK = 512
PUBLISHED = ("Badawi & Fraz 2018 (optimised B-COSFIRE filter, PeerJ 6:e5855, doi:10.7717/peerj.5855): "
             "accuracy 0.9530 on CHASE-DB1, as stated in its abstract. Other published classical figures "
             "(Fraz et al. 2012, IEEE TBME; Azzopardi et al. 2015, B-COSFIRE, Med. Image Anal.) are not quoted "
             "here because their figures have not been checked against the papers.")


def train(examples: list, steps: int, seed: int) -> torch.nn.Module:
    """A TinyUNet trained on the examples (one thread: the machine is shared)."""
    return train_unet(examples, UNetConfig(steps=steps, seed=seed, threads=1))


def summarise(per_image: list[dict[str, float]], seconds: list[float]) -> dict[str, float]:
    """Mean and sd over images of every metric, and mean seconds per image."""
    out: dict[str, float] = {}
    for m in METRICS:
        vals = np.array([r[m] for r in per_image], float)
        out[m] = round(float(np.nanmean(vals)), 4) if np.isfinite(vals).any() else float("nan")
        out[f"{m}_sd"] = round(float(np.nanstd(vals, ddof=1)), 4) if np.isfinite(vals).sum() > 1 else float("nan")
    out["s_per_image"] = round(float(np.mean(seconds)), 3)
    out["images"] = len(per_image)
    return out


def main() -> None:
    """Run every method on the 8 test images and write the JSON and markdown snippet."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400, help="U-Net training steps")
    ap.add_argument("--phantoms", type=int, default=24, help="phantom training images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "vessels_chase.json")
    args = ap.parse_args()
    t_start = time.time()
    data = load_card(REPO / "configs" / "cards" / "chase_db1.yaml")
    rows = list(range(len(data)))
    train_rows, test_rows = rows[:20], rows[20:]
    native = {r: native_image(data, r) for r in rows}
    ref = {r: read_mask(data, r, "vessel", native[r].shape[:2]) > 0 for r in test_rows}
    ref2 = {r: read_mask(data, r, "vessel_2nd_observer", native[r].shape[:2]) > 0 for r in test_rows}
    fov = {r: field_of_view(native[r]) for r in test_rows}
    results: dict[str, dict] = {}
    for method in ("sato", "frangi"):
        per, secs = [], []
        for r in test_rows:
            t0 = time.perf_counter()
            pred, score = segment_classical(native[r], fov[r], method)  # type: ignore[arg-type]
            secs.append(time.perf_counter() - t0)
            per.append(segmentation_metrics(pred, score, ref[r], fov[r]))
        results[method] = summarise(per, secs)
    gen = FundusPhantom()
    phantom_ex = []
    for i in range(args.phantoms):
        s = gen.generate({}, 1000 + i, WORK)
        phantom_ex.append(make_example(s.image, s.masks["vessels"], s.masks["fov"] > 0))
    real_ex = []
    for r in train_rows:
        small = _resize(native[r], WORK)
        real_ex.append(make_example(small, read_mask(data, r, "vessel", small.shape[:2]), field_of_view(small)))
    train_time = {}
    for name, examples in (("unet_phantom", phantom_ex), ("unet_phantom+chase", phantom_ex + real_ex)):
        t0 = time.perf_counter()
        net = train(examples, args.steps, args.seed)
        train_time[name] = round(time.perf_counter() - t0, 1)
        per, secs = [], []
        for r in test_rows:
            t0 = time.perf_counter()
            small = _resize(native[r], WORK)
            prob = upsample(predict_unet(net, small, field_of_view(small)), native[r].shape[:2]) * fov[r]
            secs.append(time.perf_counter() - t0)
            per.append(segmentation_metrics(prob > 0.5, prob, ref[r], fov[r]))
        results[name] = summarise(per, secs) | {"train_s": train_time[name]}
    per = [segmentation_metrics(ref2[r], ref2[r].astype(float), ref[r], fov[r]) | {"auc": float("nan")}
           for r in test_rows]
    results["second_observer"] = summarise(per, [0.0] * len(per))
    doc = {"benchmark": "vessels_chase", "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
           "torch": torch.__version__, "test_images": [str(data.df[ID].iat[r]) for r in test_rows],
           "reference": "1stHO manual masks, inside a thresholded field of view",
           "unet": {"steps": args.steps, "phantom_images": args.phantoms, "work_size": WORK},
           "published": PUBLISHED, "seconds_total": round(time.time() - t_start, 1),
           "results": [{"method": k, **v} for k, v in results.items()]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(json.dumps(doc, indent=1))


def markdown(doc: dict) -> str:
    """The results.md snippet: a table of the measured methods and the published figure."""
    lines = ["## Vessel segmentation on CHASE_DB1 (real images, manual masks)", "",
             f"Test images: the last 8 of 28 ({', '.join(doc['test_images'])}); reference: first observer; "
             "metrics inside a thresholded field of view, mean (sd) over the 8 images. "
             "Command: `python benchmarks/eval_vessels.py` (writes docs/bench/vessels_chase.json).", "",
             "| method | Dice | AUC | accuracy | sensitivity | specificity | s/image |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["results"]:
        cells = [f"{r[m]:.3f} ({r[m + '_sd']:.3f})" if np.isfinite(r[m]) else "-" for m in METRICS]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['s_per_image']:.2f} |")
    lines += ["", f"Published (classical): {doc['published']}", "",
              "Our classical rows are scikit-image filters with an Otsu threshold, not tuned per dataset; the U-Net "
              f"rows are a {doc['unet']['steps']}-step CPU TinyUNet (see `synthfm.analyze.unet`). The published "
              "figures used their own FOV masks and splits, so they are context, not a paired comparison.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
