"""Pipeline job kinds: the baseline arms (raw pixels, ResNet-18 from scratch) run as adapt jobs and enter an
`evaluate.arms` job as controls, whose verdict the report prints (`deeper` stands in for a pretrained arm)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from synthfm.pipeline.runner import run_pipeline


def test_controls_run_through_adapt_arms_and_report(tmp_path: Path) -> None:
    probe = {"card": "${data.fundus}", "task": "dr_grade", "encoder": "random:vit_tiny_p8_64",
             "backbone_overrides": {"img_size": 32, "depth": 1, "embed_dim": 48, "num_heads": 3},
             "policy": "linear_probe", "image_size": 32, "epochs": 1, "warmup_epochs": 0, "seeds": [0, 1, 2]}
    spec = {"name": "controls", "data": {"fundus": {"phantom": {"n": 32, "size": 32, "seed": 0}}},
            "adapt": {"random": probe, "deeper": {**probe, "backbone_overrides": {**probe["backbone_overrides"],
                                                                                  "depth": 2}},
                      "pixels": {**probe, "encoder": "pixels", "backbone_overrides": {}},
                      "cnn": {**probe, "encoder": "random:resnet18", "backbone_overrides": {}, "policy": "finetune"}},
            "evaluate": {"arms": {"arms": {"title": "toy", "arms": {"random init": "${adapt.random}",
                                                                     "deeper": "${adapt.deeper}",
                                                                     "raw pixels": "${adapt.pixels}",
                                                                     "CNN": "${adapt.cnn}"},
                                           "baselines": ["random init"], "controls": ["raw pixels", "CNN"],
                                           "reference": "random init", "metrics": ["auroc"]}}},
            "report": {"title": "controls"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    root, jobs = run_pipeline(tmp_path / "p.yaml", tmp_path / "run", say=lambda s: None)
    assert [j.status for j in jobs] == ["ran"] * len(jobs)
    doc = json.loads(next(root.glob("evaluate/arms-*/arms.json")).read_text())
    assert doc["controls"] == ["raw pixels", "CNN"]
    pairs = {frozenset((r["arm"], r["baseline"])) for r in doc["tests"]}
    assert pairs == {frozenset(p) for p in (("deeper", "random init"), ("raw pixels", "random init"),
                                             ("CNN", "random init"), ("deeper", "raw pixels"), ("CNN", "raw pixels"),
                                             ("deeper", "CNN"))}
    assert all("diff_ci_low" in r for r in doc["tests"])
    page = (root / "report.html").read_text()
    assert "toy, against raw pixels (test auroc" in page and "toy, against CNN (test auroc" in page
    assert "deeper minus raw pixels (toy, test auroc): 100% " in page and "deeper minus CNN (toy, test auroc)" in page
    assert "Verdict (toy):" in page and "beat raw pixels" in page and "beat CNN" in page


def test_controls_must_be_arms_and_stay_out_of_the_key_when_unset() -> None:
    import pytest
    from pydantic import ValidationError

    from synthfm.evaluate.jobs import ArmsJob

    arms = {"random": "a", "pixels": "b"}
    with pytest.raises(ValidationError, match=r"'controls' names \['CNN'\], which are not arms"):
        ArmsJob(arms=arms, baselines=["random"], reference="random", controls=["pixels", "CNN"])
    assert "controls" not in ArmsJob(arms=arms, baselines=["random"], reference="random").model_dump()
