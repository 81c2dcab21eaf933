"""What a pipeline job kind is: validate its config, run it into a folder, say what a reference to it means.

Each stage package owns its kinds in its `jobs.py` (`JOB_KINDS`: pipeline section -> kind name -> Kind);
`synthfm.pipeline.kinds` collects them. A new kind is an entry in its stage's `jobs.py`, not a branch in the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm.config import validate_config


@dataclass(frozen=True)
class Kind:
    """One kind of job: validate its config, run it into a folder, say what a reference to it means."""

    validate: Callable[[Any, str], BaseModel]
    run: Callable[[Any, Path], dict[str, Any]]
    output: Callable[[Any, Path], Path] = lambda cfg, d: d
    inputs: Callable[[Any], list[str]] = field(default=lambda cfg: [])
    help: str = ""

def model_kind(model: type[BaseModel]) -> Callable[[Any, str], BaseModel]:
    """A validator for a plain config model."""
    return lambda raw, where: validate_config(model, raw, where)


JobKinds = dict[str, dict[str, Kind]]  # pipeline section -> kind name -> kind
PLAN_FILE = "pipeline.json"  # a pipeline root's plan: every job, its key, folder and status (the report reads it)
