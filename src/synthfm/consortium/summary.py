"""Site metadata summaries with small-cell suppression and optional differential-privacy noise.

What is released (and nothing else):

* **Joint tables** ("blocks"): disjoint groups of variables, by default the first task x age band x sex,
  then every other variable (ethnicity, device, other tasks) alone; `blocks` sets others, e.g. ethnicity x
  device. Every cell under
  `k` is pooled into one `other` count; when that pool would itself be under `k` the smallest released cells
  join it (secondary suppression), so `other` is 0 or at least `k` and no single small cell can be recovered
  by subtraction. Cells in the pool are never named.
* **Label counts and sex / ethnicity / device proportions** are the marginals *of the released cells*, so
  they add nothing that the tables do not already show.
* **Age histogram**: ages of the rows in released cells of the age block, bins merged with their neighbours
  inside each age band until every bin holds at least `k`; its band totals equal the block's, so the two
  tables cannot be differenced either.

With `privacy.mechanism` laplace or gaussian, each patient's rows are first capped at
`max_images_per_patient`, every table is counted over its full public domain (zeros included), noise is added
with the total epsilon split evenly over the tables, and suppression runs on the noisy counts (post-processing).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from synthfm.config import StrictModel
from synthfm.consortium.conditions import AGE_BAND, PATIENT, CardSchema
from synthfm.data.vocabulary import AGE_EDGES, band_index, interval_labels
from synthfm.errors import SynthfmError

FORMAT = "synthfm.consortium.summary/1"
AGE = "age"


class PrivacyConfig(StrictModel):
    """Optional differential privacy: Laplace or Gaussian noise on every released count."""

    mechanism: Literal["none", "laplace", "gaussian"] = "none"
    epsilon: float | None = Field(None, gt=0, description="total epsilon, split evenly over the released tables")
    delta: float = Field(1e-6, gt=0, lt=1, description="gaussian only: total delta")
    max_images_per_patient: int = Field(2, ge=1, description="rows kept per patient (bounds the sensitivity)")
    seed: int | None = Field(None, description="noise seed (tests only; None draws from the OS)")

    @model_validator(mode="after")
    def _epsilon_given(self) -> PrivacyConfig:
        """A noise mechanism needs an epsilon."""
        if self.mechanism != "none" and self.epsilon is None:
            raise ValueError(f"privacy.mechanism {self.mechanism} needs privacy.epsilon")
        return self


class SummaryConfig(StrictModel):
    """Small-cell threshold, age bands and histogram bins, joint-table blocks, privacy."""

    k: int = Field(10, ge=1, description="cells under k are merged or withheld, never shown")
    age_bands: list[float] = Field(default_factory=lambda: list(AGE_EDGES), min_length=2)
    age_bins: list[float] = Field(default_factory=lambda: [0.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 120.0],
                                  min_length=2, description="histogram edges; must include every age band edge")
    blocks: list[list[str]] | None = Field(None, description="variable groups released as joint tables")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    @model_validator(mode="after")
    def _edges(self) -> SummaryConfig:
        """Edges increase, and the histogram refines the bands."""
        for name, edges in (("age_bands", self.age_bands), ("age_bins", self.age_bins)):
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"{name} must increase strictly, got {edges}")
        missing = sorted(set(self.age_bands) - set(self.age_bins))
        if missing:
            raise ValueError(f"age_bins must contain every age band edge; missing {missing}")
        return self


def domains(schema: CardSchema, table: pd.DataFrame, cfg: SummaryConfig) -> dict[str, list[str]]:
    """The public value set of every tabulated variable present in the table."""
    out: dict[str, list[str]] = {}
    for var in schema.variables:
        if var.name not in table.columns:
            continue
        if var.kind in ("label", "category"):
            out[var.name] = list(var.values)
        elif var.name == AGE:
            out[AGE_BAND] = interval_labels(cfg.age_bands)
    return out


def default_blocks(schema: CardSchema, present: dict[str, list[str]]) -> list[list[str]]:
    """First task x age band x sex as the joint table; every other variable alone (1-D tables lose less to k)."""
    labels = [n for n in schema.names("label") if n in present]
    first = labels[:1] + [v for v in (AGE_BAND, "sex") if v in present]
    return [b for b in [first] if b] + [[v] for v in present if v not in first]


def resolve_blocks(cfg: SummaryConfig, schema: CardSchema, present: dict[str, list[str]]) -> list[list[str]]:
    """The configured blocks (checked: known, disjoint), plus a 1-D block for any variable left out."""
    blocks = cfg.blocks if cfg.blocks is not None else default_blocks(schema, present)
    seen: list[str] = []
    for block in blocks:
        for var in block:
            if var not in present:
                raise SynthfmError(f"summary.blocks names {var!r}, which this card/generator does not have",
                                   f"use variables from {sorted(present)}")
            if var in seen:
                raise SynthfmError(f"summary.blocks lists {var!r} twice", "put each variable in one block only")
            seen.append(var)
    return [list(b) for b in blocks] + [[v] for v in present if v not in seen]


def codes(table: pd.DataFrame, var: str, domain: list[str], cfg: SummaryConfig) -> np.ndarray:
    """Index into the variable's domain per row (-1 when missing)."""
    if var == AGE_BAND:
        return band_index(table[AGE].to_numpy(dtype=float), cfg.age_bands, clip=False)  # public domain only
    col = table[var]
    if pd.api.types.is_integer_dtype(col):
        return col.to_numpy(dtype=np.int64)
    lookup = {v: i for i, v in enumerate(domain)}
    return np.array([lookup.get(v, -1) if isinstance(v, str) else -1 for v in col.tolist()], dtype=np.int64)


