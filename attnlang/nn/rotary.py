"""Rotary position embeddings with optional xpos scaling, as ``local-attention`` applies them.

``local_attention.LocalAttention`` (1.11.2) rotates queries and keys with a
``SinusoidalEmbeddings`` module (buffers ``inv_freq`` and, for xpos, ``scale``).  This module has
the same buffers under the same names, so state dicts move between the two, but it rotates a
whole sequence at given *positions* instead of one look-around window at a time.  Only position
differences reach the scores (``rot(q, a) . rot(k, b)`` depends on ``a - b``, and xpos multiplies
a pair by ``scale ** ((a - b) / scale_base)``), so any positions with the right differences give
the package's numbers.  Angles and xpos factors are computed in float64 and then cast, so long
sequences lose no precision to large absolute positions.
"""
from __future__ import annotations

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary embedding of dimension ``dim`` (``theta`` 10000), xpos when ``use_xpos``."""

    def __init__(self, dim: int, scale_base=None, use_xpos: bool = False, theta: float = 10000):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
            raise ValueError(f"dim: got {dim!r}; expected an even integer >= 2 (the head dim "
                             "for rotary embeddings)")
        if use_xpos and (isinstance(scale_base, bool)
                         or not isinstance(scale_base, (int, float)) or not scale_base > 0):
            hint = (" (the default window_size // 2 is 0 for window_size 1)"
                    if scale_base == 0 else "")
            raise ValueError(f"xpos_scale_base: got {scale_base!r}; expected a positive number "
                             f"when use_xpos=True{hint}")
        self.dim = dim
        self.use_xpos = use_xpos
        self.scale_base = scale_base
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)
        scale = (torch.arange(0, dim, 2) + 0.4 * dim) / (1.4 * dim)
        self.register_buffer("scale", scale, persistent=False)

    def _apply(self, fn, recurse=True):
        """``.half()``, ``.to(...)`` and the like move ``inv_freq`` but keep it at least float32:
        in float16 its frequencies lose enough that the angles of long sequences drift (4k
        tokens: 5x the error of float32 inputs)."""
        inv = self._buffers.pop("inv_freq")
        try:
            super()._apply(fn, recurse)
        finally:
            target = fn(inv[:0])  # where and in what dtype ``fn`` puts a tensor
            dtype = torch.float64 if target.dtype == torch.float64 else torch.float32
            self._buffers["inv_freq"] = inv.to(target.device, dtype)
        return self

    def tables(self, positions: torch.Tensor, center: float, dtype, sign: float = 1.0):
        """``(cos, sin, xscale)`` ``[len(positions), dim]`` in ``dtype``; ``xscale`` is the xpos
        factor ``scale ** (sign * (position - center) / scale_base)`` (None without xpos)."""
        pos = positions.to(torch.float64)
        freqs = pos[:, None] * self.inv_freq.to(torch.float64)[None, :]
        freqs = torch.cat((freqs, freqs), dim=-1)
        cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
        if not self.use_xpos:
            return cos, sin, None
        power = sign * (pos - center) / float(self.scale_base)
        xscale = self.scale.to(torch.float64)[None, :] ** power[:, None]
        return cos, sin, torch.cat((xscale, xscale), dim=-1).to(dtype)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor, center: float = 0.0,
               inverse_scale: bool = False) -> torch.Tensor:
        """Rotate ``x`` ``[..., L, dim]`` at ``positions`` ``[L]``; xpos multiplies queries by
        the factor and keys (``inverse_scale=True``) by its inverse."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"dim: got {self.dim} for rotary embeddings; expected the head dim "
                             f"of q and k ({x.shape[-1]})")
        cos, sin, xscale = self.tables(positions.to(x.device), center, x.dtype,
                                       -1.0 if inverse_scale else 1.0)
        if xscale is not None:
            cos, sin = cos * xscale, sin * xscale
        return x * cos + rotate_half(x) * sin
