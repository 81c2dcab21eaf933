"""`synthfm synth generate`: conditions to a target, a card out, deterministic seeds, kill -9 resume, process split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.synth.diffusion.config import GenerateConfig
from synthfm.synth.diffusion.generate import generate, my_shards, plan_conditions, shard_rows
from synthfm.synth.diffusion.generator import load_generator
from synthfm.synth.writer import image_seed


def gen_config(trained: Path, **kw: Any) -> dict[str, Any]:
    """24 images in 6 shards of 4, DDIM 8 steps with guidance 2."""
    cfg = {"generator": str(trained / "generator"), "n": 24, "seed": 5, "shard_size": 4, "batch_size": 4,
           "sampler": {"name": "ddim", "steps": 8, "guidance_scale": 2.0}}
    return {**cfg, **kw}


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every finished shard's bytes by name."""
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def clean(trained: Path, tmp_path_factory: pytest.TempPathFactory, single_thread) -> Path:
    """An uninterrupted single-process generation."""
    out = tmp_path_factory.mktemp("gen") / "clean"
    with single_thread():
        generate(GenerateConfig(**gen_config(trained)), out)
    return out


def test_output_is_a_card_with_provenance(clean: Path, trained: Path) -> None:
    """The output loads as a card; ids 0..23 once each; every row has its condition, seed, sampler and the generator
    hash; the label column and the shard JSON agree with the condition; conditions follow the training mix."""
    data = load_card(clean)
    df = data.df
    assert list(df["image_id"]) == [f"{i:08d}" for i in range(24)]
    info = json.loads((trained / "generator" / "generator.json").read_text())
    assert set(df["generator_hash"]) == {info["hash"]} and data.card.provenance.checkpoint_hash == info["hash"]
    assert list(df["seed"]) == [image_seed(5, i) for i in range(24)]
    pairs = zip(df["condition"], df["cataract"], strict=True)
    assert all(json.loads(c) == {"cataract": ["no", "yes"][k]} for c, k in pairs)
    assert json.loads(df["sampler"][0]) == {"name": "ddim", "steps": 8, "guidance_scale": 2.0, "eta": 0.0,
                                            "clip_x0": True}
    assert 0 < df["cataract"].sum() < 24  # drawn from the 64 / 64 training mix
    reader = open_dataset(data)
    labels = {int(s["index"]): int(s["labels"]["cataract"]) for s in reader}
    assert labels == dict(enumerate(df["cataract"]))
    assert next(iter(reader))["image"].shape == (3, 8, 8)
    assert generate(GenerateConfig(**gen_config(trained)), clean)["images"] == 24  # finished: a no-op


def test_kill_minus_nine_generation_resumes_byte_identical(clean: Path, trained: Path, tmp_path: Path) -> None:
    """SIGKILL generation after its first shard, resume: no duplicate or missing ids, shards byte-identical."""
    out = tmp_path / "killed"
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(gen_config(trained)))
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "synthfm", "synth", "generate", str(tmp_path / "gen.yaml"),
                             "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list(out.glob("progress-*.jsonl")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 1 <= len(shard_bytes(out)) < 6 and not (out / "dataset.yaml").exists()
    summary = generate(GenerateConfig(**gen_config(trained)), out)
    assert summary == {"complete": True, "images": 24, "shards": 6, "generator_hash": summary["generator_hash"]}
    assert shard_bytes(out) == shard_bytes(clean)
    assert (out / "manifest.parquet").read_bytes() == (clean / "manifest.parquet").read_bytes()


