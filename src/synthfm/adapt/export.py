"""`synthfm export MODEL_DIR [--onnx]`: an adapted model as one self-contained, plain-timm classifier folder.

The classifier of an adaptation run (encoder + head) becomes a timm `VisionTransformer` with a `num_classes`
head: the fine-tuning head is timm's `head` already; the linear probe's BatchNorm1d(affine=False) + Linear is
folded into one Linear (eval-mode BN is an affine map), so the outputs are the same logits. The folder holds
`model.safetensors`, `config.json` (task, classes, modality, image size, normalisation, the `data prepare`
settings of the training card, and timm's `architecture` / `model_args`), a `README.md` model card and, with
`--onnx`, `model.onnx`. The ONNX file is checked on a seeded batch against PyTorch with onnxruntime (max
absolute difference of the logits within `atol`, default 1e-4) and with `onnx.checker`.

MODEL_DIR is one seed's adaptation run, an adaptation experiment (its run with the largest label fraction and
the best validation AUROC is used), an exported classifier folder, or a saved encoder (`save_pretrained`, whose
ONNX graph outputs the pooled feature).
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from synthfm.adapt.modelcard import classifier_card
from synthfm.data.card import card_file, read_card
from synthfm.data.modality import preset
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_json, atomic_write_text
from synthfm.models.backbones import create_backbone, image_size
from synthfm.models.baselines import PIXELS
from synthfm.models.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    check_fit,
    from_pretrained,
    load_state,
    read_pretrained_config,
    save_state,
)
from synthfm.models.modelcard import README, timm_args
from synthfm.models.pooling import native_pool
from synthfm.runs import MARKER_FILE, read_header

CLASSIFIER_FORMAT = "synthfm.classifier/1"
ONNX_FILE = "model.onnx"
ONNX_ATOL = 1e-4
ONNX_OPSET = 17
EXPORT_DIR = "export"
RUN_GLOBS = ("fraction_*/seed_*/best.safetensors", "fraction_*/seed_*/repeat_*/fold_*/best.safetensors")  # cv: folds


# ---- which run --------------------------------------------------------------------------------------------
def find_run(model_dir: str | Path) -> Path:
    """A finished adaptation run: MODEL_DIR itself, or the experiment's run of the largest label fraction whose
    validation AUROC is best (model selection on validation data only)."""
    model_dir = Path(model_dir)
    if (model_dir / "best.safetensors").is_file():
        if not (model_dir / MARKER_FILE).is_file():
            raise SynthfmError(f"adaptation run {model_dir} has not finished", f"finish it: synthfm adapt ... -o "
                                                                               f"{model_dir.parent.parent}")
        return model_dir
    runs = [p.parent for pattern in RUN_GLOBS for p in sorted(model_dir.glob(pattern))
            if (p.parent / MARKER_FILE).is_file()]
    if not runs:
        raise SynthfmError(f"{model_dir} is not an adaptation run, experiment, exported classifier or encoder",
                           "point at the folder given to 'synthfm adapt -o' (or one of its fraction_*/seed_* runs)")

    def rank(run: Path) -> tuple[float, float]:
        """(label fraction, validation AUROC) of a run."""
        summary = json.loads((run / MARKER_FILE).read_text())
        auroc = summary.get("best_val_auroc")
        return float(summary.get("fraction", 0)), float(auroc) if auroc is not None else float("-inf")

    return max(runs, key=rank)


def prepared_with(card_path: str | Path) -> dict[str, Any] | None:
    """The `synthfm data prepare` settings a card was written with (None: not a prepared card)."""
    header = Path(card_file(card_path)).parent / "config.yaml"
    if not header.is_file():
        return None
    doc = yaml.safe_load(header.read_text()) or {}
    if doc.get("stage") != "data.prepare":
        return None
    return dict((doc.get("config") or {}).get("config") or {})


# ---- the classifier ---------------------------------------------------------------------------------------
def fold_head(head: nn.Module) -> nn.Linear:
    """A fine-tuning Linear head as it is; a probe's BatchNorm1d(affine=False) + Linear folded into one Linear."""
    if isinstance(head, nn.Linear):
        return head
    bn, linear = head[0], head[1]
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * scale)
        folded.bias.copy_(linear.bias - (linear.weight * scale) @ bn.running_mean)
    return folded


