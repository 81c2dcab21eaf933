"""The HTML report: self-contained, every section present, verdict said plainly, renders in headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from synthfm.errors import SynthfmError
from synthfm.report.html import render_report
from synthfm.report.verdict import verdict


def test_report_is_self_contained_with_every_section(finished: Path) -> None:
    page = (finished / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:|//|file:)', page), "the report must not load anything from outside"
    for title in ("Run summary", "Data: real and synthetic samples", "Pretraining", "Downstream results",
                  "Label efficiency", "Fairness per subgroup", "Quality and privacy gate"):
        assert f"<h2>{title}</h2>" in page
    assert "This pipeline did not run the quality stage." in page
    assert "gradcam_grid" in page and "tsne_" in page
    assert page.count('src="data:image/png;base64,') >= 4  # sample grid, loss, label efficiency, subgroups
    assert "fraction of labels each model needs" in page and "equalised-odds" in page
    assert "Verdict:" in page and "paired t-test" in page
    assert "tiny arms: paired t-tests by seed" in page and "Verdict (tiny arms):" in page
    assert "tiny arms, against random (test auroc" in page


def test_report_command_rejects_a_folder_without_a_run(tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match="not a pipeline run"):
        render_report(tmp_path)


def test_report_renders_in_headless_chromium(finished: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is missing: `make test` installs Debian's chromium package when it is absent"
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    shot = finished / "report_screenshot.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
        page.goto((finished / "report.html").as_uri(), wait_until="load")
        loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(loaded) >= 3 and all(loaded), f"{loaded.count(False)} of {len(loaded)} images did not load"
    assert problems == []
    assert shot.stat().st_size > 10_000


def _comparison(diff: float, p: float) -> dict:
    """One comparison with a single row."""
    return {"label_a": "MAE", "label_b": "random init", "metric": "auroc",
            "rows": [{"dataset": "phantom", "task": "dr_grade", "fraction": 1.0, "n": 5, "mean_a": 0.7 + diff,
                      "mean_b": 0.7, "mean_diff": diff, "p": p, "p_holm": p, "significant": p < 0.05}]}


def test_verdict_says_plainly_when_pretraining_did_not_help() -> None:
    lines = verdict([_comparison(-0.1, 0.001)])
    assert "MAE did worse than random init" in lines[0] and "did not help" in lines[-1]
    assert "What could change this" in lines[-1]
    lines = verdict([_comparison(0.01, 0.4)])
    assert "did not differ significantly" in lines[0] and "no comparison showed a significant gain" in lines[-1]
    assert verdict([_comparison(0.1, 0.001)])[-1] == "Verdict: pretraining helped in every comparison."
    assert "mixed" in verdict([_comparison(0.1, 0.001), _comparison(0.0, 0.9)])[-1]
    assert "makes no claim" in verdict([])[0]


def test_results_doc_section_comes_from_the_run(finished: Path) -> None:
    """docs/make_results.py turns a pipeline root into the headline section: verdict, tables, published rows."""
    import runpy

    make = runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "make_results.py"))
    text = make["pipeline_section"](finished)
    assert text.startswith("## tiny") and "- Verdict (tiny arms):" in text
    assert "| arm | 50% | 100% |" in text and "| auroc | MAE | random | 50% |" in text
    assert "| ours: MAE, tiny arms |" in text and "ResNet-18" not in text  # RetinaMNIST's figures only beside it
    assert "| adapt.mae_probe | adapt |" in text
    assert make["PUBLISHED_ROWS"]["retinamnist"][3]["AUROC"] == "0.754"  # MedMNIST+ best at 28 px, as cited


def test_results_doc_renders_a_vessel_study() -> None:
    """A vessel study's summary becomes mean ± CI per method and metric, and its paired test a row."""
    import runpy

    make = runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "make_results.py"))
    summary = [{"method": "unet_real_only", "metric": "dice", "mean": 0.7, "ci_low": 0.68},
               {"method": "second_observer", "metric": "auc", "mean": float("nan"), "ci_low": float("nan")}]
    tests = [{"metric": "dice", "difference": 0.02, "ci_low": -0.01, "ci_high": 0.05, "t": 1.5, "p": 0.2, "n": 5}]
    text = make["vessel_tables"]({"summary": summary, "tests": tests, "test_images": ["a", "b"],
                                  "train_images": 20, "seeds": [0, 1, 2, 3, 4]})
    assert "| unet_real_only | 0.700 ± 0.020 | - |" in text and "| second_observer | - | - |" in text
    assert "| dice | +0.020 | [-0.010, +0.050] | 1.50 | 0.2 | 5 |" in text
