"""External evaluation: train on card A, test on card B whose task and labels are renamed, mapped in config."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from synthfm.adapt.config import ExternalEval
from synthfm.adapt.experiment import run_experiment
from synthfm.adapt.external import ExternalSet, class_map
from synthfm.data.card import TaskSpec
from synthfm.errors import SynthfmError
from synthfm.evaluate.predictions import run_path

LENS = {"name": "lens", "type": "binary", "classes": ["clear", "opaque"]}


def relabelled_card(card_a: Path, out: Path) -> Path:
    """Card B: card A's test images under another task name (lens: clear/opaque), metadata site = hospital."""
    df = pd.read_parquet(card_a.parent / "manifest.parquet").query("split == 'test'")
    b = pd.DataFrame({"path": df["path"], "split": "test", "image_id": "b" + df["image_id"],
                      "patient": df["patient_id"], "lens": np.where(df["cataract"] == 1, "opaque", "clear"),
                      "age": df["age"], "sex": df["sex"], "hospital": np.where(df["age"] > 55, "north", "south")})
    out.mkdir(parents=True, exist_ok=True)
    b.to_csv(out / "manifest.csv", index=False)
    card = {"name": "lenses", "modality": "fundus", "source": {"root": str(card_a.parent)}, "id_column": "image_id",
            "tasks": [LENS], "metadata": {"patient_id": "patient", "age": "age", "sex": "sex", "site": "hospital"}}
    (out / "dataset.yaml").write_text(yaml.safe_dump(card))
    return out


@pytest.fixture(scope="module")
def card_b(phantom_card: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The relabelled copy of the phantom card's test split."""
    return relabelled_card(phantom_card, tmp_path_factory.mktemp("card_b"))


def test_external_metrics_equal_internal_on_the_same_images(tiny_cfg, card_b: Path, tmp_path: Path) -> None:
    same = {"card": str(card_b), "name": "lenses", "task_map": {"lens": "cataract"},
            "label_map": {"clear": "no", "opaque": "yes"}}
    flipped = {**same, "name": "flipped", "label_map": {"clear": "yes", "opaque": "no"}}
    cfg = tiny_cfg(policy="linear_probe", epochs=1, external=[same, flipped])
    results = run_experiment(cfg, tmp_path)
    value = results.set_index(["eval_set", "split", "metric"])["value"]
    for metric in ("auroc", "auprc", "accuracy", "f1"):
        assert value["lenses", "test", metric] == pytest.approx(value["internal", "test", metric], abs=1e-6)
    assert value["flipped", "test", "auroc"] == pytest.approx(1 - value["internal", "test", "auroc"], abs=1e-6)
    run = run_path(tmp_path, 1.0, 0)
    own = pd.read_parquet(run / "predictions_test.parquet")
    ext = pd.read_parquet(run / "external" / "lenses" / "predictions_test.parquet")
    np.testing.assert_array_equal(ext["y"], own["y"])  # 'opaque' -> yes -> 1, as cataract
    np.testing.assert_allclose(ext["score"], own["score"], atol=1e-6)
    assert roc_auc_score(ext["y"], ext["score"]) == pytest.approx(value["lenses", "test", "auroc"])
    assert ext["image_id"].str.startswith("b").all() and set(ext["site"]) == {"north", "south"}
    assert (ext["sex"].to_numpy() == own["sex"].to_numpy()).all() and "ethnicity" in own
    assert set(results["eval_set"]) == {"internal", "lenses", "flipped"}


@pytest.mark.parametrize(("entry", "message"), [
    ({"task_map": {"lens": "cataract"}, "label_map": {"cloudy": "yes"}}, "unknown label"),
    ({"task_map": {"lens": "cataract"}, "label_map": {"clear": "no", "opaque": "maybe"}}, "not classes of task"),
    ({"task_map": {"lens": "cataract"}}, "no counterpart"),
    ({"task_map": {"opacity": "cataract"}}, "unknown task"),
    ({"task_map": {"lens": "glaucoma"}}, "adapts task 'cataract'"),
    ({}, "has no task 'cataract'"),
])
def test_wrong_mapping_fails_before_training(tiny_cfg, card_b: Path, tmp_path: Path, entry: dict,
                                             message: str) -> None:
    cfg = tiny_cfg(external=[{"card": str(card_b), **entry}])
    with pytest.raises(SynthfmError, match=message):
        run_experiment(cfg, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


def test_multilabel_mapping_merges_columns() -> None:
    a = TaskSpec(name="findings", type="multilabel", classes=["dr", "amd"])
    b = TaskSpec(name="signs", type="multilabel", classes=["haem", "exudate", "drusen"])
    ext = ExternalEval(card="b", label_map={"haem": "dr", "exudate": "dr", "drusen": "amd"})
    to_a = class_map(ext, b, a)
    assert to_a.tolist() == [0, 0, 1]
    labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])
    data = SimpleNamespace(labels={"signs": labels})
    got = ExternalSet("b", data, "test", b, to_a).targets(np.array([0, 1, 2, 3]))  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, [[1, 0], [1, 1], [0, 0], [1, 0]])
    with pytest.raises(SynthfmError, match="get no column"):
        class_map(ExternalEval(card="b", label_map={"haem": "dr", "exudate": "dr", "drusen": "dr"}), b, a)
    with pytest.raises(SynthfmError, match="multilabel"):
        class_map(ext, b, TaskSpec(name="x", type="binary", classes=["no", "yes"]))
