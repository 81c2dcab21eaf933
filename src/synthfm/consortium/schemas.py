"""Schemas of every file a bundle may hold, and the pre-parse limits the hub applies to untrusted bytes.

The hub never parses a byte it has not first bounded: `json_depth` measures nesting with a linear scan before
`json.loads` sees the text (CPython's parser recurses), and `safetensors_tensors` reads a weights header into
typed entries whose byte ranges must tile the data section exactly. Each bundle file then validates against a
closed model here (unknown keys are errors), so a signed file cannot carry free-form content.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from synthfm.errors import SynthfmError

AGE_BAND_NAME = re.compile(r"^\[-?\d+(\.\d+)?,-?\d+(\.\d+)?\)$")
STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
OPEN = np.frombuffer(b"[{", np.uint8)
CLOSE = np.frombuffer(b"]}", np.uint8)
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER = 100 * 2**20


class FileError(SynthfmError):
    """A bundle file that breaks a limit or its schema: `reason` is the hub's reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, "")
        self.reason = reason


def json_depth(raw: bytes) -> int:
    """Deepest nesting of '[' / '{' in JSON text, strings skipped (a linear scan; nothing is parsed)."""
    bare = np.frombuffer(STRING.sub(b"", raw), np.uint8)
    step = np.isin(bare, OPEN).astype(np.int32) - np.isin(bare, CLOSE).astype(np.int32)
    return int(np.cumsum(step).max()) if len(step) else 0


def parse_json(raw: bytes, name: str, max_depth: int) -> Any:
    """JSON from bytes, with its depth bounded before parsing."""
    depth = json_depth(raw)
    if depth > max_depth:
        raise FileError("too-deep", f"{name} nests {depth} levels deep, over the limit of {max_depth} "
                                    "(checked before parsing)")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise FileError("schema", f"{name} is not valid UTF-8 JSON: {err}") from None


# ----------------------------------------------------------------------------- safetensors


class TensorEntry(BaseModel):
    """One tensor of a safetensors header."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal[tuple(DTYPE_BYTES)]  # type: ignore[valid-type]
    shape: list[StrictInt] = Field(max_length=8)
    data_offsets: tuple[StrictInt, StrictInt]

    def nbytes(self) -> int:
        """Bytes the shape and dtype need."""
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def safetensors_tensors(path: Path, name: str, max_depth: int) -> tuple[dict[str, TensorEntry], dict[str, Any]]:
    """Typed tensor entries and the metadata of a safetensors file; offsets must tile the data exactly."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if n < 2 or 8 + n > size or n > MAX_HEADER:
            raise FileError("schema", f"{name} is not a safetensors file (bad header length)")
        header = parse_json(fh.read(n), f"{name} (safetensors header)", max_depth)
    if not isinstance(header, dict):
        raise FileError("schema", f"{name}: safetensors header is not a mapping")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FileError("schema", f"{name}: __metadata__ is not a mapping of strings")
    tensors: dict[str, TensorEntry] = {}
    for key, entry in header.items():
        try:
            t = TensorEntry.model_validate(entry)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            raise FileError("schema", f"{name}: tensor {key!r} has a malformed {where}: {first['msg']}") from None
        if any(d < 0 for d in t.shape) or not 0 <= t.data_offsets[0] <= t.data_offsets[1]:
            raise FileError("schema", f"{name}: tensor {key!r} has a negative dimension or reversed data_offsets")
        if t.data_offsets[1] - t.data_offsets[0] != t.nbytes():
            raise FileError("schema", f"{name}: tensor {key!r} data_offsets {list(t.data_offsets)} do not span "
                                      f"its {t.dtype} shape {t.shape} ({t.nbytes()} bytes)")
        tensors[key] = t
    spans = sorted(t.data_offsets for t in tensors.values())
    end = 0
    for a, b in spans:
        if a != end:
            raise FileError("schema", f"{name}: tensor data_offsets overlap or leave a gap at byte {end}")
        end = b
    if end != size - 8 - n:
        raise FileError("schema", f"{name}: {size - 8 - n - end} bytes after the last tensor (hidden data)")
    return tensors, meta


def shape_problems(name: str, tensors: dict[str, TensorEntry], expected: dict[str, tuple[list[int], tuple[str, ...]]],
                   partial: bool = False) -> list[str]:
    """Differences between a file's tensors and the declared architecture's (name -> shape, allowed dtypes);
    with `partial`, tensors of the architecture may be absent."""
    problems = [f"{name}: tensor {k!r} is not part of the declared architecture" for k in sorted(set(tensors) -
                                                                                                  set(expected))]
    if not partial:
        problems += [f"{name}: tensor {k!r} of the declared architecture is missing"
                     for k in sorted(set(expected) - set(tensors))]
    for k in sorted(set(tensors) & set(expected)):
        shape, dtypes = expected[k]
        t = tensors[k]
        if t.shape != list(shape) or t.dtype not in dtypes:
            problems.append(f"{name}: tensor {k!r} is {t.dtype} {t.shape}; the declared architecture has "
                            f"{'/'.join(dtypes)} {list(shape)}")
    return problems


