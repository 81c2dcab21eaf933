"""run_quality end to end: the output contract, the gate's verdict and error, resume, the CLI sub-app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synthfm.errors import SynthfmError
from synthfm.quality.commands import app
from synthfm.quality.config import GateConfig, QualityConfig
from synthfm.quality.gate import evaluate_gate
from synthfm.quality.run import real_partition, run_quality

from .conftest import TINY_DOMAIN, TINY_SPACE, write_card

SPACE = "synthfm-random-vit_tiny_p8_64"
CFG = {"spaces": [TINY_SPACE], "labels": {"tasks": ["cataract"], "adapt": {"epochs": 2}},
       "fidelity": {"min_per_label": 5, "kid_subset_size": 20}}


def test_run_quality_writes_the_documented_tables(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = QualityConfig.model_validate({**CFG, "gate": {"defaults": False, "at_most": {"near_copies": 0, "FD": 1e6}}})
    out = tmp_path / "q"
    summary = run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, out)
    assert summary["verdict"] == "pass"
    assert {c["metric"] for c in summary["checks"]} == {"near_copies", f"FD_{SPACE}"}
    saved = json.loads((out / "quality.json").read_text())
    assert saved["verdict"] == "pass" and saved["n_synthetic"] == 30 and saved["n_real"] == 60
    for name in ("FD", "KID", "precision", "recall", "density", "coverage", "FD_ratio", "precision_rel",
                 "recall_rel", "density_rel", "coverage_rel"):
        assert f"{name}_{SPACE}" in saved["metrics"]
    assert saved["space_info"][0]["kind"] == "random" and "untrained" in saved["space_info"][0]["description"]
    assert saved["baseline"] == {"reference": 30, "heldout": 30, "sample_size": 30}
    base = pd.read_csv(out / "baseline.csv")
    assert set(base["metric"]) == {"FD", "precision", "recall", "density", "coverage", "sharpness"}
    assert np.allclose(base["relative"], base["synthetic"] / base["real_pair"])
    assert "label_agreement_rel_cataract" in saved["metrics"] and "label_real_accuracy_cataract" in saved["metrics"]
    assert (out / "real_duplicates.csv").is_file()
    fid = pd.read_csv(out / "fidelity.csv")
    assert list(fid.columns) == ["space", "task", "class", "metric", "value", "n_synthetic", "n_real"]
    assert (fid["task"] == "dr_grade").any()  # per-label rows
    mem = pd.read_csv(out / "memorisation.csv")
    assert len(mem) == 30 and {"pixel_real_id", "pixel_score", "feature_score", "flagged"} <= set(mem.columns)
    assert (out / "near_copies.png").stat().st_size > 0
    assert set(pd.read_csv(out / "label_agreement.csv")["class"]) == {"no", "yes"}
    dist = pd.read_csv(out / "metadata_distributions.csv")
    assert {"age", "sex", "label:dr_grade"} <= set(dist["field"])
    assert set(dist.loc[dist["field"] == "age", "test"]) == {"ks"}
    pred = pd.read_csv(out / "metadata_predictions.csv")
    assert set(pred["field"]) == {"age", "sex"}
    assert (out / "filtered" / "dataset.yaml").is_file()
    assert pd.read_csv(out / "gate.csv")["passed"].all()
    again = run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, out)  # finished: read back, not recomputed
    assert again["metrics"] == summary["metrics"]


def test_gate_failure_stops_with_metric_and_threshold(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = QualityConfig.model_validate({**CFG, "labels": {"enabled": False}, "metadata": {"enabled": False},
                                        "gate": {"defaults": False, "at_most": {"FD": 0.0},
                                                 "at_least": {"coverage": 0.0}}})
    with pytest.raises(SynthfmError, match=rf"FD_{SPACE} = [0-9.e-]+ > at_most 0"):
        run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, tmp_path / "q")
    summary = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert summary["verdict"] == "fail"
    assert [c["passed"] for c in summary["checks"]] == [False, True]


def test_gate_matching_and_unknown_names() -> None:
    metrics = {"FD_a": 3.0, "FD_b": 1.0, "KID_a": 0.1, "KIDstd_a": 0.01, "near_copies": 0.0}
    checks = evaluate_gate(metrics, GateConfig(defaults=False, at_most={"FD": 2.0, "KID": 1.0}, at_least={}))
    assert [(c["metric"], c["passed"]) for c in checks] == [("FD_a", False), ("FD_b", True), ("KID_a", True)]
    with pytest.raises(SynthfmError, match="names no computed metric"):
        evaluate_gate(metrics, GateConfig(at_most={"label_disagreement": 0.1}))


def test_cli_sub_app(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = {**CFG, "labels": {"enabled": False}, "metadata": {"enabled": False}, "memorisation": {"enabled": False},
           "gate": {"at_most": {"FD": 1e6}}}  # the default near_copies bound needs the (disabled) audit
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, [str(tiny_cards["synth"]), "--real", str(tiny_cards["real"]), "--config", str(path),
                                   "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "verdict: pass" in res.output
    assert "space synthfm-random-vit_tiny_p8_64: untrained random-init" in " ".join(res.output.split())
    assert "real held-out pair" in res.output  # each relative check shows its real baseline
    bad = CliRunner().invoke(app, [str(tiny_cards["synth"]), "--real", str(tiny_cards["real"]), "--out",
                                   str(tmp_path / "q2"), "--config", str(tmp_path / "missing.yaml")])
    assert isinstance(bad.exception, SynthfmError)


@pytest.fixture(scope="session")
def domain_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One domain-encoder cache for the gate tests on the RetinaMNIST cards (the first test trains it)."""
    return tmp_path_factory.mktemp("domain_cache")


