"""A small learned vessel segmenter: a two-level U-Net on the normalised green channel.

Training pairs are (image, vessel mask, field of view) arrays: rendered fundus phantoms with their exact
masks and, where a card has manual masks, real images. Each step draws random patches (half of them
centred on a vessel pixel), and minimises binary cross-entropy plus soft Dice. The weights are saved as
safetensors with a JSON config beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from synthfm.analyze.vessels import normalised_green
from synthfm.config import StrictModel
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json
from synthfm.models.checkpoint import load_state, save_state
from synthfm.progress import progress_bar

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class UNetConfig(StrictModel):
    """Size of the network and how it is trained."""

    width: int = Field(8, ge=4, description="channels of the first level (x2 per level down)")
    steps: int = Field(400, ge=1)
    batch_size: int = Field(8, ge=1)
    patch: int = Field(64, ge=16, description="training patch side (a multiple of 4)")
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    phantom_images: int = Field(24, ge=0, description="fundus phantoms rendered for training")
    phantom_seed: int = 1000
    threads: int = Field(0, ge=0, description="torch CPU threads while training (0 = leave as set)")


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Two down-sampling levels, skip connections, one logit per pixel."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        self.enc1, self.enc2, self.mid = _block(1, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        self.dec2, self.dec1 = _block(6 * width, 2 * width), _block(3 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[-2:]), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:]), e1], 1))
        return self.out(d1)


@dataclass
class Example:
    """One training image: network input (H, W), vessel mask and field of view."""

    x: np.ndarray
    mask: np.ndarray
    fov: np.ndarray


def network_input(rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """The normalised green channel centred on 0 (vessels negative), 0 outside the field."""
    return np.where(fov, (normalised_green(rgb, fov) - 1.0) * 4.0, 0.0).astype(np.float32)


def make_example(rgb: np.ndarray, mask: np.ndarray, fov: np.ndarray) -> Example:
    """A training example from an image, its vessel mask and field of view."""
    return Example(network_input(rgb, fov), (mask > 0) & fov, fov)


def _patch(rng: np.random.Generator, ex: Example, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A random patch (half the time centred on a vessel pixel), padded when the image is smaller."""
    h, w = ex.x.shape
    if rng.uniform() < 0.5 and ex.mask.any():
        rows, cols = np.nonzero(ex.mask)
        k = rng.integers(len(rows))
        r, c = int(rows[k]) - side // 2, int(cols[k]) - side // 2
    else:
        r = int(rng.integers(-side // 4, max(h - side // 2, 1)))
        c = int(rng.integers(-side // 4, max(w - side // 2, 1)))
    x, y = np.zeros((side, side), np.float32), np.zeros((side, side), np.float32)
    r0, c0, r1, c1 = max(r, 0), max(c, 0), min(r + side, h), min(c + side, w)
    if r1 > r0 and c1 > c0:
        x[r0 - r:r1 - r, c0 - c:c1 - c] = ex.x[r0:r1, c0:c1]
        y[r0 - r:r1 - r, c0 - c:c1 - c] = ex.mask[r0:r1, c0:c1]
    return x, y


def _batch(rng: np.random.Generator, examples: list[Example], cfg: UNetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random patches with random flips."""
    xs, ys = [], []
    for _ in range(cfg.batch_size):
        x, y = _patch(rng, examples[int(rng.integers(len(examples)))], cfg.patch)
        if rng.uniform() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        xs.append(x.copy())
        ys.append(y.copy())
    return torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice."""
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def phantom_examples(count: int, seed: int, size: int) -> list[Example]:
    """Training examples from `count` rendered fundus phantoms (seeds seed, seed+1, ...) with exact vessel masks."""
    from synthfm.synth.fundus import FundusPhantom

    gen = FundusPhantom()
    out = []
    for i in range(count):
        s = gen.generate({}, seed + i, size)
        out.append(make_example(s.image, s.masks["vessels"], s.masks["fov"] > 0))
    return out


def train_unet(examples: list[Example], cfg: UNetConfig, init: TinyUNet | None = None) -> TinyUNet:
    """Train a TinyUNet on the examples' random patches (from `init`'s weights when given: fine-tuning)."""
    if not examples:
        raise SynthfmError("no training images for the vessel U-Net",
                           "render phantoms (unet.phantom_images > 0) or use a card with vessel masks")
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(examples, cfg, init)
    finally:
        torch.set_num_threads(threads)


def _train(examples: list[Example], cfg: UNetConfig, init: TinyUNet | None) -> TinyUNet:
    """The training loop of `train_unet`."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = TinyUNet(cfg.width)
    if init is not None:
        if init.width != cfg.width:
            raise SynthfmError(f"the U-Net to fine-tune has width {init.width}, the config asks for {cfg.width}",
                               f"set unet.width to {init.width}")
        net.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    net.train()
    for _ in progress_bar(range(cfg.steps), "vessel U-Net", total=cfg.steps):
        x, y = _batch(rng, examples, cfg)
        loss = seg_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def predict_unet(net: TinyUNet, rgb: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Vessel probability of every pixel (0 outside the field of view)."""
    net.eval()
    x = torch.from_numpy(network_input(rgb, fov))[None, None]
    return (torch.sigmoid(net(x))[0, 0].numpy() * fov).astype(np.float32)


def save_unet(net: TinyUNet, directory: str | Path, **extra: object) -> Path:
    """Weights (safetensors) then config (JSON, written last: it marks a complete save)."""
    directory = Path(directory)
    save_state(net.state_dict(), directory / WEIGHTS)
    atomic_write_json(directory / CONFIG, {"format": "synthfm.vessel_unet/1", "width": net.width, **extra})
    return directory


def load_unet(directory: str | Path) -> TinyUNet:
    """A TinyUNet saved by `save_unet`."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file():
        raise SynthfmError(f"{directory} holds no saved vessel U-Net ({CONFIG} missing)",
                           "point at the 'segmenter' folder of a morphology run, or train one (segmenter: unet)")
    net = TinyUNet(int(json.loads((directory / CONFIG).read_text())["width"]))
    net.load_state_dict(load_state(directory / WEIGHTS))
    return net.eval()