def bound_contributions(table: pd.DataFrame, m: int) -> pd.DataFrame:
    """Keep at most m rows per patient (the first ones), which bounds each patient's influence on a count."""
    return table[table.groupby(PATIENT, sort=False).cumcount() < m].reset_index(drop=True)


class Noise:
    """The noise mechanism of one summary: per-table epsilon, scale and the generator drawing it."""

    def __init__(self, privacy: PrivacyConfig, tables: int) -> None:
        self.privacy = privacy
        self.rng = np.random.default_rng(privacy.seed)
        self.tables = tables
        self.scale = 0.0
        if privacy.mechanism == "none":
            return
        eps = float(privacy.epsilon) / tables  # type: ignore[arg-type]
        sens = float(privacy.max_images_per_patient)
        if privacy.mechanism == "laplace":
            self.scale = sens / eps
        else:
            if eps >= 1:
                raise SynthfmError(f"the Gaussian mechanism needs epsilon per table < 1, got {eps:g} "
                                   f"(epsilon {privacy.epsilon} over {tables} tables)",
                                   "lower privacy.epsilon, or use mechanism: laplace")
            self.scale = sens * math.sqrt(2 * math.log(1.25 / (privacy.delta / tables))) / eps

    def apply(self, counts: np.ndarray) -> np.ndarray:
        """Noisy counts (rounded, clipped at zero); the counts themselves without a mechanism."""
        if self.privacy.mechanism == "none":
            return counts.astype(np.int64)
        draw = self.rng.laplace if self.privacy.mechanism == "laplace" else self.rng.normal
        noisy = counts + draw(0.0, self.scale, size=counts.shape)
        return np.clip(np.rint(noisy), 0, None).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        """The privacy statement written into the summary."""
        p = self.privacy
        if p.mechanism == "none":
            return {"mechanism": "none"}
        out = {"mechanism": p.mechanism, "epsilon": p.epsilon, "tables": self.tables,
               "epsilon_per_table": float(p.epsilon) / self.tables,  # type: ignore[arg-type]
               "sensitivity": p.max_images_per_patient, "max_images_per_patient": p.max_images_per_patient,
               "noise_scale": self.scale}
        if p.mechanism == "gaussian":
            out |= {"delta": p.delta, "delta_per_table": p.delta / self.tables}
        return out


def suppress(counts: np.ndarray, k: int) -> tuple[np.ndarray, int | None]:
    """Released-cell mask and the pooled 'other' count (0 or >= k); (none released, None) if the total is < k."""
    flat = counts.ravel()
    released = flat >= k
    pool = int(flat[~released].sum())
    if 0 < pool < k:
        for idx in np.argsort(np.where(released, flat, np.iinfo(np.int64).max), kind="stable"):
            if not released[idx] or pool >= k:
                break
            released[idx] = False
            pool += int(flat[idx])
    if pool and pool < k:
        return np.zeros(counts.shape, bool), None
    return released.reshape(counts.shape), pool


