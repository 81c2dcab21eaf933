"""Feature spaces and the one streamed pass over a card that feeds every check.

A space turns a uint8 batch (B, C, H, W) into float features (B, D) and carries the name that metric
names end with: `synthfm-<encoder>` (our encoders: an exported dir, or a random-init registry backbone
for tests), `inception` (torch-fidelity's Inception-v3 with a local weights file) or `dinov2-<backbone>`
(a local DINOv2 file imported into a registry backbone). `extract` streams a card once, writing each
space's features and the grey pixel maps of the memorisation audit into `.npy` files read back as
memory maps, so memory stays bounded whatever the number of images.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from synthfm.data.manifest import CardData
from synthfm.data.modality import preset
from synthfm.data.readers import open_dataset
from synthfm.data.transforms import to_tensor
from synthfm.errors import SynthfmError
from synthfm.models.backbones import image_size as backbone_image_size
from synthfm.models.checkpoint import from_pretrained, import_checkpoint
from synthfm.models.encoders import random_backbone, resolve_encoder
from synthfm.progress import progress_bar
from synthfm.quality.config import DOMAIN, SpaceConfig

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION_SIZE = 299


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, C, H, W) to size x size (bicubic, antialiased); unchanged when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a grey batch to RGB, or take the luminance of an RGB batch for a 1-channel model."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return luminance(x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luminance (B, 1, H, W) of an RGB (or already grey) batch."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


class TimmSpace(nn.Module):
    """A timm ViT encoder as a feature space: resize, scale to [0, 1], normalise, pooled features."""

    def __init__(self, encoder: nn.Module, name: str, mean: tuple[float, ...], std: tuple[float, ...],
                 image_size: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.name = name
        self.image_size = backbone_image_size(encoder, image_size)
        self.channels = int(encoder.patch_embed.proj.in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, D)."""
        x = match_channels(resize(images.float() / 255.0, self.image_size), self.channels)
        mean, std = match_channels(self.mean, self.channels), match_channels(self.std, self.channels)
        return self.encoder((x - mean) / std).float()


class InceptionSpace(nn.Module):
    """torch-fidelity's Inception-v3 (2048-d pool features) from a local weights file, loaded weights-only."""

    name = "inception"
    image_size = INCEPTION_SIZE

    def __init__(self, weights: str | Path) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights)
        if not path.is_file():
            raise SynthfmError(f"Inception weights not found: {path}",
                               "give a local copy of torch-fidelity's weights-pt_inception-2015-12-05 file")
        with forced_weights_only():
            try:
                self.model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                         feature_extractor_weights_path=str(path))
            except Exception as err:  # pickle errors, missing/unexpected keys
                raise SynthfmError(f"cannot load Inception weights {path}: {str(err).splitlines()[0]}",
                                   "use the torch-fidelity Inception-v3 state dict (tensors only)") from None

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, 2048); grey images are repeated to RGB."""
        return self.model(match_channels(images, 3))[0].float()


@contextlib.contextmanager
def forced_weights_only() -> Iterator[None]:
    """torch-fidelity calls torch.load(weights_only=False); force the safe unpickler for that call."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def space_name(cfg: SpaceConfig) -> str:
    """The suffix metric names carry for this space."""
    if cfg.name:
        return cfg.name
    if cfg.kind == "inception":
        return "inception"
    if cfg.kind == "dinov2":
        return f"dinov2-{cfg.backbone}"
    if (backbone := random_backbone(cfg.encoder)) is not None:
        return f"synthfm-random-{backbone}"
    return f"synthfm-{Path(cfg.encoder).name}"


def build_space(cfg: SpaceConfig, modality: str) -> nn.Module:
    """The feature extractor a space config names."""
    name = space_name(cfg)
    if cfg.kind == "inception":
        return InceptionSpace(cfg.weights or "")
    if cfg.kind == "dinov2":
        model = import_checkpoint(cfg.weights or "", cfg.backbone, **cfg.backbone_overrides)
        return TimmSpace(model, name, *IMAGENET, cfg.image_size)
    p = preset(modality)
    if cfg.encoder == DOMAIN:
        raise SynthfmError("the domain space is resolved by the quality run before features are built",
                           "call run_quality, or give the encoder's save_pretrained dir")
    if random_backbone(cfg.encoder) is not None:
        torch.manual_seed(cfg.seed)
        model = resolve_encoder(cfg.encoder, p.channels, overrides=cfg.backbone_overrides)
    else:
        model = from_pretrained(cfg.encoder)
        chans = int(model.patch_embed.proj.in_channels)
        if chans != p.channels:
            raise SynthfmError(f"feature space encoder {cfg.encoder} takes {chans}-channel images but the cards are "
                               f"{modality} ({p.channels} channel(s))",
                               f"use an encoder trained on {modality} images, or leave 'spaces' out so the gate "
                               "fine-tunes a domain encoder on the real card")
    return TimmSpace(model, name, p.mean, p.std, cfg.image_size)


