"""The site kit: generator round trip, audit verdicts, export refusals, and what a bundle holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from synthfm.consortium import generators
from synthfm.consortium.audit import AuditConfig, features, nearest_neighbour_audit, real_features
from synthfm.consortium.export import export_bundle
from synthfm.consortium.generators import (
    GeneratorConfig,
    GeneratorKind,
    fit_priors,
    generator_hash,
    load_generator,
    phantom_schema,
)
from synthfm.consortium.keys import generate_keypair, load_private_key
from synthfm.consortium.site import SiteConfig, run_site
from synthfm.consortium.summary import draw_conditions
from synthfm.consortium.verify import IMAGE_MAGIC, VerifyConfig
from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError

from .conftest import SIZE

SCHEMA = phantom_schema(GeneratorConfig(size=SIZE))


def site_images(card: Path, split: str = "train") -> list[np.ndarray]:
    """The site's own images."""
    ds = open_dataset(load_card(card), split)
    return [ds.raw(i) for i in range(len(ds))]


def test_bundle_holds_weights_config_summary_audit_schema_and_no_image(site_run: Path) -> None:
    bundle = site_run / "bundle"
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert names == ["MANIFEST.json", "audit.json", "bundle.json", "generator/generator.json",
                     "generator/model.safetensors", "schema.json", "signature.json", "summary.json"]
    for p in bundle.rglob("*"):
        if p.is_file():
            assert not any(p.read_bytes().startswith(m) for m in IMAGE_MAGIC)
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["generator"]["hash"] == generator_hash(bundle / "generator") == generator_hash(site_run / "generator")
    assert (site_run / "site_a.bundle.tar").is_file()


def test_phantom_weights_are_the_summary_proportions(site_run: Path) -> None:
    """The phantom's 'weights' are fitted from the released summary only, and round-trip through safetensors."""
    summary = json.loads((site_run / "summary.json").read_text())
    gen = load_generator(site_run / "generator")
    sex = summary["marginals"]["sex"]
    assert gen.priors["sex"].tolist() == pytest.approx([sex.get("F", 0) / sum(sex.values()),
                                                       sex.get("M", 0) / sum(sex.values())])
    assert set(gen.priors) == set(fit_priors(summary, SCHEMA))
    a = gen.sample([{"dr_grade": 2, "sex": "F"}], [5])[0]
    assert a.shape == (SIZE, SIZE, 3) and np.array_equal(a, gen.sample([{"dr_grade": 2, "sex": "F"}], [5])[0])


def test_audit_flags_copies_and_passes_fresh_samples(site_card: Path, site_run: Path) -> None:
    cfg = AuditConfig(n_samples=8)
    real = real_features(site_card, "train", cfg)
    torch.manual_seed(0)
    copies = nearest_neighbour_audit(real[:8] + 0.0005 * torch.randn(8, real.shape[1]), real, cfg)
    assert copies["flagged"] == 8 and copies["passed"] is False
    audit = json.loads((site_run / "audit.json").read_text())
    assert audit["passed"] is True and audit["flagged"] == 0 and audit["n_real"] == len(real)
    assert "stand-in" in audit["method"]  # the minimal audit says what it is
    assert audit["real_reference_ratio_quantiles"]["0.0"] > cfg.ratio


def test_export_refuses_a_failed_audit(site_run: Path, keys: dict, tmp_path: Path) -> None:
    audit = {**json.loads((site_run / "audit.json").read_text()), "passed": False, "flagged": 3}
    summary = json.loads((site_run / "summary.json").read_text())
    with pytest.raises(SynthfmError, match=r"audit failed .*no bundle was written"):
        export_bundle(tmp_path / "b", "site_a", site_run / "generator", summary, audit, SCHEMA,
                      load_private_key(keys["site_a"]))
    assert not (tmp_path / "b").exists() and os.listdir(tmp_path) == []


