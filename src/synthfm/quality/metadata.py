"""Metadata consistency: synthetic vs real distributions, and metadata predicted from the images.

Distributions: labels per task, and each shared metadata field overall and within each label class.
Categorical fields get a chi-square test of homogeneity with Cramér's V as effect size; numeric fields
(age) a two-sample Kolmogorov-Smirnov test whose statistic D is the effect size (scipy). Prediction: an age
regressor (ridge) and a sex classifier (logistic regression) are fitted on real training features and
scored on real held-out images (the baseline) and on the synthetic images against the conditions they
were generated for (scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats.contingency import association
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synthfm.data.manifest import CardData
from synthfm.data.vocabulary import sex_codes
from synthfm.quality.config import MetadataConfig

EXCLUDED = ("patient_id",)


def shared_fields(real: CardData, synth: CardData, cfg: MetadataConfig) -> dict[str, tuple[str, str]]:
    """Metadata field -> (real column, synthetic column) for fields both cards record."""
    r, s = real.card.metadata.columns(), synth.card.metadata.columns()
    names = cfg.fields or [f for f in r if f in s and f not in EXCLUDED]
    return {f: (r[f], s[f]) for f in names if f in r and f in s}


def is_numeric(values: pd.Series) -> bool:
    """Whether every recorded value parses as a number."""
    v = values.dropna()
    return len(v) > 0 and pd.to_numeric(v, errors="coerce").notna().all()


def compare(real: pd.Series, synth: pd.Series, numeric: bool) -> dict[str, Any]:
    """One test: KS (numeric) or chi-square + Cramér's V (categorical)."""
    real, synth = real.dropna(), synth.dropna()
    if numeric:
        a, b = pd.to_numeric(real).to_numpy(float), pd.to_numeric(synth).to_numpy(float)
        res = stats.ks_2samp(a, b)
        return {"test": "ks", "statistic": float(res.statistic), "p_value": float(res.pvalue),
                "effect": float(res.statistic), "effect_name": "ks_d",
                "real_summary": _moments(a), "synth_summary": _moments(b)}
    table = pd.crosstab(np.r_[np.zeros(len(real)), np.ones(len(synth))],
                        np.r_[real.astype(str).to_numpy(), synth.astype(str).to_numpy()])
    if table.shape[1] < 2:
        return {"test": "chi2", "statistic": 0.0, "p_value": 1.0, "effect": 0.0, "effect_name": "cramers_v",
                "real_summary": _shares(real), "synth_summary": _shares(synth)}
    chi2, p, _, _ = stats.chi2_contingency(table.to_numpy())
    return {"test": "chi2", "statistic": float(chi2), "p_value": float(p),
            "effect": float(association(table.to_numpy(), method="cramer")), "effect_name": "cramers_v",
            "real_summary": _shares(real), "synth_summary": _shares(synth)}


def _moments(x: np.ndarray) -> str:
    """'mean 61.20 sd 11.80'."""
    return f"mean {x.mean():.2f} sd {x.std():.2f}"


def _shares(values: pd.Series) -> str:
    """Category shares as 'a 0.50, b 0.50'."""
    return ", ".join(f"{k} {v:.2f}" for k, v in values.astype(str).value_counts(normalize=True).sort_index().items())


def distribution_table(real: CardData, synth: CardData, cfg: MetadataConfig,
                       tasks: list[tuple[str, str, list[str]]]) -> pd.DataFrame:
    """Tidy tests: labels per task, metadata overall and per label class (`tasks`: real, synthetic, classes)."""
    fields = shared_fields(real, synth, cfg)
    rows = []
    for rname, sname, classes in tasks:
        lab_r = pd.Series([classes[i] for i in real.labels[rname]])
        lab_s = pd.Series([classes[i] for i in synth.labels[sname]])
        rows.append({"scope": "all", "task": rname, "class": "all", "field": f"label:{rname}",
                     "n_real": len(lab_r), "n_synthetic": len(lab_s), **compare(lab_r, lab_s, False)})
    for field, (rc, sc) in fields.items():
        numeric = is_numeric(real.df[rc]) and is_numeric(synth.df[sc])
        rows.append({"scope": "all", "task": "all", "class": "all", "field": field, "n_real": len(real),
                     "n_synthetic": len(synth), **compare(real.df[rc], synth.df[sc], numeric)})
        for rname, sname, classes in tasks:
            for k, cls in enumerate(classes):
                ri, si = real.labels[rname] == k, synth.labels[sname] == k
                if min(ri.sum(), si.sum()) >= cfg.min_per_label:
                    rows.append({"scope": "label", "task": rname, "class": cls, "field": field,
                                 "n_real": int(ri.sum()), "n_synthetic": int(si.sum()),
                                 **compare(real.df[rc][ri], synth.df[sc][si], numeric)})
    return pd.DataFrame(rows)