def pool_overrides(encoder: nn.Module, pool: str | None, run_dir: Path) -> dict[str, Any]:
    """timm arguments that pool as the run did (models/pooling.py): `mean` of the normed patch tokens is
    global_pool='avg' with fc_norm=False; the encoder's own pooling needs none."""
    if pool is None or pool == native_pool(encoder):
        return {}
    if pool == "cls":
        return {"global_pool": "token"}
    if pool == "mean":
        return {"global_pool": "avg", "fc_norm": False}
    raise SynthfmError(f"run {run_dir} pools '{pool}', which a plain timm classifier cannot express",
                       "adapt with pool 'cls' or 'mean' to export it or predict with it")


def classifier_from_run(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A finished run's best classifier as a timm ViT with a head, and its config.json record."""
    from synthfm.adapt.adapted import load_adapted

    run_dir = Path(run_dir)
    model, cfg = load_adapted(run_dir)
    if cfg.encoder == PIXELS:
        raise SynthfmError(f"{run_dir} is the raw-pixel baseline (a logistic regression on pixels), not a timm model",
                           "export a run of an encoder; the baseline's scores are in its results tables")
    card, _ = read_card(cfg.card)
    task = card.task(cfg.task)
    backbone = model.encoder.synthfm_backbone
    pooled = {**backbone["overrides"], **pool_overrides(model.encoder, model.pool, run_dir)}
    overrides = {**pooled, "num_classes": task.num_outputs}
    clf = create_backbone(backbone["name"], backbone["in_chans"], **overrides)
    head, name = fold_head(model.head), clf.pretrained_cfg.get("classifier", "head")  # a ResNet's head is `fc`
    state = {**model.encoder.state_dict(), f"{name}.weight": head.weight.detach(), f"{name}.bias": head.bias.detach()}
    check_fit(state, clf, str(run_dir))
    clf.load_state_dict(state)
    p = preset(card.modality)
    arch, model_args = timm_args({"name": backbone["name"], "in_chans": backbone["in_chans"],
                                  "overrides": pooled}, task.num_outputs)
    size = image_size(clf, cfg.image_size)
    info = {"format": CLASSIFIER_FORMAT, "name": backbone["name"], "in_chans": backbone["in_chans"],
            "overrides": overrides, "architecture": arch, "model_args": model_args,
            "num_classes": task.num_outputs, "task": task.model_dump(), "modality": card.modality,
            "image_size": size, "mean": list(p.mean), "std": list(p.std), "prepare": prepared_with(cfg.card),
            "policy": cfg.policy, "card": str(cfg.card), "card_name": card.name, "encoder": cfg.encoder,
            "label_fraction": cfg.label_fractions[0], "seed": cfg.seeds[0], "source_run": str(run_dir.resolve()),
            "test_splits": list(dict.fromkeys([cfg.val_split, *cfg.test_splits]))}
    return clf.eval(), info


def load_classifier(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier in MODEL_DIR (an exported folder, a run or an experiment) and its record."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG_FILE
    if config.is_file():
        info = json.loads(config.read_text())
        if info.get("format") != CLASSIFIER_FORMAT:
            raise SynthfmError(f"{model_dir} holds an encoder ({info.get('format')}), not a classifier",
                               "predict needs an adapted model: run 'synthfm adapt' with this encoder first")
        model = create_backbone(info["name"], info["in_chans"], **info["overrides"])
        state = load_state(model_dir / WEIGHTS_FILE)
        check_fit(state, model, str(model_dir))
        model.load_state_dict(state)
        return model.eval(), info
    return classifier_from_run(find_run(model_dir))


# ---- ONNX -------------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, path: Path, in_chans: int, size: int, batch: int = 4,
                atol: float = ONNX_ATOL, seed: int = 0) -> dict[str, Any]:
    """Write `model` as ONNX (dynamic batch) and check it: onnx.checker, then onnxruntime vs PyTorch on a batch."""
    try:
        import onnx
    except ImportError:
        raise SynthfmError("ONNX export needs the 'onnx' package", "pip install 'synthfm[onnx]'") from None
    x = torch.randn(batch, in_chans, size, size, generator=torch.Generator().manual_seed(seed))
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    model = model.eval()
    with atomic_path(path, ".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}}, opset_version=ONNX_OPSET,
                          **legacy)
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
    record: dict[str, Any] = {"file": path.name, "opset": ONNX_OPSET, "batch": batch, "atol": atol, "seed": seed}
    try:
        import onnxruntime as ort
    except ImportError:
        return record | {"checked_with": "onnx.checker only (onnxruntime is not installed)",
                         "max_abs_diff": float("nan")}
    with torch.no_grad():
        want = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - want).max())
    record |= {"checked_with": f"onnx.checker and onnxruntime {ort.__version__}", "max_abs_diff": diff}
    if not diff <= atol:
        path.unlink(missing_ok=True)
        raise SynthfmError(f"ONNX outputs differ from PyTorch by {diff:.3g} (> atol {atol:g}) on a batch of {batch}",
                           "report this model's architecture; a looser --atol accepts it knowingly")
    return record


