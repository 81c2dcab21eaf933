"""`synthfm synth phantom`: render a procedural generator into a dataset card, resumably.

Every image carries the labels and metadata it was conditioned on, its masks (folder format),
its rendering parameters (JSON) and provenance columns (generator, condition, seed), so the
written card is a dataset like any other and a ground-truth oracle for later stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from synthfm import __version__
from synthfm.config import StrictModel
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
from synthfm.data.images import encode_png
from synthfm.data.shards import ShardRecord, plan_shards, write_shards_resumable
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_bytes
from synthfm.progress import progress_bar
from synthfm.runs import RunDir
from synthfm.synth.base import PhantomSample
from synthfm.synth.registry import GeneratorSpec, check_condition, check_generator_name, generator_spec, task_type
from synthfm.synth.targets import TargetConfig, joint_table, target_conditions

PROGRESS_FILE = "progress.jsonl"
SPLIT_NAMES = ("train", "val", "test")


class PhantomConfig(StrictModel):
    """What to render: generator, count, size, format, fixed condition or a target card to match."""

    generator: str = Field("fundus_phantom", description="a registered procedural generator (synth/registry.py)")
    n: int = Field(200, ge=1)
    size: int = Field(256, ge=16, le=2048)
    seed: int = 0
    format: Literal["folder", "shards"] = "folder"
    encoding: Literal["raw", "npy", "png", "jpg"] = "png"
    shard_size: int = Field(500, ge=1)
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    condition: dict[str, Any] = Field(default_factory=dict, description="labels/metadata fixed for every image")
    priors: dict[str, Any] = Field(default_factory=dict,
                                   description="generator prior overrides, e.g. dr_grade: [0.2, 0.2, 0.2, 0.2, 0.2]")
    target: TargetConfig | None = None
    omit_when_default: ClassVar[tuple[str, ...]] = ("priors",)

    @field_validator("generator")
    @classmethod
    def _registered(cls, value: str) -> str:
        """A registered procedural generator."""
        return check_generator_name(value)


def image_seed(seed: int, i: int) -> int:
    """The rendering seed of image i (independent streams via SeedSequence)."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint32)[0])


def plan_conditions(cfg: PhantomConfig, spec: GeneratorSpec) -> list[dict[str, Any]]:
    """One condition per image: the target's joint distribution, plus the fixed condition on top."""
    check_condition(spec, cfg.condition, "condition")
    if cfg.target is None:
        return [dict(cfg.condition) for _ in range(cfg.n)]
    table = joint_table(cfg.target.card, cfg.target, spec.tasks)
    drawn = target_conditions(table, cfg.n, cfg.seed, cfg.target.age_edges, spec.age_range)
    return [{**c, **cfg.condition} for c in drawn]


