"""Adaptation config: one classifier recipe (train/classifier_config.py) over label fractions and seeds."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from synthfm.config import StrictModel
from synthfm.train.classifier_config import ClassifierConfig


class ExternalEval(StrictModel):
    """Another card to test the adapted model on (train on card A, test on card B), with its label mapping.

    `task_map` maps a task of card B onto the task being adapted (`{B task: A task}`; default: the same name);
    `label_map` maps B's class names onto A's (`{B class: A class}`; classes not named map by equal name).
    """

    card: str = Field(description="dataset.yaml of the external card (B)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="evaluation-set name in the results; default: B's card name")
    split: Literal["train", "val", "test", "all"] = Field("test", description="rows of B to test on")
    task_map: dict[str, str] = Field(default_factory=dict, description="{task in B: task in A}")
    label_map: dict[str, str] = Field(default_factory=dict, description="{class in B: class in A}")


class CVConfig(StrictModel):
    """Repeated, stratified, patient-grouped k-fold cross-validation (`cv:` in an adaptation config).

    See `synthfm.adapt.cv` for how folds, the validation carve and label fractions are drawn.
    """

    folds: int = Field(5, ge=2, description="folds per repeat; each is the test set once")
    repeats: int = Field(3, ge=1, description="repeats, each with its own shuffle of the patients")
    pool: list[Literal["all", "train", "val", "test"]] = Field(
        default_factory=lambda: ["all"], min_length=1,
        description="card rows cross-validated over: 'all' (every row, split or not) or named splits")
    val_folds: int | None = Field(None, ge=2, description="validation = one of this many patient-grouped, "
                                                          "stratified folds of the training part; default folds-1")
    seed: int = Field(0, description="seed of the fold shuffles (repeat r uses a seed derived from (seed, r))")
    run: tuple[int, int] | None = Field(None, description="(repeat, fold) of one run directory; set by the "
                                                          "experiment, leave it out")
    omit_when_default: ClassVar[tuple[str, ...]] = ("run",)

    @model_validator(mode="after")
    def _run_in_range(self) -> CVConfig:
        """A run's (repeat, fold) exists."""
        if self.run is not None and not (0 <= self.run[0] < self.repeats and 0 <= self.run[1] < self.folds):
            raise ValueError(f"cv.run {self.run} is outside {self.repeats} repeats x {self.folds} folds")
        return self

    @property
    def inner_folds(self) -> int:
        """Folds of the training part that the validation set is one of."""
        return self.val_folds or max(self.folds - 1, 2)


class AdaptConfig(ClassifierConfig):
    """One classifier recipe (`ClassifierConfig`) run over label fractions and seeds, in an experiment.

    Besides the recipe, an experiment may test on other cards (`external`) and cross-validate instead of using
    the card's fixed splits (`cv`).
    """

    external: list[ExternalEval] = Field(default_factory=list, description="cards to test on besides this one")
    cv: CVConfig | None = Field(None, description="small-data mode: repeated k-fold cross-validation instead "
                                                   "of the card's fixed splits (see synthfm.adapt.cv)")
    omit_when_default: ClassVar[tuple[str, ...]] = (*ClassifierConfig.omit_when_default, "external", "cv")

    @model_validator(mode="after")
    def _cv_roles(self) -> AdaptConfig:
        """Under cv, val_split and test_splits name the fold roles, so they keep their names ('val', ['test'])."""
        if self.cv is not None and (self.val_split != "val" or self.test_splits != ["test"]):
            raise ValueError("with 'cv' the validation and test sets are the folds' own: leave val_split and "
                             "test_splits out (choose the rows cross-validated over with cv.pool)")
        return self

    def single(self, fraction: float, seed: int, repeat: int | None = None, fold: int | None = None) -> AdaptConfig:
        """This config restricted to one (label fraction, seed[, CV repeat, fold]): the config of one run directory."""
        one = self.model_copy(update={"label_fractions": [fraction], "seeds": [seed]})
        if self.cv is not None and repeat is not None and fold is not None:
            one = one.model_copy(update={"cv": self.cv.model_copy(update={"run": (repeat, fold)})})
        return one