@pytest.mark.parametrize(("synthetic", "fails_on"), [("heldout", None), ("blurred", "sharpness_ratio"),
                                                     ("colour", "FD_ratio"), ("xray", "FD_ratio")])
def test_default_gate_judges_against_real_data(retina_cards: dict[str, Path], domain_cache: Path, tmp_path: Path,
                                               synthetic: str, fails_on: str | None) -> None:
    """Default settings (domain space, relative bounds, audit, label check) on real RetinaMNIST images: a held-out
    real split passes; the same images blurred or colour-shifted, or chest X-rays filed as fundus photos, fail."""
    cfg = QualityConfig.model_validate({"domain": {**TINY_DOMAIN, "cache_dir": str(domain_cache)},
                                        "gate": {"stop_on_fail": False}})
    summary = run_quality(retina_cards[synthetic], retina_cards["real"], cfg, tmp_path / "q")
    assert summary["spaces"] == ["synthfm-domain-dr_grade"]
    assert summary["space_info"][0]["kind"] == "domain"
    checks = {c["metric"]: c for c in summary["checks"]}
    assert {c["family"] for c in checks.values()} == {"near_copies", "FD_ratio", "precision_rel", "coverage_rel",
                                                      "label_agreement_rel", "sharpness_ratio"}
    assert summary["verdict"] == ("pass" if fails_on is None else "fail"), [(m, c["value"]) for m, c in checks.items()]
    if fails_on is not None:
        assert not [c for c in checks.values() if c["family"] == fails_on][-1]["passed"]


