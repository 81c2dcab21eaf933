"""Every pipeline job kind, collected from the stage packages that own them (each stage's `jobs.py`).

A kind is a config model, a function that does the work in the job's folder by calling the package's own stage
function (no shell), the path a `${stage.job}` reference to it resolves to, and the external files it reads
(checked before anything runs, and hashed into the job's key); see `synthfm.jobs`.
"""

from __future__ import annotations

from synthfm.adapt import jobs as adapt_jobs
from synthfm.analyze import jobs as analyze_jobs
from synthfm.consortium import jobs as consortium_jobs
from synthfm.data import jobs as data_jobs
from synthfm.evaluate import jobs as evaluate_jobs
from synthfm.jobs import JobKinds, Kind
from synthfm.pipeline.spec import STAGES
from synthfm.pretrain import jobs as pretrain_jobs
from synthfm.quality import jobs as quality_jobs
from synthfm.report import jobs as report_jobs
from synthfm.synth import jobs as synth_jobs

OWNERS = (data_jobs, synth_jobs, pretrain_jobs, consortium_jobs, quality_jobs, adapt_jobs, evaluate_jobs,
          analyze_jobs, report_jobs)


def collect(*contributions: JobKinds) -> JobKinds:
    """One mapping section -> kind -> Kind from each stage's contribution; a kind defined twice is an error."""
    out: JobKinds = {section: {} for section in STAGES}
    for part in contributions:
        for section, kinds in part.items():
            clash = set(kinds) & set(out[section])
            if clash:
                raise ValueError(f"pipeline kinds {sorted(clash)} of section {section!r} are defined twice")
            out[section].update(kinds)
    return out


KINDS = collect(*(owner.JOB_KINDS for owner in OWNERS))

__all__ = ["KINDS", "Kind", "collect"]
