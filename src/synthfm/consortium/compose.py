"""`synthfm hub compose`: verified bundles + de-identified real cards -> one pretraining card with provenance.

For every bundle the hub draws conditions from the site's released tables (optionally reweighted by a
target: `site_weights` scale each site's share, `reweight` scales cells by variable value) and samples the
site's own generator; sites that sent de-identified images (path b) contribute their real rows and, when
asked, synthetic rows from a generator the hub fits on their card. Rows carry `site`, `origin`
(real / synthetic), `generator_hash`, `condition` and `seed`. Rendering is resumable at the image.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from synthfm import __version__
from synthfm.config import StrictModel
from synthfm.consortium.conditions import CardSchema, condition_table
from synthfm.consortium.deidentify import card_layout_problems, deidentified_problems
from synthfm.consortium.generators import (
    GeneratorConfig,
    TrainInputs,
    generator_hash,
    generator_kind,
    load_generator,
)
from synthfm.consortium.keys import check_site_name, load_keyring
from synthfm.consortium.summary import SummaryConfig, draw_conditions, summarize
from synthfm.consortium.verify import VerifyConfig, append_ledger, check_replay, read_ledger, verify_bundle
from synthfm.data.card import (
    MANIFEST,
    DatasetCard,
    MetadataSpec,
    Provenance,
    SourceSpec,
    SplitSpec,
    TaskSpec,
    write_card,
)
from synthfm.data.images import encode_png, load_image
from synthfm.data.manifest import load_card
from synthfm.data.modality import preset
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.progress import progress_bar
from synthfm.runs import RunDir

STAGE = "consortium.compose"
PROGRESS_FILE = "progress.jsonl"
METADATA = ("age", "sex", "ethnicity", "device")
PROVENANCE_COLUMNS = ["site", "origin", "generator_hash", "condition", "seed"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class BundleSource(StrictModel):
    """A site bundle (folder or .tar) and, optionally, how many synthetic images to draw from it."""

    path: str
    n: int | None = Field(None, ge=0, description="default: synthetic_per_real x the site's summarised rows")


class RealSource(StrictModel):
    """A de-identified card from a site without GPUs (path b)."""

    card: str
    site: str
    synthesize: int = Field(0, ge=0, description="synthetic images the hub generates from this card")


class ComposeConfig(StrictModel):
    """Which bundles and real cards to combine, to what target, at what size."""

    keys: str = Field(description="folder of known site public keys (<site>.pub)")
    bundles: list[BundleSource] = Field(default_factory=list)
    real: list[RealSource] = Field(default_factory=list)
    synthetic_per_real: float = Field(1.0, ge=0)
    n_total: int | None = Field(None, ge=1, description="total synthetic images, split across sites by weight")
    site_weights: dict[str, float] = Field(default_factory=dict, description="site -> multiplier of its share")
    reweight: dict[str, dict[str, float]] = Field(default_factory=dict,
                                                  description="variable -> value -> cell weight multiplier")
    size: int | None = Field(None, ge=16, le=2048, description="image side (default: each generator's own)")
    seed: int = 0
    hub_generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="for path-b synthesis")
    hub_summary: SummaryConfig = Field(default_factory=SummaryConfig, description="for path-b synthesis")
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    ledger: str | None = Field(None, description="the hub's record of accepted bundles (JSON lines): a bundle "
                                                 "another site sent before is refused as a replay")

    omit_when_default = ("ledger",)

    @model_validator(mode="after")
    def _something(self) -> ComposeConfig:
        """At least one source."""
        if not self.bundles and not self.real:
            raise ValueError("give at least one bundle or real card")
        return self


@dataclass
class SyntheticSource:
    """One site's generator, summary and how many images to draw."""

    site: str
    generator_dir: Path
    summary: dict[str, Any]
    schema: CardSchema
    hash: str
    n: int = 0


def summary_rows(summary: dict[str, Any]) -> int:
    """Rows a summary describes (the largest released table total)."""
    return max([t["total"] or 0 for t in summary["tables"]] or [0])


def allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split an integer total in proportion to weights (largest remainder)."""
    if weights.sum() <= 0:
        return np.zeros(len(weights), int)
    exact = total * weights / weights.sum()
    out = np.floor(exact).astype(int)
    out[np.argsort(-(exact - out), kind="stable")[: total - out.sum()]] += 1
    return out


def site_counts(sources: list[SyntheticSource], given: list[int | None], cfg: ComposeConfig) -> None:
    """Synthetic images per site: given, or synthetic_per_real x rows, scaled by site weights / n_total."""
    rows = np.array([summary_rows(s.summary) for s in sources], float)
    weights = np.array([cfg.site_weights.get(s.site, 1.0) for s in sources])
    if cfg.n_total is not None:
        counts = allocate(cfg.n_total, rows * weights)
    else:
        counts = np.array([g if g is not None else round(cfg.synthetic_per_real * r * w)
                           for g, r, w in zip(given, rows, weights, strict=True)])
    for s, n in zip(sources, counts, strict=True):
        s.n = int(n)


def bundle_sources(cfg: ComposeConfig, run: RunDir) -> list[SyntheticSource]:
    """Verify every bundle (tars extracted under the run), refuse replays (the same content or generator from
    two sites, here or in the ledger), and return the synthetic sources. A refusal leaves no staged bundle."""
    ring = load_keyring(cfg.keys)
    seen = read_ledger(cfg.ledger)
    out, records = [], []
    try:
        for i, src in enumerate(cfg.bundles):
            path = Path(src.path)
            staged = run.path / "bundles" / f"{i:02d}"
            if staged.exists():
                shutil.rmtree(staged)
            v = verify_bundle(path, ring, cfg.verify, extract_to=staged if path.is_file() else None)
            records.append(check_replay(v, path, seen + records))
            run.log(step="verify", bundle=str(path), site=v.site, key_id=v.key_id, checks=v.checks)
            out.append(SyntheticSource(v.site, v.generator_dir, v.summary, v.schema, v.generator_hash))
    except SynthfmError:
        shutil.rmtree(run.path / "bundles", ignore_errors=True)
        raise
    if cfg.ledger is not None:
        for rec in records:
            append_ledger(cfg.ledger, rec)
    return out


def refuse_card(src: RealSource) -> None:
    """Refuse a real card that reaches outside its folder ([card-layout]) or is not de-identified."""
    layout = card_layout_problems(src.card)
    problems = deidentified_problems(src.card)  # the layout's problems among them, and no file outside is read
    if problems:
        code = "card-layout" if layout else "not-deidentified"
        raise SynthfmError(f"real card {src.card} from {src.site} is not accepted [{code}]: " + "; ".join(problems),
                           "have the site run 'synthfm site deidentify' and send its output")


def real_sources(cfg: ComposeConfig, run: RunDir) -> list[SyntheticSource]:
    """Check every de-identified card; fit a hub generator for those that ask for synthetic images."""
    out = []
    for src in cfg.real:
        check_site_name(src.site)
        refuse_card(src)
        if src.synthesize:
            kind = generator_kind(cfg.hub_generator.kind)
            schema = kind.schema(cfg.hub_generator, Path(src.card))
            table = condition_table(src.card, schema)
            summary = summarize(table, schema, cfg.hub_summary)
            inputs = TrainInputs(cfg.hub_generator, Path(src.card), None, table, summary, schema)
            gen = kind.train(inputs, run.path / "hub_generators" / src.site)
            out.append(SyntheticSource(src.site, gen, summary, schema, generator_hash(gen), src.synthesize))
    return out


def plan(sources: list[SyntheticSource], cfg: ComposeConfig) -> list[dict[str, Any]]:
    """Every synthetic row to render: site, condition, seed (pure function of the config)."""
    rows = []
    for k, s in enumerate(sources):
        seed = int(np.random.SeedSequence([cfg.seed, k]).generate_state(1)[0])
        seeds = np.random.SeedSequence([cfg.seed, k, 1]).generate_state(max(s.n, 1), np.uint32)[: s.n]
        for j, (cond, sd) in enumerate(zip(draw_conditions(s.summary, s.schema, s.n, seed, cfg.reweight), seeds,
                                           strict=True)):
            rows.append({"source": k, "site": s.site, "index": j, "condition": cond, "seed": int(sd)})
    return rows


def write_png(path: Path, img: np.ndarray) -> None:
    """Write a PNG by temporary file and rename (no per-file fsync: `finished_rows` re-checks files on resume)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_png(img))
    os.replace(tmp, path)


