"""The generator a bundle carries, behind one small interface: load a directory, then sample(conditions, seeds).

A generator directory is `generator.json` (format, kind, options) plus safetensors weights, in the manner of
`save_pretrained`. Kinds are registered in `KINDS`: `phantom` (a procedural phantom whose "weights" are its
prior parameters, fitted from the site's released summary - so they carry nothing the summary does not) and
`diffusion` (the conditional diffusion generator of `synthfm.synth.diffusion`, used when that package is
installed). A new kind is a new entry, never an `if` in the callers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from synthfm.config import StrictModel, check_block
from synthfm.consortium.conditions import CardSchema, schema_from_spec
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, file_sha256, folder_files
from synthfm.models.checkpoint import load_state, save_state
from synthfm.synth.registry import check_generator_name, generator_spec

GENERATOR_FILE = "generator.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "synthfm.consortium.generator/1"
DIFFUSION_FORMAT = "synthfm.generator/1"  # what synthfm.synth.diffusion exports


class GeneratorConfig(StrictModel):
    """Which generator a site trains, at what image size, with kind-specific options."""

    kind: Literal["phantom", "diffusion"] = "phantom"
    name: str = Field("fundus_phantom", description="phantom: a registered procedural generator (synth/registry.py)")
    size: int = Field(64, ge=16, le=2048)
    options: dict[str, Any] = Field(default_factory=dict, description="kind-specific training options")

    @model_validator(mode="after")
    def _kind_options(self) -> GeneratorConfig:
        """The options validate as the kind's options model when the config is read, not when a site trains."""
        kind = generator_kind(self.kind)
        try:
            check_block(kind.options, self.options)
        except ValueError as err:
            raise ValueError(f"options of generator kind '{self.kind}': {err}") from None
        return self


class NoOptions(StrictModel):
    """A kind that takes no options (the phantom kind): any key given is a typo."""


class ConditionalGenerator(Protocol):
    """What the site audit and the hub use: conditions (labels + metadata) and seeds in, images out."""

    kind: str
    size: int

    def sample(self, conditions: list[dict[str, Any]], seeds: list[int], size: int | None = None) -> list[np.ndarray]:
        """One uint8 image (HxWx3 or HxW) per condition, reproducible from its seed."""
        ...


@dataclass
class TrainInputs:
    """Everything a kind may train from: the site's card, its condition table and its released summary."""

    cfg: GeneratorConfig
    card: Path
    split: str | None
    table: pd.DataFrame
    summary: dict[str, Any]
    schema: CardSchema


Architecture = dict[str, dict[str, tuple[list[int], tuple[str, ...]]]]


class PhantomFile(StrictModel):
    """generator.json of a phantom generator: every key typed, the weights file fixed (never a path)."""

    format: Literal["synthfm.consortium.generator/1"]
    kind: Literal["phantom"]
    name: str = Field(max_length=64)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        """A registered procedural generator."""
        return check_generator_name(value)
    size: int = Field(ge=16, le=2048)
    weights: Literal["model.safetensors"] = "model.safetensors"
    fitted_from: str = Field("released summary (no image, no row)", max_length=256)


@dataclass(frozen=True)
class GeneratorKind:
    """A generator kind: its condition vocabulary (from its config and the site's card), how a site trains it,
    how the hub loads it, what the hub must refuse in its exported files (problems, empty when fine), the files
    its folder holds (relative paths, from generator.json) and the tensors its declared architecture has
    (weights file -> tensor name -> shape and allowed dtypes)."""

    schema: Callable[[GeneratorConfig, Path], CardSchema]
    train: Callable[[TrainInputs, Path], Path]
    load: Callable[[Path], ConditionalGenerator]
    check: Callable[[Path], list[str]] = lambda _: []
    files: Callable[[Path], list[str]] = lambda _: [GENERATOR_FILE, WEIGHTS_FILE]
    architecture: Callable[[Path], Architecture] = lambda _: {}
    partial_weights: bool = False
    options: type[BaseModel] = NoOptions  # the model `generator.options` must validate as


# ----------------------------------------------------------------------------- phantom kind


def phantom_schema(cfg: GeneratorConfig, card: Path | None = None) -> CardSchema:
    """The phantom's tasks and metadata as a condition vocabulary (public: it does not depend on the card)."""
    spec = generator_spec(cfg.name)
    return schema_from_spec(spec.tasks, spec.task_types, spec.metadata_values, spec.modality)


def _proportions(counts: dict[str, int], values: list[str]) -> np.ndarray | None:
    """Proportions over `values` from released counts (None when nothing was released)."""
    c = np.array([counts.get(v, 0) for v in values], float)
    return c / c.sum() if c.sum() > 0 else None


def fit_priors(summary: dict[str, Any], schema: CardSchema) -> dict[str, torch.Tensor]:
    """Phantom priors from the released summary: class/category proportions, age mean and sd."""
    out: dict[str, torch.Tensor] = {}
    for var in schema.variables:
        counts = summary["marginals"].get(var.name)
        p = _proportions(counts, var.values) if counts else None
        if p is not None:
            out[var.name] = torch.tensor(p, dtype=torch.float64)
    bins = (summary.get("age_histogram") or {}).get("bins", [])
    if bins:
        mid = np.array([(b["lo"] + b["hi"]) / 2 for b in bins])
        w = np.array([b["count"] for b in bins], float)
        mean = float((w * mid).sum() / w.sum())
        sd = float(np.sqrt((w * (mid - mean) ** 2).sum() / w.sum() + np.mean([(b["hi"] - b["lo"]) ** 2 / 12
                                                                             for b in bins])))
        out["age"] = torch.tensor([mean, sd], dtype=torch.float64)
    return out


