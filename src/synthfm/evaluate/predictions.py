"""The result contract of an adaptation experiment: its folder layout and its per-image prediction tables.

`synthfm adapt` writes, and `synthfm evaluate`, the model cards, the gate's label verifier and the report read:

    EXP/config.yaml                  header stage 'adapt.experiment'; config: the experiment's AdaptConfig
    EXP/fraction_F/seed_S/           one run (with cv: .../repeat_R/fold_K/)
        predictions_<split>.parquet  `index` (manifest row), `y` or `y_<class>`, `score` or `score_<class>`,
                                     then the card's metadata columns
        external/<set>/predictions_<split>.parquet

This module owns that contract, so the stages that read it need not import the one that writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from synthfm.data.card import TaskSpec
from synthfm.data.manifest import CardData
from synthfm.errors import SynthfmError
from synthfm.evaluate.fairness import row_metadata
from synthfm.evaluate.metrics import task_metrics
from synthfm.evaluate.results import INTERNAL
from synthfm.io import atomic_path
from synthfm.runs import CONFIG_FILE, MARKER_FILE, read_header, read_run_config

STAGE = "adapt"  # the stage name in an adaptation run's config.yaml header
EXPERIMENT_STAGE = f"{STAGE}.experiment"
EXTERNAL_DIR = "external"
RunKey = tuple[float, int, int | None, int | None]  # fraction, seed, CV repeat, CV fold (None, None without cv)


class _Folds(Protocol):
    """What the layout needs of a cross-validation config."""

    repeats: int
    folds: int


class Grid(Protocol):
    """What the layout needs of an adaptation config: its label fractions, seeds and cross-validation."""

    label_fractions: list[float]
    seeds: list[int]

    @property
    def cv(self) -> _Folds | None: ...


class _CVGrid(BaseModel):
    """The repeats and folds of a recorded cross-validation (its other settings are the writer's)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    repeats: int
    folds: int


class ExperimentGrid(BaseModel):
    """What a reader needs of a finished experiment's recorded config (every field is always recorded)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    card: str
    task: str
    label_fractions: list[float]
    seeds: list[int]
    val_split: str
    test_splits: list[str]
    cv: _CVGrid | None = None


def run_path(out_dir: str | Path, fraction: float, seed: int, repeat: int | None = None,
             fold: int | None = None) -> Path:
    """The run directory of one (label fraction, seed), or of one (fraction, seed, repeat, fold) under cv."""
    path = Path(out_dir) / f"fraction_{fraction:g}" / f"seed_{seed}"
    return path if repeat is None or fold is None else path / f"repeat_{repeat}" / f"fold_{fold}"


def run_keys(grid: Grid) -> list[RunKey]:
    """Every run of an experiment: fraction x seed, times repeat x fold under cv."""
    cv = [(None, None)] if grid.cv is None else [(r, k) for r in range(grid.cv.repeats) for k in range(grid.cv.folds)]
    return [(f, s, r, k) for r, k in cv for f in grid.label_fractions for s in grid.seeds]


def read_experiment(exp: str | Path) -> ExperimentGrid:
    """The recorded grid, card and splits of a finished adaptation experiment directory."""
    exp = Path(exp)
    if not (exp / MARKER_FILE).is_file() or not (exp / CONFIG_FILE).is_file():
        raise SynthfmError(f"{exp} is not a finished adaptation experiment (no {MARKER_FILE})",
                           f"run 'synthfm adapt CONFIG -o {exp}' to the end first")
    stage = read_header(exp).get("stage")
    if stage != EXPERIMENT_STAGE:
        raise SynthfmError(f"{exp} holds a '{stage}' run, not an adaptation experiment",
                           "point at the folder given to 'synthfm adapt -o'")
    return read_run_config(exp, ExperimentGrid)


def prediction_files(run: Path, test_splits: list[str]) -> list[tuple[str, str, Path]]:
    """(evaluation set, split, file) of a run's saved test predictions: its own test splits and every external set."""
    own = [(INTERNAL, s, run / f"predictions_{s}.parquet") for s in test_splits]
    ext = [(f.parent.name, f.stem.removeprefix("predictions_"), f)
           for f in sorted((run / EXTERNAL_DIR).glob("*/predictions_*.parquet"))]
    return [*own, *ext]


def prediction_frame(index: np.ndarray, y: np.ndarray, p: np.ndarray, task: TaskSpec) -> pd.DataFrame:
    """Predictions as a table: manifest row `index`, target(s) `y` / `y_<class>`, `score` / `score_<class>`."""
    df = pd.DataFrame({"index": index.astype(np.int64)})
    if y.ndim == 1:
        df["y"] = y
    else:
        df = df.assign(**{f"y_{c}": y[:, k] for k, c in enumerate(task.classes)})
    if p.ndim == 1:
        return df.assign(score=p)
    return df.assign(**{f"score_{c}": p[:, k] for k, c in enumerate(task.classes)})


def write_predictions(path: Path, index: np.ndarray, y: np.ndarray, p: np.ndarray, task: TaskSpec,
                      data: CardData) -> dict[str, float]:
    """Write one split's per-image predictions with the card's metadata columns (atomically); return their metrics."""
    frame = pd.concat([prediction_frame(index, y, p, task), row_metadata(data, index)], axis=1)
    with atomic_path(path, ".parquet") as tmp:
        frame.to_parquet(tmp, index=False)
    return task_metrics(task.type, y, p)


@dataclass(frozen=True)
class PredictionScoring:
    """This contract as the classifier trainer's `Scoring`: the stage name, task metrics, the prediction writer."""

    stage: str = STAGE

    def metrics(self, task_type: str, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """Task metrics (evaluate/metrics.py)."""
        return task_metrics(task_type, y, p)

    def write(self, path: Path, index: np.ndarray, y: np.ndarray, p: np.ndarray, task: TaskSpec,
              data: CardData) -> dict[str, float]:
        """`write_predictions`."""
        return write_predictions(path, index, y, p, task, data)


SCORING = PredictionScoring()


def _columns(df: pd.DataFrame, name: str) -> np.ndarray:
    """Column `name` (N,), or the `name_<class>` columns (N, K)."""
    if name in df:
        return df[name].to_numpy()
    return df[[c for c in df if c.startswith(f"{name}_")]].to_numpy()


def read_predictions(source: str | Path | pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index, y, scores) from a predictions table (or its Parquet file)."""
    df = source if isinstance(source, pd.DataFrame) else pd.read_parquet(source)
    return df["index"].to_numpy(), _columns(df, "y"), _columns(df, "score").astype(float)
