"""The README says what works: every command in its Commands block exists, predict and export are listed, the
multi-process command is the one that starts N processes, and `pretrain recipes` is short unless --full."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from synthfm.cli import main
from synthfm.pretrain.config import all_recipes

README = Path(__file__).resolve().parents[1] / "README.md"
WORD = re.compile(r"^[a-z][a-z0-9-]*$")


def _commands_block() -> list[str]:
    """The lines of the code block under '## Commands'."""
    text = README.read_text()
    section = text.split("## Commands", 1)[1]
    return section.split("```", 2)[1].strip().splitlines()


def _command_paths() -> list[list[str]]:
    """Sub-command paths named in the Commands block (`site keygen|run` gives two), without arguments."""
    paths = []
    for line in _commands_block():
        words = line.split("#")[0].split()
        if not words or words[0] != "synthfm":
            continue
        path: list[str] = []
        for w in words[1:]:
            names = w.split("|")
            if not all(WORD.match(n) for n in names):
                break
            if len(names) > 1:
                paths += [[*path, n] for n in names]
                path = []
                break
            path.append(w)
        if path:
            paths.append(path)
    return paths


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stdout)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().out


def test_commands_block_lists_predict_and_export() -> None:
    paths = _command_paths()
    assert ["predict"] in paths and ["export"] in paths
    assert ["synth", "train"] in paths and ["synth", "generate"] in paths
    assert len(paths) > 20


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_listed_command_exists(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`synthfm <path> --help` succeeds for every command the README lists."""
    code, out = _run([*path, "--help"], capsys)
    assert code == 0 and "Usage" in out


def test_multi_process_command_is_the_one_that_starts_n() -> None:
    """The README's launch line names --multi_gpu --num_processes (a bare --num_processes runs one process on a
    machine without GPUs) and says how to get N processes on CPU."""
    text = README.read_text()
    launch = [line for line in _commands_block() if line.startswith("accelerate launch")]
    assert launch and all("--multi_gpu --num_processes N" in line for line in launch)
    assert "ACCELERATE_USE_CPU=1" in text


def test_recipes_short_by_default_full_yaml_with_flag(capsys: pytest.CaptureFixture[str]) -> None:
    recipes = all_recipes()
    code, out = _run(["pretrain", "recipes"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == len(recipes)
    assert [line.split()[0] for line in lines] == list(recipes)
    assert "base_lr" not in out and "stages" not in out
    code, out = _run(["pretrain", "recipes", "--full"], capsys)
    first = next(iter(recipes))
    body = out.split(first, 1)[1].split(list(recipes)[1], 1)[0]
    assert code == 0 and yaml.safe_load(body) == yaml.safe_load(yaml.safe_dump(recipes[first]))  # tuples as lists