class Resized:
    """Reader transform: a uint8 array -> uint8 (C, size, size) tensor (so batches of mixed sizes stack)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        t = to_tensor(arr)
        if t.shape[-2:] == (self.size, self.size):
            return t
        return resize(t[None].float(), self.size)[0].round().clamp(0, 255).to(torch.uint8)


def _collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and manifest rows of a batch."""
    return torch.stack([s["image"] for s in samples]), torch.tensor([s["index"] for s in samples])


def stream_images(data: CardData, rows: np.ndarray, size: int, batch_size: int,
                  num_workers: int = 0) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(positions within `rows`, uint8 batch at `size`) for every row, in batches; shards are filtered."""
    ds = open_dataset(data, None, transform=Resized(size))
    where = {int(r): p for p, r in enumerate(rows)}
    if not isinstance(ds, torch.utils.data.IterableDataset):
        ds = Subset(ds, [int(r) for r in rows])
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    for images, index in loader:
        keep = [k for k, i in enumerate(index.tolist()) if i in where]
        if keep:
            yield np.array([where[int(index[k])] for k in keep]), images[keep]


def grey_maps(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> uint8 (B, size, size) luminance: area-averaged down, bicubic up.

    Enlarging a small image (28 px RetinaMNIST to 96) by area averaging replicates pixels into uneven blocks
    whose edges are noise to the audit's band-passes, and differ between an image and a resampled copy of it.
    """
    g = luminance(images.float())
    if g.shape[-2:] != (size, size):
        up = g.shape[-2] < size and g.shape[-1] < size
        g = F.interpolate(g, size=(size, size), mode="bicubic", align_corners=False) if up else \
            F.interpolate(g, size=(size, size), mode="area")
    return g[:, 0].round().clamp(0, 255).to(torch.uint8)


def extract(data: CardData, rows: np.ndarray, spaces: list[nn.Module], pixel_size: int | None, out: Path,
            prefix: str, batch_size: int = 64, num_workers: int = 0) -> dict[str, np.ndarray]:
    """Stream the rows once; write features per space and grey maps; return them as memory maps.

    Files are `<prefix>_<space>.npy` (float32, len(rows) x D) and `<prefix>_pixels.npy` (uint8); a finished
    file is reused, so an interrupted audit picks up where it left off.
    """
    out.mkdir(parents=True, exist_ok=True)
    targets = {s.name: out / f"{prefix}_{s.name}.npy" for s in spaces}
    if pixel_size:
        targets["pixels"] = out / f"{prefix}_pixels.npy"
    todo = [s for s in spaces if not targets[s.name].is_file()]
    do_pixels = bool(pixel_size) and not targets["pixels"].is_file()
    if todo or do_pixels:
        _extract_missing(data, rows, todo, pixel_size if do_pixels else None, targets, batch_size, num_workers)
    return {k: np.load(p, mmap_mode="r") for k, p in targets.items()}


def _extract_missing(data: CardData, rows: np.ndarray, spaces: list[nn.Module], pixel_size: int | None,
                     targets: dict[str, Path], batch_size: int, num_workers: int) -> None:
    """One pass writing temporary memory maps, renamed into place when every row is done."""
    size = max([s.image_size for s in spaces] + [pixel_size or 0])
    buffers: dict[str, np.memmap] = {}
    seen = np.zeros(len(rows), bool)
    batches = stream_images(data, rows, size, batch_size, num_workers)
    for pos, images in progress_bar(batches, f"features {data.card.name}", total=-(-len(rows) // batch_size)):
        for s in spaces:
            f = s(images).cpu().numpy()
            buf = buffers.get(s.name)
            if buf is None:
                buf = buffers[s.name] = _open_tmp(targets[s.name], (len(rows), f.shape[1]), np.float32)
            buf[pos] = f
        if pixel_size:
            buf = buffers.get("pixels")
            if buf is None:
                buf = buffers["pixels"] = _open_tmp(targets["pixels"], (len(rows), pixel_size, pixel_size), np.uint8)
            buf[pos] = grey_maps(images, pixel_size).numpy()
        seen[pos] = True
    if not seen.all():
        raise SynthfmError(f"card '{data.card.name}' yielded {int(seen.sum())} of {len(rows)} images",
                           "check that the shards hold every manifest row")
    for name, buf in buffers.items():
        buf.flush()
        os.replace(_tmp(targets[name]), targets[name])
    buffers.clear()


def _tmp(path: Path) -> Path:
    """The temporary file a memory map is written to before it is complete."""
    return path.with_name(f".{path.name}.tmp.npy")


def _open_tmp(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """A writable .npy memory map at the temporary path of `path`."""
    return np.lib.format.open_memmap(_tmp(path), mode="w+", dtype=dtype, shape=shape)
