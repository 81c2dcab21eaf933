"""Pipeline job kind of the report stage: the HTML report over every job of the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from synthfm.config import StrictModel
from synthfm.io import atomic_write_text
from synthfm.jobs import JobKinds, Kind, model_kind


class ReportJob(StrictModel):
    """The HTML report over every job of the pipeline."""

    title: str | None = Field(None, description="default: the pipeline's name")
    grid: int = Field(8, ge=1, le=64, description="sample images per card in the grids")

def _report_run(cfg: ReportJob, out: Path) -> dict[str, Any]:
    """Render report.html from the pipeline root (the job folder's grandparent)."""
    from synthfm.report.html import render_report

    root = out.parent.parent
    path = render_report(root, out / "report.html", title=cfg.title, grid=cfg.grid)
    atomic_write_text(root / "report.html", path.read_text())
    return {"report": str(root / "report.html")}


JOB_KINDS: JobKinds = {"report": {"html": Kind(model_kind(ReportJob), _report_run, lambda cfg, d: d / "report.html",
                                             help="the HTML report")}}
