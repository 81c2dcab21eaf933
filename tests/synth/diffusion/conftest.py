"""Fixtures of the diffusion tests: phantom cards with a visible label, a trained tiny generator, a tiny local SD."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread (tiny models on a shared 2-core machine), restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def single_thread() -> Callable[[], contextlib.AbstractContextManager[None]]:
    """The one_thread context manager, for fixtures of wider scope."""
    return one_thread


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Every diffusion test runs torch single-threaded."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def trained(phantoms: dict[str, Path], diffusion_config: Callable[..., dict[str, Any]],
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cataract-conditional generator trained through the engine for 160 steps (the run directory)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    with one_thread():
        pretrain(pretrain_config(diffusion_config([phantoms["train0"], phantoms["train1"]], 160)), run)
    return run


WORDS = ["a", "fundus", "image", "cataract", "yes", "no", "age"]


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer over byte characters plus merges for a few whole words (built in memory)."""
    chars = list(bytes_to_unicode().values())
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *[c + "</w>" for c in chars]]
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        for k in range(1, len(word)):
            right = word[k] + ("</w>" if k == len(word) - 1 else "")
            merges.append((word[:k], right))
            vocab.append(word[:k] + right)
    vocab = list(dict.fromkeys(vocab))
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=list(dict.fromkeys(merges)),
                         model_max_length=16)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny StableDiffusionPipeline saved locally (32 px images, 8 px latents)."""
    return build_tiny_sd(tmp_path_factory.mktemp("sd"))


def build_tiny_sd(path: Path, seed: int = 0) -> Path:
    """Save a random tiny StableDiffusionPipeline (32 px images, 8 px latents) to `path`."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=32)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path / "sd"))
    return path / "sd"
