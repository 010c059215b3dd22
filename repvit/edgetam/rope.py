"""EdgeTAM's memory cross-attention: rotary position encoding with separate query and key grids.

SAM 2 rotates queries and memory keys with one RoPE table (both are 64x64 maps at a 1024 input).
After EdgeTAM's perceiver a memory frame is no longer a 64x64 map but ``num_latents`` global
latents followed by ``num_latents_2d`` window latents on a 16x16 grid. EdgeTAM therefore rotates:

- the queries (the current frame's 64x64 tokens) with the table of a ``q_sizes`` grid;
- in every memory frame, only the last ``k_sizes[0] * k_sizes[1]`` tokens (the window latents)
  with the table of a ``k_sizes`` grid; the global latents are not rotated;
- never the object-pointer tokens at the end of the memory (``num_k_exclude_rope``, as SAM 2).

sam2's ``MemoryAttention`` tells the layer how many object-pointer tokens end the memory but
not how many frames precede them; every frame holds ``tokens_per_frame`` tokens, so the count is
``(keys - pointers) / tokens_per_frame``. The class derives from sam2's ``RoPEAttention`` because
sam2's memory-attention layer only passes ``num_k_exclude_rope`` to such a module; its query/key
projections (``q_proj``, ``k_proj`` with ``kv_in_dim`` inputs, ``v_proj``, ``out_proj``) are
sam2's ``Attention``'s, so the checkpoint's names fit unchanged.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sam2.modeling.sam.transformer import RoPEAttention


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` (``(..., N, D)``) by the complex ``table`` (``(N, D/2)``)."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * table).flatten(-2).type_as(x)


class RoPECrossAttention(RoPEAttention):
    """Cross-attention from a ``q_sizes`` map to memory frames whose last ``k_sizes`` tokens carry RoPE."""

    def __init__(self, *args, q_sizes=(64, 64), k_sizes=(16, 16), tokens_per_frame: int = 512,
                 rope_theta: float = 10000.0, **kwargs):
        super().__init__(*args, rope_theta=rope_theta, rope_k_repeat=True, feat_sizes=tuple(q_sizes), **kwargs)
        self.q_sizes, self.k_sizes = tuple(q_sizes), tuple(k_sizes)
        self.tokens_per_frame = tokens_per_frame
        self.rope_keys = self.k_sizes[0] * self.k_sizes[1]
        if not 0 < self.rope_keys <= tokens_per_frame:
            raise ValueError(f"k_sizes {self.k_sizes} give {self.rope_keys} rotated keys per frame, "
                             f"not within the frame's {tokens_per_frame} tokens")
        self.table_q = self.compute_cis(end_x=self.q_sizes[0], end_y=self.q_sizes[1])
        self.table_k = self.compute_cis(end_x=self.k_sizes[0], end_y=self.k_sizes[1])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        # sam2 stores memories in bfloat16 and relies on concatenating them with float32 object pointers
        # to promote them; a frame whose bank has memories but no pointer yet (an object tracked before
        # its first prompt) would reach the float32 projections in bfloat16. bfloat16 -> float32 is exact.
        dtype = self.k_proj.weight.dtype
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k.to(dtype)), self.num_heads)
        v = self._separate_heads(self.v_proj(v.to(dtype)), self.num_heads)
        q = rotate(q, self._query_table(q.shape[-2]).to(q.device))
        k = self._rotate_keys(k, k.shape[-2] - num_k_exclude_rope)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.out_proj(self._recombine_heads(out))

    def _query_table(self, tokens: int) -> torch.Tensor:
        if tokens == self.table_q.shape[0]:
            return self.table_q
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} query tokens are neither the {self.q_sizes} map nor a square one")
        return self.compute_cis(end_x=side, end_y=side)

    def _rotate_keys(self, k: torch.Tensor, rope_tokens: int) -> torch.Tensor:
        frames, rest = divmod(rope_tokens, self.tokens_per_frame)
        if rest:
            raise ValueError(f"{rope_tokens} memory tokens before the object pointers are not whole frames of "
                             f"{self.tokens_per_frame} (global + window latents)")
        if frames == 0:
            return k
        b, h, _, d = k.shape
        memory = k[:, :, :rope_tokens].reshape(b, h, frames, self.tokens_per_frame, d)
        plain, windows = memory.split([self.tokens_per_frame - self.rope_keys, self.rope_keys], dim=3)
        windows = rotate(windows, self.table_k.to(k.device))
        memory = torch.cat([plain, windows], dim=3).reshape(b, h, rope_tokens, d)
        return torch.cat([memory, k[:, :, rope_tokens:]], dim=2)
