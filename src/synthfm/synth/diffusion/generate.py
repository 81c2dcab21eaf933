"""`synthfm synth generate`: N images from a trained generator, to a target distribution of conditions, as a card.

Image i has a pure-function condition and seed: its condition is drawn with `default_rng([seed, i, 1])` from the
target (a real card's joint distribution of the generator's fields, else the generator's own training mix),
fields the target lacks are drawn from the training marginals, `rebalance` redraws single fields from given
weights (e.g. uniform age bands) and `condition` fixes fields. Shard k holds images k*shard_size ...; process r of
R (Accelerate) writes the shards k with k % R == r, each atomically, then logs one progress line for it. A killed
run resumes at the first shard without a progress line; when every shard is done, the main process writes the
manifest (streamed shard by shard, so memory does not grow with N) and the dataset card, with every image's
conditions, generator hash, sampler and seed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from synthfm import __version__
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
from synthfm.data.manifest import load_card
from synthfm.data.shards import ShardRecord, shard_name, write_shard
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_json
from synthfm.locks import LOCK_FILE
from synthfm.progress import progress_bar
from synthfm.runs import RunDir
from synthfm.synth.diffusion.conditions import ConditionSchema, card_conditions
from synthfm.synth.diffusion.config import GenerateConfig
from synthfm.synth.diffusion.generator import Generator, load_generator, to_uint8
from synthfm.synth.diffusion.sampling import sample, sampling_dtype
from synthfm.synth.writer import image_seed

SPLIT = "train"


# ---- conditions ---------------------------------------------------------------------------------------------
@dataclass
class ConditionPlan:
    """Draws image i's condition vector from a weighted table, training marginals, rebalanced and fixed fields."""

    schema: ConditionSchema
    table: np.ndarray  # (M, F) condition vectors, 0 = draw from the training marginal
    weights: np.ndarray  # (M,)
    marginals: list[np.ndarray]  # per field: training counts of values 1..K
    rebalance: dict[int, np.ndarray]  # field -> probabilities over values 1..K
    fixed: dict[int, int]  # field -> value index
    seed: int

    def __call__(self, i: int) -> np.ndarray:
        """The condition vector of image i."""
        rng = np.random.default_rng([self.seed, i, 1])
        row = self.table[_pick(rng, self.weights)].copy()
        for j in range(len(row)):
            if j in self.fixed:
                row[j] = self.fixed[j]
            elif j in self.rebalance:
                row[j] = 1 + _pick(rng, self.rebalance[j])
            elif row[j] == 0 and self.marginals[j].sum() > 0:
                row[j] = 1 + _pick(rng, self.marginals[j])
        return row


def _pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    """An index drawn with probability proportional to weights."""
    cum = np.cumsum(weights, dtype=float)
    return int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))


def training_table(info: dict[str, Any], fields: int) -> tuple[np.ndarray, np.ndarray]:
    """The generator's training condition vectors and their counts."""
    joint = np.asarray(info["training"]["joint"], dtype=np.int64).reshape(-1, fields + 1)
    return joint[:, 1:], joint[:, 0].astype(float)


