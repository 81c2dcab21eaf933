"""The simulated consortium end to end at tiny size: sites -> bundles -> hub -> composed set -> pretrain -> eval."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from synthfm.consortium.simulate import ConsortiumConfig, load_consortium_config, run_consortium
from synthfm.consortium.verify import IMAGE_MAGIC, VerifyConfig, verify_bundle
from synthfm.data.manifest import load_card

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "generator": {"size": 32},
    "sites": [
        {"name": "site_a", "n": 30, "priors": {"age_mean": 40.0, "ethnicity": [0.1, 0.1, 0.6, 0.1, 0.1]}},
        {"name": "site_b", "n": 30, "priors": {"age_mean": 72.0, "device": [0.1, 0.1, 0.7, 0.05, 0.05]}},
        {"name": "site_c", "n": 30, "path": "images", "synthesize": 6,
         "priors": {"ethnicity": [0.05, 0.8, 0.05, 0.05, 0.05], "device": [0.05, 0.05, 0.05, 0.05, 0.8]}},
    ],
    "summary": {"k": 5},
    "audit": {"n_samples": 8},
    "compose": {"synthetic_per_real": 0.5},
    "pretrain": {"steps": 3, "config": {"recipe": "mae_vit_tiny_demo", "image_size": 32, "batch_size": 8,
                                        "backbone_overrides": {"depth": 2}, "checkpoint_every": 3,
                                        "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}},
    "evaluate": {"task": "cataract", "compare_random": False,
                 "config": {"policy": "linear_probe", "image_size": 32, "epochs": 2, "warmup_epochs": 1,
                            "seeds": [0]}},
}


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny consortium run."""
    out = tmp_path_factory.mktemp("consortium")
    return out, run_consortium(TINY, out)


def test_every_step_ran_and_the_composition_is_what_the_sites_sent(consortium: tuple[Path, dict]) -> None:
    out, summary = consortium
    data = load_card(summary["composed_card"])
    counts = data.df.groupby(["site", "origin"]).size().to_dict()
    train_rows = {s: int((load_card(out / "sites" / s / "data").df["_split"] == "train").sum())
                  for s in ("site_a", "site_b", "site_c")}
    assert counts == {("site_a", "synthetic"): round(0.5 * train_rows["site_a"]),
                      ("site_b", "synthetic"): round(0.5 * train_rows["site_b"]),
                      ("site_c", "real"): train_rows["site_c"], ("site_c", "synthetic"): 6}
    assert summary["composition"]["rows"] == len(data)
    assert (Path(summary["encoder"]) / "model.safetensors").is_file()
    assert [r["site"] for r in summary["evaluation"]] == ["site_a", "site_b", "site_c"]
    for r in summary["evaluation"]:
        assert r["test_auroc"] is None or 0.0 <= r["test_auroc"] <= 1.0
    assert json.loads((out / "consortium_summary.json").read_text())["composed_card"] == summary["composed_card"]


def test_what_left_the_sites_is_signed_and_holds_no_image(consortium: tuple[Path, dict]) -> None:
    out, _ = consortium
    inbox = out / "hub" / "inbox"
    tars = sorted(inbox.glob("*.bundle.tar"))
    assert [t.name for t in tars] == ["site_a.bundle.tar", "site_b.bundle.tar"]
    for t in tars:
        with tarfile.open(t) as tar:
            for m in tar.getmembers():
                head = tar.extractfile(m).read(16)
                assert not any(head.startswith(magic) for magic in IMAGE_MAGIC), m.name
        assert verify_bundle(t, out / "hub" / "keys", VerifyConfig(min_k=5), extract_to=out / "check" / t.stem)
    assert not (out / "hub" / "keys" / "site_c.pub").exists()  # path (b) sites sign nothing


def test_rerun_is_a_no_op(consortium: tuple[Path, dict]) -> None:
    out, summary = consortium
    manifest = Path(summary["composed_card"]).parent / "manifest.parquet"
    before = manifest.stat().st_mtime_ns
    again = run_consortium(TINY, out)
    assert manifest.stat().st_mtime_ns == before and again["composition"] == summary["composition"]


def test_shipped_config_describes_three_different_sites() -> None:
    cfg = load_consortium_config(REPO / "configs" / "consortium.yaml")
    assert len(cfg.sites) == 3 and {s.path for s in cfg.sites} == {"bundle", "images"}
    for key in ("age_mean", "ethnicity", "device"):
        assert len({json.dumps(s.priors[key]) for s in cfg.sites}) == 3


@pytest.mark.parametrize(("block", "named"), [
    ({"sites": [{"name": "a", "priors": {"age_man": 50}}]}, "age_man"),
    ({"sites": [{"name": "a"}], "pretrain": {"config": {"recipe": "mae_vit_tiny_demo", "optm": {}}}}, "optm"),
    ({"sites": [{"name": "a"}], "evaluate": {"config": {"polcy": "linear_probe"}}}, "polcy"),
])
def test_a_typo_in_a_nested_block_fails_when_the_config_is_read(block: dict, named: str) -> None:
    """Priors, the pretraining and the probe blocks are checked before any site runs, not when their step starts."""
    with pytest.raises(ValidationError, match=named):
        ConsortiumConfig.model_validate(block)
