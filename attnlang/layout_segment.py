"""Direct, lean block layouts for document masks: ``segment``, ``causal & segment`` and
``window(b, a) & segment`` over identity axes.

Document masking rebuilds the layout for every batch of new segment ids, so this path is built
for few tensor operations and one host synchronisation.  It applies when every key id occupies
one contiguous run of ``seg_k`` (documents are contiguous; ids need not be sorted).  Then the keys
query ``q`` keeps form ONE interval: its document's key run ``[ks, ke)`` clipped to the band
``[p - back, p + ahead]`` (``p = q + Lk - Lq``).  Per query position that interval's key blocks
(touched, and fully covered) are added to a difference array over (query block, key block); a
cumulative sum along key blocks counts, per block pair, the queries that reach it (any: PARTIAL
or FULL) and the queries that cover it entirely (all of the block's queries: FULL).  Cost:
``O(Lq + Lk log Lk + Qb * Kb)`` in about 40 fixed-shape tensor operations, no Python loop over
blocks or documents; the single synchronisation reads the CSR sizes (and whether the ids were
valid).  Ids are first assumed sorted (no sort needed); if they are not, the ids are sorted and
checked for one run per id; if that fails too, ``classify`` takes the general path.

The result equals the general classifier's exactly, including its one inexact case: there a
block that is partial for both the band and the segment is UNKNOWN and settled element-wise,
unless all such blocks exceed ``refine_limit`` pairs, when they are reported PARTIAL and the
layout is marked inexact.  That count is reproduced here when a cheap bound says it might matter.

Only the standard library, torch and ``ir`` are used (``attnlang compile`` copies this module).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import ir
from .errors import bad_argument

BIG = 1 << 48  # an unbounded band edge (as in layout_prims)
DENSE_LIMIT = 1 << 24  # block pairs held as a dense [Qb, Kb] array


def segment_pair(segments, q_len: int, k_len: int):
    """``segments`` (None, one tensor of ids when q_len == k_len, or a pair (seg_q, seg_k)) as
    ``(seg_q [Lq], seg_k [Lk])`` int64 tensors on the query ids' device, or None; anything else
    is `bad_argument`'s error.  The dense reference (`reference.mask`) and the layout
    planner both take it."""
    if segments is None:
        return None
    pair = isinstance(segments, (tuple, list)) and len(segments) == 2 and not all(
        isinstance(s, int) for s in segments)
    try:
        seg_q, seg_k = (torch.as_tensor(s) for s in segments) if pair else \
            (torch.as_tensor(segments),) * 2
    except (TypeError, ValueError, RuntimeError):  # not numbers at all
        raise bad_argument("segments", segments, "a 1-D integer tensor of segment ids, or a "
                           "pair (seg_q, seg_k) of them") from None
    if not pair and q_len != k_len:
        raise bad_argument("segments", f"one tensor with q_len={q_len} != k_len={k_len}",
                           "a pair (seg_q, seg_k) when q_len != k_len")
    for name, seg, length in (("segments (query ids)", seg_q, q_len),
                              ("segments (key ids)", seg_k, k_len)):
        if seg.dim() != 1 or seg.shape[0] != length or seg.is_floating_point() \
                or seg.is_complex() or seg.dtype == torch.bool:
            raise bad_argument(name, f"tensor of shape {tuple(seg.shape)} and dtype {seg.dtype}",
                               f"a 1-D integer tensor of length {length}")
    return seg_q.to(torch.int64), seg_k.to(seg_q.device, torch.int64)


def band_of(expr) -> Optional[Tuple[int, int]]:
    """``(back, ahead)`` when ``expr`` is ``segment``, ``causal & segment`` or
    ``window(back, ahead) & segment`` (either order); None otherwise."""
    if isinstance(expr, ir.Segment):
        return BIG, BIG
    if not isinstance(expr, ir.Intersect):
        return None
    band, seg = expr.left, expr.right
    if isinstance(band, ir.Segment):
        band, seg = seg, band
    if not isinstance(seg, ir.Segment):
        return None
    if isinstance(band, ir.Causal):
        return BIG, 0
    if isinstance(band, ir.Window):
        return int(ir.const(band.back)), int(ir.const(band.ahead))
    return None


def _reach(lo, hi, rows, width: int, bn: int, k_len: int, nk: int):
    """Difference-array entries for key intervals ``[lo, hi)`` of queries in block ``rows``:
    (flat indices, weights) for the touched key blocks and for the fully covered ones."""
    w = (hi > lo).to(torch.int64)
    a0 = torch.div(lo, bn, rounding_mode="floor").clamp(0, nk)
    a1 = (torch.div(hi - 1, bn, rounding_mode="floor") + 1).clamp(0, nk)
    f0 = torch.div(lo + (bn - 1), bn, rounding_mode="floor").clamp(0, nk)
    f1 = torch.where(hi >= k_len, nk, torch.div(hi, bn, rounding_mode="floor")).clamp(0, nk)
    wf = w * (f1 > f0)
    base = rows * width
    return [base + a0, base + a1, base + f0, base + f1], [w, -w, wf, -wf]


def classes(seg_q, seg_k, q_len: int, k_len: int, bm: int, bn: int, back: int, ahead: int,
            refine_limit: int, presorted: bool = True):
    """Dense int8 classes ``[Qb, Kb]`` and device scalars (ids valid, over the refine limit);
    None when the block grid is too large for a dense array.

    ``presorted``: assume ``seg_k`` is non-decreasing (the usual document packing: no sort
    needed, and a key id's first position is its ``searchsorted`` index); the validity scalar
    then says whether it was.  Otherwise sort, and validity says whether each id is one run."""
    device = seg_q.device
    nq, nk = -(-q_len // bm), -(-k_len // bn)
    if nq * nk > DENSE_LIMIT:
        return None
    back, ahead = min(back, BIG), min(ahead, BIG)
    if presorted:
        vals = seg_k
        valid = (seg_k[1:] >= seg_k[:-1]).all()
    else:
        vals, perm = torch.sort(seg_k, stable=True)
        valid = (seg_k[1:] != seg_k[:-1]).sum() == (vals[1:] != vals[:-1]).sum()
    i0 = torch.searchsorted(vals, seg_q)
    cnt = torch.searchsorted(vals, seg_q, right=True) - i0
    ks = i0 if presorted else perm[i0.clamp(max=k_len - 1)]
    ke = ks + cnt
    q = torch.arange(q_len, device=device)
    p = q + (k_len - q_len)
    rows = torch.div(q, bm, rounding_mode="floor")
    width = nk + 1
    plane = nq * width
    idx, wts = _reach(torch.maximum(ks, p - back), torch.minimum(ke, p + (ahead + 1)), rows,
                      width, bn, k_len, nk)
    idx[2:] = [i + plane for i in idx[2:]]
    # UNKNOWN blocks of the general path (band partial and segment partial) are at most the
    # band's partial blocks: <= 2 edges x (bm / bn + 2) per query block
    edges = (back < BIG) + (ahead < BIG)
    check = edges * nq * (-(-bm // bn) + 2) * bm * bn > refine_limit
    if check:  # the segment alone, for its partial blocks
        s_idx, s_wts = _reach(ks, ke, rows, width, bn, k_len, nk)
        idx += [i + (2 + j // 2) * plane for j, i in enumerate(s_idx)]
        wts += s_wts
    planes = 4 if check else 2
    diff = torch.zeros(planes * plane, dtype=torch.int64, device=device)
    diff.index_add_(0, torch.cat(idx), torch.cat(wts))
    count = diff.view(planes, nq, width).cumsum(2)[:, :, :nk]
    row_size = (torch.clamp((torch.arange(nq, device=device) + 1) * bm, max=q_len)
                - torch.arange(nq, device=device) * bm)[:, None]
    full = count[1] == row_size
    cls = full.to(torch.int8) + (count[0] > 0).to(torch.int8)
    over = torch.zeros((), dtype=torch.bool, device=device)
    if check:
        seg_partial = (count[2] > 0) & (count[3] != row_size)
        m = torch.arange(nq, device=device)[:, None]
        n = torch.arange(nk, device=device)[None, :]
        d_min = m * bm + (k_len - q_len) - (torch.clamp((n + 1) * bn, max=k_len) - 1)
        d_max = torch.clamp((m + 1) * bm, max=q_len) - 1 + (k_len - q_len) - n * bn
        band_partial = (d_max >= -ahead) & (d_min <= back) & ~((d_min >= -ahead) & (d_max <= back))
        unknown = band_partial & seg_partial
        over = unknown.sum() * (bm * bn) > refine_limit
        cls = torch.where(over & unknown, torch.ones_like(cls), cls)
    return cls, valid, over


def csr_tables(cls: torch.Tensor, valid, over):
    """Forward and transposed CSR of FULL (2) and PARTIAL (1) blocks of a dense ``[Qb, Kb]``
    class array, with one host synchronisation; None when ``valid`` is false.
    Returns (exact, [full fwd offsets, indices, partial fwd ..., full t ..., partial t ...])."""
    full, part = cls == 2, cls == 1
    f_rows, p_rows = full.sum(1, dtype=torch.int32), part.sum(1, dtype=torch.int32)
    f_cols, p_cols = full.sum(0, dtype=torch.int32), part.sum(0, dtype=torch.int32)
    stats = torch.stack([valid.to(torch.int64), over.to(torch.int64),
                         f_rows.sum(dtype=torch.int64), p_rows.sum(dtype=torch.int64)]).tolist()
    if not stats[0]:
        return None
    nnz_f, nnz_p = stats[2], stats[3]

    def offsets(c):
        return torch.nn.functional.pad(torch.cumsum(c, 0, dtype=torch.int32), (1, 0))

    def indices(mask, size):
        return torch.nonzero_static(mask, size=size)[:, 1].to(torch.int32)

    tables = [offsets(f_rows), indices(full, nnz_f), offsets(p_rows), indices(part, nnz_p),
              offsets(f_cols), indices(full.t(), nnz_f), offsets(p_cols), indices(part.t(), nnz_p)]
    return not stats[1], nnz_f + nnz_p, tables