# ---- export -----------------------------------------------------------------------------------------------
def _encoder_config(encoder: str) -> dict[str, Any] | None:
    """config.json of the encoder an adaptation started from, when it was a saved encoder folder."""
    path = Path(encoder)
    return read_pretrained_config(path) if path.is_dir() and (path / CONFIG_FILE).is_file() else None


def _card_fields(card: str) -> tuple[str, str, str]:
    """(name, licence, citation) of a downstream card, as far as it can still be read."""
    try:
        c, _ = read_card(card)
    except (SynthfmError, OSError):
        return Path(card).name, "", ""
    return c.name, c.license, c.citation


def export_encoder_onnx(model_dir: Path, out: Path, atol: float) -> Path:
    """A saved encoder: copy nothing, add `model.onnx` (pooled features) and record the check in ONNX.json."""
    cfg = read_pretrained_config(model_dir)
    model = from_pretrained(model_dir)
    record = export_onnx(model, out / ONNX_FILE, int(cfg.get("in_chans", 3)), image_size(model),
                         atol=atol)
    atomic_write_json(out / "onnx.json", record)
    return out


def export_model(model_dir: str | Path, out: str | Path | None = None, onnx: bool = False,
                 atol: float = ONNX_ATOL) -> Path:
    """Write the classifier folder (weights, config.json, README.md; model.onnx with `onnx`); return it."""
    model_dir = Path(model_dir)
    config = model_dir / CONFIG_FILE
    if config.is_file() and json.loads(config.read_text()).get("format") == FORMAT:
        if not onnx:
            raise SynthfmError(f"{model_dir} is a saved encoder: it is already a plain-timm folder with a model card",
                               "add --onnx to write its ONNX graph")
        return export_encoder_onnx(model_dir, Path(out or model_dir), atol)
    model, info = load_classifier(model_dir)
    run_dir = Path(info["source_run"])
    out = Path(out) if out is not None else run_dir / EXPORT_DIR
    save_state(model.state_dict(), out / WEIGHTS_FILE, {"format": CLASSIFIER_FORMAT})
    if onnx:
        info["onnx"] = export_onnx(model, out / ONNX_FILE, info["in_chans"], info["image_size"], atol=atol)
    atomic_write_text(out / README, classifier_card(info, run_dir, _encoder_config(info["encoder"]),
                                                    _card_fields(info["card"])))
    atomic_write_json(out / CONFIG_FILE, info)
    return out


def write_model_card(exp_dir: str | Path) -> Path | None:
    """README.md model card of a finished experiment's selected run (`find_run`), in the experiment folder."""
    model_dir = Path(exp_dir)
    run = find_run(model_dir)
    if read_header(run).get("config", {}).get("encoder") == PIXELS:
        return None  # the raw-pixel baseline: no model to describe
    _, info = classifier_from_run(run)
    run_dir = Path(info["source_run"])
    text = classifier_card(info, run_dir, _encoder_config(info["encoder"]), _card_fields(info["card"]))
    note = (f"\n\nThe weights are `{run_dir / 'best.safetensors'}` in the adaptation run's layout; "
            f"`synthfm export {model_dir}` writes them as the plain-timm folder the snippet above loads.\n")
    atomic_write_text(model_dir / README, text + note)
    return model_dir / README
