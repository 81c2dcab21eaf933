"""The named procedural generators that can write a dataset card, with what their cards declare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthfm.errors import SynthfmError
from synthfm.synth.base import Generator


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator factory plus the modality, tasks and metadata fields of the cards it writes."""

    factory: Callable[[], Generator]
    modality: str
    tasks: dict[str, list[str]]
    metadata: tuple[str, ...]
    task_types: dict[str, str]
    age_range: tuple[float, float]
    params: tuple[str, ...] = ()


def _fundus() -> GeneratorSpec:
    """The fundus phantom's spec."""
    from synthfm.synth.fundus import FUNDUS_METADATA, FUNDUS_TASKS, FundusPhantom

    return GeneratorSpec(FundusPhantom, "fundus", FUNDUS_TASKS, tuple(FUNDUS_METADATA), {"dr_grade": "ordinal"},
                         tuple(FUNDUS_METADATA["age"]),
                          ("cup_to_disc", "vessel_branching", "vessel_tortuosity", "vessel_calibre"))


def _cxr() -> GeneratorSpec:
    """The chest X-ray phantom's spec."""
    from synthfm.synth.cxr import CXR_METADATA, CXR_PARAMS, CXR_TASKS, CXRPhantom

    return GeneratorSpec(CXRPhantom, "cxr", CXR_TASKS, tuple(CXR_METADATA), {}, tuple(CXR_METADATA["age"]),
                         tuple(CXR_PARAMS))


GENERATORS: dict[str, Callable[[], GeneratorSpec]] = {"fundus_phantom": _fundus, "cxr_phantom": _cxr}


def generator_spec(name: str) -> GeneratorSpec:
    """Look up a generator by name."""
    if name not in GENERATORS:
        raise SynthfmError(f"unknown generator {name!r}", f"use one of {sorted(GENERATORS)}")
    return GENERATORS[name]()


def task_type(spec: GeneratorSpec, task: str) -> str:
    """binary for two classes unless the spec says otherwise (e.g. ordinal DR grade)."""
    return spec.task_types.get(task, "binary" if len(spec.tasks[task]) == 2 else "multiclass")


def condition_keys(spec: GeneratorSpec) -> set[str]:
    """Label, metadata and rendering-parameter keys a condition may fix."""
    return set(spec.tasks) | set(spec.metadata) | set(spec.params)


def check_condition(spec: GeneratorSpec, condition: dict[str, Any], where: str) -> None:
    """Fixed condition keys must be labels or metadata the generator knows."""
    unknown = sorted(set(condition) - condition_keys(spec))
    if unknown:
        raise SynthfmError(f"{where}: unknown condition key(s) {unknown}",
                           f"use keys from {sorted(condition_keys(spec))}")
