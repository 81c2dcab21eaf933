"""Checkpoint I/O: safetensors + JSON config (save_pretrained / from_pretrained), and importers.

`import_checkpoint` reads RETFound-style MAE files (`{'model': {...}}` with `decoder_*` keys and `norm.*`
or `fc_norm.*`) and DINOv2-style files (`cls_token`, `mask_token`, `register_tokens`, LayerScale, possibly
under `teacher.backbone.` / `backbone.` prefixes or in chunked `blocks.<chunk>.<i>.` form) into a registered
backbone. `.pth` files are read with `torch.load(weights_only=True)` only: no arbitrary pickle is executed.
A file (or saved encoder) with other input channels than the model, e.g. an RGB RETFound or DINOv2 onto a grey
chest X-ray encoder, has its patch embedding adapted as timm does (`adapt_input_conv`: summed to one channel).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models._manipulate import adapt_input_conv
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.io import atomic_path, atomic_write_json, atomic_write_text
from synthfm.models.backbones import create_backbone

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "synthfm.backbone/1"
CONTAINER_KEYS = ("model", "teacher", "state_dict", "module")
PREFIXES = ("teacher.backbone.", "module.backbone.", "backbone.", "module.", "encoder.")
DROPPED = re.compile(r"^(decoder_|decoder\.|head\.|dino_head\.|ibot_head\.|mask_token$)")
CHUNKED = re.compile(r"^blocks\.\d+\.(\d+)\.")
_SHOW = 8
Tensors = dict[str, torch.Tensor]


def save_state(state: Tensors, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors to a safetensors file atomically (detached, contiguous, on CPU)."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(path, ".safetensors") as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_state(path: str | Path) -> Tensors:
    """Read a safetensors file onto the CPU, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"weights file not found: {path}", "check the checkpoint directory")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise SynthfmError(f"cannot read {path}: {err}",
                           "the file is truncated or not safetensors; re-export it") from None


def save_pretrained(model: nn.Module, directory: str | Path, **extra: Any) -> Path:
    """Save a registry backbone as `model.safetensors`, a `README.md` model card and `config.json` (last: it marks
    completion). The folder loads with plain timm too (the card and config.json's `architecture` and
    `model_args` say how: `timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay={"file": ...})`).
    """
    directory = Path(directory)
    config = getattr(model, "synthfm_backbone", None)
    if config is None:
        raise SynthfmError("save_pretrained needs a model built by create_backbone()",
                           "build the backbone with synthfm.models.backbones.create_backbone")
    from synthfm.models.modelcard import README, encoder_card, timm_args

    save_state(model.state_dict(), directory / WEIGHTS_FILE, {"format": FORMAT})
    full = {"format": FORMAT, **config, **extra}
    architecture, model_args = timm_args(full)
    full |= {"architecture": architecture, "model_args": model_args}  # plain timm's names (a HF-hub-style config)
    atomic_write_text(directory / README, encoder_card(full))
    atomic_write_json(directory / CONFIG_FILE, full)
    return directory


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    """The JSON config of a saved backbone."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise SynthfmError(f"{directory} has no {CONFIG_FILE}: not a saved backbone (or the save was interrupted)",
                           "point at a directory written by save_pretrained / 'synthfm pretrain export'")
    try:
        cfg = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        raise SynthfmError(f"{path} is not valid JSON: {err}",
                           "re-export the encoder ('synthfm pretrain export') or restore the file") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("name"), str) \
            or not isinstance(cfg.get("overrides", {}), dict):
        raise SynthfmError(f"{path} must be a JSON object with a backbone 'name' (and optional 'overrides' "
                           f"mapping), got {type(cfg).__name__}", "re-export the encoder ('synthfm pretrain export')")
    return cfg


def from_pretrained(directory: str | Path, in_chans: int | None = None) -> nn.Module:
    """Rebuild a backbone saved with `save_pretrained` and load its weights (every key must fit).

    `in_chans` other than the saved count builds the encoder with that many input channels and adapts the
    patch embedding (`adapt_patch_channels`), e.g. an RGB encoder onto grey chest X-rays.
    """
    cfg = read_pretrained_config(directory)
    model = create_backbone(cfg["name"], in_chans or cfg.get("in_chans", 3), **cfg.get("overrides", {}))
    state = adapt_patch_channels(load_state(Path(directory) / WEIGHTS_FILE), model)
    check_fit(state, model, str(directory))
    model.load_state_dict(state)
    return model


def read_checkpoint(path: str | Path) -> Any:
    """Load a `.safetensors` or `.pth` file; `.pth` only with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise SynthfmError(f"checkpoint not found: {path}", "check the path")
    if path.suffix == ".safetensors":
        return load_state(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, IndexError, UnicodeDecodeError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]  # a zero-byte file raises a bare EOFError
        raise SynthfmError(
            f"cannot load {path} with torch.load(weights_only=True): {first}",
            "the file holds Python objects beyond tensors; in an environment you trust, re-save only its tensors "
            "(torch.save(ckpt['model'], 'weights.pth')) or convert it to .safetensors",
        ) from None


