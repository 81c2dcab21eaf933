"""Shared consortium fixtures: a small private site card, site keys and one exported bundle per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from synthfm.consortium.bundle import MANIFEST_FILE, SIGNATURE_FILE, Signature, build_manifest
from synthfm.consortium.generators import GeneratorConfig
from synthfm.consortium.keys import generate_keypair, key_id, load_private_key, sign
from synthfm.consortium.simulate import ConsortiumConfig, SimSite, site_data
from synthfm.consortium.site import SiteConfig, run_site

SIZE = 32
PRIORS = {"age_mean": 55.0, "ethnicity": [0.5, 0.1, 0.2, 0.1, 0.1], "device": [0.5, 0.3, 0.1, 0.05, 0.05]}


@pytest.fixture(scope="session")
def site_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private fundus-phantom card of 48 images (2 per patient, patient-level splits) at 32 px."""
    cfg = ConsortiumConfig(generator=GeneratorConfig(size=SIZE), sites=[SimSite(name="site_a", n=48, priors=PRIORS)])
    return site_data(cfg, 0, tmp_path_factory.mktemp("site_a_data"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Key pairs of site_a and site_b; the hub keyring folder holds only their public keys."""
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for site in ("site_a", "site_b"):
        priv, pub = generate_keypair(site, root / "private")
        out[site] = priv
        (root / "hub").mkdir(exist_ok=True)
        shutil.copyfile(pub, root / "hub" / pub.name)
    out["hub"] = root / "hub"
    return out


@pytest.fixture(scope="session")
def site_run(site_card: Path, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site-kit run (summary, phantom generator, audit, signed bundle + tar) at k=5."""
    cfg = SiteConfig(site="site_a", card=str(site_card), generator=GeneratorConfig(size=SIZE),
                     summary={"k": 5}, audit={"n_samples": 8}, verify={"min_k": 5}, archive=True)
    out = tmp_path_factory.mktemp("site_a_kit")
    run_site(cfg, keys["site_a"], out)
    return out


@pytest.fixture
def bundle(site_run: Path, tmp_path: Path) -> Path:
    """A private copy of the exported bundle folder, free to tamper with."""
    return Path(shutil.copytree(site_run / "bundle", tmp_path / "bundle"))


def resign(root: Path, key_path: Path, site: str | None = None) -> None:
    """Rebuild the manifest and signature, as a malicious site holding a valid key would."""
    key = load_private_key(key_path)
    manifest = build_manifest(root)
    (root / MANIFEST_FILE).write_bytes(manifest)
    sig = Signature(key_id=key_id(key.public_key()), site=site or key_path.stem, signature=sign(key, manifest))
    (root / SIGNATURE_FILE).write_text(sig.model_dump_json())
