"""A simulated consortium (`configs/consortium.yaml`): phantom sites -> bundles -> hub -> composed set ->
pretraining -> evaluation at every site.

Each site's private data is a fundus phantom card with its own age / ethnicity / device priors. Sites on
path (a) run the site kit and send a signed bundle (`.tar`); sites on path (b) send a de-identified copy of
their training split. The hub verifies every bundle against the keys it received out of band, composes one
pretraining card, pretrains an encoder on it, and each site linear-probes that encoder (and a random-init
one) on its own held-out test split. Every step is its own run directory, so a re-run reuses finished work.
"""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel, check_block, read_yaml, validate_config
from synthfm.consortium.audit import AuditConfig
from synthfm.consortium.compose import ComposeConfig, RealSource, compose
from synthfm.consortium.deidentify import DeidConfig, deidentify_card
from synthfm.consortium.generators import GeneratorConfig
from synthfm.consortium.keys import check_site_name, generate_keypair
from synthfm.consortium.site import SiteConfig, run_site
from synthfm.consortium.summary import SummaryConfig
from synthfm.consortium.verify import VerifyConfig
from synthfm.data.card import DatasetCard, MetadataSpec, Provenance, SourceSpec, SplitSpec, TaskSpec, write_card
from synthfm.data.images import encode_png
from synthfm.io import atomic_path, atomic_write_bytes, atomic_write_json
from synthfm.runs import RunDir, run_stage
from synthfm.synth.registry import generator_spec, task_type
from synthfm.synth.writer import image_seed

TINY_PRETRAIN: dict[str, Any] = {
    "recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 16,
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "log_every": 5, "checkpoint_every": 20,
    "optim": {"lr": 1e-3, "warmup_steps": 2},
}
TINY_PROBE: dict[str, Any] = {"policy": "linear_probe", "image_size": 32, "epochs": 5, "warmup_epochs": 1,
                              "lr": 5e-3, "seeds": [0], "backbone_overrides": {"depth": 2, "img_size": 32}}


class SimSite(StrictModel):
    """One simulated site: size, phantom priors (age, ethnicity, device mixes...), and how it shares."""

    name: str
    n: int = Field(200, ge=10)
    priors: dict[str, Any] = Field(default_factory=dict, description="FundusPhantom prior overrides")
    path: Literal["bundle", "images"] = Field("bundle", description="a: signed generator bundle; b: images")
    synthesize: int = Field(0, ge=0, description="path b: synthetic images the hub makes for this site")


class Target(StrictModel):
    """The composition target (see ComposeConfig)."""

    synthetic_per_real: float = Field(1.0, ge=0)
    n_total: int | None = Field(None, ge=1)
    site_weights: dict[str, float] = Field(default_factory=dict)
    reweight: dict[str, dict[str, float]] = Field(default_factory=dict)


class PretrainStep(StrictModel):
    """Pretraining on the composed card (a PretrainConfig mapping; the composed card becomes its source)."""

    enabled: bool = True
    steps: int = Field(20, ge=1)
    config: dict[str, Any] = Field(default_factory=lambda: dict(TINY_PRETRAIN))

    @field_validator("config")
    @classmethod
    def _pretrain_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """PretrainConfig keys (the composed card is the stage's source), checked when the config is read."""
        from synthfm.pretrain.config import PretrainConfig

        return check_block(PretrainConfig, value, stages=[{"name": "composed", "steps": 1,
                                                           "sources": [{"source": "composed card"}]}])


class EvaluateStep(StrictModel):
    """Per-site adaptation of the pretrained encoder (an AdaptConfig mapping without card/encoder)."""

    enabled: bool = True
    task: str = "dr_grade"
    compare_random: bool = Field(True, description="also probe a random-init encoder of the same backbone")
    config: dict[str, Any] = Field(default_factory=lambda: dict(TINY_PROBE))

    @field_validator("config")
    @classmethod
    def _adapt_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """AdaptConfig keys (card, task and encoder are each site's), checked when the config is read."""
        from synthfm.adapt.config import AdaptConfig

        return check_block(AdaptConfig, value, card="site card", task="task", encoder="consortium encoder")


