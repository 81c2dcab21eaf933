"""PretrainConfig: a run records only its own objective's settings, and the record hashes as the config did."""

from __future__ import annotations

from pathlib import Path

import yaml

from synthfm.pretrain.config import pretrain_config
from synthfm.runs import CONFIG_FILE, RunDir, config_hash, read_run_config

STAGES = [{"name": "a", "sources": [{"source": "phantom", "n": 8}], "steps": 2}]


def test_a_run_records_only_its_objectives_block_and_reads_back_to_the_same_hash(tmp_path: Path) -> None:
    from synthfm.pretrain.config import PretrainConfig

    for objective in ("mae", "dinov2", "rasd"):
        cfg = pretrain_config({"objective": objective, "stages": STAGES})
        record = cfg.recorded()
        assert objective in record and not {"mae", "dinov2", "rasd", "diffusion"} - {objective} & set(record)
        assert config_hash(PretrainConfig.model_validate(record)) == config_hash(cfg)
    run = RunDir(tmp_path / "run", "pretrain", cfg)
    assert run.open() == "fresh"
    run.complete()
    written = yaml.safe_load((tmp_path / "run" / CONFIG_FILE).read_text())
    assert "mae" not in written["config"] and written["config_hash"] == config_hash(cfg)
    again = read_run_config(tmp_path / "run", PretrainConfig, "pretrain")
    assert RunDir(tmp_path / "run", "pretrain", again).open() == "done"


def test_another_objectives_block_that_was_set_is_still_recorded() -> None:
    """A changed setting of an unused block is kept, so the record still reproduces the config's hash."""
    from synthfm.pretrain.config import PretrainConfig

    cfg = pretrain_config({"objective": "dinov2", "mae": {"mask_ratio": 0.6}, "stages": STAGES})
    record = cfg.recorded()
    assert record["mae"]["mask_ratio"] == 0.6 and "diffusion" not in record
    assert config_hash(PretrainConfig.model_validate(record)) == config_hash(cfg)
