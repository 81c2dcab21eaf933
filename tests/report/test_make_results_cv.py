"""docs/make_results.py says when an experiment was cross-validated, and over which rows."""

from __future__ import annotations

import runpy
from pathlib import Path


def test_cv_text_names_folds_repeats_and_pool() -> None:
    make = runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "make_results.py"))
    assert make["cv_text"]({"seeds": [0]}) == ""
    assert make["cv_text"]({"cv": {"folds": 4, "pool": ["train", "val"]}}) == (
        ", 4-fold cross-validation x 3 repeats over card rows ['train', 'val'] (folds in `cv_folds.csv`)")
