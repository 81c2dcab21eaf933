"""The Stable Diffusion path (a local tiny random pipeline, fine-tuned on prompts) and the latent-space path."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.models.checkpoint import load_state
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import checkpoint_dirs, pretrain
from synthfm.synth.diffusion.config import GenerateConfig
from synthfm.synth.diffusion.generate import generate
from synthfm.synth.diffusion.generator import load_generator
from synthfm.synth.diffusion.stable_diffusion import load_pipeline

TEMPLATE = "a {{ modality }} image{% if conditions.cataract %}, cataract {{ conditions.cataract }}{% endif %}"


def test_stable_diffusion_finetune_and_generate(tiny_sd: Path, phantoms: dict[str, Path], diffusion_config,
                                                tmp_path: Path) -> None:
    """Fine-tune the UNet of a local SD pipeline through the engine on prompts from the template; the text encoder
    and VAE stay frozen; the exported pipeline generates a card with the requested labels."""
    cfg = pretrain_config(diffusion_config(
        [phantoms["train0"], phantoms["train1"]], 3, image_size=32, batch_size=4,
        diffusion={"model": "stable_diffusion", "pretrained": str(tiny_sd), "conditions": ["cataract"],
                   "prompt_template": TEMPLATE}))
    pretrain(cfg, tmp_path / "run")
    base = load_pipeline(tiny_sd)
    gen = load_generator(tmp_path / "run" / "generator")
    assert gen.kind == "stable_diffusion" and gen.latent_shape == (4, 8, 8)
    assert gen.text.prompts(torch.tensor([[2], [1], [0]])) == [
        "a fundus image, cataract yes", "a fundus image, cataract no", "a fundus image"]
    ckpt = load_state(checkpoint_dirs(tmp_path / "run")[-1] / "model.safetensors")
    trained = {k[len("parts.generator."):]: v for k, v in ckpt.items() if k.startswith("parts.generator.")}
    assert trained.keys() == base.unet.state_dict().keys()
    assert any(not torch.equal(v, base.unet.state_dict()[k]) for k, v in trained.items())
    assert not any(k.startswith(("parts.text", "parts.vae")) for k in ckpt)  # frozen parts are not trained
    assert all(torch.equal(v, base.text_encoder.state_dict()[k]) for k, v in gen.text.text_encoder.state_dict().items())
    out = tmp_path / "card"
    generate(GenerateConfig(generator=str(tmp_path / "run" / "generator"), n=2, shard_size=2, batch_size=2,
                            condition={"cataract": "yes"}, sampler={"name": "dpmpp", "steps": 2}), out)
    data = load_card(out)
    assert data.df["cataract"].tolist() == [1, 1]
    assert next(iter(open_dataset(data)))["image"].shape == (3, 32, 32)


def test_latent_generator_with_local_vae(phantoms: dict[str, Path], diffusion_config, tmp_path: Path) -> None:
    """A latent-space generator trains on the latents of a frozen local AutoencoderKL and decodes to images."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=4)
    vae.save_pretrained(str(tmp_path / "vae"))
    cfg = pretrain_config(diffusion_config(
        [phantoms["train1"]], 2, image_size=16, batch_size=4,
        diffusion={"model": "latent", "vae": str(tmp_path / "vae"), "conditions": ["cataract"],
                   "unet": {"block_out_channels": [8, 16], "attention": [False, True], "layers_per_block": 1,
                            "norm_num_groups": 4, "attention_head_dim": 4}}))
    pretrain(cfg, tmp_path / "run")
    gen = load_generator(tmp_path / "run" / "generator")
    assert gen.kind == "latent" and gen.latent_shape == (4, 8, 8)
    assert json.loads((tmp_path / "run" / "generator" / "model" / "config.json").read_text())[
        "unet_config"]["in_channels"] == 4
    vae_state = AutoencoderKL.from_pretrained(str(tmp_path / "run" / "generator" / "vae")).state_dict()
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in vae_state.items())
    out = tmp_path / "card"
    generate(GenerateConfig(generator=str(tmp_path / "run" / "generator"), n=3, shard_size=2, batch_size=2,
                            sampler={"name": "ddpm", "steps": 3, "guidance_scale": 1.5}), out)
    data = load_card(out)
    assert data.df["cataract"].tolist() == [1, 1, 1]  # trained on cataract images only
    assert next(iter(open_dataset(data)))["image"].shape == (3, 16, 16)