def plan_splits(n: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """A seeded split per image (each phantom image is its own patient)."""
    counts = np.floor(np.asarray(ratios) * n).astype(int)
    counts[0] += n - counts.sum()
    names = np.repeat(SPLIT_NAMES, counts)
    return np.random.default_rng(seed).permutation(names).tolist()


def _row(i: int, sample: PhantomSample, cond: dict[str, Any], seed: int, split: str, cfg: PhantomConfig) -> dict:
    """The manifest row of one rendered image."""
    return {"row": i, "image_id": f"{i:07d}", "split": split, "patient_id": f"phantom{i:07d}",
            **{k: int(v) for k, v in sample.labels.items()}, **sample.metadata,
            "generator": cfg.generator, "generator_version": __version__,
            "condition": json.dumps(cond, sort_keys=True, default=str), "seed": seed,
            "params": json.dumps(sample.params, default=_plain)}


def _plain(obj: Any) -> Any:
    """JSON fallback for numpy values in params."""
    return obj.item() if isinstance(obj, np.generic) else obj.tolist() if isinstance(obj, np.ndarray) else str(obj)


def render_phantom(out_dir: str | Path, cfg: PhantomConfig | None = None) -> Path:
    """Render `cfg.n` images into a new card in `out_dir` (resuming a killed run); return its dataset.yaml."""
    cfg = cfg or PhantomConfig()
    spec = generator_spec(cfg.generator)
    conds, splits = plan_conditions(cfg, spec), plan_splits(cfg.n, cfg.ratios, cfg.seed)
    gen = build_generator(spec, cfg)
    if cfg.condition:  # a bad fixed condition fails here, naming the key, before the run folder is made
        try:
            gen.generate(dict(cfg.condition), 0, cfg.size)
        except ValueError as err:
            raise SynthfmError(f"--condition / condition: {err}",
                               f"see `synthfm synth phantom --help` and docs/phantom.md for {cfg.generator}'s "
                               "condition keys and values") from None
    run = RunDir(out_dir, "synth.phantom", cfg)
    if run.open() == "done":
        return run.path / "dataset.yaml"
    writer = _write_shards if cfg.format == "shards" else _write_folder
    writer(run, gen, cfg, conds, splits, run.done_rows(PROGRESS_FILE))
    card = _finish(run, spec, cfg, run.done_rows(PROGRESS_FILE))
    run.complete(images=cfg.n, generator=cfg.generator)
    return card


def build_generator(spec: GeneratorSpec, cfg: PhantomConfig) -> Any:
    """The generator with the config's prior overrides (an error naming the key when they do not fit)."""
    if not cfg.priors:
        return spec.factory()
    try:
        return spec.factory(**cfg.priors)
    except (TypeError, ValueError) as exc:
        raise SynthfmError(f"phantom priors {sorted(cfg.priors)} do not fit generator {cfg.generator!r}: {exc}",
                           "fix or remove the 'priors' key (only fundus_phantom takes prior overrides; "
                           "see docs/phantom.md)") from exc


def _render(gen: Any, cfg: PhantomConfig, cond: dict[str, Any], i: int) -> tuple[PhantomSample, int]:
    """Render image i."""
    seed = image_seed(cfg.seed, i)
    return gen.generate(dict(cond), seed, cfg.size), seed


def _write_folder(run: RunDir, gen: Any, cfg: PhantomConfig, conds: list, splits: list, done: dict) -> None:
    """Images and masks as PNG files, each written atomically; finished rows are skipped."""
    todo = [i for i in range(cfg.n) if i not in done]
    for i in progress_bar(todo, f"{cfg.generator}", total=len(todo)):
        sample, seed = _render(gen, cfg, conds[i], i)
        rel = f"images/{i:07d}.png"
        atomic_write_bytes(run.path / rel, encode_png(sample.image))
        masks = {}
        for name, m in sample.masks.items():
            masks[f"mask_{name}"] = f"masks/{name}/{i:07d}.png"
            atomic_write_bytes(run.path / masks[f"mask_{name}"], encode_png(m.astype(np.uint8)))
        run.append(PROGRESS_FILE, [{**_row(i, sample, conds[i], seed, splits[i], cfg), "path": rel, **masks}])


def _write_shards(run: RunDir, gen: Any, cfg: PhantomConfig, conds: list, splits: list, done: dict) -> None:
    """Shards per split, each written atomically; a finished shard is skipped on resume."""
    def make(i: int, name: str) -> tuple[ShardRecord, dict[str, Any]]:
        """Render image i as a shard record and its manifest row."""
        sample, seed = _render(gen, cfg, conds[i], i)
        labels = {k: int(v) for k, v in sample.labels.items()}
        row = {**_row(i, sample, conds[i], seed, splits[i], cfg), "path": f"shards/{name}#{i:07d}"}
        return ShardRecord(f"{i:07d}", sample.image, {"row": i, "id": f"{i:07d}", "labels": labels}), row

    write_shards_resumable(run, plan_shards(splits, cfg.shard_size), make, cfg.encoding, PROGRESS_FILE,
                           f"{cfg.generator} shards")


def _finish(run: RunDir, spec: GeneratorSpec, cfg: PhantomConfig, done: dict[int, dict[str, Any]]) -> Path:
    """Write the manifest and the card last."""
    df = pd.DataFrame([done[i] for i in range(cfg.n)]).drop(columns=["row"])
    with atomic_path(run.path / MANIFEST) as tmp:
        df.to_parquet(tmp, index=False)
    meta = {k: k for k in spec.metadata if k in ("age", "sex", "ethnicity", "device", "site")}
    source = (SourceSpec(format="shards", root="shards") if cfg.format == "shards"
              else SourceSpec(format="folder", root=".", path_column="path"))
    card = DatasetCard(
        name=f"{cfg.generator}_{cfg.n}", modality=spec.modality,  # type: ignore[arg-type]
        description=f"{cfg.n} {cfg.generator} images at {cfg.size}px, seed {cfg.seed}"
                    + (f", priors {json.dumps(cfg.priors, sort_keys=True)}" if cfg.priors else ""),
        source=source, manifest=MANIFEST, id_column="image_id", split=SplitSpec(column="split"),
        tasks=[TaskSpec(name=t, type=task_type(spec, t), classes=c) for t, c in spec.tasks.items()],  # type: ignore[arg-type]
        metadata=MetadataSpec(patient_id="patient_id", **meta),
        masks={c[len("mask_"):]: c for c in df.columns if c.startswith("mask_")},
        provenance=Provenance(kind="synthetic", generator=cfg.generator, checkpoint_hash=f"procedural-{__version__}",
                              row_columns=["generator", "generator_version", "condition", "seed", "params"]),
        license="generated by synthfm; no patient data",
    )
    return write_card(card, run.path)
