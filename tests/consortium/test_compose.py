"""Hub composition: per-site counts and provenance, distributions that match each summary, targets, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthfm.consortium import generators
from synthfm.consortium.compose import ComposeConfig, allocate, compose
from synthfm.consortium.conditions import AGE_BAND
from synthfm.consortium.deidentify import DeidConfig, deidentify_card
from synthfm.consortium.generators import GeneratorConfig, GeneratorKind
from synthfm.consortium.simulate import ConsortiumConfig, SimSite, site_data
from synthfm.consortium.site import SiteConfig, run_site
from synthfm.consortium.verify import BundleRejected, verify_bundle
from synthfm.data.manifest import load_card
from synthfm.data.vocabulary import band_index
from synthfm.errors import SynthfmError

from .conftest import PRIORS, SIZE

HUB = {"min_k": 5}
SALT = b"another-secret-salt-of-the-site"


@pytest.fixture(scope="module")
def site_b_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site b's own private card (a bundle from the same card as site_a's would be a replay of it)."""
    cfg = ConsortiumConfig(generator=GeneratorConfig(size=SIZE), seed=1,
                           sites=[SimSite(name="site_b", n=48, priors={**PRIORS, "age_mean": 60.0})])
    return site_data(cfg, 0, tmp_path_factory.mktemp("site_b_data"))


