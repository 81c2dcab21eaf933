"""`synthfm predict MODEL_DIR CARD_OR_FOLDER -o OUT`: an adapted model on new images, without writing code.

MODEL_DIR is an adaptation run, an experiment (its best run, see `export.find_run`) or an exported classifier
folder. The input is a dataset card (every row, whatever its split; labels are not needed) or a folder of images
(PNG, JPEG, TIFF, BMP or DICOM, searched recursively), which becomes a card `OUT/input/dataset.yaml` so it is
read exactly as training data is (DICOM LUTs, channel conversion). Images go through the training card's
`synthfm data prepare` settings (unless the input card is itself a prepared card), then the modality's
resize and normalisation at the model's image size.

`OUT/predictions.csv`: `id`, `path`, `prob_<class>` per class (binary: both; multilabel: one independent
probability per label), `predicted` (binary and multilabel at probability 0.5, where a multilabel prediction
lists every label at or above it joined by ';'; otherwise the most probable class) and, when the input card
labels the model's task, `label`. With Grad-CAM, `OUT/gradcam/<id>.png` shows the image and the heat map of the
predicted class (binary: the positive logit) side by side, and the table's `gradcam` column names the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from synthfm.adapt.export import load_classifier, prepared_with
from synthfm.data.card import CARD_FILE, DatasetCard, SourceSpec, card_file, write_card
from synthfm.data.images import encode_png
from synthfm.data.manifest import ID, CardData, load_card
from synthfm.data.preprocess import PrepareConfig, preprocess
from synthfm.data.shard_index import open_random_access
from synthfm.data.transforms import build_transform
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.progress import progress_bar
from synthfm.train.classifier import task_scores

PREDICTIONS = "predictions.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
THRESHOLD = 0.5


# ---- inputs -----------------------------------------------------------------------------------------------
def folder_card(folder: Path, modality: str, out: Path) -> Path:
    """A card over every image (or every DICOM) file under `folder`, written to `out/input/`; return its YAML."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES)
    if not files:
        raise SynthfmError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)}) and no "
                           f"{CARD_FILE}", "point at a folder of images or at a dataset card")
    dicom = [p.suffix.lower() in DICOM_SUFFIXES for p in files]
    if any(dicom) and not all(dicom):
        raise SynthfmError(f"{folder} mixes DICOM and other image files ({sum(dicom)} DICOM of {len(files)})",
                           "predict on each kind in its own folder")
    root = out / "input"
    manifest = pd.DataFrame({"path": [str(p.relative_to(folder)) for p in files]})
    with atomic_path(root / "manifest.csv", ".csv") as tmp:
        manifest.to_csv(tmp, index=False)
    card = DatasetCard(name=f"{folder.name or 'images'}_predict", modality=modality,  # type: ignore[arg-type]
                       description=f"every image under {folder.resolve()}, for synthfm predict",
                       source=SourceSpec(format="dicom" if all(dicom) else "folder", root=str(folder.resolve())),
                       manifest="manifest.csv", split=None)
    return write_card(card, root)


def input_card(source: str | Path, modality: str, out: Path) -> Path:
    """The card to predict on: the given card, or a card written over a folder of images."""
    source = Path(source)
    if source.is_file() or (source / CARD_FILE).is_file():
        return card_file(source)
    if not source.is_dir():
        raise SynthfmError(f"input not found: {source}", "give a dataset card (folder or YAML) or a folder of images")
    return folder_card(source, modality, out)


def check_compatible(data: CardData, info: dict[str, Any]) -> None:
    """The input's modality and channels must be the model's."""
    if data.card.modality != info["modality"] or data.channels != info["in_chans"]:
        raise SynthfmError(f"card '{data.card.name}' is {data.card.modality} ({data.channels} channel(s)) but the "
                           f"model takes {info['modality']} ({info['in_chans']} channel(s))",
                           "predict on images of the modality the model was adapted on")