def finished_rows(run: RunDir) -> dict[int, dict[str, Any]]:
    """Rows an earlier attempt logged whose PNG is really on disk (a crash can lose unsynced files)."""
    out = {}
    for r, rec in run.done_rows(PROGRESS_FILE).items():
        path = run.path / rec["path"]
        if path.is_file():
            with open(path, "rb") as fh:
                if fh.read(8) == PNG_MAGIC:
                    out[r] = rec
    return out


def render(run: RunDir, sources: list[SyntheticSource], planned: list[dict[str, Any]], size: int | None,
           chunk: int = 32) -> None:
    """Render the planned synthetic rows in chunks per site, skipping rows an earlier attempt finished."""
    done = finished_rows(run)
    todo = [r for r, p in enumerate(planned) if r not in done]
    loaded: dict[int, Any] = {}
    for start in progress_bar(range(0, len(todo), chunk), "compose", total=-(-len(todo) // chunk)):
        batch = todo[start:start + chunk]
        by_source: dict[int, list[int]] = {}
        for r in batch:
            by_source.setdefault(planned[r]["source"], []).append(r)
        records = []
        for k, rows in by_source.items():
            gen = loaded.setdefault(k, load_generator(sources[k].generator_dir))
            images = gen.sample([planned[r]["condition"] for r in rows], [planned[r]["seed"] for r in rows], size)
            for r, img in zip(rows, images, strict=True):
                rel = f"synthetic/{planned[r]['site']}/{planned[r]['index']:07d}.png"
                write_png(run.path / rel, img)
                records.append({"row": r, "path": rel})
        run.append(PROGRESS_FILE, records)


def synthetic_frame(sources: list[SyntheticSource], planned: list[dict[str, Any]], done: dict[int, dict],
                    labels: dict[str, list[str]]) -> pd.DataFrame:
    """Manifest rows of the rendered synthetic images (labels as class names, metadata, provenance)."""
    rows = []
    for r, p in enumerate(planned):
        cond = p["condition"]
        rows.append({
            "path": done[r]["path"], "image_id": f"{p['site']}-syn-{p['index']:07d}",
            "patient_id": f"syn:{p['site']}:{p['index']}", "split": "train",
            **{t: classes[cond[t]] for t, classes in labels.items()},
            **{m: cond.get(m) for m in METADATA}, "site": p["site"], "origin": "synthetic",
            "generator_hash": sources[p["source"]].hash, "condition": json.dumps(cond, sort_keys=True),
            "seed": p["seed"],
        })
    return pd.DataFrame(rows)


def real_frame(src: RealSource, out: Path, labels: dict[str, list[str]]) -> pd.DataFrame:
    """Manifest rows of a de-identified card, its images decoded and re-encoded under real/<site>/ (never copied
    byte for byte: bytes after a PNG's end or in its chunks stay behind)."""
    refuse_card(src)  # checked again here: the card may have changed since real_sources looked
    data = load_card(src.card)
    channels = preset(data.card.modality).channels
    meta = data.card.metadata.columns()
    rows = []
    for i in range(len(data)):
        rel = f"real/{src.site}/{i:07d}.png"
        target = out / rel
        if not target.is_file():
            write_png(target, load_image(data.image_path(i), channels, where=str(data.image_path(i))))
        rows.append({
            "path": rel, "image_id": f"{src.site}-real-{i:07d}",
            "patient_id": f"{src.site}:{data.patient_ids().iat[i]}", "split": "train",
            **{t: classes[int(data.labels[t][i])] for t, classes in labels.items()},
            **{m: (data.df[meta[m]].iat[i] if m in meta else None) for m in METADATA},
            "site": src.site, "origin": "real", "generator_hash": "", "condition": "", "seed": -1,
        })
    return pd.DataFrame(rows)


def shared_labels(sources: list[SyntheticSource], cfg: ComposeConfig) -> dict[str, list[str]]:
    """Tasks every source can supply: conditioned in every synthetic row, present in every real card."""
    labels: dict[str, list[str]] | None = None
    for s in sources:
        conditioned = {v for t in s.summary["tables"] if not t["withheld"] and t["cells"] for v in t["variables"]}
        mine = {k: v for k, v in s.schema.labels().items() if k in conditioned and s.n}
        if s.n:
            labels = mine if labels is None else {k: v for k, v in labels.items() if mine.get(k) == v}
    for src in cfg.real:
        card = load_card(src.card, check_files=False).card
        mine = {t.name: t.classes for t in card.tasks if t.type != "multilabel"}
        labels = mine if labels is None else {k: v for k, v in labels.items() if mine.get(k) == v}
    return labels or {}


def _card(sources: list[SyntheticSource], labels: dict[str, list[str]], df: pd.DataFrame,
          modality: str) -> DatasetCard:
    """The composed pretraining card."""
    n_syn = int((df["origin"] == "synthetic").sum())
    sites = sorted(df["site"].unique())
    return DatasetCard(
        name="consortium_composed", modality=modality,  # type: ignore[arg-type]
        description=f"{len(df) - n_syn} real + {n_syn} synthetic images from sites {sites}",
        source=SourceSpec(format="folder", root=".", path_column="path"), manifest=MANIFEST, id_column="image_id",
        split=SplitSpec(column="split"),
        tasks=[TaskSpec(name=t, type="binary" if len(c) == 2 else "multiclass", classes=c)  # type: ignore[arg-type]
               for t, c in labels.items()],
        metadata=MetadataSpec(patient_id="patient_id", site="site",
                              **{m: m for m in METADATA if df[m].notna().any()}),
        provenance=Provenance(kind="synthetic" if n_syn else "real",
                              generator=",".join(sorted({s.hash[:16] for s in sources if s.n})) or None,
                              row_columns=PROVENANCE_COLUMNS,
                              notes=f"consortium composition by synthfm {__version__}: mixed real and "
                                    "synthetic rows; see the 'origin' column"),
        license="composed from consortium sites; see each site's terms",
    )


def compose(cfg: ComposeConfig, out_dir: str | Path) -> Path:
    """Verify, plan, render and merge into one card in `out_dir` (resumable); return its dataset.yaml."""
    run = RunDir(out_dir, STAGE, cfg)
    status = run.open()
    if status == "done":
        return run.path / "dataset.yaml"
    if status == "resume":  # bundles are verified (and logged) again; rendered rows resume from progress
        run.restart_metrics()
    synthetic = bundle_sources(cfg, run)
    site_counts(synthetic, [b.n for b in cfg.bundles], cfg)
    synthetic += real_sources(cfg, run)
    sites = [s.site for s in synthetic[: len(cfg.bundles)]] + [r.site for r in cfg.real]
    if len(set(sites)) != len(sites):
        raise SynthfmError(f"a site appears twice among the sources: {sites}", "give each site once")
    modalities = {s.schema.modality for s in synthetic} | {load_card(r.card, check_files=False).card.modality
                                                          for r in cfg.real}
    if len(modalities) != 1:
        raise SynthfmError(f"sources mix modalities {sorted(modalities)}", "compose one modality per card")
    planned = plan(synthetic, cfg)
    render(run, synthetic, planned, cfg.size)
    labels = shared_labels(synthetic, cfg)
    frames = [synthetic_frame(synthetic, planned, finished_rows(run), labels)]
    frames += [real_frame(src, run.path, labels) for src in cfg.real]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise SynthfmError("the composition has no rows (every site's count is 0)",
                           "raise synthetic_per_real / n_total, or add real cards")
    df = pd.concat(frames, ignore_index=True)
    with atomic_path(run.path / MANIFEST, ".parquet") as tmp:
        df.astype({"age": float}).to_parquet(tmp, index=False)
    card = write_card(_card(synthetic, labels, df, modalities.pop()), run.path)
    counts = df.groupby(["site", "origin"]).size()
    run.complete(rows=len(df), per_site={f"{s}/{o}": int(n) for (s, o), n in counts.items()}, tasks=list(labels))
    return card