def test_processes_split_shards_without_duplicates_or_holes(clean: Path, trained: Path, tmp_path: Path) -> None:
    """Process r of R takes shards k % R == r; two processes' output equals one process's, byte for byte."""
    assert my_shards(6, 0, 2) == [0, 2, 4] and my_shards(6, 1, 2) == [1, 3, 5]
    assert [list(r) for r in shard_rows(10, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    out = tmp_path / "split"
    cfg = GenerateConfig(**gen_config(trained))
    assert generate(cfg, out, rank=1, world=2) == {"complete": False, "shards_written": 3, "shards_missing": 3}
    assert sorted(shard_bytes(out)) == ["train-000001.tar", "train-000003.tar", "train-000005.tar"]
    assert generate(cfg, out, rank=0, world=2)["complete"]
    assert shard_bytes(out) == shard_bytes(clean)
    ids = pd.read_parquet(out / "manifest.parquet")["image_id"]
    assert ids.is_unique and list(ids) == [f"{i:08d}" for i in range(24)]


def test_separate_jobs_end_with_one_card_whichever_finishes_last(clean: Path, trained: Path, tmp_path: Path) -> None:
    """Jobs sharing a folder in any order: the last to finish writes the card; a rerun finds it complete."""
    out = tmp_path / "jobs"
    cfg = GenerateConfig(**gen_config(trained))
    first = generate(cfg, out, rank=0, world=3)
    assert not first["complete"] and not (out / "dataset.yaml").exists()
    assert not generate(cfg, out, rank=2, world=3)["complete"]
    assert generate(cfg, out, rank=1, world=3)["complete"] and (out / "dataset.yaml").is_file()
    assert (out / "manifest.parquet").read_bytes() == (clean / "manifest.parquet").read_bytes()
    assert generate(cfg, out, rank=0, world=3)["complete"]
    assert not list(out.glob(".finalise*"))


def test_target_card_rebalance_and_fixed_conditions(trained: Path, phantoms: dict[str, Path]) -> None:
    """A target card's joint distribution is matched; rebalance redraws a field by weight; fixed values win."""
    gen = load_generator(trained / "generator")
    target = plan_conditions(GenerateConfig(generator=".", target={"card": str(phantoms["held1"])}), gen)
    assert {int(target(i)[0]) for i in range(50)} == {2}  # the held1 card is all cataract = yes
    mix = plan_conditions(GenerateConfig(generator=".", rebalance={"cataract": {"no": 3, "yes": 1}}), gen)
    share = np.mean([mix(i)[0] == 1 for i in range(2000)])
    assert share == pytest.approx(0.75, abs=0.03)
    fixed = plan_conditions(GenerateConfig(generator=".", target={"card": str(phantoms["held1"])},
                                           condition={"cataract": 0}), gen)
    assert {int(fixed(i)[0]) for i in range(20)} == {1}
    assert [int(mix(i)[0]) for i in range(20)] == [int(mix(i)[0]) for i in range(20)]  # pure function of (seed, i)


def test_unknown_conditions_are_clear_errors(trained: Path, make_card) -> None:
    """A field the generator lacks, a value it does not know, or a card with neither: SynthfmError naming them."""
    gen = load_generator(trained / "generator")
    with pytest.raises(SynthfmError, match=r"condition 'dr_grade' is not one this generator was trained on"):
        plan_conditions(GenerateConfig(generator=".", condition={"dr_grade": 2}), gen)
    with pytest.raises(SynthfmError, match=r"'cataract'='maybe' is not one this generator knows"):
        plan_conditions(GenerateConfig(generator=".", rebalance={"cataract": {"maybe": 1.0}}), gen)
    with pytest.raises(SynthfmError, match="shares no task or metadata field"):
        plan_conditions(GenerateConfig(generator=".", target={"card": str(make_card())}), gen)


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "ddpm"])
def test_pixel_sampling_clips_the_predicted_clean_image(trained: Path, name: str) -> None:
    """A denoiser that is far off (here: its weights scaled up) drives unclipped samples out of [-1, 1]; with
    clip_x0 (the default for pixel models) every step's clean-image estimate, and so the sample, stays inside."""
    import torch

    from synthfm.synth.diffusion.config import SamplerConfig
    from synthfm.synth.diffusion.sampling import sample

    gen = load_generator(trained / "generator")
    with torch.no_grad():
        for p in gen.model.parameters():
            p.mul_(3.0)
    cond = torch.zeros(4, len(gen.schema.fields), dtype=torch.long)
    free = sample(gen, cond, [0, 1, 2, 3], SamplerConfig(name=name, steps=5, guidance_scale=1.0, clip_x0=False))
    clipped = sample(gen, cond, [0, 1, 2, 3], SamplerConfig(name=name, steps=5, guidance_scale=1.0))
    assert free.abs().max() > 1.5
    assert clipped.abs().max() <= 1.0 + 1e-4
