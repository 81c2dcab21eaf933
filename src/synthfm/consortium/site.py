"""`synthfm site run`: the site kit, start to end, inside the site (in the container, with no network).

card -> condition table in the generator's vocabulary -> released summary (small cells suppressed, optional
DP noise) -> generator trained on the site's data -> memorisation audit against the site's own images ->
signed bundle (refused when the audit fails). Everything lands in a run directory; only `bundle/` (or the
`.tar` packed from it) is sent to the hub.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from synthfm.config import StrictModel
from synthfm.consortium.audit import AuditConfig, audit_generator
from synthfm.consortium.bundle import AUDIT_FILE, SUMMARY_FILE, pack_bundle
from synthfm.consortium.conditions import CardSchema, condition_table
from synthfm.consortium.export import export_bundle
from synthfm.consortium.generators import GeneratorConfig, TrainInputs, generator_hash, generator_kind, load_generator
from synthfm.consortium.keys import check_site_name, load_private_key
from synthfm.consortium.summary import SummaryConfig, summarize
from synthfm.consortium.verify import VerifyConfig
from synthfm.io import atomic_write_json
from synthfm.runs import RunDir, run_stage

STAGE = "consortium.site"
BUNDLE_DIR = "bundle"


class SiteConfig(StrictModel):
    """One site's kit run: its card, the generator to train, summary, audit and export settings."""

    site: str = Field(description="site name (lower-case letters, digits, '_' or '-'); must match its key")
    card: str = Field(description="the site's dataset card (never leaves the site)")
    split: str | None = Field("train", description="rows used for the summary, training and audit (None: all)")
    task_map: dict[str, str] = Field(default_factory=dict, description="card task name -> generator task name")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    summary: SummaryConfig = Field(default_factory=SummaryConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="the hub's limits, checked before sending")
    archive: bool = Field(False, description="also pack the bundle as <site>.bundle.tar")


def site_schema(cfg: SiteConfig) -> CardSchema:
    """The generator's condition vocabulary."""
    return generator_kind(cfg.generator.kind).schema(cfg.generator, Path(cfg.card))


def site_summary(cfg: SiteConfig) -> dict[str, Any]:
    """The summary the site would release (for review before anything is trained or sent)."""
    schema = site_schema(cfg)
    return summarize(condition_table(cfg.card, schema, cfg.task_map, cfg.split), schema, cfg.summary)


def _work(cfg: SiteConfig, key_path: Path, run: RunDir) -> dict[str, Any]:
    """Summary, training, audit and export inside the run directory."""
    key = load_private_key(key_path)
    schema = site_schema(cfg)
    table = condition_table(cfg.card, schema, cfg.task_map, cfg.split)
    summary = summarize(table, schema, cfg.summary)
    atomic_write_json(run.path / SUMMARY_FILE, summary)
    run.log(step="summary", rows=len(table), tables=len(summary["tables"]))
    inputs = TrainInputs(cfg.generator, Path(cfg.card), cfg.split, table, summary, schema)
    gen_dir = generator_kind(cfg.generator.kind).train(inputs, run.path / "generator")
    run.log(step="train", kind=cfg.generator.kind, generator_hash=generator_hash(gen_dir))
    audit = audit_generator(load_generator(gen_dir), cfg.card, cfg.split, summary, schema, cfg.audit)
    atomic_write_json(run.path / AUDIT_FILE, audit)
    run.log(step="audit", passed=audit["passed"], flagged=audit["flagged"], n=audit["n_synthetic"])
    bundle = run.path / BUNDLE_DIR
    if bundle.exists():
        shutil.rmtree(bundle)
    export_bundle(bundle, cfg.site, gen_dir, summary, audit, schema, key, cfg.verify)
    out: dict[str, Any] = {"bundle": str(bundle), "generator_hash": generator_hash(gen_dir)}
    if cfg.archive:
        out["archive"] = str(pack_bundle(bundle, run.path / f"{cfg.site}.bundle.tar"))
    return out


def run_site(cfg: SiteConfig, key_path: str | Path, out_dir: str | Path) -> Path:
    """Run the site kit into `out_dir` (a finished run is a no-op); return the bundle folder."""
    check_site_name(cfg.site)
    run_stage(out_dir, STAGE, cfg, lambda run: _work(cfg, Path(key_path), run))
    return Path(out_dir) / BUNDLE_DIR