def test_domain_encoder_is_trained_once_then_reused(retina_cards: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from synthfm.train.trainer import ClassifierTrainer

    cfg = QualityConfig.model_validate({"domain": {**TINY_DOMAIN, "epochs": 2, "cache_dir": str(tmp_path / "cache")},
                                        "labels": {"enabled": False}, "memorisation": {"enabled": False},
                                        "metadata": {"enabled": False}, "gate": {"stop_on_fail": False}})
    first = run_quality(retina_cards["heldout"], retina_cards["real"], cfg, tmp_path / "q1")
    assert first["space_info"][0]["reused"] is False
    encoder = Path(first["space_info"][0]["encoder"])
    assert encoder.is_relative_to(tmp_path / "cache" / "domain") and (encoder / "config.json").is_file()

    def no_training(self: ClassifierTrainer) -> None:
        raise AssertionError("the cached domain encoder was trained again")

    monkeypatch.setattr(ClassifierTrainer, "fit", no_training)
    second = run_quality(retina_cards["colour"], retina_cards["real"], cfg, tmp_path / "q2")
    assert second["space_info"][0]["reused"] is True and second["space_info"][0]["encoder"] == str(encoder)
    # the same card content at another path (a moved folder, another checkout sharing the cache) reuses it too
    moved = Path(shutil.copytree(retina_cards["real"].parent, tmp_path / "moved")) / retina_cards["real"].name
    third = run_quality(retina_cards["colour"], moved, cfg, tmp_path / "q3")
    assert third["space_info"][0]["reused"] is True and third["space_info"][0]["encoder"] == str(encoder)


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `synthfm ARGS`, expect exit status 2, return the error text."""
    from synthfm.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    return " ".join(capsys.readouterr().err.split())


def test_bad_inputs_exit_2_with_a_clear_error(retina: dict[str, np.ndarray], retina_cards: dict[str, Path],
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthfm.models.backbones import create_backbone
    from synthfm.models.checkpoint import save_pretrained

    images, grades = retina["train_images"][:12], retina["train_labels"][:12, 0]
    small = write_card(tmp_path / "small", images, grades, ["train"] * 8 + ["val"] * 2 + ["test"] * 2)
    err = _cli_error(["quality", str(retina_cards["heldout"]), "--real", str(small), "--out", str(tmp_path / "a")],
                     capsys)
    assert "too small for a held-out split: 8 reference and 4 held-out images" in err and "fix:" in err

    grey = create_backbone("vit_tiny_p8_64", 1, depth=1, embed_dim=48, num_heads=3, img_size=32)
    save_pretrained(grey, tmp_path / "grey_encoder")
    (tmp_path / "grey.yaml").write_text(yaml.safe_dump({"spaces": [{"encoder": str(tmp_path / "grey_encoder")}]}))
    err = _cli_error(["quality", str(retina_cards["heldout"]), "--real", str(retina_cards["real"]), "--config",
                      str(tmp_path / "grey.yaml"), "--out", str(tmp_path / "b")], capsys)
    assert "takes 1-channel images but the cards are fundus (3 channel(s))" in err

    extra = write_card(tmp_path / "extra", images, np.r_[grades[:11], 5], classes=["0", "1", "2", "3", "4", "5"])
    err = _cli_error(["quality", str(extra), "--real", str(retina_cards["real"]), "--out", str(tmp_path / "c")],
                     capsys)
    assert "has labels the real card 'real' lacks: ['5']" in err


class _Patients:
    """A card without a split whose rows belong to patients (what real_partition reads)."""

    def __init__(self, patients: list[str]) -> None:
        self.patients = pd.Series(patients)

    def __len__(self) -> int:
        return len(self.patients)

    def indices(self, split: str) -> np.ndarray:
        return np.array([], int)

    def patient_ids(self) -> pd.Series:
        return self.patients


def test_heldout_draw_keeps_each_patient_on_one_side() -> None:
    """30 patients with 1-4 images each, 20% held out: whole patients are drawn until at least 20% of the images
    are held out, so no held-out image calibrates the audit against its own patient's training images."""
    rng = np.random.default_rng(0)
    patients = [f"p{i}" for i in range(30) for _ in range(int(rng.integers(1, 5)))]
    card = _Patients(patients)
    train, held = real_partition(card, 0.2, seed=3)  # type: ignore[arg-type]
    ids = np.array(patients)
    assert not set(ids[train]) & set(ids[held])
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(patients)))
    assert 0.2 * len(patients) <= len(held) < 0.2 * len(patients) + 4  # the last patient drawn may have 4 images
