"""External evaluation: test a model adapted on card A on card B, with B's task and labels mapped onto A's.

The mapping is declared in the adaptation config (`external: [{card, task_map, label_map, split}]`) and checked
in full before any training: an unknown task or class on either side is a SynthfmError naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthfm.adapt.config import AdaptConfig, ExternalEval
from synthfm.data.card import TaskSpec
from synthfm.data.manifest import CardData, load_card
from synthfm.errors import SynthfmError
from synthfm.evaluate.results import INTERNAL


@dataclass
class ExternalSet:
    """Card B, the rows to test on, its task, and the map from B's class indices to A's."""

    name: str
    data: CardData
    split: str | None
    task: TaskSpec
    to_source: np.ndarray

    def targets(self, rows: np.ndarray) -> np.ndarray:
        """B's labels of manifest rows, in A's encoding: (N,) class indices or (N, K_A) 0/1 for multilabel."""
        y = self.data.labels[self.task.name][rows]
        if y.ndim == 1:
            return self.to_source[y]
        out = np.zeros((len(rows), int(self.to_source.max()) + 1), dtype=np.int64)
        for b, a in enumerate(self.to_source):
            out[:, a] = np.maximum(out[:, a], y[:, b])
        return out


def _where(ext: ExternalEval, key: str) -> str:
    """How a message names one key of an external entry."""
    return f"external[card={ext.card}].{key}"


def external_task(ext: ExternalEval, source: TaskSpec, target_tasks: list[str]) -> str:
    """The task of card B that stands for the adapted task of card A (via task_map, else the same name)."""
    bad_targets = sorted(set(ext.task_map) - set(target_tasks))
    if bad_targets:
        raise SynthfmError(f"{_where(ext, 'task_map')}: unknown task(s) {bad_targets} in card B",
                           f"use task names of {ext.card}: {target_tasks}")
    bad_sources = sorted(set(ext.task_map.values()) - {source.name})
    if bad_sources:
        raise SynthfmError(f"{_where(ext, 'task_map')} maps onto task(s) {bad_sources}, but this config adapts "
                           f"task '{source.name}'", f"map one task of card B onto '{source.name}'")
    found = [b for b, a in ext.task_map.items() if a == source.name] or [source.name]
    if len(found) > 1:
        raise SynthfmError(f"{_where(ext, 'task_map')} maps {found} onto '{source.name}'", "keep one of them")
    if found[0] not in target_tasks:
        raise SynthfmError(f"card {ext.card} has no task '{found[0]}'",
                           f"add task_map: {{<task of card B>: {source.name}}}; B's tasks are {target_tasks}")
    return found[0]


def class_map(ext: ExternalEval, target: TaskSpec, source: TaskSpec) -> np.ndarray:
    """Index in A's classes of each of B's classes (label_map first, then equal names)."""
    if (target.type == "multilabel") != (source.type == "multilabel"):
        raise SynthfmError(f"{_where(ext, 'task_map')}: task '{target.name}' of card B is {target.type} but "
                           f"'{source.name}' is {source.type}", "map a multilabel task only onto a multilabel task")
    unknown = sorted(set(ext.label_map) - set(target.classes))
    if unknown:
        raise SynthfmError(f"{_where(ext, 'label_map')}: unknown label(s) {unknown} of card B task "
                           f"'{target.name}'", f"use B's class names: {target.classes}")
    wrong = sorted(set(ext.label_map.values()) - set(source.classes))
    if wrong:
        raise SynthfmError(f"{_where(ext, 'label_map')}: label(s) {wrong} are not classes of task "
                           f"'{source.name}'", f"map onto the adapted task's classes: {source.classes}")
    mapped = [ext.label_map.get(c, c) for c in target.classes]
    missing = [c for c, m in zip(target.classes, mapped, strict=True) if m not in source.classes]
    if missing:
        raise SynthfmError(f"{_where(ext, 'label_map')}: card B class(es) {missing} of task '{target.name}' have "
                           f"no counterpart in {source.classes}", "add them to label_map as {B class: A class}")
    out = np.array([source.classes.index(m) for m in mapped], dtype=np.int64)
    if source.type == "multilabel" and len(set(out)) < len(source.classes):
        raise SynthfmError(f"{_where(ext, 'label_map')}: labels {sorted(set(source.classes) - set(mapped))} of "
                           f"'{source.name}' get no column of card B", "map a B label onto each of them")
    return out


def resolve_external(ext: ExternalEval, source: CardData, task: str) -> ExternalSet:
    """Load card B and check the mapping of its task and labels onto `task` of card A."""
    data = load_card(ext.card)
    name = ext.name or data.card.name
    if name == INTERNAL:
        raise SynthfmError(f"{_where(ext, 'name')} '{INTERNAL}' is reserved for card A's own splits",
                           "give the external set another name")
    if data.channels != source.channels:
        raise SynthfmError(f"external card {ext.card} has {data.channels}-channel images ({data.card.modality}) "
                           f"but card A has {source.channels}", "test on a card of the same modality")
    spec = source.card.task(task)
    target = data.card.task(external_task(ext, spec, [t.name for t in data.card.tasks]))
    split = None if ext.split == "all" else ext.split
    if len(data.indices(split)) == 0:
        raise SynthfmError(f"external card {ext.card} has no rows in split '{ext.split}'",
                           "set 'split' of this external entry to one it has, or 'all'")
    return ExternalSet(name, data, split, target, class_map(ext, target, spec))


def resolve_externals(cfg: AdaptConfig, source: CardData | None = None) -> list[ExternalSet]:
    """Every external set of a config, checked (names unique); call before training."""
    if not cfg.external:
        return []
    source = source or load_card(cfg.card)
    sets = [resolve_external(e, source, cfg.task) for e in cfg.external]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise SynthfmError(f"external sets share a name: {names}", "give each external entry its own 'name'")
    return sets
