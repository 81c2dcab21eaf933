"""Key-metadata identification (Zhou et al., Fig. 5): which metadata fields split the data most.

For every metadata field, its values define subgroups (age in bands, by default the papers' <40 / 40-70 / >=70, other
numbers in quantile bins); every other field is a confounder held fixed by stratification: the data are cut
into strata with one value of each confounder, and

* **latent separability** - the silhouette of the subgroups and the balanced accuracy of a leave-one-out
  k-NN classifier in the standardised latent features, computed inside each stratum and averaged with
  stratum sizes as weights; chance for balanced accuracy is 1 / number of subgroups;
* **morphology** - a Kruskal-Wallis H-test of each morphology index across the subgroups inside each stratum,
  the strata's p-values combined with Fisher's method, then Holm-corrected over every field x index.

Strata with fewer than two subgroups of at least `min_group` images are skipped. A field is *key* when at
least one index differs significantly; the ranked table orders fields by the number of such indices, then
by the smallest corrected p-value, then by the k-NN gain over chance.

Run directory: `keymeta_ranked.csv`, `keymeta_tests.csv` (field x index: combined and pooled p, Holm),
`keymeta_strata.csv` (field x stratum x index: n, H, p).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.stats import combine_pvalues, kruskal
from sklearn.metrics import balanced_accuracy_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

from synthfm.analyze.indices import VESSEL_INDICES
from synthfm.config import StrictModel
from synthfm.data.vocabulary import AGE_EDGES, age_bands
from synthfm.errors import SynthfmError
from synthfm.evaluate.stats import holm
from synthfm.io import write_table
from synthfm.runs import RunDir

STAGE = "analyze.keymeta"
DEFAULT_INDICES = (*VESSEL_INDICES, "cup_to_disc", "artery_fractal_dimension", "vein_fractal_dimension")
NOT_FIELDS = ("row", "id", "split", "patient_id", "card", "source", "height", "width")


class KeyMetaConfig(StrictModel):
    """Inputs (morphology tables and/or a latent run), fields, indices and test settings."""

    morphology: list[str] = Field(default_factory=list, description="morphology tables (.parquet/.csv) or runs")
    latent: str | None = Field(None, description="a latent run directory (features + points)")
    fields: list[str] | None = Field(None, description="metadata fields (default: all found)")
    confounders: dict[str, list[str]] = Field(default_factory=dict,
                                              description="field -> fields held fixed (default: all others)")
    indices: list[str] | None = Field(None, description="morphology indices (default: those found)")
    age_edges: list[float] = Field(default_factory=lambda: list(AGE_EDGES), min_length=3,
                                   description="age band edges, outer bands open-ended (data/vocabulary.py)")
    numeric_bins: int = Field(3, ge=2, description="quantile bins of other numeric fields")
    min_group: int = Field(5, ge=2, description="smallest subgroup inside a stratum")
    alpha: float = Field(0.05, gt=0, lt=1)
    knn_k: int = Field(5, ge=1)


def subgroups(values: pd.Series, name: str, cfg: KeyMetaConfig) -> pd.Series:
    """Subgroup label per row: age bands, quantile bins of other numbers, or the value itself."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all() and values.nunique() > 8:
        if name == "age":
            return age_bands(numeric, cfg.age_edges).astype(str)
        return pd.qcut(numeric, cfg.numeric_bins, duplicates="drop").astype(str)
    return values.astype(str)


def strata(groups: pd.DataFrame, field: str, confounders: list[str]) -> list[np.ndarray]:
    """Row positions of every stratum (one value of each confounder)."""
    if not confounders:
        return [np.arange(len(groups))]
    codes = groups.groupby(confounders, sort=True).ngroup().to_numpy()
    return [np.flatnonzero(codes == k) for k in range(int(codes.max()) + 1)]


def _usable(labels: np.ndarray, min_group: int) -> np.ndarray:
    """Mask of rows whose subgroup has at least min_group members (kept only if two such subgroups exist)."""
    vals, counts = np.unique(labels, return_counts=True)
    big = vals[counts >= min_group]
    return np.isin(labels, big) if len(big) >= 2 else np.zeros(len(labels), bool)


