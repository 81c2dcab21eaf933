"""The `synthfm site` / `synthfm hub` commands (Typer apps the lead mounts in cli.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from synthfm.consortium.commands import app
from synthfm.consortium.keys import key_id, load_public_key
from synthfm.errors import SynthfmError

runner = CliRunner()


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path) -> None:
    res = runner.invoke(app, ["site", "keygen", "--site", "site_z", "--out", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "site_z.key").stat().st_mode & 0o077 == 0
    assert key_id(load_public_key(tmp_path / "site_z.pub")) in res.output.replace("\n", "")
    again = runner.invoke(app, ["site", "keygen", "--site", "site_z", "--out", str(tmp_path)])
    assert isinstance(again.exception, SynthfmError) and "refusing to overwrite" in str(again.exception)


def test_hub_verify_accepts_and_rejects_with_exit_codes(site_run: Path, keys: dict, tmp_path: Path) -> None:
    tar = site_run / "site_a.bundle.tar"
    ok = runner.invoke(app, ["hub", "verify", str(tar), "--keys", str(keys["hub"]), "--min-k", "5"])
    assert ok.exit_code == 0 and "ACCEPTED" in ok.output and "site_a" in ok.output
    strict = runner.invoke(app, ["hub", "verify", str(tar), "--keys", str(keys["hub"])])
    assert strict.exit_code == 2 and "REJECTED (small-cell)" in strict.output
    bad = Path(shutil.copytree(site_run / "bundle", tmp_path / "b"))
    (bad / "schema.json").write_text((bad / "schema.json").read_text().replace("fundus", "cxr"))
    res = runner.invoke(app, ["hub", "verify", str(bad), "--keys", str(keys["hub"]), "--min-k", "5"])
    assert res.exit_code == 2 and "REJECTED (checksum)" in res.output and "schema.json" in res.output


def test_site_summarize_prints_what_would_be_released(site_card: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(yaml.safe_dump({"site": "site_a", "card": str(site_card), "summary": {"k": 5}}))
    res = runner.invoke(app, ["site", "summarize", str(cfg), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["k"] == 5 and summary["tables"][0]["variables"] == ["dr_grade", "age_band", "sex"]


def test_site_deidentify_command(site_card: Path, tmp_path: Path) -> None:
    (tmp_path / "salt").write_text("s" * 32)
    res = runner.invoke(app, ["site", "deidentify", str(site_card.parent), "--out", str(tmp_path / "d"),
                              "--site", "site_c", "--shareable", "dr_grade,age", "--salt-file",
                              str(tmp_path / "salt"), "--split", "test"])
    assert res.exit_code == 0, res.output
    assert set(yaml.safe_load((tmp_path / "d" / "dataset.yaml").read_text())["metadata"]) >= {"age", "site"}


def test_hub_verify_records_accepted_bundles_in_the_ledger(site_run: Path, keys: dict, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    args = ["hub", "verify", str(site_run / "site_a.bundle.tar"), "--keys", str(keys["hub"]), "--min-k", "5",
            "--ledger", str(ledger)]
    for _ in range(2):  # the same site sending the same bundle again is not a replay
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    (rec,) = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert rec["site"] == "site_a" and len(rec["content_hash"]) == 64 and len(rec["generator_hash"]) == 64


def test_site_deidentify_shares_card_text_only_when_asked(site_card: Path, tmp_path: Path) -> None:
    (tmp_path / "salt").write_text("s" * 32)
    base = ["site", "deidentify", str(site_card.parent), "--site", "site_c", "--shareable", "dr_grade",
            "--salt-file", str(tmp_path / "salt"), "--split", "test"]
    assert runner.invoke(app, [*base, "--out", str(tmp_path / "d")]).exit_code == 0
    assert yaml.safe_load((tmp_path / "d" / "dataset.yaml").read_text())["name"] == "site_c_deid"
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "e"), "--share-text", "name,description"])
    assert res.exit_code == 0, res.output
    card = yaml.safe_load((tmp_path / "e" / "dataset.yaml").read_text())
    assert card["name"] != "site_c_deid" and card["name"].endswith("_site_c_deid")
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "f"), "--share-text", "notes"])
    assert isinstance(bad.exception, SynthfmError) and "share_text" in str(bad.exception)
