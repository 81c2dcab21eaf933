"""Conditions a generator is trained on, derived from what dataset cards declare (never per-dataset code).

Every task becomes a categorical field (a multilabel task one 0/1 field per class column); every metadata
field the card maps (age, sex, ethnicity, site, device, quality, extras) becomes a categorical field too:
age by band (`age_edges`), sex normalised to F/M, the rest by their distinct values. A condition is a vector
of indices, 0 meaning "not given" (the null token classifier-free guidance trains with), value k at k + 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from synthfm.data.manifest import CardData
from synthfm.data.vocabulary import band_label, band_labels, normalise_sex
from synthfm.errors import SynthfmError
from synthfm.synth.registry import GeneratorSpec, task_type

STANDARD_METADATA = ("age", "sex", "ethnicity", "site", "device", "quality")


@dataclass(frozen=True)
class CondField:
    """One condition field: its name (the manifest column it is written to), kind and value labels."""

    name: str
    kind: str  # "task" | "metadata"
    values: tuple[str, ...]
    edges: tuple[float, ...] | None = None  # age bands

    def index(self, value: Any) -> int:
        """The 1-based index of a value (0 for missing); unknown values are a SynthfmError."""
        label = self.label(value)
        if label is None:
            return 0
        if label not in self.values:
            raise SynthfmError(f"condition '{self.name}'={value!r} is not one this generator knows; "
                               f"known: {list(self.values)}", f"use one of {list(self.values)} for '{self.name}'")
        return self.values.index(label) + 1

    def label(self, value: Any) -> str | None:
        """A raw value as this field's label (age binned, sex normalised, class index -> class name)."""
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return None
        if self.edges is not None and not isinstance(value, str):
            return band_label(self.edges, float(value))
        if self.name == "sex" and self.kind == "metadata":
            return normalise_sex(value) or str(value)
        text = str(value)
        if self.kind == "task" and text not in self.values and isinstance(value, (int, np.integer)):
            return self.values[int(value)] if 0 <= int(value) < len(self.values) else text
        return text