def separability(features: np.ndarray, labels: np.ndarray, cfg: KeyMetaConfig) -> tuple[float, float]:
    """(silhouette, leave-one-out k-NN balanced accuracy) of subgroup labels in standardised features."""
    x = (features - features.mean(0)) / (features.std(0) + 1e-6)
    k = min(cfg.knn_k, len(x) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    codes, uniq = pd.factorize(pd.Series(labels))
    votes = codes[idx[:, 1:]]  # drop each point itself
    pred = np.array([np.bincount(v, minlength=len(uniq)).argmax() for v in votes])
    return float(silhouette_score(x, labels)), float(balanced_accuracy_score(codes, pred))


def latent_scores(features: np.ndarray, labels: np.ndarray, parts: list[np.ndarray],
                  cfg: KeyMetaConfig) -> dict[str, float]:
    """Stratum-size-weighted silhouette and k-NN accuracy, with chance and the pooled (unstratified) values."""
    sil, acc, weight = [], [], []
    for rows in parts:
        keep = rows[_usable(labels[rows], cfg.min_group)]
        if len(keep):
            s, a = separability(features[keep], labels[keep], cfg)
            sil.append(s)
            acc.append(a)
            weight.append(len(keep))
    out = {"silhouette": float(np.average(sil, weights=weight)) if weight else float("nan"),
           "knn_balanced_accuracy": float(np.average(acc, weights=weight)) if weight else float("nan"),
           "knn_chance": 1.0 / max(len(np.unique(labels)), 1)}
    out["knn_gain"] = out["knn_balanced_accuracy"] - out["knn_chance"]
    pooled = _usable(labels, cfg.min_group)
    if pooled.any():
        out["silhouette_pooled"], out["knn_pooled"] = separability(features[pooled], labels[pooled], cfg)
    return out


def kruskal_strata(values: np.ndarray, labels: np.ndarray, parts: list[np.ndarray],
                   min_group: int) -> list[dict[str, float]]:
    """Kruskal-Wallis H and p of one index across subgroups inside each usable stratum."""
    out = []
    for k, rows in enumerate(parts):
        ok = rows[np.isfinite(values[rows])]
        keep = ok[_usable(labels[ok], min_group)]
        if not len(keep):
            continue
        samples = [values[keep][labels[keep] == g] for g in np.unique(labels[keep])]
        if np.ptp(values[keep]) == 0:
            continue
        h, p = kruskal(*samples)
        out.append({"stratum": k, "n": len(keep), "groups": len(samples), "H": float(h), "p": float(p)})
    return out


def morphology_tests(table: pd.DataFrame, groups: pd.DataFrame, field: str, confounders: list[str],
                     indices: list[str], cfg: KeyMetaConfig) -> tuple[list[dict], list[dict]]:
    """Per-index combined tests and per-stratum rows for one field."""
    parts = strata(groups, field, confounders)
    labels = groups[field].to_numpy()
    tests, rows = [], []
    for name in indices:
        values = pd.to_numeric(table[name], errors="coerce").to_numpy(float)
        per = kruskal_strata(values, labels, parts, cfg.min_group)
        rows += [{"field": field, "index": name, **r} for r in per]
        pooled = kruskal_strata(values, labels, [np.arange(len(values))], cfg.min_group)
        p = float(combine_pvalues([r["p"] for r in per], method="fisher").pvalue) if per else float("nan")
        tests.append({"field": field, "index": name, "strata": len(per), "p": p,
                      "p_pooled": pooled[0]["p"] if pooled else float("nan")})
    return tests, rows


def _fields(table: pd.DataFrame, cfg: KeyMetaConfig, indices: list[str]) -> list[str]:
    """Metadata fields to examine (default: age and every non-float column but labels, ids and splits)."""
    if cfg.fields is not None:
        missing = [f for f in cfg.fields if f not in table]
        if missing:
            raise SynthfmError(f"metadata field(s) {missing} not in the analysis table",
                               f"choose from {[c for c in table if c not in NOT_FIELDS]}")
        return list(cfg.fields)
    skip = set(NOT_FIELDS) | set(indices)
    return [c for c in table.columns if c == "age" or (
        c not in skip and not c.startswith(("label_", "_")) and not pd.api.types.is_float_dtype(table[c]))]


def key_metadata(table: pd.DataFrame, cfg: KeyMetaConfig, fields: list[str], indices: list[str],
                 features: np.ndarray | None = None) -> dict[str, pd.DataFrame]:
    """Ranked fields, per-index tests and per-stratum tests (features: rows aligned with `table`)."""
    groups = pd.DataFrame({f: subgroups(table[f], f, cfg) for f in fields})
    tests, strat, latent = [], [], {}
    for field in fields:
        conf = cfg.confounders.get(field, [f for f in fields if f != field])
        t, s = morphology_tests(table, groups, field, conf, indices, cfg)
        tests += t
        strat += s
        if features is not None:
            latent[field] = latent_scores(features, groups[field].to_numpy(), strata(groups, field, conf), cfg)
    tests_df = pd.DataFrame(tests, columns=["field", "index", "strata", "p", "p_pooled"])
    finite = tests_df["p"].notna()
    tests_df["p_holm"] = np.nan
    tests_df.loc[finite, "p_holm"] = holm(tests_df.loc[finite, "p"].to_numpy())
    tests_df["significant"] = tests_df["p_holm"] < cfg.alpha
    ranked = pd.DataFrame([rank_row(f, groups[f], tests_df[tests_df["field"] == f], latent.get(f, {}))
                           for f in fields])
    ranked = ranked.sort_values(["significant_indices", "min_p_holm", "knn_gain"],
                                ascending=[False, True, False], na_position="last").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return {"ranked": ranked, "tests": tests_df, "strata": pd.DataFrame(strat)}


def rank_row(field: str, groups: pd.Series, tests: pd.DataFrame, latent: dict[str, float]) -> dict:
    """One field's line of the ranked table."""
    sig = tests[tests["significant"]]
    best = tests.sort_values("p_holm").iloc[0] if len(tests) and tests["p_holm"].notna().any() else None
    return {"field": field, "subgroups": "; ".join(sorted(groups.unique())), "n": len(groups),
            "significant_indices": len(sig), "indices": "; ".join(sig["index"]),
            "min_p_holm": float(best["p_holm"]) if best is not None else float("nan"),
            "top_index": best["index"] if best is not None else "",
            "silhouette": latent.get("silhouette", np.nan), "knn_balanced_accuracy":
            latent.get("knn_balanced_accuracy", np.nan), "knn_chance": latent.get("knn_chance", np.nan),
            "knn_gain": latent.get("knn_gain", np.nan), "key": len(sig) > 0}


def read_morphology(paths: list[str]) -> pd.DataFrame:
    """Morphology tables (files, or run directories holding one morphology_*.parquet each), stacked."""
    frames = []
    for p in map(Path, paths):
        files = sorted(p.glob("morphology_*.parquet")) if p.is_dir() else [p]
        files = [f for f in files if not f.name.startswith("morphology_summary_")]
        if not files or not files[0].is_file():
            raise SynthfmError(f"no morphology table at {p}", "run 'synthfm analyze morphology' first")
        for f in files:
            frames.append(pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f))
    return pd.concat(frames, ignore_index=True)