def unwrap_state(obj: Any) -> Tensors:
    """Descend into the usual container keys ('model', 'teacher', 'state_dict', 'module') to the tensors."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise SynthfmError(f"no weights found in checkpoint with top-level keys {sorted(obj)[:_SHOW]}",
                               f"the weights should be under one of {CONTAINER_KEYS} or at the top level")
        obj = inner
    if not isinstance(obj, dict):
        raise SynthfmError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors", "save a state_dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state: Tensors) -> Tensors:
    """Keep the keys under the first known prefix present (teacher backbone before student), prefix removed."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def unchunk_blocks(state: Tensors) -> Tensors:
    """DINOv2 FSDP block chunks `blocks.<chunk>.<i>.x` -> `blocks.<i>.x`."""
    return {CHUNKED.sub(r"blocks.\1.", k): v for k, v in state.items()}


def match_final_norm(state: Tensors, model: nn.Module) -> Tensors:
    """Rename `fc_norm.*` <-> `norm.*` when the file has one final norm and the model the other."""
    wanted = set(model.state_dict())
    for have, want in (("fc_norm.", "norm."), ("norm.", "fc_norm.")):
        if f"{want}weight" in wanted and f"{want}weight" not in state and f"{have}weight" in state:
            return {(want + k[len(have):] if k.startswith(have) else k): v for k, v in state.items()}
    return state


def adapt_patch_channels(state: Tensors, model: nn.Module) -> Tensors:
    """A patch embedding that differs from the model's only in input channels, adapted as timm does.

    `timm.models._manipulate.adapt_input_conv`: to 1 channel the file's channels are summed (an RGB encoder
    sees a grey image as R = G = B); to more channels they are repeated and scaled by file/model channels.
    """
    key = "patch_embed.proj.weight"
    want, got = model.state_dict()[key].shape, state.get(key)
    if got is None or got.ndim != 4 or tuple(got.shape) == tuple(want):
        return state
    if (got.shape[0], *got.shape[2:]) != (want[0], *want[2:]):
        return state  # a different width or patch size: reported by _patch_mismatch
    base = int(got.shape[1])
    try:
        adapted = adapt_input_conv(int(want[1]), got, **({} if base == 3 else {"base_chans": base}))
    except (NotImplementedError, TypeError) as err:
        raise SynthfmError(f"cannot adapt the patch embedding from {base} to {want[1]} input channels: {err}",
                           "use a checkpoint with as many channels as the card, or timm>=1.0.20") from None
    return {**state, key: adapted}


def _patch_mismatch(state: Tensors, model: nn.Module) -> list[str]:
    """Patch-embedding shape differences (not resampled silently: a different patch size is a different model)."""
    key = "patch_embed.proj.weight"
    want = model.state_dict()[key].shape
    got = state.get(key)
    if got is None or got.ndim != 4 or tuple(got.shape) == tuple(want):
        return []
    return [f"{key}: file {tuple(got.shape)} vs model {tuple(want)}"]


def prepare_state(state: Tensors, model: nn.Module) -> tuple[Tensors, list[str]]:
    """Map a foreign state dict onto a timm ViT's keys (input channels adapted); return it and patch mismatches."""
    state = adapt_patch_channels(unchunk_blocks(strip_prefix(state)), model)
    mismatched = _patch_mismatch(state, model)
    if not mismatched:
        state = checkpoint_filter_fn(dict(state), model)  # DINOv2 tokens, pos_embed resampling
    state = {k: v for k, v in state.items() if not DROPPED.match(k)}
    return match_final_norm(state, model), mismatched


def _listing(label: str, items: list[str]) -> str:
    """One line of an error: a label, the count and the first few items."""
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{label} ({len(items)}): {', '.join(items[:_SHOW])}{more}"


def check_fit(state: Tensors, model: nn.Module, source: str, extra_mismatches: list[str] | None = None) -> None:
    """Raise a SynthfmError listing missing keys, unexpected keys and shape mismatches."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = list(extra_mismatches or []) + [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(want[k].shape)}"
        for k in sorted(set(state) & set(want)) if state[k].shape != want[k].shape
    ]
    problems = [_listing(label, items) for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        name = getattr(model, "synthfm_backbone", {}).get("name", type(model).__name__)
        raise SynthfmError(f"checkpoint {source} does not fit backbone {name}:\n  - " + "\n  - ".join(problems),
                           "choose the backbone the checkpoint was trained with (same width, depth, patch size, "
                           "tokens; input channels are adapted)")


def import_checkpoint(path: str | Path, backbone: nn.Module | str, **overrides: Any) -> nn.Module:
    """Load a RETFound/DINOv2/timm-style checkpoint file into a backbone (a module or a registry name)."""
    model = create_backbone(backbone, **overrides) if isinstance(backbone, str) else backbone
    state, mismatched = prepare_state(unwrap_state(read_checkpoint(path)), model)
    check_fit(state, model, str(path), mismatched)
    model.load_state_dict(state)
    return model