def count_table(cells: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Counts over the full domain from per-row flat cell indices (-1 rows skipped)."""
    return np.bincount(cells[cells >= 0], minlength=int(np.prod(shape))).reshape(shape)


def row_cells(table: pd.DataFrame, block: list[str], doms: dict[str, list[str]], cfg: SummaryConfig) -> np.ndarray:
    """Flat cell index of every row in a block's table (-1 where a value is missing)."""
    shape = tuple(len(doms[v]) for v in block)
    parts = [codes(table, v, doms[v], cfg) for v in block]
    ok = np.all([p >= 0 for p in parts], axis=0)
    flat = np.ravel_multi_index([np.where(ok, p, 0) for p in parts], shape)
    return np.where(ok, flat, -1)


def release_table(block: list[str], doms: dict[str, list[str]], counts: np.ndarray, k: int) -> tuple[dict, np.ndarray]:
    """The released form of one joint table, and its released-cell mask."""
    mask, other = suppress(counts, k)
    cells = [{"values": [doms[v][i] for v, i in zip(block, idx, strict=True)], "count": int(counts[idx])}
             for idx in zip(*np.nonzero(mask), strict=True)]
    table = {"variables": block, "cells": cells, "other": other, "withheld": other is None,
             "total": (sum(c["count"] for c in cells) + other) if other is not None else None}
    return table, mask


def merge_bins(counts: np.ndarray, k: int) -> list[tuple[int, int, int]]:
    """Adjacent bins merged left to right until each holds >= k: (first, last, count); [] if the total is < k."""
    groups: list[list[int]] = []
    start, acc = 0, 0
    for i, c in enumerate(counts):
        acc += int(c)
        if acc >= k:
            groups.append([start, i, acc])
            start, acc = i + 1, 0
    if acc and groups:
        groups[-1][1] = len(counts) - 1
        groups[-1][2] += acc
    elif acc:
        return []
    if groups:
        groups[-1][1] = len(counts) - 1
    return [(a, b, c) for a, b, c in groups]


def age_histogram(ages: np.ndarray, cfg: SummaryConfig, noise: Noise, bands: list[float]) -> dict[str, Any]:
    """The age histogram, bins merged within each band so every released bin holds >= k."""
    edges = np.asarray(cfg.age_bins)
    fine = band_index(ages, cfg.age_bins, clip=False)
    counts = noise.apply(np.bincount(fine[fine >= 0], minlength=len(edges) - 1))
    bins = []
    for lo, hi in itertools.pairwise(bands):
        inside = np.flatnonzero((edges[:-1] >= lo) & (edges[1:] <= hi))
        for a, b, c in merge_bins(counts[inside], cfg.k):
            bins.append({"lo": float(edges[inside[a]]), "hi": float(edges[inside[b] + 1]), "count": c})
    return {"bins": bins, "bands": [float(b) for b in bands], "total": sum(b["count"] for b in bins)}


def marginals(tables: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per-variable counts summed over released cells only (so they reveal nothing the tables do not)."""
    out: dict[str, dict[str, int]] = {}
    for t in tables:
        for j, var in enumerate(t["variables"]):
            per = out.setdefault(var, {})
            for c in t["cells"]:
                per[c["values"][j]] = per.get(c["values"][j], 0) + c["count"]
    return out


def summarize(table: pd.DataFrame, schema: CardSchema, cfg: SummaryConfig | None = None) -> dict[str, Any]:
    """The releasable summary of a condition table (see the module docstring for what is released)."""
    cfg = cfg or SummaryConfig()
    if cfg.privacy.mechanism != "none":
        table = bound_contributions(table, cfg.privacy.max_images_per_patient)
    doms = domains(schema, table, cfg)
    blocks = resolve_blocks(cfg, schema, doms)
    has_age = AGE in table.columns
    noise = Noise(cfg.privacy, len(blocks) + int(has_age))
    tables, age_rows = [], np.ones(len(table), bool)
    for block in blocks:
        cells = row_cells(table, block, doms, cfg)
        shape = tuple(len(doms[v]) for v in block)
        released, mask = release_table(block, doms, noise.apply(count_table(cells, shape)), cfg.k)
        tables.append(released)
        if AGE_BAND in block:
            age_rows = (cells >= 0) & mask.ravel()[np.maximum(cells, 0)]
    in_block = any(AGE_BAND in b for b in blocks)
    bands = cfg.age_bands if in_block else [cfg.age_bins[0], cfg.age_bins[-1]]
    out: dict[str, Any] = {
        "format": FORMAT, "k": cfg.k, "privacy": noise.describe(),
        "suppression": "cells under k pooled into 'other' (0 or >= k, with secondary suppression); "
                       "age bins merged with neighbours inside their band until >= k",
        "domains": doms, "tables": tables, "marginals": marginals(tables),
    }
    if has_age:
        ages = table[AGE].to_numpy(dtype=float)[age_rows]
        out["age_histogram"] = age_histogram(ages, cfg, noise, list(bands))
    return out


def check_summary(summary: dict[str, Any], min_k: int) -> list[str]:
    """Problems with a received summary: a k below the hub's minimum, or any count under k in any table.

    The same rule holds in every table: joint cells, each table's 'other' pool, every marginal count and
    every age histogram bin is 0 (not shown) or at least k, and the marginals are the sums of the released
    cells (so a marginal cannot show a count that the joint tables pooled away).
    """
    problems = []
    k = summary.get("k")
    if not isinstance(k, int) or k < min_k:
        problems.append(f"summary uses k={k!r}, below the hub's minimum {min_k}")
        return problems
    for t in summary.get("tables", []):
        small = [c for c in t.get("cells", []) if not isinstance(c.get("count"), int) or c["count"] < k]
        if small:
            problems.append(f"table {t.get('variables')} shows {len(small)} cell(s) under k={k}")
        other = t.get("other")
        if other is not None and (not isinstance(other, int) or 0 < other < k):
            problems.append(f"table {t.get('variables')} shows an 'other' pool of {other} (under k={k})")
    expected = marginals(summary.get("tables", []))
    for var, counts in (summary.get("marginals") or {}).items():
        small = sorted(v for v, c in counts.items() if not isinstance(c, int) or 0 < c < k or c < 0)
        if small:
            problems.append(f"marginals.{var} shows {len(small)} count(s) under k={k} ({small[:3]})")
        elif {v: c for v, c in counts.items() if c} != expected.get(var, {}):
            problems.append(f"marginals.{var} is not the sum of the released cells of the joint tables")
    hist = summary.get("age_histogram") or {"bins": []}
    if any(not isinstance(b.get("count"), int) or b["count"] < k for b in hist["bins"]):
        problems.append(f"age histogram shows a bin under k={k}")
    return problems


def _age_in_band(rng: np.random.Generator, band: str | None, summary: dict[str, Any],
                 age_range: tuple[float, float]) -> float:
    """An age drawn from the histogram bins of a band (uniform inside the chosen bin and the age range)."""
    bins = (summary.get("age_histogram") or {}).get("bins", [])
    if band is not None:
        lo, hi = (float(x) for x in band.strip("[)").split(","))
        bins = [b for b in bins if b["lo"] >= lo and b["hi"] <= hi] or [{"lo": lo, "hi": hi, "count": 1}]
    if not bins:
        return _tenths(rng.uniform(*age_range))
    w = np.array([b["count"] for b in bins], float)
    b = bins[int(rng.choice(len(bins), p=w / w.sum()))]
    lo, hi = max(b["lo"], age_range[0]), min(b["hi"], age_range[1])
    return _tenths(rng.uniform(lo, max(hi, lo + 0.1)))


def _tenths(age: float) -> float:
    """An age rounded down to 0.1 year, so it stays inside the half-open bin it was drawn from."""
    return math.floor(float(age) * 10) / 10


def cell_weights(table: dict[str, Any], reweight: dict[str, dict[str, float]]) -> np.ndarray:
    """Released cell counts times the reweighting factor of every value they hold."""
    w = np.array([c["count"] for c in table["cells"]], float)
    for j, var in enumerate(table["variables"]):
        factors = reweight.get(var, {})
        w *= np.array([factors.get(c["values"][j], 1.0) for c in table["cells"]])
    return w


def draw_conditions(summary: dict[str, Any], schema: CardSchema, n: int, seed: int,
                    reweight: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """n generator conditions drawn from the released tables (optionally reweighted); pooled cells never appear."""
    rng = np.random.default_rng(seed)
    drawn: list[dict[str, Any]] = [{} for _ in range(n)]
    for table in summary["tables"]:
        w = cell_weights(table, reweight or {}) if table["cells"] else np.zeros(0)
        if table["withheld"] or w.sum() <= 0:
            continue
        for row, ci in zip(drawn, rng.choice(len(w), size=n, p=w / w.sum()), strict=True):
            row.update(zip(table["variables"], table["cells"][ci]["values"], strict=True))
    labels = schema.labels()
    age_range = schema.get(AGE).range if AGE in schema.names() else None
    out = []
    for row in drawn:
        cond = {k: (labels[k].index(v) if k in labels else v) for k, v in row.items() if k != AGE_BAND}
        if age_range is not None and (AGE_BAND in row or summary.get("age_histogram")):
            cond[AGE] = _age_in_band(rng, row.get(AGE_BAND), summary, age_range)
        out.append(cond)
    return out