def analysis_table(cfg: KeyMetaConfig) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Morphology rows joined with latent points by image id (either alone works)."""
    from synthfm.analyze.latent import load_features

    morph = read_morphology(cfg.morphology) if cfg.morphology else None
    if cfg.latent is None:
        if morph is None:
            raise SynthfmError("key-metadata identification needs morphology tables or a latent run",
                               "pass --morphology RUN and/or --latent RUN")
        return morph, None
    feats, points = load_features(Path(cfg.latent))
    points = points.assign(_pos=np.arange(len(points)))
    if morph is None:
        return points, feats
    key = "row" if "row" in points and "row" in morph else "id"  # manifest row: the same in both tables
    morph = morph[[c for c in morph if c not in points or c == key]]
    joined = points.assign(**{key: points[key].astype(str)}).merge(morph.assign(**{key: morph[key].astype(str)}),
                                                                  on=key, how="inner")
    if joined.empty:
        raise SynthfmError(f"the latent run {cfg.latent} and the morphology tables share no image ({key})",
                           "analyse the same card in both (and rows the latent sample includes)")
    return joined, feats[joined["_pos"].to_numpy()]


def run_keymeta(cfg: KeyMetaConfig, out: str | Path) -> Path:
    """Rank metadata fields in a run directory; return the ranked table's path."""
    run = RunDir(out, STAGE, cfg)
    if run.open() == "done":
        return run.path / "keymeta_ranked.csv"
    table, features = analysis_table(cfg)
    indices = cfg.indices or [c for c in DEFAULT_INDICES if c in table]
    result = key_metadata(table, cfg, _fields(table, cfg, indices), indices, features)
    for name, df in result.items():
        write_table(df, run.path / f"keymeta_{name}.csv")
    key = result["ranked"].loc[result["ranked"]["key"], "field"].tolist()
    run.complete(fields=len(result["ranked"]), key_fields=key)
    return run.path / "keymeta_ranked.csv"
