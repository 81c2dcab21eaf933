"""The package's dependency metadata: torch ranges, not pins, checked by pip's own resolver, offline.

The resolver check runs `pip install --dry-run --no-index` on the dependencies declared in pyproject.toml plus
an exact torch / torchvision pair. The pair comes from metadata-only wheels built here (a find-links folder, no
network); every other requirement is satisfied by what this environment already has installed, so the real
resolver decides whether the declared ranges admit that torch (and whether every installed dependent, e.g. timm,
accelerate, grad-cam, accepts it too). A pair below the range must be refused, so the check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _dependencies() -> list[str]:
    """The `[project] dependencies` of pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _stub_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A wheel holding only metadata (enough for the resolver; nothing is installed by a dry run)."""
    info = f"{name}-{version}.dist-info"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                    *(f"Requires-Dist: {r}\n" for r in requires)])
    wheel = "Wheel-Version: 1.0\nGenerator: synthfm-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(f"{info}/WHEEL", wheel)
        zf.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")


def _resolve(tmp_path: Path, torch: str, torchvision: str) -> subprocess.CompletedProcess[str]:
    """pip's resolver on the declared dependencies with torch / torchvision pinned to the given pair."""
    links = tmp_path / "wheels"
    links.mkdir()
    _stub_wheel(links, "torch", torch)
    _stub_wheel(links, "torchvision", torchvision, (f"torch=={torch}",))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("\n".join([*_dependencies(), f"torch=={torch}", f"torchvision=={torchvision}"]) + "\n")
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links", str(links),
         "--disable-pip-version-check", "--quiet", "--report", str(tmp_path / "report.json"), "-r", str(reqs)],
        capture_output=True, text=True, timeout=300, check=False, env=_isolated_env())


def _isolated_env() -> dict[str, str]:
    """This environment without pip configuration (no config files, no PIP_* variables: no extra indexes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def test_torch_is_a_range_not_a_pin() -> None:
    """No exact pin on torch or torchvision; every dependency has a lower bound."""
    reqs = {Requirement(r).name: Requirement(r) for r in _dependencies()}
    for name in ("torch", "torchvision"):
        assert not any(s.operator in ("==", "===") for s in reqs[name].specifier), reqs[name]
    assert reqs["torch"].specifier.contains("2.13.0") and reqs["torch"].specifier.contains("2.14.1")
    assert not reqs["torch"].specifier.contains("2.4.1")
    assert all(any(s.operator == ">=" for s in r.specifier) for r in reqs.values()), "every dependency has >="


# 2.6.0: the oldest torch that this environment's accelerate (1.16, torch>=2.6) accepts; the package itself
# allows 2.5, where pip would pick an older accelerate in a fresh environment
@pytest.mark.parametrize(("torch", "torchvision"), [("2.13.0", "0.28.0"), ("2.6.0", "0.21.0")])
def test_resolver_accepts_another_torch_in_the_range(tmp_path: Path, torch: str, torchvision: str) -> None:
    """The resolver installs synthfm's dependencies beside a torch other than the tested 2.14.1."""
    done = _resolve(tmp_path, torch, torchvision)
    assert done.returncode == 0, done.stderr
    planned = {i["metadata"]["name"]: i["metadata"]["version"]
               for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert planned.get("torch") == torch and planned.get("torchvision") == torchvision


def test_resolver_refuses_torch_outside_the_range(tmp_path: Path) -> None:
    """Control: a torch outside the declared range (3.0, which every installed dependent would accept) is refused
    because of synthfm's own requirement, so the check above can fail."""
    done = _resolve(tmp_path, "3.0.0", "0.30.0")
    assert done.returncode != 0
    assert "ResolutionImpossible" in done.stderr and "torch<3" in done.stderr.replace(",", " and ")
