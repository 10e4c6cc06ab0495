"""Blocked attention in plain PyTorch: the CPU path, and the fallback where Triton cannot run.

It walks the component plan (``plan.build_plan``) instead of a dense mask: for every component,
residue class, head group and query block it gathers the rows of that block and the keys of its
kept key blocks (full blocks first, then partial ones), computes those scores only, masks the
partial columns with ``predicate.evaluate`` and merges the partial softmax results of all
components by log-sum-exp.  Memory is proportional to one query block times its kept keys (plus
the index lists, proportional to the kept blocks) — never ``Lq x Lk``.

The backward pass is written by hand, FlashAttention style: it recomputes each block's scores,
uses the final ``lse`` and ``delta = rowsum(dO * O)`` and accumulates ``dq``/``dk``/``dv`` (and
``dbias``) with ``index_put_(accumulate=True)``.  Everything is computed in float32.

``TorchBackend(expr, block_m, block_n)`` has ``attention_forward``,
``attention_forward_with_plan`` and ``attention_backward`` with the same signatures as a generated
Triton module (inputs already validated by ``validate.py``),
so the runtime wraps both the same way.

Dropout (training only) drops pair ``(b, h, q, k)`` when a counter-based hash of
``(seed, b * Hq + h, q, k)`` falls below ``dropout_p * 2^32`` (``dropout_keep``): the decision
does not depend on how the work is blocked, and the backward pass regenerates it from the seed.
"""
from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from typing import List, Tuple

import torch

from . import ir
from .predicate import MASK32, evaluate, mix32

_NEG_INF = float("-inf")


@dataclass(frozen=True, eq=False)
class Work:
    """One query block of one component class and head group: what to gather and how to mask.

    ``k_idx`` lists the original key positions of the kept blocks, full blocks first: columns
    ``n_full:`` come from partial blocks and are masked with ``predicate``.
    """

    predicate: ir.Node
    heads: torch.Tensor      # int64 [Hg] query heads of the group
    q_idx: torch.Tensor      # int64 [m] original query positions
    k_idx: torch.Tensor      # int64 [n] original key positions
    n_full: int


def _build_plan(expr, q_len, k_len, **options):
    from .plan import build_plan  # lazy: importing this module must not need the layout stage

    return build_plan(expr, q_len, k_len, **options)


def uses_segments(expr) -> bool:
    return any(isinstance(node, ir.Segment) for node in expr.walk())


def _cat(parts):
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)


def plan_work(plan) -> List[Work]:
    """The work items of a plan, one per (component, class, head group, non-empty query block)."""
    items = []
    for comp in plan.components:
        for q_axis, k_axis, lay in zip(comp.q_axes, comp.k_axes, comp.layouts):
            bm, bn, nqb = lay.block_m, lay.block_n, lay.num_q_blocks
            fo, fi = lay.full_offsets.cpu().tolist(), lay.full_indices.cpu().tolist()
            po, pi = lay.partial_offsets.cpu().tolist(), lay.partial_indices.cpu().tolist()

            def keys(blocks):
                return _cat([k_axis.positions(n * bn, min((n + 1) * bn, k_axis.length)).long()
                             for n in blocks])

            for g, heads in enumerate(lay.groups):
                head_t = torch.as_tensor(list(heads), dtype=torch.int64)
                for m in range(nqb):
                    row = g * nqb + m
                    full, part = fi[fo[row]:fo[row + 1]], pi[po[row]:po[row + 1]]
                    if not full and not part:
                        continue
                    q_idx = q_axis.positions(m * bm, min((m + 1) * bm, q_axis.length)).long()
                    k_full, k_part = keys(full), keys(part)
                    if q_idx.numel() == 0 or k_full.numel() + k_part.numel() == 0:
                        continue
                    items.append(Work(comp.predicate, head_t, q_idx,
                                      torch.cat([k_full, k_part]), int(k_full.numel())))
    return items


# The work of recent geometries, least recently used first: at most WORK_ENTRIES of them and
# WORK_BYTES of index tensors (one causal geometry at 16k tokens holds ~17 MB of key indices, so
# a count alone let a run of varying lengths keep gigabytes).
WORK_ENTRIES, WORK_BYTES = 64, 256 << 20
_WORK: "collections.OrderedDict" = collections.OrderedDict()
_WORK_LOCK = threading.Lock()