@dataclass
class ConditionSchema:
    """The ordered condition fields of a generator, plus the tasks they came from (to write cards back)."""

    fields: list[CondField]
    tasks: list[dict[str, Any]] = field(default_factory=list)  # TaskSpec dumps
    metadata: dict[str, str] = field(default_factory=dict)  # field -> card metadata key (age, sex, ..., extra)

    @property
    def names(self) -> list[str]:
        """Field names in order."""
        return [f.name for f in self.fields]

    @property
    def sizes(self) -> list[int]:
        """Number of values per field (embedding tables hold one more: the null token)."""
        return [len(f.values) for f in self.fields]

    def field_name(self, name: str) -> str:
        """The field a name means: a field's own name, or a single-label task's name (the field of its column)."""
        if name in self.names:
            return name
        for t in self.tasks:
            if t["name"] == name and t["type"] != "multilabel" and t["columns"][0] in self.names:
                return t["columns"][0]
        raise SynthfmError(f"condition '{name}' is not one this generator was trained on; it knows {self.names}"
                           + (f" (tasks {[t['name'] for t in self.tasks]})" if self.tasks else ""),
                           "drop the key, or train a generator whose cards declare it")

    def get(self, name: str) -> CondField:
        """A field by name (or task name); an unknown name is a SynthfmError listing the known ones."""
        name = self.field_name(name)
        return next(f for f in self.fields if f.name == name)

    def encode(self, condition: dict[str, Any]) -> np.ndarray:
        """A condition mapping -> index vector (missing fields 0); unknown keys or values raise."""
        condition = {self.field_name(key): value for key, value in condition.items()}
        return np.array([f.index(condition.get(f.name)) for f in self.fields], dtype=np.int64)

    def decode(self, indices: np.ndarray) -> dict[str, str | None]:
        """An index vector -> {field: label or None}."""
        pairs = zip(self.fields, indices, strict=True)
        return {f.name: (f.values[int(i) - 1] if int(i) > 0 else None) for f, i in pairs}

    def select(self, names: list[str] | None) -> ConditionSchema:
        """Only the named fields, in the given order (None: all)."""
        if names is None:
            return self
        names = [self.field_name(n) for n in names]
        chosen = [self.get(n) for n in names]
        keep = set(names)
        tasks = [t for t in self.tasks if set(t["columns"]) & keep]
        return ConditionSchema(chosen, tasks, {k: v for k, v in self.metadata.items() if k in keep})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored with the generator)."""
        return {"fields": [asdict(f) for f in self.fields], "tasks": self.tasks, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConditionSchema:
        """Inverse of to_dict."""
        fields = [CondField(f["name"], f["kind"], tuple(f["values"]), tuple(f["edges"]) if f["edges"] else None)
                  for f in data["fields"]]
        return cls(fields, list(data["tasks"]), dict(data["metadata"]))


def _task_fields(tasks: list[dict[str, Any]]) -> list[CondField]:
    """One field per single-label task, one 0/1 field per multilabel class column."""
    out = []
    for t in tasks:
        if t["type"] == "multilabel":
            out += [CondField(c, "task", ("0", "1")) for c in t["columns"]]
        else:
            out.append(CondField(t["columns"][0], "task", tuple(t["classes"])))
    return out


def _metadata_values(values: pd.Series, name: str, where: str, limit: int) -> tuple[str, ...]:
    """Sorted distinct labels of a categorical metadata column (too many is an error naming it)."""
    probe = CondField(name, "metadata", ())
    labels = sorted({lab for v in values.tolist() if (lab := probe.label(v)) is not None})
    if len(labels) > limit:
        raise SynthfmError(f"metadata '{name}' of {where} has {len(labels)} distinct values (more than "
                           f"max_categories={limit}); it cannot be a categorical condition",
                           "list the fields to condition on in diffusion.conditions, or raise max_categories")
    return tuple(labels)


def schema_from_card(data: CardData, edges: tuple[float, ...], limit: int) -> ConditionSchema:
    """Fields for every task and mapped metadata column of a card."""
    tasks = [t.model_dump() for t in data.card.tasks]
    fields = _task_fields(tasks)
    metadata = {}
    for key, column in data.card.metadata.columns().items():
        if key == "patient_id":
            continue
        if key == "age":
            fields.append(CondField("age", "metadata", band_labels(edges), tuple(edges)))
        else:
            fields.append(CondField(key, "metadata", _metadata_values(data.df[column], key, data.card.name, limit)))
        metadata[key] = key if key in STANDARD_METADATA else "extra"
    return ConditionSchema(fields, tasks, metadata)


def schema_from_spec(spec: GeneratorSpec, values: dict[str, Any], edges: tuple[float, ...]) -> ConditionSchema:
    """Fields of the card a procedural phantom writes (its tasks, and its standard metadata)."""
    tasks = [{"name": t, "type": task_type(spec, t), "classes": list(c), "columns": [t]} for t, c in spec.tasks.items()]
    fields = _task_fields(tasks)
    metadata = {}
    for key in spec.metadata:
        if key not in STANDARD_METADATA:
            continue
        allowed = values[key]
        fields.append(CondField(key, "metadata", band_labels(edges), tuple(edges)) if key == "age"
                      else CondField(key, "metadata", tuple(sorted(allowed))))
        metadata[key] = key
    return ConditionSchema(fields, tasks, metadata)


def merge_schemas(schemas: list[ConditionSchema], where: str) -> ConditionSchema:
    """One schema over several sources: fields in first-seen order, metadata values unioned, tasks must agree."""
    fields: dict[str, CondField] = {}
    tasks: dict[str, dict[str, Any]] = {}
    metadata: dict[str, str] = {}
    for schema in schemas:
        for t in schema.tasks:
            if t["name"] in tasks and tasks[t["name"]]["classes"] != t["classes"]:
                raise SynthfmError(f"{where}: task '{t['name']}' has classes {tasks[t['name']]['classes']} in one "
                                   f"source and {t['classes']} in another", "make the cards' classes agree")
            tasks.setdefault(t["name"], t)
        for f in schema.fields:
            old = fields.get(f.name)
            if old is not None and old.kind == "metadata" and old.edges is None:
                f = CondField(f.name, f.kind, tuple(sorted(set(old.values) | set(f.values))))
            fields[f.name] = f if old is None or old.kind == "metadata" else old
        metadata.update(schema.metadata)
    return ConditionSchema(list(fields.values()), list(tasks.values()), metadata)


def card_conditions(schema: ConditionSchema, data: CardData, rename: dict[str, str] | None = None) -> np.ndarray:
    """The condition vector of every manifest row (N, F); fields the card lacks are 0."""
    rename = rename or {}
    raw: dict[str, list[Any]] = {}
    for t in data.card.tasks:
        labels = data.labels[t.name]
        if t.type == "multilabel":
            raw.update({rename.get(c, c): labels[:, k].tolist() for k, c in enumerate(t.columns)})
        else:
            raw[rename.get(t.columns[0], t.columns[0])] = [t.classes[int(i)] for i in labels]
    for key, column in data.card.metadata.columns().items():
        if key != "patient_id":
            raw[rename.get(key, key)] = data.df[column].tolist()
    out = np.zeros((len(data), len(schema.fields)), dtype=np.int64)
    for j, f in enumerate(schema.fields):
        if f.name in raw:
            out[:, j] = [_index(f, v, data.card.name) for v in raw[f.name]]
    return out


def _index(f: CondField, value: Any, where: str) -> int:
    """A field index with the card's name in the error."""
    try:
        return f.index(value)
    except SynthfmError as err:
        raise SynthfmError(f"card '{where}': {err.message}", err.fix) from None


def render_prompt(template: jinja2.Template, modality: str, condition: dict[str, str | None]) -> str:
    """A text prompt from decoded conditions (None = not given)."""
    return " ".join(template.render(modality=modality, conditions=condition).split())


def compile_template(text: str) -> jinja2.Template:
    """A jinja2 prompt template (undefined names are errors)."""
    try:
        return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise SynthfmError(f"diffusion.prompt_template does not parse: {err}", "fix the jinja2 template") from None