def predicted_metadata(real_feat: np.ndarray, synth_feat: np.ndarray, real: CardData, synth: CardData,
                       train: np.ndarray, heldout: np.ndarray, cfg: MetadataConfig, seed: int) -> pd.DataFrame:
    """Age (MAE, bias, Pearson r) and sex (accuracy, AUROC) predicted on real held-out vs synthetic images."""
    fields = shared_fields(real, synth, cfg)
    rng = np.random.default_rng(seed)
    if len(train) > cfg.max_train:
        train = np.sort(rng.choice(train, cfg.max_train, replace=False))
    rows = []
    if "age" in fields:
        rows += _age_rows(real_feat, synth_feat, real.df[fields["age"][0]], synth.df[fields["age"][1]], train, heldout)
    if "sex" in fields:
        rows += _sex_rows(real_feat, synth_feat, sex_codes(real.df[fields["sex"][0]]),
                          sex_codes(synth.df[fields["sex"][1]]), train, heldout, seed)
    return pd.DataFrame(rows)


def _age_rows(rf: np.ndarray, sf: np.ndarray, ra: pd.Series, sa: pd.Series, train: np.ndarray,
              heldout: np.ndarray) -> list[dict[str, Any]]:
    """Ridge age regressor fitted on real train rows with an age."""
    r_age, s_age = (pd.to_numeric(v, errors="coerce").to_numpy(float) for v in (ra, sa))
    tr, ho = train[~np.isnan(r_age[train])], heldout[~np.isnan(r_age[heldout])]
    sy = np.flatnonzero(~np.isnan(s_age))
    if len(tr) < 5 or len(ho) < 2 or len(sy) < 2:
        return []
    model = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(np.asarray(rf[tr]), r_age[tr])
    out = []
    for source, x, y in (("real_heldout", rf[ho], r_age[ho]), ("synthetic", sf[sy], s_age[sy])):
        p = model.predict(np.asarray(x))
        r = float(np.corrcoef(p, y)[0, 1]) if np.std(p) > 0 and np.std(y) > 0 else float("nan")
        out += [{"field": "age", "source": source, "metric": m, "value": v, "n": len(y)}
                for m, v in (("mae", float(np.abs(p - y).mean())), ("bias", float((p - y).mean())), ("pearson_r", r))]
    return out


def _sex_rows(rf: np.ndarray, sf: np.ndarray, rs: np.ndarray, ss: np.ndarray, train: np.ndarray,
              heldout: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """Logistic sex classifier fitted on real train rows with F/M recorded."""
    tr, ho, sy = train[rs[train] >= 0], heldout[rs[heldout] >= 0], np.flatnonzero(ss >= 0)
    if len(tr) < 5 or len(set(rs[tr])) < 2 or len(ho) < 2 or len(sy) < 2:
        return []
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed))
    model.fit(np.asarray(rf[tr]), rs[tr])
    out = []
    for source, x, y in (("real_heldout", rf[ho], rs[ho]), ("synthetic", sf[sy], ss[sy])):
        p = model.predict_proba(np.asarray(x))[:, 1]
        auc = float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")
        out += [{"field": "sex", "source": source, "metric": m, "value": v, "n": len(y)}
                for m, v in (("accuracy", float(((p >= 0.5) == y).mean())), ("auroc", auc))]
    return out


def metadata_metrics(dist: pd.DataFrame, pred: pd.DataFrame) -> dict[str, float]:
    """Summary figures: the largest effect sizes, and predicted-metadata gaps synthetic vs real held-out."""
    out: dict[str, float] = {}
    if len(dist):
        labels = dist[dist["field"].str.startswith("label:")]
        meta = dist[~dist["field"].str.startswith("label:")]
        if len(labels):
            out["label_distribution_cramers_v"] = float(labels["effect"].max())
        if len(meta):
            out["metadata_max_effect"] = float(meta["effect"].max())
    if len(pred):
        value = pred.set_index(["field", "source", "metric"])["value"]
        if ("age", "synthetic", "mae") in value:
            syn, real = float(value["age", "synthetic", "mae"]), float(value["age", "real_heldout", "mae"])
            out["age_mae_synthetic"], out["age_mae_ratio"] = syn, syn / max(real, 1e-9)
        if ("sex", "synthetic", "accuracy") in value:
            syn, real = float(value["sex", "synthetic", "accuracy"]), float(value["sex", "real_heldout", "accuracy"])
            out["sex_accuracy_synthetic"], out["sex_accuracy_gap"] = syn, real - syn
    return out
