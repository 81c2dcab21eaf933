"""The pipeline YAML: stages in order, named jobs per stage, and `${stage.job}` references between them.

A pipeline file holds `name`, optional `description` and `root`, then one mapping per stage
(`data`, `synth`, `quality`, `pretrain`, `adapt`, `evaluate`, `analyze`) from job name to the job's
config, and a single `report` mapping. A job config is either the stage's one kind of config, or, for
stages with several kinds, a mapping with exactly one key naming the kind (`data: {fundus: {phantom: {...}}}`).
A string `${stage.job}` anywhere in a config is replaced by that job's output (a card, an encoder folder,
an experiment folder); a job may only refer to jobs listed before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthfm.config import read_yaml
from synthfm.errors import SynthfmError

STAGES = ("data", "synth", "quality", "pretrain", "adapt", "evaluate", "analyze", "report")
TOP_KEYS = ("name", "description", "root")
REF = re.compile(r"\$\{([a-z]+)\.([A-Za-z0-9_\-]+)\}")
NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass
class JobSpec:
    """One job as written: its stage, name, kind and raw config (references not yet resolved)."""

    stage: str
    name: str
    kind: str
    raw: Any

    @property
    def key(self) -> str:
        """`stage.name`, as references write it."""
        return f"{self.stage}.{self.name}"


@dataclass
class PipelineSpec:
    """A parsed pipeline file: its name, root folder and jobs in run order."""

    name: str
    source: str
    description: str = ""
    root: str | None = None
    jobs: list[JobSpec] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def refs_in(value: Any) -> list[tuple[str, str]]:
    """Every `${stage.job}` reference inside a nested config, in order."""
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, list | tuple):
        return [r for v in value for r in refs_in(v)]
    return []


def substitute(value: Any, outputs: dict[str, str]) -> Any:
    """Replace each `${stage.job}` in a nested config by that job's output."""
    if isinstance(value, str):
        return REF.sub(lambda m: outputs[f"{m.group(1)}.{m.group(2)}"], value)
    if isinstance(value, dict):
        return {k: substitute(v, outputs) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, outputs) for v in value]
    return value


def _job_kind(stage: str, name: str, raw: Any, kinds: dict[str, Any], source: str) -> tuple[str, Any]:
    """Split a job's raw config into (kind, config) for a stage with one or several kinds."""
    if not kinds:
        raise SynthfmError(f"{source}: stage '{stage}' has no job kinds in this version of synthfm (job '{name}')",
                           f"remove the '{stage}' section; see docs/pipeline.md for what each stage offers")
    if isinstance(raw, dict) and len(raw) == 1 and next(iter(raw)) in kinds:
        kind = next(iter(raw))
        return kind, raw[kind]
    if len(kinds) == 1:
        return next(iter(kinds)), raw
    found = list(raw) if isinstance(raw, dict) else type(raw).__name__
    raise SynthfmError(f"{source}: job '{stage}.{name}' must be a mapping with exactly one key naming its kind, "
                       f"got {found}",
                       f"write e.g. '{name}: {{{next(iter(kinds))}: {{...}}}}'; kinds of {stage}: " + ", ".join(kinds))


def parse_spec(data: Any, source: str, kinds: dict[str, dict[str, Any]]) -> PipelineSpec:
    """Check a pipeline mapping's stages and job names, and list its jobs in run order."""
    if not isinstance(data, dict):
        raise SynthfmError(f"{source} must hold a mapping with 'name' and stage sections",
                           "see configs/demo.yaml for the shape of a pipeline file")
    unknown = [k for k in data if k not in STAGES and k not in TOP_KEYS]
    if unknown:
        raise SynthfmError(f"{source}: unknown stage or key {', '.join(map(repr, unknown))}",
                           f"stages are {', '.join(STAGES)}; top-level keys are {', '.join(TOP_KEYS)}")
    if not isinstance(data.get("name"), str) or not NAME.match(data["name"]):
        raise SynthfmError(f"{source}: missing or bad 'name' ({data.get('name')!r})",
                           "give the pipeline a name of letters, digits, '_' or '-'")
    spec = PipelineSpec(name=data["name"], source=source, description=str(data.get("description", "")),
                        root=data.get("root"), raw=data)
    for stage in STAGES[:-1]:
        jobs = data.get(stage) or {}
        if not isinstance(jobs, dict):
            raise SynthfmError(f"{source}: '{stage}' must map job names to configs, got {type(jobs).__name__}",
                               f"write '{stage}:' followed by indented 'job_name: {{...}}' entries")
        for name, raw in jobs.items():
            if not NAME.match(str(name)):
                raise SynthfmError(f"{source}: bad job name '{stage}.{name}'", "use letters, digits, '_' or '-'")
            kind, cfg = _job_kind(stage, str(name), raw, kinds[stage], source)
            spec.jobs.append(JobSpec(stage, str(name), kind, cfg))
    if data.get("report", {}) is not None:
        spec.jobs.append(JobSpec("report", "report", "html", data.get("report") or {}))
    _check_refs(spec)
    return spec


def _check_refs(spec: PipelineSpec) -> None:
    """Every reference names a job listed earlier (so the plan is acyclic)."""
    seen: list[str] = []
    for job in spec.jobs:
        for stage, name in refs_in(job.raw):
            ref = f"{stage}.{name}"
            if ref not in seen:
                known = ", ".join(seen) or "none"
                raise SynthfmError(f"{spec.source}: job '{job.key}' refers to '${{{ref}}}', which is not a job "
                                   "listed before it",
                                   f"refer to one of the earlier jobs ({known}), or fix the name")
        seen.append(job.key)


def load_spec(path: str | Path, kinds: dict[str, dict[str, Any]]) -> PipelineSpec:
    """Read and check a pipeline YAML file."""
    return parse_spec(read_yaml(path), str(path), kinds)