# ----------------------------------------------------------------------------- JSON files of a bundle


class Closed(BaseModel):
    """A bundle file's model: unknown keys are errors, no value is coerced from another type."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Cell(Closed):
    """One released cell of a joint table."""

    values: list[str]
    count: StrictInt = Field(ge=0)


class Table(Closed):
    """One released joint table."""

    variables: list[str] = Field(min_length=1)
    cells: list[Cell]
    other: StrictInt | None = Field(None, ge=0)
    withheld: StrictBool
    total: StrictInt | None = Field(None, ge=0)


class HistogramBin(Closed):
    """One age histogram bin."""

    lo: float
    hi: float
    count: StrictInt = Field(ge=0)


class AgeHistogram(Closed):
    """The released age histogram."""

    bins: list[HistogramBin]
    bands: list[float]
    total: StrictInt = Field(ge=0)


class PrivacyStatement(Closed):
    """What noise, if any, the summary's counts carry."""

    mechanism: Literal["none", "laplace", "gaussian"]
    epsilon: float | None = None
    tables: StrictInt | None = None
    epsilon_per_table: float | None = None
    sensitivity: StrictInt | None = None
    max_images_per_patient: StrictInt | None = None
    noise_scale: float | None = None
    delta: float | None = None
    delta_per_table: float | None = None


class SummaryFile(Closed):
    """summary.json (see consortium/summary.py)."""

    format: Literal["synthfm.consortium.summary/1"]
    k: StrictInt = Field(ge=1)
    privacy: PrivacyStatement
    suppression: str = Field(max_length=512)
    domains: dict[str, list[str]]
    tables: list[Table]
    marginals: dict[str, dict[str, StrictInt]]
    age_histogram: AgeHistogram | None = None

    @model_validator(mode="after")
    def _cells_in_domains(self) -> SummaryFile:
        """Every table names variables of `domains`, and every cell one value of each, in order."""
        for i, t in enumerate(self.tables):
            unknown = [v for v in t.variables if v not in self.domains]
            if unknown:
                raise ValueError(f"tables.{i} names variables {unknown} that domains does not list")
            for j, c in enumerate(t.cells):
                if len(c.values) != len(t.variables) or any(
                        v not in self.domains[var] for var, v in zip(t.variables, c.values, strict=False)):
                    raise ValueError(f"tables.{i}.cells.{j} values {c.values[:4]} are not one value of each of "
                                     f"{t.variables} from domains")
        bands = self.domains.get("age_band", [])
        bad = [b for b in bands if not AGE_BAND_NAME.match(b)]
        if bad:
            raise ValueError(f"domains.age_band holds {bad[:3]}, not bands like '[40,70)'")
        return self


class AuditFile(Closed):
    """audit.json (see consortium/audit.py): counts and quantiles only."""

    format: Literal["synthfm.consortium.audit/1"]
    method: str = Field(max_length=256)
    passed: StrictBool
    n_synthetic: StrictInt = Field(ge=0)
    n_real: StrictInt = Field(ge=0)
    flagged: StrictInt = Field(ge=0)
    flagged_fraction: float = Field(ge=0, le=1)
    criterion: str = Field(max_length=512)
    ratio_quantiles: dict[Literal["0.0", "0.01", "0.05", "0.5"], float]
    real_reference_ratio_quantiles: dict[Literal["0.0", "0.01", "0.05", "0.5"], float]


class DiffusionFile(BaseModel):
    """generator.json of a diffusion export (synthfm.synth.diffusion's keys plus the site kit's sampler): no
    other key is allowed, so the file cannot carry free-form content."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["synthfm.generator/1"]
    kind: Literal["pixel", "latent", "stable_diffusion"]
    image_size: StrictInt = Field(ge=16, le=2048)
    channels: Literal[1, 3]
    modality: Literal["fundus", "cxr", "volume"]
    schema_: dict[str, Any] = Field(alias="schema")
    prompt_template: str | None = Field(None, max_length=1024)
    training: str | dict[str, Any]
    hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    global_step: StrictInt | None = Field(None, ge=0)
    stage: str | None = Field(None, max_length=64)
    source_run: str | None = Field(None, max_length=256)
    consortium_sampler: dict[str, Any] = Field(default_factory=dict)


def validate_file(model: type[BaseModel], data: Any, name: str) -> Any:
    """Validate parsed JSON against a bundle file's model (reason 'schema', naming the key)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise FileError("schema", f"{name}: {where}: {first['msg']}") from None
