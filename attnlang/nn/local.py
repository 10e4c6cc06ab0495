"""``LocalAttention`` with the API and the numbers of ``local-attention`` 1.11.2, on attnlang.

The package splits the sequence into buckets of ``window_size`` tokens; a query attends to the
keys of its own bucket, ``look_backward`` buckets before it and ``look_forward`` after it, which
is the attnlang pattern ``chunk(w, look_backward, look_forward)`` (``& causal`` when causal).
``exact_windowsize`` narrows that to ``window(w * look_backward, w * look_forward)``
(``window(w * look_backward, 0)`` when causal).  Key padding masks become ``key_padding_mask``,
the package's per-bucket ``attn_bias`` ``[heads, w, (look_backward + look_forward + 1) * w]``
becomes the equivalent dense bias of the same pairs, and ``shared_qk`` (keys l2-normalised, a
query attends to itself only when nothing else is left) becomes the pattern ``P & ~window(0)``
plus an exact fallback on the query's own key: the package gives the self pair the logit
``-5e4``, so we merge that one term into the kernel's result through its log-sum-exp.

Rotary embeddings are applied as the package applies them, including a quirk: it gives the
queries of a bucket the *last* positions of the look-around window, so with ``look_forward > 0``
the rotary (and xpos) offset between a query and a key is the true distance plus
``look_forward * window_size``.  We reproduce that (query positions are shifted by that amount).

Deliberate differences (where the package is wrong), documented in docs/nn/local_attention.md:
padding added by ``autopad`` is never attended (the package lets real queries attend to the zero
padding when ``causal=False`` and no mask is given), and a query with no key left outputs zeros
(the package outputs the mean of the look-around values, pad values of ``-1`` included).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import check_dropout
from ._common import attend, check_bool, check_int, check_sizes, check_tensor, prepare
from .rotary import RotaryEmbedding

__all__ = ["LocalAttention", "local_pattern"]

TOKEN_SELF_ATTN_VALUE = -5e4  # the package's logit for a query's own key under shared_qk
_LN_MIN_XPOS_SCALE = math.log(1.4 / 0.4)  # |ln| of the smallest xpos base (0.4 / 1.4)
_BIAS_CHUNK = 256  # with attn_bias, queries per call (the dense bias is [H, L, L] per call)


def local_pattern(window_size: int, causal: bool, look_backward: int, look_forward: int,
                  exact_window=None, shared_qk: bool = False) -> str:
    """The attnlang pattern of ``local-attention``'s mask (``exact_window`` is the exact
    windowsize's unit, the module's ``window_size``; None for bucketed windows)."""
    w, lb, lf = window_size, look_backward, look_forward
    text = f"causal & chunk({w}, {lb}, 0)" if causal else f"chunk({w}, {lb}, {lf})"
    if exact_window is not None:
        win = (f"window({exact_window * lb}, 0)" if causal
               else f"window({exact_window * lb}, {exact_window * lf})")
        # With the bucket size equal to the exact window's unit the window already lies inside
        # the look-around buckets (and is causal when it looks 0 ahead), so it is the pattern.
        text = win if exact_window == w else f"{text} & {win}"
    if shared_qk:
        text = f"({text}) & ~window(0)"
    return text


class LocalAttention(nn.Module):
    """Bucketed local attention, argument for argument ``local_attention.LocalAttention``.

    ``forward(q, k, v, mask=None, input_mask=None, attn_bias=None, window_size=None)``: ``q``,
    ``k``, ``v`` ``[..., n, d]`` (any leading dimensions, flattened as the package does);
    ``mask`` (or ``input_mask``) bool ``[B', n]`` with ``B'`` dividing the flattened batch
    (row ``i`` of the flattened batch uses mask row ``i // (batch / B')``); ``attn_bias``
    ``[h, w, (look_backward + look_forward + 1) * w]`` added to the scores of every bucket (row
    ``i`` uses ``attn_bias[i % h]``); ``window_size`` overrides the bucket size (xpos only).
    ``dropout`` defaults to 0.1 as in zeta's documentation (the package's default is 0).
    """

    def __init__(self, window_size, causal=False, look_backward=1, look_forward=None,
                 dropout=0.1, shared_qk=False, rel_pos_emb_config=None, dim=None,
                 autopad=False, exact_windowsize=False, scale=None, use_rotary_pos_emb=True,
                 use_xpos=False, xpos_scale_base=None):
        super().__init__()
        self.window_size = check_int("window_size", window_size, 1)
        for name, flag in (("causal", causal), ("shared_qk", shared_qk), ("autopad", autopad),
                           ("exact_windowsize", exact_windowsize),
                           ("use_rotary_pos_emb", use_rotary_pos_emb), ("use_xpos", use_xpos)):
            check_bool(name, flag)
        dropout = check_dropout("dropout", dropout)
        look_forward = (0 if causal else 1) if look_forward is None else look_forward
        self.look_backward = check_int("look_backward", look_backward, 0)
        self.look_forward = check_int("look_forward", look_forward, 0)
        if causal and look_forward > 0:
            raise ValueError(f"look_forward: got {look_forward}; expected 0 when causal=True "
                             "(a causal query cannot look forward)")
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                                  or not scale > 0):
            raise ValueError(f"scale: got {scale!r}; expected a positive number or None")
        self.causal = bool(causal)
        self.scale = scale
        self.autopad = bool(autopad)
        self.exact_windowsize = bool(exact_windowsize)
        self.shared_qk = bool(shared_qk)
        self.dropout = nn.Dropout(dropout)
        self.use_xpos = bool(use_xpos)
        self.rel_pos = None
        if use_rotary_pos_emb and (rel_pos_emb_config is not None or dim is not None):
            if rel_pos_emb_config is not None:  # deprecated spelling kept by the package
                if not isinstance(rel_pos_emb_config, (tuple, list)) or not rel_pos_emb_config:
                    raise ValueError(f"rel_pos_emb_config: got {rel_pos_emb_config!r}; expected "
                                     "a tuple (dim, heads) whose first item is the head dim "
                                     "(deprecated: pass dim=)")
                dim = rel_pos_emb_config[0]
            base = window_size // 2 if xpos_scale_base is None else xpos_scale_base
            self.rel_pos = RotaryEmbedding(dim, scale_base=base, use_xpos=use_xpos)
        # the pattern and its ops made now, before any torch.compile trace reaches forward
        prepare(local_pattern(self.window_size, self.causal, self.look_backward,
                              self.look_forward,
                              self.window_size if self.exact_windowsize else None,
                              self.shared_qk))

    # ------------------------------------------------------------------ argument handling

    def _key_rows(self, mask, b, n_orig, n):
        """Per flattened-batch-row key validity ``[b, n]`` (None when every key is valid) and
        the number of consecutive rows sharing one mask row."""
        if mask is None:
            if n == n_orig:
                return None, b
            rows = torch.arange(n) < n_orig
            return rows.unsqueeze(0).expand(b, n), b
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() < 1 \
                or mask.shape[-1] != n_orig:
            given = (f"a {mask.dtype} tensor of shape {list(mask.shape)}"
                     if isinstance(mask, torch.Tensor) else type(mask).__name__)
            raise ValueError(f"mask: got {given}; expected a bool tensor [batch, {n_orig}] "
                             "(True = keep)")
        flat = mask.reshape(-1, n_orig)
        if flat.shape[0] == 0 or b % flat.shape[0]:
            raise ValueError(f"mask: got {flat.shape[0]} rows; expected a number of rows that "
                             f"divides the flattened batch of q ({b})")
        per = b // flat.shape[0]
        rows = flat.repeat_interleave(per, dim=0)
        if n > n_orig:
            rows = F.pad(rows, (0, n - n_orig), value=False)
        return rows, per

    def _check_bias(self, attn_bias, b, w):
        if attn_bias is None:
            return None
        span = (self.look_backward + self.look_forward + 1) * w
        check_tensor("attn_bias", attn_bias, 3)
        if attn_bias.shape[1:] != (w, span) or attn_bias.shape[0] == 0 \
                or b % attn_bias.shape[0]:
            raise ValueError(f"attn_bias: got shape {list(attn_bias.shape)}; expected [heads, "
                             f"{w}, {span}] with heads dividing the flattened batch ({b})")
        return attn_bias

    def _queries_per_call(self, nb, w, dtype, has_bias):
        """Buckets of queries per kernel call: all of them unless xpos factors would overflow
        over the call's span or a dense bias would grow too large."""
        per = nb
        lb, lf = self.look_backward, self.look_forward
        if self.rel_pos is not None and self.use_xpos:
            budget = 5.0 if dtype == torch.float16 else 40.0  # |ln| of the largest factor
            span = 2.0 * budget * float(self.rel_pos.scale_base) / _LN_MIN_XPOS_SCALE
            per = min(per, max(1, int(span // w) - lb - 2 * lf))
        if has_bias:
            per = min(per, max(1, -(-_BIAS_CHUNK // w)))
        return per

    # ------------------------------------------------------------------ the computation

    def forward(self, q, k, v, mask=None, input_mask=None, attn_bias=None, window_size=None):
        mask = input_mask if mask is None else mask
        if window_size is not None and not self.use_xpos:
            raise ValueError(f"window_size: got {window_size!r}; expected None (window size "
                             "extrapolation needs use_xpos=True)")
        w = self.window_size if window_size is None else check_int("window_size", window_size, 1)
        for name, t in (("q", q), ("k", k), ("v", v)):
            check_tensor(name, t)
        if q.dim() < 2 or k.shape != q.shape or v.shape != q.shape:
            raise ValueError(f"q, k, v: got shapes {list(q.shape)}, {list(k.shape)}, "
                             f"{list(v.shape)}; expected one shape [..., n, d]")
        check_sizes("q", q, "[..., n, d]")
        lead, n_orig, d = q.shape[:-2], q.shape[-2], q.shape[-1]
        q, k, v = (t.reshape(-1, n_orig, d) for t in (q, k, v))
        b, n = q.shape[0], n_orig
        if self.autopad and n % self.window_size:
            n = -(-n // self.window_size) * self.window_size
            q, k, v = (F.pad(t, (0, 0, 0, n - n_orig)) for t in (q, k, v))
        if n % w:
            raise ValueError(f"q: got sequence length {n}; expected a multiple of window_size "
                             f"({w}) for local attention (or autopad=True)")
        rows, per_row = self._key_rows(mask, b, n_orig, n)
        attn_bias = self._check_bias(attn_bias, b, w)
        if self.shared_qk:
            k = F.normalize(k, dim=-1).type(k.dtype)
        text = local_pattern(w, self.causal, self.look_backward, self.look_forward,
                             self.window_size if self.exact_windowsize else None,
                             self.shared_qk)
        nb = n // w
        per = self._queries_per_call(nb, w, q.dtype, attn_bias is not None)
        outs = []
        for g0 in range(0, nb, per):
            g1 = min(nb, g0 + per)
            s = max(0, g0 - self.look_backward) * w
            e = min(nb, g1 + self.look_forward) * w
            out = self._attend_span(q[:, s:e], k[:, s:e], v[:, s:e],
                                    None if rows is None else rows[:, s:e], per_row,
                                    attn_bias, w, text)
            outs.append(out[:, g0 * w - s:g1 * w - s])
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return out[:, :n_orig].reshape(*lead, n_orig, d)

    def _attend_span(self, q, k, v, rows, per_row, attn_bias, w, text):
        """Self-attention over one contiguous span of whole buckets (positions relative to the
        span's start; the pattern is shift-invariant over whole buckets)."""
        b, length, d = q.shape
        if self.rel_pos is not None:
            shift = self.look_forward * w
            pos = torch.arange(length)
            center = (length + shift) / 2.0
            q = self.rel_pos.rotate(q, pos + shift, center)
            k = self.rel_pos.rotate(k, pos, center, inverse_scale=True)
        heads = 1
        bias = None
        if attn_bias is not None:
            dense = self._dense_bias(attn_bias, length, w)
            if per_row % dense.shape[0] == 0:
                heads = dense.shape[0]
                bias = dense.unsqueeze(0)
            else:  # mask rows do not line up with bias heads: one bias per flattened row
                bias = dense.repeat(b // dense.shape[0], 1, 1).unsqueeze(1)
        shape = (b // heads, heads, length, d)
        kpm = None if rows is None else rows.reshape(b // heads, heads, length)[:, 0]
        if kpm is not None:
            kpm = kpm.to(q.device)
        p = self.dropout.p if self.training else 0.0
        result = attend(q.reshape(shape), k.reshape(shape), v.reshape(shape), text,
                        key_padding_mask=kpm, attn_bias=bias, scale=self.scale, dropout_p=p,
                        return_lse=self.shared_qk)
        if not self.shared_qk:
            return result.reshape(b, length, d)
        out, lse = result
        return self._merge_self(out.reshape(b, length, d), lse.reshape(b, length), v, rows, p)

    def _merge_self(self, out, lse, v, rows, p):
        """Add the query's own key with the package's logit ``-5e4`` to the kernel's result
        (which excluded it): an exact two-term softmax merge through the log-sum-exp.  The
        weights are taken as constants for autograd; their derivative is zero unless the other
        keys' log-sum-exp is within float range of ``-5e4``."""
        lse = lse.detach().to(torch.float32)
        self_logit = torch.full_like(lse, TOKEN_SELF_ATTN_VALUE)
        if rows is not None:
            self_logit = self_logit.masked_fill(~rows.to(lse.device), -math.inf)
        top = torch.maximum(lse, self_logit)
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        w_other, w_self = torch.exp(lse - top), torch.exp(self_logit - top)
        total = w_other + w_self
        total = torch.where(total > 0, total, torch.ones_like(total))
        w_other, w_self = w_other / total, w_self / total
        if p:
            keep = torch.rand(w_self.shape, device=w_self.device) >= p
            w_self = w_self * keep / (1.0 - p)
        # in out's dtype (under autocast the kernel's, not v's)
        return (out * w_other.unsqueeze(-1).to(out.dtype)
                + v.to(out.dtype) * w_self.unsqueeze(-1).to(out.dtype))

    def _dense_bias(self, attn_bias, length, w):
        """The package's per-bucket bias as a dense ``[h, length, length]`` bias over a span of
        whole buckets (zero outside the look-around, where the pattern masks anyway)."""
        lb, lf = self.look_backward, self.look_forward
        pos = torch.arange(length, device=attn_bias.device)
        rel = (pos // w)[None, :] - (pos // w)[:, None] + lb  # key bucket - query bucket + lb
        inside = (rel >= 0) & (rel <= lb + lf)
        col = (rel.clamp(0, lb + lf) * w + (pos % w)[None, :])
        dense = attn_bias[:, (pos % w)[:, None], col]
        return dense.masked_fill(~inside, 0.0)

    def extra_repr(self) -> str:
        return (f"window_size={self.window_size}, causal={self.causal}, "
                f"look_backward={self.look_backward}, look_forward={self.look_forward}, "
                f"exact_windowsize={self.exact_windowsize}, shared_qk={self.shared_qk}, "
                f"autopad={self.autopad}, rotary={self.rel_pos is not None}, "
                f"xpos={self.use_xpos}")