@pytest.fixture(scope="module")
def site_b(site_b_card: Path, keys: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second site's bundle folder (same private card, its own key)."""
    cfg = SiteConfig(site="site_b", card=str(site_b_card), generator=GeneratorConfig(size=SIZE),
                     summary={"k": 5}, audit={"n_samples": 8}, verify=HUB)
    return run_site(cfg, keys["site_b"], tmp_path_factory.mktemp("site_b_kit"))


@pytest.fixture(scope="module")
def deid(site_card: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A path-(b) site's de-identified training split."""
    out = tmp_path_factory.mktemp("site_c") / "deid"
    cols = ["dr_grade", "amd", "glaucoma", "cataract", "age", "sex", "ethnicity", "device"]
    deidentify_card(site_card, out, DeidConfig(site="site_c", shareable=cols, split="train"), SALT)
    return out


class Solid:
    """A fast stand-in generator for distribution tests: one flat image per seed."""

    kind, size = "phantom", SIZE
    calls = 0
    fail_after: int | None = None

    def sample(self, conditions: list, seeds: list, size: int | None = None) -> list[np.ndarray]:
        Solid.calls += len(seeds)
        if Solid.fail_after is not None and Solid.calls > Solid.fail_after:
            raise RuntimeError("killed")
        return [np.full((8, 8, 3), s % 251, np.uint8) for s in seeds]


@pytest.fixture
def solid(monkeypatch: pytest.MonkeyPatch) -> type[Solid]:
    """Bundles load as the fast stand-in (verification still reads the real files)."""
    kind = generators.KINDS["phantom"]()
    monkeypatch.setitem(generators.KINDS, "phantom", lambda: GeneratorKind(kind.schema, kind.train, lambda _: Solid()))
    Solid.calls, Solid.fail_after = 0, None
    return Solid


def config(site_run: Path, site_b: Path, keys: dict, **kw: Any) -> ComposeConfig:
    """Both bundles (site_a as its .tar, site_b as a folder)."""
    return ComposeConfig(keys=str(keys["hub"]), bundles=[{"path": str(site_run / "site_a.bundle.tar")},
                                                         {"path": str(site_b)}], verify=HUB, **kw)


def test_counts_provenance_and_real_rows(site_run: Path, site_b: Path, deid: Path, keys: dict,
                                         tmp_path: Path) -> None:
    cfg = config(site_run, site_b, keys, synthetic_per_real=0.25,
                 real=[{"card": str(deid), "site": "site_c", "synthesize": 4}], hub_summary={"k": 5})
    data = load_card(compose(cfg, tmp_path / "c"))
    df = data.df
    rows = json.loads((site_run / "summary.json").read_text())["tables"][0]["total"]
    rows_b = json.loads((site_b / "summary.json").read_text())["tables"][0]["total"]
    counts = df.groupby(["site", "origin"]).size().to_dict()
    assert counts == {("site_a", "synthetic"): round(0.25 * rows), ("site_b", "synthetic"): round(0.25 * rows_b),
                      ("site_c", "real"): len(load_card(deid)), ("site_c", "synthetic"): 4}
    hashes = {s: verify_bundle(p, keys["hub"], cfg.verify).generator_hash
              for s, p in (("site_a", site_run / "bundle"), ("site_b", site_b))}
    for site, h in hashes.items():
        assert set(df.loc[(df["site"] == site), "generator_hash"]) == {h}
    assert set(df.loc[df["origin"] == "real", "generator_hash"]) == {""}
    assert data.card.provenance.row_columns == ["site", "origin", "generator_hash", "condition", "seed"]
    assert "dr_grade" in [t.name for t in data.card.tasks]
    real = df[df["origin"] == "real"].iloc[0]
    src = load_card(deid)
    assert (tmp_path / "c" / real["path"]).read_bytes() in {src.image_path(i).read_bytes() for i in range(len(src))}
    first = df[df["origin"] == "synthetic"].iloc[0]
    assert json.loads(first["condition"])["dr_grade"] == data.card.task("dr_grade").classes.index(first["dr_grade"])


def composed_cells(df: pd.DataFrame, variables: list[str]) -> pd.Series:
    """Counts of composed rows per joint cell, named as the summary names them."""
    cols = []
    for v in variables:
        if v == AGE_BAND:
            bands = band_index(df["age"].to_numpy(), [0, 40, 70, 120], clip=False)
            cols.append(pd.Series(np.array(["[0,40)", "[40,70)", "[70,120)"])[bands]))
        else:
            cols.append(df[v].astype(str).reset_index(drop=True))
    return pd.Series(list(zip(*cols, strict=True))).value_counts()


def chi_square_p(df: pd.DataFrame, table: dict, reweight: dict | None = None) -> float:
    """Goodness of fit of composed rows to a released table (cells reweighted as the target says)."""
    released = {tuple(c["values"]): c["count"] for c in table["cells"]}
    got = composed_cells(df, table["variables"])
    assert set(got.index) <= set(released), f"suppressed cell drawn in {table['variables']}"
    w = np.array(list(released.values()), float)
    for j, var in enumerate(table["variables"]):
        w *= [(reweight or {}).get(var, {}).get(k[j], 1.0) for k in released]
    observed = np.array([got.get(k, 0) for k in released])
    return float(stats.chisquare(observed, w / w.sum() * observed.sum()).pvalue) if len(w) > 1 else 1.0


def test_each_sites_composed_rows_match_its_summary(site_run: Path, site_b: Path, keys: dict, tmp_path: Path,
                                                    solid: type[Solid]) -> None:
    df = load_card(compose(config(site_run, site_b, keys, n_total=1200), tmp_path / "c")).df
    for site, bundle in (("site_a", site_run / "bundle"), ("site_b", site_b)):
        summary = json.loads((bundle / "summary.json").read_text())
        mine = df[df["site"] == site].reset_index(drop=True)
        assert len(mine) == 600
        for table in summary["tables"]:
            if table["cells"]:
                assert chi_square_p(mine, table) > 1e-3, (site, table["variables"])


def test_target_reweights_sites_and_subgroups(site_run: Path, site_b: Path, keys: dict, tmp_path: Path,
                                              solid: type[Solid]) -> None:
    reweight = {"sex": {"F": 3.0}}
    cfg = config(site_run, site_b, keys, n_total=900, site_weights={"site_a": 2.0}, reweight=reweight)
    df = load_card(compose(cfg, tmp_path / "c")).df
    assert df.groupby("site").size().to_dict() == {"site_a": 600, "site_b": 300}
    summary = json.loads((site_run / "summary.json").read_text())
    joint = summary["tables"][0]
    mine = df[df["site"] == "site_a"].reset_index(drop=True)
    assert chi_square_p(mine, joint, reweight) > 1e-3
    plain = {c["values"][2]: 0 for c in joint["cells"]}
    for c in joint["cells"]:
        plain[c["values"][2]] += c["count"]
    if plain.get("F") and plain.get("M"):  # F's share rises as the target asks
        assert (mine["sex"] == "F").mean() > plain["F"] / (plain["F"] + plain["M"]) + 0.05


def test_allocate_by_hand() -> None:
    assert allocate(10, np.array([1.0, 1.0, 1.0])).tolist() == [4, 3, 3]
    assert allocate(7, np.array([2.0, 0.0, 1.0])).tolist() == [5, 0, 2]


def test_compose_resumes_without_redoing_images(site_run: Path, site_b: Path, keys: dict, tmp_path: Path,
                                                solid: type[Solid]) -> None:
    cfg = config(site_run, site_b, keys, n_total=100)
    Solid.fail_after = 64
    with pytest.raises(RuntimeError, match="killed"):
        compose(cfg, tmp_path / "c")
    assert not (tmp_path / "c" / "dataset.yaml").exists()
    Solid.calls, Solid.fail_after = 0, None
    assert len(load_card(compose(cfg, tmp_path / "c")).df) == 100
    assert Solid.calls == 100 - 64  # the two finished chunks (64 images) were kept; only the rest was rendered


def test_tampered_bundle_stops_the_composition(site_run: Path, site_b: Path, keys: dict, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(site_b, tmp_path / "bad"))
    (bad / "summary.json").write_text((bad / "summary.json").read_text().replace('"k": 5', '"k": 50'))
    cfg = ComposeConfig(keys=str(keys["hub"]), bundles=[{"path": str(bad)}], verify=HUB)
    with pytest.raises(BundleRejected, match="checksum"):
        compose(cfg, tmp_path / "c")
    assert not (tmp_path / "c" / "dataset.yaml").exists()


def test_raw_real_card_is_refused(site_card: Path, keys: dict, tmp_path: Path) -> None:
    cfg = ComposeConfig(keys=str(keys["hub"]), real=[{"card": str(site_card.parent), "site": "site_x"}])
    with pytest.raises(SynthfmError, match=r"not accepted.*not written by 'synthfm site deidentify'"):
        compose(cfg, tmp_path / "c")


def test_compose_keeps_a_ledger_and_refuses_a_later_replay(site_run: Path, site_b: Path, keys: dict,
                                                           tmp_path: Path) -> None:
    from .conftest import resign

    ledger = tmp_path / "ledger.jsonl"
    cfg = config(site_run, site_b, keys, n_total=8, ledger=str(ledger))
    compose(cfg, tmp_path / "c")
    assert [json.loads(line)["site"] for line in ledger.read_text().splitlines()] == ["site_a", "site_b"]
    compose(cfg.model_copy(update={"seed": 1}), tmp_path / "again")  # the same sites again: no replay
    assert len(ledger.read_text().splitlines()) == 2
    copy = Path(shutil.copytree(site_run / "bundle", tmp_path / "copy"))
    info = json.loads((copy / "bundle.json").read_text())
    (copy / "bundle.json").write_text(json.dumps({**info, "site": "site_b"}))
    resign(copy, keys["site_b"])  # later, site b sends site a's bundle as its own
    later = ComposeConfig(keys=str(keys["hub"]), bundles=[{"path": str(copy), "n": 4}], verify=HUB,
                          ledger=str(ledger))
    with pytest.raises(BundleRejected, match=r"\[replay\].*same content hash as the bundle site_a sent"):
        compose(later, tmp_path / "later")
    assert not (tmp_path / "later" / "dataset.yaml").exists() and not (tmp_path / "later" / "bundles").exists()