class Images:
    """Row-wise preprocessed images of a card: the training card's prepare settings, then resize + normalise."""

    def __init__(self, data: CardData, info: dict[str, Any], card_path: Path) -> None:
        self.data, self.size = data, int(info["image_size"])
        self.rows = open_random_access(data)
        settings = info.get("prepare")
        self.prepare = (PrepareConfig.model_validate({**settings, "size": settings.get("size", 256)})
                        if settings and prepared_with(card_path) is None else None)
        self.transform = build_transform(data.card.modality, self.size)

    def __len__(self) -> int:
        return len(self.data)

    def pixels(self, i: int) -> np.ndarray:
        """Row i's uint8 image after the prepare step (when the training card was prepared and this one is not)."""
        img = self.rows.raw(i)
        return preprocess(img, self.data.card.modality, self.prepare)[0] if self.prepare is not None else img

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """(normalised batch, the uint8 images it came from)."""
        raw = [np.require(self.pixels(i), requirements="W") for i in rows]  # torch wants writable arrays
        return torch.stack([self.transform(r) for r in raw]), raw


# ---- the table --------------------------------------------------------------------------------------------
def score_columns(task: dict[str, Any], p: np.ndarray) -> dict[str, Any]:
    """prob_<class> columns and `predicted` for one batch of scores (from `task_scores`)."""
    classes, kind = task["classes"], task["type"]
    if kind == "binary":
        return {f"prob_{classes[0]}": 1 - p, f"prob_{classes[1]}": p,
                "predicted": np.where(p >= THRESHOLD, classes[1], classes[0])}
    cols: dict[str, Any] = {f"prob_{c}": p[:, k] for k, c in enumerate(classes)}
    if kind == "multilabel":
        cols["predicted"] = [";".join(c for c, on in zip(classes, row, strict=True) if on) for row in p >= THRESHOLD]
    else:
        cols["predicted"] = np.asarray(classes, dtype=object)[p.argmax(1)]
    return cols


def true_labels(data: CardData, task: dict[str, Any], rows: list[int]) -> list[str] | None:
    """The input card's labels of the model's task, as class names (None when it has none)."""
    y = data.labels.get(task["name"])
    if y is None:
        return None
    y = y[rows]
    classes = task["classes"]
    if y.ndim == 2:
        return [";".join(c for c, on in zip(classes, r, strict=True) if on) for r in y.astype(bool)]
    return [classes[int(v)] for v in y]


def _safe(name: str) -> str:
    """A file name from an image id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:120] or "image"


def cam_overlays(model: nn.Module, x: torch.Tensor, raw: list[np.ndarray], predicted: list[int], size: int,
                 ids: list[str], folder: Path) -> list[str]:
    """Grad-CAM of each image's predicted output; write `<id>.png` (image | overlay); return the file names."""
    from synthfm.models.gradcam import grad_cam, overlay

    heat = grad_cam(model, x, predicted)
    names = []
    for img, h, ident in zip(raw, heat, ids, strict=True):
        rgb = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
        name = f"{_safe(ident)}.png"
        atomic_write_bytes(folder / name, encode_png(np.concatenate([rgb, overlay(rgb, h)], 1)))
        names.append(f"gradcam/{name}")
    return names


def predict(model_dir: str | Path, source: str | Path, out: str | Path, gradcam: bool = False,
            batch_size: int = 16) -> Path:
    """Predict every image of a card or folder with an adapted model; return the predictions table's path."""
    out = Path(out)
    model, info = load_classifier(model_dir)
    card_path = input_card(source, info["modality"], out)
    data = load_card(card_path)
    check_compatible(data, info)
    images, task = Images(data, info, card_path), info["task"]
    frames = []
    order = list(range(len(images)))
    for start in progress_bar(range(0, len(order), batch_size), "predict", total=-(-len(order) // batch_size)):
        rows = order[start:start + batch_size]
        x, raw = images.batch(rows)
        with torch.no_grad():
            logits = model(x)
        p = task_scores(task["type"], logits).numpy()
        ids = [str(data.df[ID].iat[i]) for i in rows]
        paths = [str(data.image_path(i)) if data.card.source.format in ("folder", "dicom", "nifti") else ""
                 for i in rows]
        frame = pd.DataFrame({"id": ids, "path": paths, "row": rows, **score_columns(task, p)})
        labels = true_labels(data, task, rows)
        if labels is not None:
            frame["label"] = labels
        if gradcam:
            targets = [0] * len(rows) if logits.shape[1] == 1 else logits.argmax(1).tolist()
            frame["gradcam"] = cam_overlays(model, x, raw, targets, images.size, ids, out / "gradcam")
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    with atomic_path(out / PREDICTIONS, ".csv") as tmp:
        table.to_csv(tmp, index=False)
    return out / PREDICTIONS
