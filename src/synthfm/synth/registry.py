"""The named procedural generators that can write a dataset card, with what their cards declare."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from synthfm.errors import SynthfmError
from synthfm.synth.base import Generator


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator factory plus what its cards declare: modality, channels, tasks, metadata fields and the values
    each one draws, rendering parameters a condition may fix, and how released priors become factory overrides."""

    factory: Callable[..., Generator]
    modality: str
    channels: int
    tasks: dict[str, list[str]]
    metadata_values: dict[str, Any]  # field -> allowed values (a list), or (low, high) for a number such as age
    task_types: dict[str, str]
    params: tuple[str, ...] = ()
    fit_overrides: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # fitted priors -> factory overrides

    @property
    def metadata(self) -> tuple[str, ...]:
        """The metadata fields its cards carry."""
        return tuple(self.metadata_values)

    @property
    def age_range(self) -> tuple[float, float]:
        """The ages it draws."""
        low, high = self.metadata_values["age"]
        return float(low), float(high)


GENERATORS: dict[str, Callable[[], GeneratorSpec]] = {}


def register_generator(name: str) -> Callable[[Callable[[], GeneratorSpec]], Callable[[], GeneratorSpec]]:
    """Decorator: register a procedural generator's spec builder (it imports the generator's module on use)."""
    def add(builder: Callable[[], GeneratorSpec]) -> Callable[[], GeneratorSpec]:
        GENERATORS[name] = builder
        return builder
    return add


@register_generator("fundus_phantom")
def _fundus() -> GeneratorSpec:
    """The fundus phantom's spec."""
    from synthfm.synth.fundus import FUNDUS_METADATA, FUNDUS_TASKS, PARAM_OVERRIDES, FundusPhantom, fitted_overrides

    return GeneratorSpec(FundusPhantom, "fundus", 3, FUNDUS_TASKS, dict(FUNDUS_METADATA), {"dr_grade": "ordinal"},
                         PARAM_OVERRIDES, fitted_overrides)


@register_generator("cxr_phantom")
def _cxr() -> GeneratorSpec:
    """The chest X-ray phantom's spec."""
    from synthfm.synth.cxr import CXR_METADATA, CXR_PARAMS, CXR_TASKS, CXRPhantom

    return GeneratorSpec(CXRPhantom, "cxr", 1, CXR_TASKS, dict(CXR_METADATA), {}, tuple(CXR_PARAMS))


def phantom_for_channels(channels: int) -> str:
    """The phantom behind a bare 'phantom' source: the first registered one whose images have these channels."""
    for name in GENERATORS:
        if generator_spec(name).channels == channels:
            return name
    raise SynthfmError(f"no procedural phantom makes {channels}-channel images",
                       f"use a card source, or in_chans of {sorted({generator_spec(n).channels for n in GENERATORS})}")


def check_generator_name(name: str) -> str:
    """A registered generator's name (for config validators)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; registered: {sorted(GENERATORS)}")
    return name


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
