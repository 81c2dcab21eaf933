"""Model cards of saved encoders: plain-timm loading, and the provenance of synthetic pretraining data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import timm
import torch
import yaml

from synthfm.data.card import DatasetCard, Provenance, SourceSpec, write_card
from synthfm.models.backbones import create_backbone
from synthfm.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_pretrained
from synthfm.models.modelcard import README, gate_verdict, timm_snippet

SMALL = {"img_size": 32, "depth": 2, "embed_dim": 48, "num_heads": 3}


def test_saved_encoder_loads_with_plain_timm(tmp_path: Path) -> None:
    """timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": ...}) gives the same features."""
    torch.manual_seed(0)
    model = create_backbone("vit_tiny_p8_64", 1, **SMALL).eval()
    folder = save_pretrained(model, tmp_path / "enc")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    plain = timm.create_model(cfg["architecture"], pretrained=True,
                              pretrained_cfg_overlay={"file": str(folder / WEIGHTS_FILE)}, **cfg["model_args"]).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(plain(x), model(x))
    card = (folder / README).read_text()
    assert cfg["architecture"] == "vit_tiny_patch16_224" and f'timm.create_model("{cfg["architecture"]}"' in card


def _synthetic_card(root: Path) -> Path:
    """A diffusion-made card: provenance with a generator hash, a per-row sampler column, a licence."""
    root.mkdir(parents=True)
    sampler = json.dumps({"name": "ddim", "steps": 50, "guidance_scale": 2.0})
    pd.DataFrame({"path": ["a.png", "b.png"], "split": ["train", "train"], "sampler": [sampler, sampler]}
                 ).to_csv(root / "manifest.csv", index=False)
    card = DatasetCard(name="synth_cxr", modality="cxr", source=SourceSpec(root="."),
                       provenance=Provenance(kind="synthetic", generator="cxr_ddpm", checkpoint_hash="sha256:abc123",
                                             row_columns=["sampler"]),
                       license="generated; no patient images", citation="synthfm demo")
    return write_card(card, root)


def test_encoder_card_records_synthetic_provenance(tmp_path: Path) -> None:
    """The card names the pretraining run's sources with generator, hash, sampler and gate verdict + its file."""
    card = _synthetic_card(tmp_path / "runs" / "synth")
    gate = tmp_path / "runs" / "quality" / "synth_gate"
    gate.mkdir(parents=True)
    (gate / "quality.json").write_text(json.dumps({"verdict": "pass"}))
    (gate / "config.yaml").write_text(yaml.safe_dump({"stage": "quality", "config": {"synthetic": str(card.parent)}}))
    pre = tmp_path / "runs" / "pretrain"
    pre.mkdir()
    stages = [{"name": "s1", "sources": [{"source": str(card)}, {"source": "rasd", "n": 64}]}]
    (pre / "config.yaml").write_text(yaml.safe_dump({"stage": "pretrain", "config": {"stages": stages}}))
    folder = save_pretrained(create_backbone("vit_tiny_p8_64", 1, **SMALL), tmp_path / "enc",
                             source_run=str(pre), global_step=300)
    text = (folder / README).read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {card}"))
    assert "| synthetic | synth_cxr | cxr_ddpm | sha256:abc123 |" in row
    assert '"name": "ddim"' in row and f"pass ({gate / 'quality.json'})" in row
    assert "RaSD randomized synthesis" in text and "step 300" in text
    assert "| synth_cxr | generated; no patient images | synthfm demo |" in text  # licence fields from the card
    for heading in ("## What it is", "## Load it", "## Pretraining data", "## Intended use and limits", "## Licence"):
        assert heading in text


def test_gate_verdict_of_a_filtered_card(tmp_path: Path) -> None:
    """The gate's own filtered card finds quality.json one folder up; an unrelated card finds none."""
    card = _synthetic_card(tmp_path / "q" / "filtered")
    (tmp_path / "q" / "quality.json").write_text(json.dumps({"verdict": "fail"}))
    assert gate_verdict(card) == ("fail", str(tmp_path / "q" / "quality.json"))
    assert gate_verdict(_synthetic_card(tmp_path / "elsewhere" / "deep" / "card")) == ("", "")


def test_snippet_falls_back_to_synthfm_when_timm_lacks_a_part() -> None:
    """A backbone built with a class argument (a 3D patch embedding) is not loadable by timm alone: say so."""

    class PatchEmbed3d(torch.nn.Module):
        """Stands in for a patch embedding timm does not have."""

    assert "timm.create_model" in timm_snippet("vit_tiny_patch16_224", {"img_size": 32})
    text = timm_snippet("vit_tiny_patch16_224", {"img_size": 32, "embed_layer": PatchEmbed3d})
    assert "from_pretrained" in text and "embed_layer=" in text and "timm.create_model" not in text
