"""The condition vocabulary a generator understands, and a site card turned into one condition row per image.

The vocabulary doubles as the bundle's dataset-card schema: modality, tasks with their classes, metadata
fields with their allowed values or range. It holds names and value sets only, never a row of data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from synthfm.config import StrictModel
from synthfm.data.manifest import SPLIT, load_card
from synthfm.data.vocabulary import mapped_task_labels
from synthfm.errors import SynthfmError

PATIENT = "_patient"
AGE_BAND = "age_band"


class Variable(StrictModel):
    """One condition variable: a task label (class index), a category, or a number (age)."""

    name: str
    kind: Literal["label", "category", "number"]
    values: list[str] = Field(default_factory=list, description="label classes / allowed category values")
    task_type: str | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _shape(self) -> Variable:
        """Labels and categories list their values; numbers give a range."""
        if self.kind != "number" and not self.values:
            raise ValueError(f"{self.kind} variable '{self.name}' needs its values")
        if self.kind == "number" and self.range is None:
            raise ValueError(f"number variable '{self.name}' needs a range")
        return self


class CardSchema(StrictModel):
    """The condition vocabulary of a generator (= the bundle's dataset-card schema; no data)."""

    format: Literal["synthfm.consortium.schema/1"] = "synthfm.consortium.schema/1"
    modality: Literal["fundus", "cxr", "volume"]
    variables: list[Variable] = Field(min_length=1)

    def get(self, name: str) -> Variable:
        """A variable by name."""
        for v in self.variables:
            if v.name == name:
                return v
        raise SynthfmError(f"schema has no variable '{name}'", f"use one of {[v.name for v in self.variables]}")

    def names(self, kind: str | None = None) -> list[str]:
        """Variable names, optionally of one kind."""
        return [v.name for v in self.variables if kind is None or v.kind == kind]

    def labels(self) -> dict[str, list[str]]:
        """Task name -> class names."""
        return {v.name: v.values for v in self.variables if v.kind == "label"}


def schema_from_spec(tasks: dict[str, list[str]], task_types: dict[str, str], metadata: dict[str, Any],
                     modality: str) -> CardSchema:
    """A schema from a generator's tasks and metadata declarations (ranges as tuples, categories as lists)."""
    variables = [Variable(name=t, kind="label", values=list(c),
                          task_type=task_types.get(t, "binary" if len(c) == 2 else "multiclass"))
                 for t, c in tasks.items()]
    for name, allowed in metadata.items():
        if isinstance(allowed, tuple):
            variables.append(Variable(name=name, kind="number", range=(float(allowed[0]), float(allowed[1]))))
        else:
            variables.append(Variable(name=name, kind="category", values=[str(a) for a in allowed]))
    return CardSchema(modality=modality, variables=variables)  # type: ignore[arg-type]


def _normalise(value: Any, allowed: list[str]) -> str | None:
    """A metadata value matched onto the allowed ones: exact, case-insensitive, or by first letter (F/M)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if text in allowed:
        return text
    lower = {a.lower(): a for a in allowed}
    if text.lower() in lower:
        return lower[text.lower()]
    initials = {a[:1].upper(): a for a in allowed}
    if len(initials) == len(allowed) and all(len(a) == 1 for a in allowed) and text[:1].upper() in initials:
        return initials[text[:1].upper()]
    return None


def _category_column(df: pd.DataFrame, column: str, var: Variable, where: str) -> list[str | None]:
    """A metadata column mapped onto the variable's allowed values; unknown values are an error."""
    out = [_normalise(v, var.values) for v in df[column].tolist()]
    bad = sorted({str(v) for v, o in zip(df[column].tolist(), out, strict=True) if o is None and pd.notna(v)})
    if bad:
        raise SynthfmError(f"{where}: column '{column}' ({var.name}) has values {bad[:5]} outside the "
                           f"generator's vocabulary {var.values}",
                           "recode those values in the manifest (or drop the rows) before running the site kit")
    return out


def condition_table(card: str | Path, schema: CardSchema, task_map: dict[str, str] | None = None,
                    split: str | None = None) -> pd.DataFrame:
    """One row per image of the card (optionally one split): the schema's variables plus the patient id."""
    data = load_card(card, check_files=False)
    where = f"card {card}"
    if split is not None:
        data = data.subset(np.flatnonzero(data.df[SPLIT].to_numpy() == split))
        if not len(data):
            raise SynthfmError(f"{where} has no rows in split '{split}'", "choose another split, or split: null")
    labels = mapped_task_labels(data, task_map or {}, schema.labels(), where)
    cols: dict[str, Any] = {name: y.astype(int) for name, y in labels.items()}
    meta = data.card.metadata.columns()
    for var in schema.variables:
        if var.kind == "label" or var.name not in meta:
            continue
        column = meta[var.name]
        if var.kind == "number":
            cols[var.name] = pd.to_numeric(data.df[column], errors="coerce").to_numpy(dtype=float)
        else:
            cols[var.name] = _category_column(data.df, column, var, where)
    if not cols:
        raise SynthfmError(f"{where} shares no task or metadata field with the generator's vocabulary "
                           f"{schema.names()}", "declare task_map, or the card's metadata columns")
    table = pd.DataFrame(cols)
    table[PATIENT] = data.patient_ids().to_numpy()
    return table
