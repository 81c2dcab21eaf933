"""`synthfm predict` and `synthfm export`: every task type, the saved predictions reproduced, Grad-CAM overlays,
plain-timm and ONNX loading, the model card, and a folder of chest X-rays taken through the README's commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.adapt.export import export_model, fold_head, load_classifier
from synthfm.adapt.predict import predict
from synthfm.cli import main
from synthfm.errors import SynthfmError

SMALL = {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3}
TASKS = {
    "binary": {"name": "finding", "type": "binary", "classes": ["normal", "pneumonia"], "columns": ["label"]},
    "multiclass": {"name": "kind", "type": "multiclass", "classes": ["none", "bacteria", "virus"]},
    "ordinal": {"name": "grade", "type": "ordinal", "classes": ["0", "1", "2"]},
    "multilabel": {"name": "signs", "type": "multilabel", "classes": ["opacity", "effusion"]},
}


def cxr_folder(root: Path, n: int = 24, seed: int = 0) -> Path:
    """A folder of grey 40x36 'chest X-rays' (PNG) and labels.csv (file, patient, one column per task)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        img = rng.integers(0, 60, (40, 36)) + label * 120  # pneumonia brighter
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"cxr_{i:03d}.png")
        rows.append({"file": f"cxr_{i:03d}.png", "patient": f"p{i // 2:02d}",
                     "label": ["normal", "pneumonia"][label], "kind": ["none", "bacteria", "virus"][i % 3],
                     "grade": i % 3, "opacity": label, "effusion": int(i % 4 == 0)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def write_card(root: Path, split: bool = True) -> Path:
    """The card a user writes beside the folder (as in the README); with `split`, a split column too."""
    if split:
        df = pd.read_csv(root / "labels.csv")
        df["split"] = (["train"] * 4 + ["val"] * 2 + ["test"] * 2) * (len(df) // 8)  # patients are pairs
        df.to_csv(root / "labels.csv", index=False)
    card = {"name": "cxr_folder", "modality": "cxr",
            "source": {"format": "folder", "root": "images", "path_column": "file"},
            "manifest": "labels.csv", "split": {"column": "split"} if split else None,
            "tasks": list(TASKS.values()), "metadata": {"patient_id": "patient"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return root / "dataset.yaml"


@pytest.fixture(scope="module")
def cxr_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder card with a split column."""
    return write_card(cxr_folder(tmp_path_factory.mktemp("cxr")))


@pytest.fixture(scope="module")
def trained(cxr_card: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """adapt(task, policy): one seed, one epoch of a tiny ViT on the card, trained once per module."""
    done: dict[tuple[str, str], Path] = {}

    def adapt(task: str, policy: str = "finetune") -> Path:
        """The experiment folder of (task, policy)."""
        if (task, policy) not in done:
            out = tmp_path_factory.mktemp(f"{task}_{policy}")
            cfg = AdaptConfig(card=str(cxr_card), task=task, encoder="random:vit_tiny_p8_64",
                              backbone_overrides=SMALL, epochs=1, warmup_epochs=0, batch_size=8, seeds=[0],
                              policy=policy)  # type: ignore[arg-type]
            run_experiment(cfg, out)
            done[task, policy] = out
        return done[task, policy]

    return adapt


@pytest.mark.parametrize("kind", list(TASKS))
def test_predict_every_task_type(cxr_card: Path, trained: Any, tmp_path: Path, kind: str) -> None:
    """A folder of images (no card) gets one row per image with probabilities per class and a predicted label."""
    task = TASKS[kind]
    exp = trained(task["name"])
    table = pd.read_csv(predict(exp, cxr_card.parent / "images", tmp_path / "pred"))
    probs = table[[f"prob_{c}" for c in task["classes"]]].to_numpy()
    assert len(table) == 24 and table["id"].tolist() == [f"cxr_{i:03d}.png" for i in range(24)]
    assert all(Path(p).is_file() for p in table["path"]) and "label" not in table  # a bare folder has no labels
    assert ((probs >= 0) & (probs <= 1)).all()
    if kind == "multilabel":
        want = [";".join(c for c, p in zip(task["classes"], row, strict=True) if p >= 0.5) for row in probs]
        assert table["predicted"].fillna("").tolist() == want
    else:
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
        assert table["predicted"].astype(str).tolist() == [task["classes"][k] for k in probs.argmax(1)]
    assert (tmp_path / "pred" / "input" / "dataset.yaml").is_file()


@pytest.mark.parametrize("policy", ["linear_probe", "finetune"])
def test_predict_reproduces_the_runs_saved_predictions(cxr_card: Path, trained: Any, tmp_path: Path,
                                                       policy: str) -> None:
    """On the training card, predict gives the scores adapt saved for the test split (probe BN folded exactly);
    the card's labels come along."""
    exp = trained("finding", policy)
    table = pd.read_csv(predict(exp, cxr_card, tmp_path / "pred")).set_index("row")
    saved = pd.read_parquet(exp / "fraction_1" / "seed_0" / "predictions_test.parquet")
    got = table.loc[saved["index"]]
    np.testing.assert_allclose(got["prob_pneumonia"], saved["score"], atol=1e-5)
    assert got["label"].tolist() == [["normal", "pneumonia"][y] for y in saved["y"]]


def test_fold_head_is_exact() -> None:
    """BatchNorm1d(affine=False) + Linear in eval mode equals the folded Linear."""
    torch.manual_seed(0)
    bn, linear = torch.nn.BatchNorm1d(6, affine=False, eps=1e-6), torch.nn.Linear(6, 3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    head = torch.nn.Sequential(bn, linear).eval()
    x = torch.randn(5, 6)
    torch.testing.assert_close(fold_head(head)(x), head(x))


def test_gradcam_overlays(cxr_card: Path, trained: Any, tmp_path: Path) -> None:
    """--gradcam writes image | heat-map overlay per image, named in the table."""
    exp = trained("kind")
    table = pd.read_csv(predict(exp, cxr_card, tmp_path / "pred", gradcam=True, batch_size=10))
    assert len(table) == 24
    for name in table["gradcam"]:
        img = np.asarray(Image.open(tmp_path / "pred" / name))
        assert img.shape == (32, 64, 3)
        assert not np.array_equal(img[:, :32], img[:, 32:])  # the overlay differs from the image


def test_export_loads_in_plain_timm_and_onnx(cxr_card: Path, trained: Any, tmp_path: Path) -> None:
    """The exported folder: timm.create_model(..., pretrained_cfg_overlay={'file': ...}) gives the classifier's
    logits; model.onnx matches PyTorch on a batch of another size (dynamic batch) within the stated tolerance."""
    import onnxruntime as ort

    exp = trained("kind", "linear_probe")
    out = export_model(exp, tmp_path / "model", onnx=True)
    info = json.loads((out / "config.json").read_text())
    model, _ = load_classifier(exp)
    plain = timm.create_model(info["architecture"], pretrained=True, pretrained_cfg_overlay={
        "file": str(out / "model.safetensors"), "num_classes": 3}, **info["model_args"]).eval()
    card = (out / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0].replace("path/to/this/folder", str(out))
    scope: dict[str, Any] = {}
    exec(snippet, scope)  # the card's own loading code, as a user would paste it
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "pretrained_cfg_overlay=overlay" in b)
    readme_scope: dict[str, Any] = {}
    exec(block.split("```")[0].replace('"export/', f'"{out}/'), readme_scope)  # the README's snippet
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(plain(x), want)
        torch.testing.assert_close(scope["model"].eval()(x), want)
        torch.testing.assert_close(readme_scope["model"].eval()(x), want)
    onnx = info["onnx"]
    assert onnx["max_abs_diff"] <= onnx["atol"] == 1e-4 and "onnxruntime" in onnx["checked_with"]
    got = ort.InferenceSession(str(out / "model.onnx")).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
    assert "| test | 6 | auroc |" in card and "within" in card
    # the exported folder predicts like the run it came from
    a = pd.read_csv(predict(out, cxr_card, tmp_path / "p1"))
    b = pd.read_csv(predict(exp, cxr_card, tmp_path / "p2"))
    np.testing.assert_allclose(a.filter(like="prob_"), b.filter(like="prob_"), atol=1e-6)


def test_predict_refuses_another_modality(trained: Any, tmp_path: Path) -> None:
    """A fundus card through a chest X-ray model is one clear error."""
    from synthfm.synth.writer import PhantomConfig, render_phantom

    exp = trained("finding")
    fundus = render_phantom(tmp_path / "fundus", PhantomConfig(n=4, size=32))
    with pytest.raises(SynthfmError, match=r"is fundus .* but the model takes cxr"):
        predict(exp, fundus, tmp_path / "pred")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SynthfmError, match="holds no images"):
        predict(exp, tmp_path / "empty", tmp_path / "pred2")


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI in-process; assert it succeeded; return stdout."""
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err
    return capsys.readouterr().out


def dicom_folder(root: Path, n: int = 32) -> Path:
    """A folder of 12-bit DICOM chest X-rays (age and sex in the headers) and labels.csv (file, patient, label)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        label = i % 2
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "DX", f"p{i // 2:02d}"
        ds.PatientAge, ds.PatientSex = f"{40 + i:03d}Y", "MF"[i // 2 % 2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 40, 36, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (rng.integers(0, 1000, (40, 36)) + label * 2000).astype("<u2").tobytes()
        ds.save_as(root / "images" / f"cxr_{i:03d}.dcm", enforce_file_format=True)
        rows.append({"file": f"cxr_{i:03d}.dcm", "patient": f"p{i // 2:02d}", "label": ["normal", "pneumonia"][label]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    card = {"name": "my_cxr", "modality": "cxr",
            "source": {"format": "dicom", "root": "images", "path_column": "file"}, "manifest": "labels.csv",
            "split": None, "tasks": [TASKS["binary"]], "tags": {"age": "PatientAge", "sex": "PatientSex"},
            "metadata": {"patient_id": "patient", "age": "age", "sex": "sex"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return root / "dataset.yaml"


def test_readme_workflow_folder_of_dicom_cxr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's 'Use a model' path with only CLI commands: a folder of DICOM chest X-rays plus a CSV of labels
    -> card (split: null, age and sex from the headers) -> inspect -> split -> prepare -> adapt -> predict on the
    raw DICOM folder (with Grad-CAM) -> evaluate -> export (ONNX) -> model card."""
    card = dicom_folder(tmp_path / "my_cxr")
    assert "card OK" in _cli(["data", "inspect", str(card)], capsys)
    _cli(["data", "split", str(card), "-o", str(tmp_path / "split"), "--ratios", "0.5,0.25,0.25",
          "--stratify", "finding"], capsys)
    _cli(["data", "prepare", str(tmp_path / "split"), "-o", str(tmp_path / "prepared"), "--size", "32"], capsys)
    (tmp_path / "adapt.yaml").write_text(yaml.safe_dump({
        "card": str(tmp_path / "prepared"), "task": "finding", "encoder": "random:vit_tiny_p8_64",
        "backbone_overrides": SMALL, "policy": "linear_probe", "epochs": 2, "warmup_epochs": 0, "batch_size": 8,
        "seeds": [0, 1]}))
    _cli(["adapt", str(tmp_path / "adapt.yaml"), "-o", str(tmp_path / "exp")], capsys)
    adapted_card = (tmp_path / "exp" / "README.md").read_text()  # the adapted model carries its card
    assert "## Downstream results" in adapted_card and "synthfm export" in adapted_card
    images = tmp_path / "my_cxr" / "images"
    _cli(["predict", str(tmp_path / "exp"), str(images), "-o", str(tmp_path / "pred"), "--gradcam"], capsys)
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == 32 and {"prob_normal", "prob_pneumonia", "predicted", "gradcam"} <= set(table.columns)
    assert yaml.safe_load((tmp_path / "pred" / "input" / "dataset.yaml").read_text())["source"]["format"] == "dicom"
    # the raw DICOM folder went through the prepared card's settings: the scores of the prepared card itself
    prepared = pd.read_csv(predict(tmp_path / "exp", tmp_path / "prepared", tmp_path / "pred2"))
    by_id = dict(zip(prepared["id"], prepared["prob_pneumonia"], strict=True))
    np.testing.assert_allclose(table["prob_pneumonia"], [by_id[i] for i in table["id"]], atol=1e-5)
    _cli(["evaluate", str(tmp_path / "exp")], capsys)
    out = _cli(["export", str(tmp_path / "exp"), "--onnx"], capsys)
    folder_out = Path(out.split("model:")[1].strip())
    card_text = (folder_out / "README.md").read_text()
    assert "### Across seeds" in card_text and "| 1 | internal | test | auroc | 2 |" in card_text
    assert "### Subgroups" in card_text and "| sex |" in card_text and (folder_out / "model.onnx").is_file()