def _cached_work(expr, q_len, k_len, block_m, block_n, num_heads, device) -> Tuple[Work, ...]:
    key = (expr, q_len, k_len, block_m, block_n, num_heads, device)
    with _WORK_LOCK:
        hit = _WORK.get(key)
        if hit is not None:
            _WORK.move_to_end(key)
            return hit[0]
    plan = _build_plan(expr, q_len, k_len, block_m=block_m, block_n=block_n, num_heads=num_heads)
    work = tuple(_to_device(w, device) for w in plan_work(plan))
    size = sum(t.numel() * t.element_size() for w in work for t in (w.heads, w.q_idx, w.k_idx))
    with _WORK_LOCK:
        _WORK[key] = (work, size)
        total = sum(entry[1] for entry in _WORK.values())
        while len(_WORK) > 1 and (len(_WORK) > WORK_ENTRIES or total > WORK_BYTES):
            total -= _WORK.popitem(last=False)[1][1]
    return work


def _to_device(w: Work, device) -> Work:
    if device.type == "cpu":
        return w
    return Work(w.predicate, w.heads.to(device), w.q_idx.to(device), w.k_idx.to(device), w.n_full)


def dropout_keep(seed: int, b, h, q, k, num_heads: int, p: float):
    """Keep decision of dropout for pairs ``(b, h, q, k)`` (broadcasting int64 tensors)."""
    x = mix32(torch.as_tensor(seed & MASK32, dtype=torch.int64, device=q.device))
    x = mix32((x + ((seed >> 32) & MASK32)) & MASK32)
    x = mix32((x + ((b * num_heads + h) & MASK32)) & MASK32)
    x = mix32((x + (q & MASK32)) & MASK32)
    x = mix32((x + (k & MASK32)) & MASK32)
    return x >= int(p * 4294967296.0)


class _Ctx:
    """Per-call tensors shared by forward and backward (one batch slice at a time)."""

    def __init__(self, q, k, v, scale, seg_q, seg_k, kpm, attn_mask, attn_bias, dropout_p, seed):
        self.q, self.k, self.v = q, k, v
        self.scale, self.dropout_p, self.seed = scale, dropout_p, int(seed)
        self.seg_q, self.seg_k = seg_q, seg_k
        self.kpm, self.attn_mask, self.attn_bias = kpm, attn_mask, attn_bias
        self.hq, self.lq, self.lk = q.shape[1], q.shape[2], k.shape[2]
        self.rep = q.shape[1] // k.shape[1]


