"""Small-data mode: stratified, patient-grouped, repeated k-fold cross-validation of one card task.

The *pool* is the card rows cross-validated over (`cv.pool`: every row by default, or named splits). Each
repeat r splits the pool's patients into `folds` folds with scikit-learn's StratifiedGroupKFold, seeded per
repeat (`repeat_seed`), so a patient's images stay in one fold and each fold keeps the label mix. For fold k
the test set is fold k; the validation set (best-epoch selection) is carved out of the other folds, again
patient-grouped and stratified (one of `val_folds` inner folds, default folds - 1, so 3/1/1 of 5 folds train /
validate / test); label fractions then subset the remaining training rows. The test fold is never used for
training or selection.

Strata are the task's labels: the class for binary, multiclass and ordinal tasks; for multilabel tasks the
label combination, with combinations held by fewer patients than folds merged into one stratum (the card
schema has no regression task).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from torch.utils.data import Dataset, Subset

from synthfm.adapt.config import CVConfig
from synthfm.data.card import TaskSpec
from synthfm.data.manifest import CardData
from synthfm.data.readers import open_dataset
from synthfm.data.splits import label_fractions
from synthfm.errors import SynthfmError

ROLES = ("train", "val", "test")
FOLDS_FILE = "cv_folds"
RARE = "rare"


def repeat_seed(seed: int, repeat: int, fold: int = -1) -> int:
    """The shuffle seed of one repeat (fold -1) or of one fold's validation carve: a pure function of its keys."""
    return int(np.random.SeedSequence([seed, repeat, fold + 1]).generate_state(1, np.uint32)[0])


def pool_rows(data: CardData, cv: CVConfig) -> np.ndarray:
    """Manifest positions of the rows cross-validated over."""
    if "all" in cv.pool:
        return np.arange(len(data))
    return np.sort(np.concatenate([data.indices(s) for s in dict.fromkeys(cv.pool)]))


def strata(data: CardData, task: TaskSpec, rows: np.ndarray, folds: int) -> np.ndarray:
    """The stratum of each row: its class, or for multilabel tasks its label combination (rare ones merged)."""
    lab = data.labels[task.name][rows]
    if lab.ndim == 1:
        return lab.astype(str)
    combo = np.array(["".join(map(str, v.astype(int))) for v in lab])
    patients = data.patient_ids().to_numpy()[rows]
    per_combo = pd.Series(patients).groupby(combo).nunique()
    return np.where(np.isin(combo, per_combo.index[per_combo < folds]), RARE, combo)


def _kfold(strat: np.ndarray, groups: np.ndarray, k: int, seed: int, what: str) -> list[np.ndarray]:
    """Test positions of each of k stratified, grouped folds (positions into strat/groups)."""
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise SynthfmError(f"{what} has {n_groups} patient(s), fewer than the {k} folds asked for",
                           "lower cv.folds (or cv.val_folds), or add rows to cv.pool")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(np.zeros(len(strat)), strat, groups)]


def fold_table(data: CardData, task: TaskSpec, cv: CVConfig) -> pd.DataFrame:
    """Every (repeat, fold, role, row): the whole fold assignment, deterministic in (card, task, cv)."""
    rows = pool_rows(data, cv)
    if len(rows) == 0:
        raise SynthfmError(f"cv.pool {cv.pool} holds no rows of card {data.card.name}",
                           "name splits the card has, or use pool: [all]")
    patients = data.patient_ids().to_numpy()[rows]
    strat = strata(data, task, rows, cv.folds)
    parts = []
    for r in range(cv.repeats):
        for k, test in enumerate(_kfold(strat, patients, cv.folds, repeat_seed(cv.seed, r),
                                        f"cv.pool of card {data.card.name}")):
            rest = np.setdiff1d(np.arange(len(rows)), test)
            val = rest[_kfold(strat[rest], patients[rest], cv.inner_folds, repeat_seed(cv.seed, r, k),
                              f"the training part of fold {k}")[0]]
            for role, pos in zip(ROLES, (np.setdiff1d(rest, val), val, test), strict=True):
                parts.append(pd.DataFrame({"repeat": r, "fold": k, "role": role, "row": rows[pos],
                                           "patient": patients[pos], "stratum": strat[pos]}))
    return pd.concat(parts, ignore_index=True)


def fold_rows(data: CardData, task: TaskSpec, cv: CVConfig, repeat: int, fold: int) -> dict[str, np.ndarray]:
    """Manifest positions of the train / val / test rows of one (repeat, fold)."""
    table = fold_table(data, task, cv)
    one = table[(table["repeat"] == repeat) & (table["fold"] == fold)]
    return {role: one.loc[one["role"] == role, "row"].to_numpy() for role in ROLES}


def fold_sizes(table: pd.DataFrame) -> pd.DataFrame:
    """Per (repeat, fold): n_train (the training part: train + val rows) and n_test, as the corrected t-test uses."""
    counts = table.pivot_table(index=["repeat", "fold"], columns="role", values="row", aggfunc="size", fill_value=0)
    return pd.DataFrame({"n_train": counts["train"] + counts["val"], "n_test": counts["test"]}).reset_index()


def train_subset(data: CardData, task: TaskSpec, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The nested, patient-level, stratified label fraction of a fold's training rows (all of them at 1)."""
    if fraction >= 1:
        return rows
    strat = pd.Series(strata(data, task, rows, 1))
    patients = data.patient_ids().iloc[rows].reset_index(drop=True)
    return rows[label_fractions(patients, strat, [fraction], seed)[fraction]]


def fold_datasets(data: CardData, task: TaskSpec, cv: CVConfig, fraction: float, subset_seed: int, size: int,
                  augment: bool, val_split: str, test_split: str) -> dict[str, Dataset]:
    """Train (label fraction of the training part), validation and test datasets of the run's (repeat, fold)."""
    if cv.run is None:
        raise SynthfmError("a cross-validation run needs its (repeat, fold)", "use cfg.single(fraction, seed, "
                                                                              "repeat, fold)")
    if data.card.source.format == "shards":
        raise SynthfmError(f"card {data.card.name} is a shard stream, which cross-validation cannot index",
                           "convert it to a folder or npz card, or drop 'cv'")
    rows = fold_rows(data, task, cv, *cv.run)
    train = train_subset(data, task, rows["train"], fraction, subset_seed)
    full = open_dataset(data, None, size=size)
    return {"train": Subset(open_dataset(data, None, size=size, train=augment), train.tolist()),
            val_split: Subset(full, rows["val"].tolist()), test_split: Subset(full, rows["test"].tolist())}
