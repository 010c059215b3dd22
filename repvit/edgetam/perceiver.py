"""EdgeTAM's 2D spatial perceiver: compresses each frame's memory map to a few latent tokens.

Written from the EdgeTAM paper (Zhou et al., CVPR 2025, section 3) and the behaviour of its code.
A memory map ``(B, C, H, W)`` (C = 64, H = W = 64 at a 1024 input) becomes ``num_latents`` global
tokens plus ``num_latents_2d`` window tokens, in that order:

- global latents: ``num_latents`` learned vectors cross-attend to all H*W positions, whose memory
  position encoding is added to both keys and values; their own position encoding is zero;
- 2D latents: the map is cut into a square grid of ``sqrt(num_latents_2d)`` windows per side and
  learned vector ``i`` attends only to the positions of window ``i`` (row-major), without a
  position encoding; the resulting grid of latents gets the sine position encoding of a
  ``sqrt(n) x sqrt(n)`` map, so the memory attention can place them (EdgeTAM also rotates them
  with a RoPE of that grid size, see ``rope.py``).

Both passes run through the same stack of layers (cross-attention, MLP, then optionally
self-attention and MLP, all pre-norm and residual) and the same final LayerNorm. Every batch
element is processed independently: the window latents are tiled per element, so a batch of
several objects gives what each object gives alone (the official code's ``expand(...).view(...)``
only runs for a batch of one). Attribute names follow the official checkpoint's keys
(``spatial_perceiver.layers.<i>.attn.to_q.weight`` ...).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm, Linear up (no bias), GELU, Linear down (no bias): indices 0..3 as in the checkpoint."""
    hidden = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(),
                         nn.Linear(hidden, dim, bias=False))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, N, heads * d)`` -> ``(B, heads, N, d)``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, N, d)`` -> ``(B, N, heads * d)``."""
    return x.transpose(1, 2).flatten(2)


class LatentCrossAttention(nn.Module):
    """Latents (queries) attend to input tokens; ``pos``, when given, is added to keys and values."""

    def __init__(self, dim: int, head_dim: int, heads: int):
        super().__init__()
        inner = head_dim * heads
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        q = _heads(self.to_q(self.norm_latents(latents)), self.heads)
        k, v = (_heads(t, self.heads) for t in self.to_kv(self.norm_x(x)).chunk(2, dim=-1))
        if pos is not None:
            pos = _heads(pos, self.heads)
            k, v = k + pos, v + pos
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class LatentSelfAttention(nn.Module):
    """Pre-norm self-attention among the latents."""

    def __init__(self, dim: int, head_dim: int, heads: int):
        super().__init__()
        inner = head_dim * heads
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm(latents)
        q = _heads(self.to_q(x), self.heads)
        k, v = (_heads(t, self.heads) for t in self.to_kv(x).chunk(2, dim=-1))
        return self.to_out(_merge(F.scaled_dot_product_attention(q, k, v)))


class PerceiverLayer(nn.Module):
    """Cross-attention + MLP, then (``self_attention=True``) self-attention + MLP; all residual."""

    def __init__(self, dim: int, head_dim: int, heads: int, ff_mult: int, self_attention: bool):
        super().__init__()
        self.attn = LatentCrossAttention(dim, head_dim, heads)
        self.ff = feed_forward(dim, ff_mult)
        self.use_self_attn = self_attention
        if self_attention:
            self.self_attn = LatentSelfAttention(dim, head_dim, heads)
            self.self_ff = feed_forward(dim, ff_mult)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        latents = latents + self.attn(latents, x, pos)
        latents = latents + self.ff(latents)
        if self.use_self_attn:
            latents = latents + self.self_attn(latents)
            latents = latents + self.self_ff(latents)
        return latents


class SpatialPerceiver(nn.Module):
    """``(B, C, H, W)`` memory and its position encoding -> ``(B, N, C)`` latents and their encoding.

    ``N = num_latents + num_latents_2d``; ``position_encoding`` maps a ``(B, C, h, w)`` grid to its
    ``(B, C, h, w)`` encoding (sam2's ``PositionEmbeddingSine`` in EdgeTAM).
    """

    def __init__(self, *, dim: int = 64, depth: int = 2, head_dim: int = 64, heads: int = 1, ff_mult: int = 4,
                 num_latents: int = 256, num_latents_2d: int = 256,
                 position_encoding: Callable[[torch.Tensor], torch.Tensor], self_attention: bool = True):
        super().__init__()
        side = math.isqrt(num_latents_2d)
        if num_latents_2d and side * side != num_latents_2d:
            raise ValueError(f"num_latents_2d must be a square number (one latent per window), got {num_latents_2d}")
        self.num_latents, self.num_latents_2d, self.grid = num_latents, num_latents_2d, side
        if num_latents:
            self.latents = nn.Parameter(torch.randn(num_latents, dim))
        if num_latents_2d:
            self.latents_2d = nn.Parameter(torch.randn(num_latents_2d, dim))
        self.position_encoding = position_encoding
        self.layers = nn.ModuleList(PerceiverLayer(dim, head_dim, heads, ff_mult, self_attention)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, pos: Optional[torch.Tensor] = None):
        latents, encodings = [], []
        if self.num_latents:
            out, enc = self._global(x, pos)
            latents.append(out)
            encodings.append(enc)
        if self.num_latents_2d:
            out, enc = self._windows(x)
            latents.append(out)
            encodings.append(enc)
        return torch.cat(latents, dim=1), (torch.cat(encodings, dim=1) if pos is not None else None)

    def _global(self, x: torch.Tensor, pos: Optional[torch.Tensor]):
        tokens = x.flatten(2).transpose(1, 2)                                      # (B, HW, C)
        token_pos = pos.flatten(2).transpose(1, 2) if pos is not None else None
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        for layer in self.layers:
            latents = layer(latents, tokens, token_pos)
        return self.norm(latents), torch.zeros_like(latents)

    def _windows(self, x: torch.Tensor):
        b, c, h, w = x.shape
        n = self.grid
        if h % n or w % n:
            raise ValueError(f"the {h}x{w} memory map does not split into {n}x{n} equal windows")
        wh, ww = h // n, w // n
        # (B, C, n, wh, n, ww) -> (B, n, n, wh, ww, C) -> one row of wh*ww tokens per window, row-major
        windows = x.reshape(b, c, n, wh, n, ww).permute(0, 2, 4, 3, 5, 1).reshape(b * n * n, wh * ww, c)
        latents = self.latents_2d.repeat(b, 1).unsqueeze(1)                     # latent i for window i, per element
        for layer in self.layers:
            latents = layer(latents, windows)
        grid = latents.reshape(b, n, n, c).permute(0, 3, 1, 2)                  # (B, C, n, n)
        encoding = self.position_encoding(grid).flatten(2).transpose(1, 2)
        return self.norm(grid.flatten(2).transpose(1, 2)), encoding
