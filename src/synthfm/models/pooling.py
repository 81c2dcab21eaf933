"""How an encoder's tokens become one feature vector: `cls`, `mean` or `cls+mean` (the one home for pooling).

For a timm ViT the tokens are `forward_features(x)` (the model's own final `norm` already applied); `cls` is the
class token, `mean` the average of the patch tokens after the model's prefix tokens (class and register
tokens, `num_prefix_tokens`), `cls+mean` both side by side (DINOv2's linear evaluation). The pooled vector then
goes through the model's `fc_norm`, as timm's own pooling does, so the ViT's native pooling (`global_pool`
'token' -> `cls`, 'avg' -> `mean`) gives exactly `encoder(x)`. For the ViTs of synthfm's registry
(global_pool 'token') `mean` is the mean of the normed patch tokens, which timm builds as
`global_pool='avg', fc_norm=False` (how an exported classifier with `pool: mean` is rebuilt).

An encoder without tokens (a CNN, a raw-pixel model) has one pooling, its own output (`own`, e.g. a CNN's global
average pool); asking it for `cls` / `mean` / `cls+mean` is an error that says to leave `pool` out.
"""

from __future__ import annotations

import torch
from torch import nn

from synthfm.errors import SynthfmError

POOLS = ("cls", "mean", "cls+mean")
OWN = "own"
NATIVE = {"token": "cls", "avg": "mean"}


def is_token_model(encoder: nn.Module) -> bool:
    """Whether the encoder is a timm ViT-like token model (prefix-token count and forward_features)."""
    return getattr(encoder, "num_prefix_tokens", None) is not None and hasattr(encoder, "forward_features")


def native_pool(encoder: nn.Module) -> str:
    """The pooling `encoder(x)` does: `cls` / `mean` for a token-pooled / average-pooled ViT, else `own`."""
    return NATIVE.get(getattr(encoder, "global_pool", None), OWN) if is_token_model(encoder) else OWN


def available_pools(encoder: nn.Module) -> tuple[str, ...]:
    """The poolings an encoder offers: all three for a ViT with a class token, `mean` without one, else `own`."""
    if not is_token_model(encoder):
        return (OWN,)
    return POOLS if getattr(encoder, "has_class_token", True) else ("mean",)


def resolve_pool(encoder: nn.Module, pool: str | None, name: str = "the encoder") -> str:
    """`pool` checked against what the encoder offers; None is the encoder's own pooling."""
    if pool is None:
        return native_pool(encoder)
    offered = available_pools(encoder)
    if pool not in offered:
        why = ("has no tokens: it has one pooling, its own output" if offered == (OWN,) else
               f"offers only {list(offered)}")
        raise SynthfmError(f"pool '{pool}' does not fit {name} ({type(encoder).__name__}), which {why}",
                           "leave 'pool' out (the encoder's own pooling)" if offered == (OWN,) else
                           f"set pool to one of {list(offered)}")
    return pool


def pooled_dim(encoder: nn.Module, pool: str | None) -> int:
    """Width of the pooled feature (twice the encoder's width for `cls+mean`)."""
    return int(encoder.num_features) * (2 if pool == "cls+mean" else 1)


def pool_tokens(encoder: nn.Module, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """Pool (B, N, D) tokens of a ViT as `pool`, through the model's fc_norm."""
    fc_norm = getattr(encoder, "fc_norm", None)
    fc_norm = nn.Identity() if fc_norm is None else fc_norm
    if pool == "cls+mean":
        return torch.cat([pool_tokens(encoder, tokens, "cls"), pool_tokens(encoder, tokens, "mean")], dim=-1)
    if pool == "cls":
        return fc_norm(tokens[:, 0])
    if pool == "mean":
        return fc_norm(tokens[:, int(encoder.num_prefix_tokens):].mean(dim=1))
    raise SynthfmError(f"unknown pool '{pool}'", f"use one of {list(POOLS)}")


def pool_features(encoder: nn.Module, x: torch.Tensor, pool: str | None = None) -> torch.Tensor:
    """The encoder's pooled features of images `x`; None or `own`: `encoder(x)` as it is."""
    if pool is None or pool == OWN:
        return encoder(x)
    return pool_tokens(encoder, encoder.forward_features(x), pool)


def all_pools(encoder: nn.Module, x: torch.Tensor, pools: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Every pooling in `pools` (default: all the encoder offers) from one forward pass."""
    pools = available_pools(encoder) if pools is None else pools
    if pools == (OWN,):
        return {OWN: encoder(x)}
    tokens = encoder.forward_features(x)
    return {p: pool_tokens(encoder, tokens, p) for p in pools}
