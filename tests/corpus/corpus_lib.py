"""The bad-input corpus: what a case is, the small builders cases share, and how cases are collected.

A case is a command line (`argv`, with `{d}` standing for the case's own folder), a `make(d)` function that
writes the hostile or careless inputs into that folder, the exit code the CLI must give (2 for bad input) and a
message fragment that names the file, row or key at fault. After the command, nothing under `outputs` may look
like a finished result (a card, a completion marker, a job record, a signed bundle). Cases live in
`cases_*.py` modules beside this file, each exporting a list `CASES`; `all_cases()` gathers them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# A file with one of these names under a case's outputs means something half-written looks finished.
FINISHED_MARKERS = ("dataset.yaml", "COMPLETE.json", "job.json", "signature.json", "generator.json")


@dataclass(frozen=True)
class Case:
    """One bad input: how to make it, how to run it, and what the CLI must answer."""

    id: str
    argv: list[str]
    make: Callable[[Path], Any]
    fragment: str
    exit_code: int = 2
    outputs: tuple[str, ...] = ("{d}/out",)
    markers: tuple[str, ...] = FINISHED_MARKERS
    env: dict[str, str] = field(default_factory=dict)

    def args(self, d: Path) -> list[str]:
        """The command line with `{d}` filled in."""
        return [a.replace("{d}", str(d)) for a in self.argv]

    def expected_fragment(self, d: Path) -> str:
        """The fragment with `{d}` filled in."""
        return self.fragment.replace("{d}", str(d))

    def finished_looking(self, d: Path) -> list[Path]:
        """Files under the outputs that would pass for a finished result."""
        found: list[Path] = []
        for out in self.outputs:
            root = Path(out.replace("{d}", str(d)))
            if root.is_file() and root.name in self.markers:
                found.append(root)
            elif root.is_dir():
                found += [p for p in root.rglob("*") if p.name in self.markers]
        return found


def all_cases() -> list[Case]:
    """Every case of every `cases_*.py` module here, ids checked unique."""
    cases: list[Case] = []
    for path in sorted(HERE.glob("cases_*.py")):
        name = f"synthfm_corpus_{path.stem}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        cases += module.CASES
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"duplicate corpus case ids: {dup}")
    return cases


def write_case(case: Case, d: Path) -> None:
    """Make a case's inputs in `d` and record how to run it (case.json), for running it by hand."""
    d.mkdir(parents=True, exist_ok=True)
    case.make(d)
    (d / "case.json").write_text(json.dumps({
        "id": case.id, "argv": ["synthfm", *case.args(d)], "exit_code": case.exit_code,
        "fragment": case.expected_fragment(d), "outputs": [o.replace("{d}", str(d)) for o in case.outputs],
        "env": case.env}, indent=2) + "\n")


# ---- builders shared by cases ------------------------------------------------------------------------------

def write(path: Path, content: str | bytes) -> Path:
    """Write text or bytes, making parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def write_yaml(path: Path, data: Any) -> Path:
    """Write a mapping as YAML."""
    return write(path, yaml.safe_dump(data, sort_keys=False))


def png(path: Path, value: int, size: int = 16, mode: str = "RGB") -> Path:
    """A small PNG whose pixels depend on `value`."""
    rng = np.random.default_rng(value)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


def card_spec(**over: Any) -> dict[str, Any]:
    """The dataset.yaml mapping of `tiny_card`, with keys replaced by `over`."""
    spec: dict[str, Any] = {
        "name": "tiny", "modality": "fundus",
        "tasks": [{"name": "grade", "type": "ordinal", "classes": ["none", "mild", "severe"]}],
        "metadata": {"patient_id": "patient", "age": "age", "sex": "sex"}}
    spec.update(over)
    return spec


def tiny_rows(n: int = 12) -> pd.DataFrame:
    """Manifest rows of `tiny_card`: a patient-level train/val/test split, 3 grades, age and sex."""
    split = ["train", "train", "train", "train", "val", "test"]
    return pd.DataFrame({
        "path": [f"img/{i:03d}.png" for i in range(n)],
        "grade": [i % 3 for i in range(n)],
        "patient": [f"P{i // 2:03d}" for i in range(n)],
        "split": [split[(i // 2) % len(split)] for i in range(n)],
        "age": [30 + i for i in range(n)],
        "sex": ["F" if i % 4 < 2 else "M" for i in range(n)],
    })


def tiny_card(d: Path, n: int = 12, rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
              name: str = "card", manifest: str | bytes | None = None, **spec: Any) -> Path:
    """A valid folder card at d/name (n 16-px RGB images) unless `rows`, `manifest` or `spec` break it."""
    root = d / name
    df = tiny_rows(n)
    for i, p in enumerate(df["path"]):
        png(root / p, i)
    if rows is not None:
        df = rows(df)
    if manifest is None:
        df.to_csv(root / "manifest.csv", index=False)
    else:
        write(root / "manifest.csv", manifest)
    write_yaml(root / "dataset.yaml", card_spec(**spec))
    return root


def npz_file(path: Path, n: dict[str, int] | None = None, size: int = 8, labels: Any = None,
             images: Any = None, **arrays: Any) -> Path:
    """A MedMNIST-style .npz ({split}_images uint8, {split}_labels (N,1) in 0..2), with arrays replaced."""
    n = n or {"train": 6, "val": 3, "test": 3}
    rng = np.random.default_rng(0)
    data: dict[str, Any] = {}
    for split, k in n.items():
        data[f"{split}_images"] = rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8)
        data[f"{split}_labels"] = (np.arange(k) % 3).reshape(k, 1)
    data.update(arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path