def marginal_counts(table: np.ndarray, weights: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per field, the weighted count of each value 1..K."""
    return [np.bincount(table[:, j], weights=weights, minlength=k + 1)[1:] for j, k in enumerate(sizes)]


def untrained(schema: ConditionSchema, seen: list[np.ndarray], table: np.ndarray, where: str) -> None:
    """Every value a table can yield must have been trained on; else a SynthfmError naming them."""
    bad = []
    for j, f in enumerate(schema.fields):
        for v in np.unique(table[:, j]):
            if v > 0 and seen[j][v - 1] == 0:
                bad.append(f"{f.name}={f.values[v - 1]!r}")
    if bad:
        raise SynthfmError(f"{where} asks for condition(s) the generator was never trained on: {', '.join(bad)}",
                           "drop or remap those values, or train the generator on data that has them")


def target_table(cfg: GenerateConfig, schema: ConditionSchema) -> tuple[np.ndarray, np.ndarray]:
    """A real card's rows encoded with the generator's fields (fields it lacks stay 0), each weight 1."""
    assert cfg.target is not None
    data = load_card(cfg.target.card, check_files=False)
    data = data.subset(data.indices(cfg.target.split))
    shared = set(cfg.target.field_map.get(n, n) for n in _card_fields(data)) & set(schema.names)
    if not shared:
        raise SynthfmError(f"target card {cfg.target.card} shares no task or metadata field with the generator "
                           f"({schema.names})", "map its names onto the generator's with target.field_map")
    table = card_conditions(schema, data, cfg.target.field_map)
    return table, np.ones(len(table))


def _card_fields(data: Any) -> list[str]:
    """Task columns and metadata keys a card declares."""
    cols = [c for t in data.card.tasks for c in t.columns]
    return cols + [k for k in data.card.metadata.columns() if k != "patient_id"]


def plan_conditions(cfg: GenerateConfig, gen: Generator) -> ConditionPlan:
    """The condition plan of a generation config, with every requested value checked against training."""
    schema = gen.schema
    train, counts = training_table(gen.info, len(schema.fields))
    seen = marginal_counts(train, counts, schema.sizes)
    table, weights = target_table(cfg, schema) if cfg.target is not None else (train, counts)
    untrained(schema, seen, table, f"target card {cfg.target.card}" if cfg.target else "the training mix")
    encoded = schema.encode(cfg.condition)  # unknown keys or values raise here
    fixed = {schema.names.index(k): int(encoded[schema.names.index(k)]) for k in cfg.condition}
    untrained(schema, seen, _as_table(list(fixed.items()), len(schema.fields)), "condition")
    rebalance = {}
    for name, weights_by_value in cfg.rebalance.items():
        j = schema.names.index(schema.get(name).name)
        probs = np.zeros(schema.sizes[j])
        for value, w in weights_by_value.items():
            probs[schema.fields[j].index(value) - 1] = w
        if probs.sum() <= 0:
            raise SynthfmError(f"rebalance.{name} gives every value weight 0", "give at least one positive weight")
        untrained(schema, seen, _as_table([(j, int(v) + 1) for v in np.flatnonzero(probs)], len(schema.fields)),
                  f"rebalance.{name}")
        rebalance[j] = probs
    return ConditionPlan(schema, table, weights, seen, rebalance, fixed, cfg.seed)


def _as_table(values: list[tuple[int, int]], fields: int) -> np.ndarray:
    """(field, value) pairs as rows of a (len, F) table for `untrained`."""
    out = np.zeros((max(len(values), 1), fields), dtype=np.int64)
    for r, (j, v) in enumerate(values):
        out[r, j] = v
    return out


# ---- manifest rows --------------------------------------------------------------------------------------------
def manifest_row(i: int, cond: np.ndarray, seed: int, gen: Generator, cfg: GenerateConfig, shard: str,
                 name: str) -> dict[str, Any]:
    """One image's manifest row: task labels, metadata, and provenance (generator hash, condition, seed)."""
    labels = gen.schema.decode(cond)
    row: dict[str, Any] = {"row": i, "image_id": f"{i:08d}", "split": SPLIT, "patient_id": f"synthetic{i:08d}"}
    for f in gen.schema.fields:
        value = labels[f.name]
        if f.kind == "task":
            row[f.name] = None if value is None else f.values.index(value)
        elif f.name == "age":
            row["age_band"], row["age"] = value, _age(gen, value, seed)
        else:
            row[f.name] = value
    sampler = cfg.sampler.model_dump()
    return {**row, "generator": name, "generator_version": __version__, "generator_hash": gen.info["hash"],
            "condition": json.dumps(labels, sort_keys=True), "seed": seed, "sampler": json.dumps(sampler),
            "path": f"shards/{shard}#{i:08d}"}


def _age(gen: Generator, band: str | None, seed: int) -> float | None:
    """An age drawn uniformly within the band, narrowed to the ages seen there in training (unbanded: None)."""
    age = gen.schema.get("age")
    if band is None or age.edges is None:
        return None
    k = age.values.index(band)
    lo, hi = float(age.edges[k]), float(age.edges[k + 1])
    seen = gen.info["training"].get("ages", {}).get(band)
    if seen:
        lo, hi = max(lo, seen[0]), min(hi, seen[1])
    return round(float(np.random.default_rng([seed, 2]).uniform(lo, hi)), 1)


# ---- shards ---------------------------------------------------------------------------------------------------
def shard_rows(n: int, size: int) -> list[range]:
    """Image rows of every shard."""
    return [range(k * size, min(n, (k + 1) * size)) for k in range(math.ceil(n / size))]


def my_shards(count: int, rank: int, world: int) -> list[int]:
    """The shards process `rank` of `world` writes: k with k % world == rank."""
    return list(range(rank, count, world))


def progress_index(run: RunDir) -> dict[int, tuple[Path, int]]:
    """Finished shards -> (progress file, byte offset of its line); torn lines are skipped."""
    done: dict[int, tuple[Path, int]] = {}
    for path in sorted(run.path.glob("progress-*.jsonl")):
        offset = 0
        with open(path, "rb") as fh:
            for line in fh:
                with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError):
                    done.setdefault(int(json.loads(line)["shard"]), (path, offset))
                offset += len(line)
    return done