class TorchBackend:
    """Blocked attention for one bound pattern expression at the given block sizes."""

    def __init__(self, expr, block_m: int = 64, block_n: int = 64):
        self.expr = expr
        self.block_m, self.block_n = int(block_m), int(block_n)
        self.needs_segments = uses_segments(expr)

    # ------------------------------------------------------------------ plan slices
    def _slices(self, c: _Ctx):
        """``(batch indices, work items, seg_q row, seg_k row)``; segment plans are per call."""
        batch = c.q.shape[0]
        device = c.q.device
        if not self.needs_segments:
            work = _cached_work(self.expr, c.lq, c.lk, self.block_m, self.block_n, c.hq, device)
            yield torch.arange(batch, device=device), work, None, None
            return
        rows = c.seg_q.shape[0] if c.seg_k.shape[0] == c.seg_q.shape[0] else batch
        for b in range(rows):
            sq = c.seg_q[min(b, c.seg_q.shape[0] - 1)].long()
            sk = c.seg_k[min(b, c.seg_k.shape[0] - 1)].long()
            plan = _build_plan(self.expr, c.lq, c.lk, block_m=self.block_m, block_n=self.block_n,
                              num_heads=c.hq, segments=(sq.cpu(), sk.cpu()))
            work = [_to_device(w, device) for w in plan_work(plan)]
            bsel = (torch.arange(batch, device=device) if rows == 1
                    else torch.tensor([b], device=device))
            yield bsel, work, sq, sk

    # ------------------------------------------------------------------ one block
    def _scores(self, c: _Ctx, w: Work, bsel, sq, sk):
        """Gathered q, k, v (fp32), the masked scaled scores and the dropout keep mask."""
        bi, hi = bsel.view(-1, 1, 1, 1), w.heads.view(1, -1, 1, 1)
        qi, ki = w.q_idx.view(1, 1, -1, 1), w.k_idx.view(1, 1, 1, -1)
        # One gather per tensor (cost proportional to the block, never to the whole tensor).
        rows = (bsel.view(-1, 1, 1), w.heads.view(1, -1, 1), w.q_idx.view(1, 1, -1))
        keys = (bsel.view(-1, 1, 1), (w.heads // c.rep).view(1, -1, 1), w.k_idx.view(1, 1, -1))
        qb, kb, vb = c.q[rows].float(), c.k[keys].float(), c.v[keys].float()
        s = torch.matmul(qb, kb.transpose(-1, -2)) * c.scale
        keep = None
        if w.n_full < w.k_idx.numel():
            part = evaluate(w.predicate, w.q_idx.view(-1, 1), w.k_idx[w.n_full:].view(1, -1),
                            q_len=c.lq, k_len=c.lk, heads=w.heads.view(-1, 1, 1),
                            num_heads=c.hq, seg_q=sq, seg_k=sk)
            ones = torch.ones(part.shape[:-1] + (w.n_full,), dtype=torch.bool, device=s.device)
            keep = torch.cat([ones, part], dim=-1).unsqueeze(0)
        extra = []
        if c.kpm is not None:
            extra.append(c.kpm[bsel.view(-1, 1), w.k_idx.view(1, -1)].view(bsel.numel(), 1, 1, -1))
        if c.attn_mask is not None:
            extra.append(c.attn_mask[bi, hi, qi, ki])
        if c.attn_bias is not None:
            s = s + c.attn_bias[bi, hi, qi, ki].float()
            extra.append(s != _NEG_INF)
        for e in extra:
            keep = e if keep is None else keep & e
        if keep is not None:
            s = s.masked_fill(~keep, _NEG_INF)
        drop = None
        if c.dropout_p > 0:
            drop = dropout_keep(c.seed, bi, hi, qi, ki, c.hq, c.dropout_p)
        return qb, kb, vb, s, drop

    # ------------------------------------------------------------------ forward
    def attention_forward(self, q, k, v, scale, seg_q, seg_k, key_padding_mask, attn_mask,
                          attn_bias, dropout_p, seed):
        """``(out [B, Hq, Lq, D] in q's dtype, lse [B, Hq, Lq] float32)``."""
        c = _Ctx(q, k, v, scale, seg_q, seg_k, key_padding_mask, attn_mask, attn_bias,
                 dropout_p, seed)
        batch, hq, lq, dim = q.shape
        out = torch.zeros(batch, hq, lq, dim, dtype=torch.float32, device=q.device)
        lse = torch.full((batch, hq, lq), _NEG_INF, dtype=torch.float32, device=q.device)
        with torch.no_grad():
            for bsel, work, sq, sk in self._slices(c):
                for w in work:
                    self._forward_block(c, w, bsel, sq, sk, out, lse)
        return out.to(q.dtype), lse

    def attention_forward_with_plan(self, q, k, v, scale, seg_q, seg_k, key_padding_mask,
                                    attn_mask, attn_bias, dropout_p, seed, need_dbias):
        """``attention_forward``'s ``(out, lse)`` and its backward's plan: None (a generated
        module's plan holds its launches; here the backward has nothing to prepare)."""
        return (*self.attention_forward(q, k, v, scale, seg_q, seg_k, key_padding_mask,
                                        attn_mask, attn_bias, dropout_p, seed), None)

    def _forward_block(self, c, w, bsel, sq, sk, out, lse):
        _, _, vb, s, drop = self._scores(c, w, bsel, sq, sk)
        mx = s.amax(-1)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = torch.exp(s - mx.unsqueeze(-1))
        total = e.sum(-1)
        nonempty = total > 0
        block_lse = torch.where(nonempty, torch.log(torch.where(nonempty, total, 1.0)) + mx,
                                torch.full_like(total, _NEG_INF))
        p = e / torch.where(nonempty, total, 1.0).unsqueeze(-1)
        if drop is not None:
            p = p * drop / (1.0 - c.dropout_p)
        block_out = torch.matmul(p, vb)
        idx = (bsel.view(-1, 1, 1), w.heads.view(1, -1, 1), w.q_idx.view(1, 1, -1))
        old_lse, old_out = lse[idx], out[idx]
        new_lse = torch.logaddexp(old_lse, block_lse)
        live = torch.isfinite(new_lse)
        safe = torch.where(live, new_lse, 0.0)
        w_old = torch.where(live, torch.exp(old_lse - safe), 0.0).unsqueeze(-1)
        w_new = torch.where(live, torch.exp(block_lse - safe), 0.0).unsqueeze(-1)
        out.index_put_(idx, old_out * w_old + block_out * w_new)
        lse.index_put_(idx, new_lse)

    # ------------------------------------------------------------------ backward
    def attention_backward(self, do, q, k, v, out, lse, scale, seg_q, seg_k, key_padding_mask,
                           attn_mask, attn_bias, dropout_p, seed, need_dbias, plan=None):
        """``(dq, dk, dv, dbias)``; ``dbias`` (float32) has ``attn_bias``'s shape with its
        broadcast (stride-0) dimensions reduced to 1, or is ``None``.  ``plan``: the forward's
        (None; accepted as a generated module's backward takes it)."""
        c = _Ctx(q, k, v, scale, seg_q, seg_k, key_padding_mask, attn_mask, attn_bias,
                 dropout_p, seed)
        f32 = dict(dtype=torch.float32, device=q.device)
        dq, dk, dv = (torch.zeros(t.shape, **f32) for t in (q, k, v))
        dbias = None
        if need_dbias and attn_bias is not None:
            shape = [1 if st == 0 else n for n, st in zip(attn_bias.shape, attn_bias.stride())]
            dbias = torch.zeros(shape, **f32)
        delta = (do.float() * out.float()).sum(-1)
        with torch.no_grad():
            for bsel, work, sq, sk in self._slices(c):
                for w in work:
                    self._backward_block(c, w, bsel, sq, sk, do, lse, delta, dq, dk, dv, dbias)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbias

    def _backward_block(self, c, w, bsel, sq, sk, do, lse, delta, dq, dk, dv, dbias):
        qb, kb, vb, s, drop = self._scores(c, w, bsel, sq, sk)
        rows = (bsel.view(-1, 1, 1), w.heads.view(1, -1, 1), w.q_idx.view(1, 1, -1))
        row_lse = lse[rows]
        row_lse = torch.where(torch.isfinite(row_lse), row_lse, math.inf).unsqueeze(-1)
        p = torch.exp(s - row_lse)  # masked scores and empty rows give exactly 0
        dob = do[rows].float()
        pd = p if drop is None else p * drop / (1.0 - c.dropout_p)
        dp = torch.matmul(dob, vb.transpose(-1, -2))
        if drop is not None:
            dp = dp * drop / (1.0 - c.dropout_p)
        ds = p * (dp - delta[rows].unsqueeze(-1))
        kv_heads = (w.heads // c.rep).view(1, -1, 1)
        keys = (bsel.view(-1, 1, 1), kv_heads, w.k_idx.view(1, 1, -1))
        dv.index_put_(keys, torch.matmul(pd.transpose(-1, -2), dob), accumulate=True)
        dk.index_put_(keys, torch.matmul(ds.transpose(-1, -2), qb) * c.scale, accumulate=True)
        dq.index_put_(rows, torch.matmul(ds, kb) * c.scale, accumulate=True)
        if dbias is not None:
            idx = [bsel.view(-1, 1, 1, 1), w.heads.view(1, -1, 1, 1),
                   w.q_idx.view(1, 1, -1, 1), w.k_idx.view(1, 1, 1, -1)]
            idx = [i if n > 1 else torch.zeros_like(i) for i, n in zip(idx, dbias.shape)]
            dbias.index_put_(tuple(idx), ds, accumulate=True)
