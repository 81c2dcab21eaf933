"""Drive the real CLI entry point over every bad-input case: exit 2, no traceback, a message naming the
file/row/key, and nothing half-written that later looks valid."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_lib import Case, all_cases, write_case

from synthfm.cli import main

CASES = all_cases()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 130, f"the corpus has {len(CASES)} cases"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "case"
    write_case(case, d)
    monkeypatch.chdir(d)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.replace("{d}", str(d)))
    with pytest.raises(SystemExit) as exited:
        main(case.args(d))
    out = capsys.readouterr()
    text = out.out + out.err
    assert exited.value.code == case.exit_code, text
    assert "Traceback" not in text, text
    flat = " ".join(text.split())
    assert " ".join(case.expected_fragment(d).split()) in flat, text
    assert not case.finished_looking(d), f"half-written output looks finished: {case.finished_looking(d)}"