def _records(rows: range, plan: ConditionPlan, gen: Generator, cfg: GenerateConfig, shard: str, name: str,
             manifest: list[dict[str, Any]]) -> Iterator[ShardRecord]:
    """Sample a shard's images batch by batch, yielding shard records and keeping manifest rows."""
    for start in range(rows.start, rows.stop, cfg.batch_size):
        batch = range(start, min(rows.stop, start + cfg.batch_size))
        conds = np.stack([plan(i) for i in batch])
        seeds = [image_seed(cfg.seed, i) for i in batch]
        images = to_uint8(sample(gen, torch.from_numpy(conds), seeds, cfg.sampler))
        for i, cond, s, img in zip(batch, conds, seeds, images, strict=True):
            row = manifest_row(i, cond, s, gen, cfg, shard, name)
            manifest.append(row)
            labels = {f.name: row[f.name] for f in gen.schema.fields if f.kind == "task"}
            yield ShardRecord(f"{i:08d}", img, {"row": i, "id": row["image_id"], "labels": labels})


def write_my_shards(run: RunDir, gen: Generator, plan: ConditionPlan, cfg: GenerateConfig, rank: int,
                    world: int, name: str) -> int:
    """Write this process's missing shards; return how many it wrote."""
    plan_rows = shard_rows(cfg.n, cfg.shard_size)
    done = progress_index(run)
    todo = [k for k in my_shards(len(plan_rows), rank, world) if k not in done]
    for k in progress_bar(todo, f"generate (process {rank})", total=len(todo)):
        manifest: list[dict[str, Any]] = []
        fname = shard_name(SPLIT, k)
        write_shard(run.path / "shards" / fname, _records(plan_rows[k], plan, gen, cfg, fname, name, manifest),
                    cfg.encoding)
        run.append(f"progress-{rank}.jsonl", [{"shard": k, "rows": manifest}])
    return len(todo)


# ---- finishing ------------------------------------------------------------------------------------------------
def write_manifest(run: RunDir, count: int) -> int:
    """Stream every shard's rows, in shard order, into manifest.parquet; return the number of rows."""
    index = progress_index(run)
    writer, rows = None, 0
    with atomic_path(run.path / MANIFEST, ".parquet") as tmp:
        try:
            for k in range(count):
                path, offset = index[k]
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    records = [{c: v for c, v in r.items() if c != "row"} for r in json.loads(fh.readline())["rows"]]
                table = pa.Table.from_pylist(records, schema=writer.schema if writer else None)
                writer = writer or pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table)
                rows += len(records)
        finally:
            if writer is not None:
                writer.close()
    return rows