class ConsortiumConfig(StrictModel):
    """The whole simulated consortium."""

    generator: GeneratorConfig = Field(default_factory=lambda: GeneratorConfig(size=32))
    seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    sites: list[SimSite] = Field(min_length=1)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig(n_samples=16))
    compose: Target = Field(default_factory=Target)
    verify: VerifyConfig | None = Field(None, description="the hub's limits (default: min_k = summary.k)")
    pretrain: PretrainStep = Field(default_factory=PretrainStep)
    evaluate: EvaluateStep = Field(default_factory=EvaluateStep)

    @model_validator(mode="after")
    def _unique_sites(self) -> ConsortiumConfig:
        """Site names are valid and unique."""
        names = [check_site_name(s.name).strip() for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"site names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _site_priors(self) -> ConsortiumConfig:
        """Every site's priors are overrides the generator's phantom accepts (a typo fails before any site runs)."""
        factory = generator_spec(self.generator.name).factory
        for site in self.sites:
            try:
                factory(**site.priors)
            except (TypeError, ValueError) as err:
                raise ValueError(f"sites '{site.name}' priors: {err}") from None
        return self


class SiteDataConfig(StrictModel):
    """The config of one simulated site's private card (its run-directory identity)."""

    site: SimSite
    generator: GeneratorConfig
    seed: int
    ratios: tuple[float, float, float]


def patient_splits(n_patients: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """A seeded train/val/test split per patient."""
    counts = np.floor(np.asarray(ratios) * n_patients).astype(int)
    counts[0] += n_patients - counts.sum()
    return np.random.default_rng(seed).permutation(np.repeat(["train", "val", "test"], counts)).tolist()


def _site_card(cfg: SiteDataConfig, run: RunDir) -> dict[str, Any]:
    """Render a site's private phantom card: two images per patient, patient-level splits."""
    spec = generator_spec(cfg.generator.name)
    phantom = spec.factory(**cfg.site.priors)
    splits = patient_splits((cfg.site.n + 1) // 2, cfg.ratios, cfg.seed)
    rows = []
    for i in range(cfg.site.n):
        seed = image_seed(cfg.seed, i)
        sample = phantom.generate({}, seed, cfg.generator.size)
        rel = f"images/{i:06d}.png"
        atomic_write_bytes(run.path / rel, encode_png(sample.image))
        rows.append({"path": rel, "image_id": f"{i:06d}", "patient_id": f"{cfg.site.name}-p{i // 2:05d}",
                     "split": splits[i // 2], **sample.labels, **sample.metadata})
    with atomic_path(run.path / "manifest.csv", ".csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    card = DatasetCard(
        name=f"{cfg.site.name}_private", modality=spec.modality,  # type: ignore[arg-type]
        source=SourceSpec(format="folder", root=".", path_column="path"), manifest="manifest.csv",
        id_column="image_id", split=SplitSpec(column="split"),
        tasks=[TaskSpec(name=t, type=task_type(spec, t), classes=c) for t, c in spec.tasks.items()],  # type: ignore[arg-type]
        metadata=MetadataSpec(patient_id="patient_id", **{m: m for m in spec.metadata}),
        provenance=Provenance(kind="synthetic", generator=cfg.generator.name,
                              notes="stands in for a site's private real data in the simulated consortium"),
    )
    write_card(card, run.path)
    return {"images": cfg.site.n}


def site_data(cfg: ConsortiumConfig, k: int, out: Path) -> Path:
    """The private card of site k (rendered once)."""
    site = cfg.sites[k]
    data_cfg = SiteDataConfig(site=site, generator=cfg.generator, seed=cfg.seed * 1000 + k, ratios=cfg.ratios)
    run = run_stage(out, "consortium.sim_site", data_cfg, lambda run: _site_card(data_cfg, run))
    return run.path / "dataset.yaml"


def site_keys(site: str, out: Path, hub_keys: Path) -> Path:
    """The site's key pair (made once); its public key is handed to the hub out of band."""
    priv = out / f"{site}.key"
    if not priv.is_file():
        generate_keypair(site, out)
    hub_keys.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / f"{site}.pub", hub_keys / f"{site}.pub")
    return priv


def site_share(cfg: ConsortiumConfig, k: int, card: Path, out: Path, hub: Path) -> dict[str, Any]:
    """What site k sends the hub: a signed bundle tar (path a) or a de-identified training split (path b)."""
    site = cfg.sites[k]
    root = out / "sites" / site.name
    if site.path == "images":
        salt_file = root / "salt"
        if not salt_file.is_file():
            atomic_write_bytes(salt_file, secrets.token_hex(32).encode(), perms=0o600)
        deid = hub / "inbox" / f"{site.name}_deid"
        if not (deid / "dataset.yaml").is_file():
            deidentify_card(card, deid, DeidConfig(site=site.name, shareable=_shareable(card), split="train"),
                            salt_file.read_bytes().strip())
        return {"real": RealSource(card=str(deid), site=site.name, synthesize=site.synthesize)}
    key = site_keys(site.name, root / "keys", hub / "keys")
    site_cfg = SiteConfig(site=site.name, card=str(card), generator=cfg.generator, summary=cfg.summary,
                          audit=cfg.audit, verify=cfg.verify or VerifyConfig(min_k=cfg.summary.k), archive=True)
    run_site(site_cfg, key, root / "kit")
    sent = hub / "inbox" / f"{site.name}.bundle.tar"
    sent.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(root / "kit" / f"{site.name}.bundle.tar", sent)
    return {"bundle": str(sent)}


def _shareable(card: Path) -> list[str]:
    """The columns a simulated path-b site shares: its labels and standard metadata."""
    df = pd.read_csv(card.parent / "manifest.csv", nrows=1)
    return [c for c in df.columns if c not in ("path", "image_id", "patient_id", "split")]


def pretrain_composed(cfg: ConsortiumConfig, card: Path, out: Path) -> Path:
    """Pretrain on the composed card; return the exported encoder folder."""
    from synthfm.pretrain.config import pretrain_config
    from synthfm.pretrain.engine import pretrain

    stage = {"name": "composed", "steps": cfg.pretrain.steps, "sources": [{"source": str(card)}]}
    pcfg = pretrain_config({**cfg.pretrain.config, "stages": [stage]}, "consortium.pretrain")
    pretrain(pcfg, out)
    return out / "encoder"


def evaluate_sites(cfg: ConsortiumConfig, cards: list[Path], encoder: Path, out: Path) -> list[dict[str, Any]]:
    """Each site probes the consortium encoder (and random init) on its own test split."""
    from synthfm.adapt.config import AdaptConfig
    from synthfm.adapt.experiment import run_experiment

    backbone = cfg.pretrain.config.get("backbone", "vit_tiny_p8_64")
    encoders = {"consortium": str(encoder)} | ({"random": f"random:{backbone}"} if cfg.evaluate.compare_random else {})
    rows = []
    for site, card in zip(cfg.sites, cards, strict=True):
        for name, enc in encoders.items():
            acfg = validate_config(AdaptConfig, {**cfg.evaluate.config, "card": str(card), "task": cfg.evaluate.task,
                                                 "encoder": enc}, "consortium.evaluate")
            res = run_experiment(acfg, out / site.name / name)
            test = res[(res["split"] == "test") & (res["metric"] == "auroc")]
            value = float(test["value"].mean()) if len(test) else float("nan")
            rows.append({"site": site.name, "encoder": name, "test_auroc": None if np.isnan(value) else value,
                         "test_images": int((pd.read_csv(card.parent / "manifest.csv")["split"] == "test").sum())})
    return rows


def load_consortium_config(config: str | Path | dict[str, Any] | ConsortiumConfig) -> ConsortiumConfig:
    """A consortium config from a YAML path, a mapping or a ready model."""
    if isinstance(config, ConsortiumConfig):
        return config
    data = read_yaml(config) if isinstance(config, (str, Path)) else config
    return validate_config(ConsortiumConfig, data, str(config) if isinstance(config, (str, Path)) else "consortium")


def run_consortium(config: str | Path | dict[str, Any] | ConsortiumConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the whole simulated consortium into `out_dir`; return (and write) its summary."""
    cfg = load_consortium_config(config)
    out, t0 = Path(out_dir), time.perf_counter()
    hub = out / "hub"
    cards = [site_data(cfg, k, out / "sites" / s.name / "data") for k, s in enumerate(cfg.sites)]
    shared = [site_share(cfg, k, card, out, hub) for k, card in enumerate(cards)]
    (hub / "keys").mkdir(parents=True, exist_ok=True)
    ccfg = ComposeConfig(keys=str(hub / "keys"), bundles=[{"path": s["bundle"]} for s in shared if "bundle" in s],
                         real=[s["real"] for s in shared if "real" in s], size=cfg.generator.size,
                         seed=cfg.seed, hub_generator=cfg.generator, hub_summary=cfg.summary,
                         verify=cfg.verify or VerifyConfig(min_k=cfg.summary.k), **cfg.compose.model_dump())
    composed = compose(ccfg, hub / "composed")
    summary: dict[str, Any] = {"composed_card": str(composed),
                               "composition": RunDir(hub / "composed", "", ccfg).summary()}
    if cfg.pretrain.enabled:
        encoder = pretrain_composed(cfg, composed, hub / "pretrain")
        summary["encoder"] = str(encoder)
        if cfg.evaluate.enabled:
            summary["evaluation"] = evaluate_sites(cfg, cards, encoder, out / "evaluate")
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "consortium_summary.json", summary)
    return summary