def test_export_ships_only_the_declared_generator_files(site_run: Path, keys: dict, tmp_path: Path) -> None:
    """Leftovers of an interrupted write (.generator.json.*.tmp, .tmp.safetensors) and stray files in the
    generator folder stay behind: the bundle and its generator hash are those of a clean folder."""
    gen = tmp_path / "gen"
    gen.mkdir()
    for p in (site_run / "generator").iterdir():
        (gen / p.name).write_bytes(p.read_bytes())
    clean_hash = generator_hash(gen)
    (gen / "sample.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    (gen / ".generator.json.k2j3.tmp").write_text('{"format": "half written')
    (gen / ".model.safetensors.x81.tmp.safetensors").write_bytes(b"\0" * 16)
    assert generator_hash(gen) != clean_hash  # sample.png is not hidden; the hash skips only dot-files
    (gen / "sample.png").unlink()
    assert generator_hash(gen) == clean_hash
    summary = json.loads((site_run / "summary.json").read_text())
    audit = json.loads((site_run / "audit.json").read_text())
    (gen / "sample.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bundle = export_bundle(tmp_path / "b", "site_a", gen, summary, audit, SCHEMA, load_private_key(keys["site_a"]),
                           VerifyConfig(min_k=5))
    assert sorted(p.name for p in (bundle / "generator").iterdir()) == ["generator.json", "model.safetensors"]
    assert json.loads((bundle / "bundle.json").read_text())["generator"]["hash"] == clean_hash


def test_bundle_folders_and_files_follow_the_umask(site_run: Path, keys: dict, tmp_path: Path) -> None:
    summary = json.loads((site_run / "summary.json").read_text())
    audit = json.loads((site_run / "audit.json").read_text())
    old = os.umask(0o022)
    try:
        bundle = export_bundle(tmp_path / "b", "site_a", site_run / "generator", summary, audit, SCHEMA,
                               load_private_key(keys["site_a"]), VerifyConfig(min_k=5))
    finally:
        os.umask(old)
    assert bundle.stat().st_mode & 0o777 == 0o755
    assert (site_run / "summary.json").stat().st_mode & 0o777 == 0o666 & ~old  # written by atomic_write_json


class Copycat:
    """A generator that memorised its training set: it returns the site's own images."""

    kind, size = "phantom", SIZE

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images

    def sample(self, conditions: list, seeds: list, size: int | None = None) -> list[np.ndarray]:
        return [self.images[i % len(self.images)] for i in range(len(conditions))]


def test_site_kit_refuses_to_export_a_memorising_generator(site_card: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = site_images(site_card)
    kind = generators.KINDS["phantom"]()
    monkeypatch.setitem(generators.KINDS, "phantom",
                        lambda: GeneratorKind(kind.schema, kind.train, lambda _: Copycat(real)))
    priv, _ = generate_keypair("site_m", tmp_path / "keys")
    cfg = SiteConfig(site="site_m", card=str(site_card), generator={"size": SIZE}, summary={"k": 5},
                     audit={"n_samples": 8}, verify={"min_k": 5})
    with pytest.raises(SynthfmError, match="memorisation audit failed"):
        run_site(cfg, priv, tmp_path / "run")
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["flagged"] == 8 and not (tmp_path / "run" / "bundle").exists()
    assert not (tmp_path / "run" / "COMPLETE.json").exists()


def test_audit_features_ignore_brightness() -> None:
    img = np.random.default_rng(0).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    assert torch.allclose(features(img, 16), features(img + 40, 16), atol=1e-3)


def test_site_run_is_a_no_op_when_finished(site_run: Path, site_card: Path, keys: dict) -> None:
    before = (site_run / "bundle" / "MANIFEST.json").stat().st_mtime_ns
    cfg = SiteConfig(site="site_a", card=str(site_card), generator=GeneratorConfig(size=SIZE),
                     summary={"k": 5}, audit={"n_samples": 8}, verify={"min_k": 5}, archive=True)
    run_site(cfg, keys["site_a"], site_run)
    assert (site_run / "bundle" / "MANIFEST.json").stat().st_mtime_ns == before


def test_audit_conditions_come_from_released_cells(site_run: Path) -> None:
    summary = json.loads((site_run / "summary.json").read_text())
    released = {tuple(c["values"]) for c in summary["tables"][0]["cells"]}
    for cond in draw_conditions(summary, SCHEMA, 200, 1):
        grade = SCHEMA.labels()["dr_grade"][cond["dr_grade"]]
        assert any(v[0] == grade and v[2] == cond["sex"] for v in released)


def test_site_run_is_not_stuck_on_leftovers_of_a_killed_write(site_card: Path, keys: dict, tmp_path: Path) -> None:
    """A run killed while writing generator.json or its weights leaves hidden temp files; the rerun finishes and
    ships neither of them (the bundle's files and generator hash are those of a clean run)."""
    cfg = SiteConfig(site="site_a", card=str(site_card), generator=GeneratorConfig(size=SIZE), summary={"k": 5},
                     audit={"n_samples": 8}, verify={"min_k": 5})
    out = tmp_path / "run"
    (out / "generator").mkdir(parents=True)
    (out / "generator" / ".generator.json.k2j3.tmp").write_text('{"format": "synthfm.consortium.gen')
    (out / "generator" / ".model.safetensors.x81.tmp.safetensors").write_bytes(b"\0" * 16)
    bundle = run_site(cfg, keys["site_a"], out)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == ["MANIFEST.json", "audit.json", "bundle.json", "generator/generator.json",
                     "generator/model.safetensors", "schema.json", "signature.json", "summary.json"]
    clean = json.loads((run_site(cfg, keys["site_a"], tmp_path / "clean") / "bundle.json").read_text())
    assert json.loads((bundle / "bundle.json").read_text())["generator"]["hash"] == clean["generator"]["hash"]


def test_a_kill_during_the_bundle_export_leaves_no_staging_folder(site_card: Path, keys: dict, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle is staged in a hidden folder and renamed; a kill before the rename leaves that folder, and the
    resumed run must not keep it beside the finished bundle."""
    cfg = SiteConfig(site="site_a", card=str(site_card), generator=GeneratorConfig(size=SIZE), summary={"k": 5},
                     audit={"n_samples": 8}, verify={"min_k": 5})
    out = tmp_path / "run"

    def killed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed")
    with monkeypatch.context() as m:  # the stage is left as a kill leaves it: not removed
        m.setattr("synthfm.consortium.export.verify_bundle", killed)
        m.setattr("synthfm.consortium.export.shutil.rmtree", lambda *a, **k: None)
        with pytest.raises(RuntimeError):
            run_site(cfg, keys["site_a"], out)
    assert [p for p in out.iterdir() if p.name.startswith(".bundle.")]
    run_site(cfg, keys["site_a"], out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".bundle.")]