def card_for(gen: Generator, cfg: GenerateConfig, name: str) -> DatasetCard:
    """The dataset card of the generated images (tasks and metadata from the generator's schema)."""
    meta: dict[str, Any] = {"patient_id": "patient_id", "extra": []}
    for field_name, key in gen.schema.metadata.items():
        if key == "extra":
            meta["extra"].append(field_name)
        else:
            meta[key] = field_name
    if "age" in meta:
        meta["extra"].append("age_band")
    tasks = [TaskSpec(**t) for t in gen.schema.tasks]
    return DatasetCard(
        name=cfg.name or f"{name}_{cfg.n}", modality=gen.modality,  # type: ignore[arg-type]
        description=f"{cfg.n} images from diffusion generator {name} ({gen.info['hash']}) at {gen.image_size}px, "
                    f"{cfg.sampler.name} {cfg.sampler.steps} steps, guidance {cfg.sampler.guidance_scale}, "
                    f"seed {cfg.seed}",
        source=SourceSpec(format="shards", root="shards"), manifest=MANIFEST, id_column="image_id",
        split=SplitSpec(column="split"), tasks=tasks, metadata=MetadataSpec(**meta),
        provenance=Provenance(kind="synthetic", generator=name, checkpoint_hash=gen.info["hash"],
                              row_columns=["generator", "generator_version", "generator_hash", "condition", "seed",
                                           "sampler"]),
        license="generated by synthfm from a trained generator; no patient images")


def generator_name(path: str | Path, info: dict[str, Any]) -> str:
    """A generator's name: the training run's directory name."""
    path = Path(path).resolve()
    return info.get("name") or (path.parent.name if path.name == "generator" else path.name)


def check_same_generator(run: RunDir, info: dict[str, Any]) -> None:
    """A resumed run must use the generator (by hash) it started with."""
    path = run.path / "generator.json"
    if path.is_file():
        old = json.loads(path.read_text())["hash"]
        if old != info["hash"]:
            raise SynthfmError(f"{run.path} was generated with generator {old}, now {info['hash']}",
                               "use the same generator, or a new output directory")
    else:
        atomic_write_json(path, info)


def generate(cfg: GenerateConfig, out_dir: str | Path, rank: int | None = None,
             world: int | None = None) -> dict[str, Any]:
    """Generate (or resume) in `out_dir`; under `accelerate launch` each process writes its shards.

    `rank` / `world` override the Accelerate process index / count (e.g. separate jobs on one folder).
    """
    from accelerate import PartialState

    state = PartialState()
    rank = state.process_index if rank is None else rank
    world = state.num_processes if world is None else world
    # Jobs sharing OUT (world > 1) each hold their own rank's lock.
    run = RunDir(out_dir, "synth.generate", cfg, lock=LOCK_FILE if world == 1 else f".synthfm.rank{rank}.lock")
    with state.main_process_first():
        status = run.open()
    if status == "done":
        return run.summary()
    gen = load_generator(cfg.generator).to(state.device, sampling_dtype(cfg.dtype, state.device))
    plan = plan_conditions(cfg, gen)
    name = generator_name(cfg.generator, gen.info)
    with state.main_process_first():
        check_same_generator(run, gen.info)
    wrote = write_my_shards(run, gen, plan, cfg, rank, world, name)
    state.wait_for_everyone()
    count = len(shard_rows(cfg.n, cfg.shard_size))
    missing = count - len(progress_index(run))
    if missing or (state.num_processes > 1 and not state.is_main_process):
        return {"complete": False, "shards_written": wrote, "shards_missing": missing}
    return finalise(run, gen, cfg, name, count)


def finalise(run: RunDir, gen: Generator, cfg: GenerateConfig, name: str, count: int) -> dict[str, Any]:
    """Write the manifest and card once every shard is done: by whichever job finishes last, exactly once.

    Separate jobs sharing a folder (`--rank/--world`) finish in any order; each that sees every shard done takes
    an exclusive lock, and the first one in writes the manifest and card while the others find it complete.
    """
    with open(run.path / ".finalise.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run.is_complete:
            return run.summary()
        rows = write_manifest(run, count)
        write_card(card_for(gen, cfg, name), run.path)
        summary = {"complete": True, "images": rows, "shards": count, "generator_hash": gen.info["hash"]}
        run.complete(**summary)
    (run.path / ".finalise.lock").unlink(missing_ok=True)
    return summary
