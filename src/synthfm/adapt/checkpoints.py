"""Training-time efficiency: the downstream score of the encoder at each checkpoint of a pretraining run.

Every complete checkpoint (`RUN/checkpoints/step_*`, as many as the run's `keep_checkpoints` kept) has its
encoder exported to `OUT/encoders/step_*` and the adaptation config (its `encoder` replaced) run from it into
`OUT/step_*`; each piece is skipped when already done, so a killed curve resumes. The table goes to
`OUT/training_curve.*` (summary per pretraining step) and `OUT/training_results.*` (every seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.errors import SynthfmError
from synthfm.evaluate.results import TRAINING_CURVE, summary_table
from synthfm.io import write_table_pair
from synthfm.models.checkpoint import CONFIG_FILE
from synthfm.pretrain.engine import checkpoint_dirs, export_encoder

CURVE_KEYS = ["pretrain_step", "eval_set", "split", "fraction", "metric"]


def checkpoint_step(checkpoint: Path) -> int:
    """The global optimiser step a pretraining checkpoint was written at."""
    return int(json.loads((checkpoint / "state.json").read_text())["global_step"])


def checkpoint_curve(pretrain_run: str | Path, cfg: AdaptConfig, out_dir: str | Path) -> pd.DataFrame:
    """Adapt from every checkpoint of `pretrain_run`; write and return the score-vs-step summary table."""
    run, out = Path(pretrain_run), Path(out_dir)
    found = checkpoint_dirs(run)
    if not found:
        raise SynthfmError(f"{run} has no pretraining checkpoints (checkpoints/step_*)",
                           "point at a pretraining run directory; keep more with 'keep_checkpoints'")
    frames = []
    for ckpt in found:
        encoder = out / "encoders" / ckpt.name
        if not (encoder / CONFIG_FILE).is_file():
            export_encoder(run, encoder, checkpoint=ckpt)
        results = run_experiment(cfg.model_copy(update={"encoder": str(encoder)}), out / ckpt.name)
        frames.append(results.assign(pretrain_step=checkpoint_step(ckpt)))
    results = pd.concat(frames, ignore_index=True)
    curve = summary_table(results, by=CURVE_KEYS)
    write_table_pair(results, out / "training_results")
    write_table_pair(curve, out / TRAINING_CURVE)
    return curve
