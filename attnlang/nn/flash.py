"""``FlashAttention`` with zeta's API: dense attention with optional causal mask, boolean mask
and additive bias, on attnlang's kernels (``flash=True``) or in plain PyTorch (``flash=False``).

Semantics (both paths, the same numbers up to float rounding):

* ``q`` ``[B, H, Lq, D]``, ``k``/``v`` ``[B, H, Lk, D]``; ``Lq != Lk`` is allowed.
* ``causal=True`` keeps key ``j`` for query ``i`` when ``j <= i + (Lk - Lq)``: bottom-right
  alignment, as FlashAttention >= 2.1 (the last query sits at the last key).
* ``mask``: bool, broadcastable to ``[B, H, Lq, Lk]`` by torch's rules, True keeps the pair.
* ``attn_bias``: float, broadcastable to ``[B, H, Lq, Lk]``, added to the scaled scores; it gets
  a gradient when it requires one.
* scale ``1/sqrt(D)``; a query with no kept key outputs zeros (never NaN, never a mean).
* dropout on the attention probabilities, only in training mode.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..validate import broadcasts_to, check_dropout, check_like_q
from ._common import attend, check_bool, check_sizes, check_tensor, prepare

__all__ = ["FlashAttention", "reference_attention"]


def _broadcastable(name, t, full, boolean, device):
    if t is None:
        return None
    kind = "bool" if boolean else "floating-point"
    ok = isinstance(t, torch.Tensor) and (t.dtype == torch.bool if boolean
                                          else t.dtype.is_floating_point)
    if ok and t.device != device:
        raise ValueError(f"{name}: got a tensor on {t.device}; expected the device of q "
                         f"({device})")
    if ok and t.dim() <= 4 and broadcasts_to(t.shape, full):
        return t
    given = (f"a {t.dtype} tensor of shape {list(t.shape)}" if isinstance(t, torch.Tensor)
             else type(t).__name__)
    raise ValueError(f"{name}: got {given}; expected a {kind} tensor broadcastable to "
                     f"{list(full)}")


def reference_attention(q, k, v, *, causal=False, mask=None, attn_bias=None, dropout_p=0.0,
                        training=False):
    """Plain PyTorch masked attention with the module's semantics (the ``flash=False`` path).

    Computed in the inputs' dtype; masked scores are replaced by the row's maximum over the kept
    ones before ``exp``, so that empty rows give exact zeros and zero gradients and no kept
    score, however low, overflows ``exp``.
    """
    lq, lk = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if attn_bias is not None:
        scores = scores + attn_bias.to(scores.dtype)
    keep = torch.ones(scores.shape, dtype=torch.bool, device=q.device)
    if causal:
        i = torch.arange(lq, device=q.device).view(lq, 1) + (lk - lq)
        keep = keep & (torch.arange(lk, device=q.device).view(1, lk) <= i)
    if mask is not None:
        keep = keep & mask
    row_max = scores.detach().masked_fill(~keep, -math.inf).amax(-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    # a masked score takes the row's maximum (exp 1, then zeroed): 0 in its place overflowed
    # exp where every kept score was below -88.7 (float32, bfloat16) or -11.1 (float16): NaN
    weights = torch.exp(torch.where(keep, scores, row_max) - row_max) * keep
    denom = weights.sum(-1, keepdim=True)
    probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    if dropout_p and training:
        probs = nn.functional.dropout(probs, dropout_p, training=True)
    return torch.matmul(probs, v)


class FlashAttention(nn.Module):
    """``FlashAttention(causal=False, dropout=0.0, flash=True)``; ``forward(q, k, v, mask=None,
    attn_bias=None)`` -> ``[B, H, Lq, D]`` (see the module docstring for the semantics)."""

    def __init__(self, causal=False, dropout=0.0, flash=True):
        super().__init__()
        self.causal = check_bool("causal", causal)
        self.dropout = check_dropout("dropout", dropout)
        self.flash = check_bool("flash", flash)
        if self.flash:  # the pattern and its ops made now, before any torch.compile trace
            prepare("causal" if self.causal else "all")

    def forward(self, q, k, v, mask=None, attn_bias=None):
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_tensor(name, t, 4)
        b, h, lq, d = q.shape
        if k.shape[:2] != q.shape[:2] or k.shape[3] != d or v.shape != k.shape:
            raise ValueError(f"k, v: got shapes {list(k.shape)} and {list(v.shape)}; expected "
                             f"[{b}, {h}, Lk, {d}] each")
        # The same checks on both paths (the plain path would otherwise fail inside torch).
        for name, t in (("q", q), ("k", k)):
            check_sizes(name, t, "[B, H, L, D]")
        for name, t in (("k", k), ("v", v)):
            check_like_q(name, t, q)
        full = (b, h, lq, k.shape[2])
        mask = _broadcastable("mask", mask, full, boolean=True, device=q.device)
        attn_bias = _broadcastable("attn_bias", attn_bias, full, boolean=False,
                                   device=q.device)
        p = self.dropout if self.training else 0.0
        if not self.flash:
            return reference_attention(q, k, v, causal=self.causal, mask=mask,
                                       attn_bias=attn_bias, dropout_p=p, training=self.training)
        return attend(q, k, v, "causal" if self.causal else "all", attn_mask=mask,
                      attn_bias=attn_bias, dropout_p=p)

    def extra_repr(self) -> str:
        return f"causal={self.causal}, dropout={self.dropout}, flash={self.flash}"