class PhantomGenerator:
    """A procedural phantom with fitted priors: conditions fix labels/metadata, priors fill the rest."""

    kind = "phantom"

    def __init__(self, name: str, size: int, priors: dict[str, np.ndarray]) -> None:
        self.name, self.size, self.priors = name, size, priors
        spec = generator_spec(name)
        overrides = spec.fit_overrides(priors) if spec.fit_overrides else {}
        self.phantom = spec.factory(**overrides)

    def sample(self, conditions: list[dict[str, Any]], seeds: list[int], size: int | None = None) -> list[np.ndarray]:
        """Render one image per (condition, seed)."""
        if len(conditions) != len(seeds):
            raise SynthfmError(f"sample got {len(conditions)} conditions but {len(seeds)} seeds", "pass one seed each")
        return [self.phantom.generate(dict(c), int(s), int(size or self.size)).image
                for c, s in zip(conditions, seeds, strict=True)]


def train_phantom(inputs: TrainInputs, out_dir: Path) -> Path:
    """'Train' a phantom: fit its priors from the released summary and save them as safetensors + JSON."""
    priors = fit_priors(inputs.summary, inputs.schema)
    save_state(priors, out_dir / WEIGHTS_FILE, {"format": FORMAT})
    atomic_write_json(out_dir / GENERATOR_FILE, {
        "format": FORMAT, "kind": "phantom", "name": inputs.cfg.name, "size": inputs.cfg.size,
        "weights": WEIGHTS_FILE, "fitted_from": "released summary (no image, no row)",
    })
    return out_dir


def load_phantom(directory: Path) -> PhantomGenerator:
    """A saved phantom generator (its weights file name is fixed by PhantomFile, never a path)."""
    cfg = read_generator_config(directory)
    state = load_state(directory / cfg["weights"])
    return PhantomGenerator(cfg["name"], int(cfg["size"]), {k: v.numpy() for k, v in state.items()})


def phantom_architecture(directory: Path) -> Architecture:
    """The phantom's tensors: one float64 proportion vector per tabulated variable, age as [mean, sd].

    Fitted priors leave out a variable with nothing released, so these weights may hold a subset of the names
    (`partial_weights`); every tensor present must match its name's shape and dtype."""
    cfg = read_generator_config(directory)
    schema = phantom_schema(GeneratorConfig(name=cfg["name"], size=cfg["size"]))
    shapes = {v.name: ([len(v.values)], ("F64",)) for v in schema.variables if v.values}
    return {cfg["weights"]: {**shapes, "age": ([2], ("F64",))}}


# ----------------------------------------------------------------------------- diffusion kind


def _diffusion_missing(*_: Any) -> Any:
    """The diffusion kind where synthfm.synth.diffusion cannot be imported."""
    raise SynthfmError("generator kind 'diffusion' needs synthfm.synth.diffusion, which this install lacks",
                       "use kind: phantom, or install a synthfm version with the diffusion generator")


def _diffusion_kind() -> GeneratorKind:
    """The diffusion kind, bound to synthfm.synth.diffusion when it is importable."""
    try:
        from synthfm.consortium import diffusion_kind
    except ImportError:
        return GeneratorKind(_diffusion_missing, _diffusion_missing, _diffusion_missing)
    return diffusion_kind.KIND


KINDS: dict[str, Callable[[], GeneratorKind]] = {
    "phantom": lambda: GeneratorKind(phantom_schema, train_phantom, load_phantom,
                                     architecture=phantom_architecture, partial_weights=True),
    "diffusion": _diffusion_kind,
}


def generator_kind(kind: str) -> GeneratorKind:
    """A registered generator kind."""
    if kind not in KINDS:
        raise SynthfmError(f"unknown generator kind {kind!r}", f"use one of {sorted(KINDS)}")
    return KINDS[kind]()


def read_generator_config(directory: str | Path) -> dict[str, Any]:
    """generator.json of a generator directory, with its consortium `kind` (a diffusion export is 'diffusion')."""
    path = Path(directory) / GENERATOR_FILE
    if not path.is_file():
        raise SynthfmError(f"{directory} has no {GENERATOR_FILE}: not a generator directory",
                           "point at the 'generator' folder of a site run or a verified bundle")
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SynthfmError(f"{path} is not valid UTF-8 JSON: {err}", "re-export the generator with the site kit") \
            from None
    if isinstance(cfg, dict) and cfg.get("format") == DIFFUSION_FORMAT:
        return {**cfg, "diffusion_kind": cfg.get("kind"), "kind": "diffusion"}
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT or "kind" not in cfg:
        raise SynthfmError(f"{path} is not a {FORMAT} generator config", "re-export the generator with the site kit")
    if cfg["kind"] == "phantom":
        try:
            return PhantomFile.model_validate(cfg).model_dump()
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise SynthfmError(f"{path}: {where}: {first['msg']}", "re-export the generator with the site kit") \
                from None
    return cfg


def load_generator(directory: str | Path) -> ConditionalGenerator:
    """Load any registered kind of generator from its directory."""
    return generator_kind(read_generator_config(directory)["kind"]).load(Path(directory))


def generator_files(directory: str | Path) -> list[str]:
    """The files a generator folder declares (relative paths): its kind decides, from generator.json."""
    directory = Path(directory)
    return sorted(generator_kind(read_generator_config(directory)["kind"]).files(directory))


def generator_hash(directory: str | Path) -> str:
    """SHA-256 over the sorted (relative path, file SHA-256) pairs of a generator directory.

    Hidden files (an interrupted atomic write's `.name.*.tmp`) are not part of a generator and are skipped."""
    root = Path(directory)
    lines = [f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n" for p in folder_files(root)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()
