"""Block classes of each primitive, as run lists over (query block, key block).

``layout.classify`` walks the pattern and asks this module, for each primitive, which key
blocks of each query block are FULL, PARTIAL, skipped or UNKNOWN (see ``layout_runs``).  Every
generator works from per-block position bounds (``Blocks``), never from an ``Lq x Lk`` mask:

* bands in ``d`` (``window``, ``causal``) and in chunk indices (``chunk``): a binary search per
  query block gives at most three runs (partial edge, full middle, partial edge);
* products of a row set and a column set (``rows``, ``cols``, ``global``, ``prefix``): per-block
  membership counts on each axis (linear in the axis length), then the column runs repeated on
  each query block that has a member;
* ``stride``: ``d mod s == 0`` decided per block pair in O(1) by modular arithmetic (exact for
  arithmetic axes of equal step, which includes the identity);
* ``random``: the section-5 hash of every random cell a query-block chunk touches, with 2-D
  prefix sums to count kept cells per layout block;
* ``segment``: maximal runs of equal segment ids, split at query-block borders, matched by id.

Exact verdicts are PARTIAL; where positions are not contiguous (strided or gathered axes) and
exactness would need element-wise work, the generator says UNKNOWN and lets ``layout`` refine.
Only the standard library, torch and ``ir`` are used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import ir
from .predicate import random_keep
from .layout_runs import FULL, PARTIAL, SKIP, UNKNOWN, Runs, expand, runs_1d, tile

_BIG = 1 << 48  # stands for an unbounded band edge (positions are far below this)
PAIR_LIMIT = 1 << 32  # block pairs (stride) or random cells we agree to enumerate


def _check_enumeration(what: str, count: int) -> None:
    if count > PAIR_LIMIT:
        raise ValueError(f"pattern: {what} is decided per block pair / random cell, and this "
                         f"size needs about {count} of them (the limit is {PAIR_LIMIT}); use "
                         f"larger blocks, shorter sequences, or the plan (residue coordinates)")


@dataclass(frozen=True)
class Blocks:
    """The blocks of one mapped axis: original positions (plus ``offset``) at block bounds.

    ``lo``/``hi``: smallest/largest original position in each block (ascending in the block
    index); ``count``: positions per block; ``step``: the arithmetic step (None for a gathered
    axis); ``contiguous``: positions are consecutive integers.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    count: torch.Tensor
    size: int
    length: int
    step: Optional[int]
    axis: object
    offset: int

    @property
    def n(self) -> int:
        return int(self.lo.numel())

    @property
    def contiguous(self) -> bool:
        return self.step == 1

    def positions(self) -> torch.Tensor:
        """All original positions of the axis, plus the offset (length L, not L x L)."""
        return self.axis.positions(0, self.length).to(self.lo.device) + self.offset


def make_blocks(axis, size: int, offset: int, device) -> Blocks:
    nb = -(-axis.length // size)
    i0 = torch.arange(nb, dtype=torch.int64, device=device) * size
    i1 = torch.clamp(i0 + size, max=axis.length) - 1
    if axis.index is not None:
        index = axis.index.to(device=device, dtype=torch.int64)
        lo, hi, step = index[i0], index[i1], None
    else:
        lo, hi, step = axis.start + axis.step * i0, axis.start + axis.step * i1, axis.step
    return Blocks(lo + offset, hi + offset, i1 - i0 + 1, size, axis.length, step, axis, offset)


def _rows(qb: Blocks) -> torch.Tensor:
    return torch.arange(qb.n, dtype=torch.int64, device=qb.lo.device)


# ---------------------------------------------------------------- bands


def band(q_lo, q_hi, k_lo, k_hi, back: int, ahead: int, exact: bool) -> Runs:
    """Key blocks whose coordinates meet ``-ahead <= x - y <= back`` for query coordinates
    ``x`` in ``[q_lo, q_hi]`` (per row) and key coordinates ``y`` in ``[k_lo[n], k_hi[n]]``.

    FULL exactly when every pair is in the band; PARTIAL (``exact``) or UNKNOWN otherwise for
    blocks whose coordinate intervals overlap the band."""
    back, ahead = min(back, _BIG), min(ahead, _BIG)
    rows = torch.arange(q_lo.numel(), dtype=torch.int64, device=q_lo.device)
    n_lo = torch.searchsorted(k_hi, q_lo - back, side="left")
    n_hi = torch.searchsorted(k_lo, q_hi + ahead, side="right")
    f_lo = torch.searchsorted(k_lo, q_hi - back, side="left")
    f_hi = torch.searchsorted(k_hi, q_lo + ahead, side="right")
    has_full = f_lo < f_hi
    edge = PARTIAL if exact else UNKNOWN
    left_end = torch.where(has_full, f_lo, n_hi)
    right_start = torch.where(has_full, f_hi, n_hi)
    parts = [Runs.make(rows, n_lo, left_end, edge),
             Runs.make(rows, f_lo, torch.where(has_full, f_hi, f_lo), FULL),
             Runs.make(rows, right_start, n_hi, edge)]
    out = Runs.cat(parts, q_lo.device)
    order = torch.argsort(out.row * (int(k_lo.numel()) + 1) + out.start)
    return out.select(order)


def window(qb: Blocks, kb: Blocks, back: int, ahead: int) -> Runs:
    equal_step = qb.step is not None and qb.step == kb.step
    exact = equal_step and (qb.step == 1 or back + ahead + 1 >= qb.step)
    return band(qb.lo, qb.hi, kb.lo, kb.hi, back, ahead, exact)


def chunk(qb: Blocks, kb: Blocks, size: int, back: int, ahead: int) -> Runs:
    def fl(x):
        return torch.div(x, size, rounding_mode="floor")

    exact = all(b.step is not None and b.step <= size for b in (qb, kb))
    return band(fl(qb.lo), fl(qb.hi), fl(kb.lo), fl(kb.hi), back, ahead, exact)


# ---------------------------------------------------------------- index sets and products


def _resolve(x: int, end: int) -> int:
    return x + end if x < 0 else x


def in_set(node, i: torch.Tensor, end: int) -> torch.Tensor:
    """Membership of positions ``i`` in an index set (LANGUAGE.md section 3)."""
    if isinstance(node, ir.SetUnion):
        return in_set(node.left, i, end) | in_set(node.right, i, end)
    if isinstance(node, ir.Range):
        keep = torch.ones_like(i, dtype=torch.bool)
        if node.lo is not None:
            keep &= i >= _resolve(int(ir.const(node.lo)), end)
        if node.hi is not None:
            keep &= i < _resolve(int(ir.const(node.hi)), end)
        return keep
    if isinstance(node, ir.Every):
        s = int(ir.const(node.modulus))
        r = torch.remainder(i, s)
        if isinstance(node.residue, ir.Range):
            lo = 0 if node.residue.lo is None else int(ir.const(node.residue.lo))
            hi = s if node.residue.hi is None else int(ir.const(node.residue.hi))
            return (r >= lo) & (r < hi)
        return r == int(ir.const(node.residue))
    if isinstance(node, ir.Listed):
        members = sorted({_resolve(int(ir.const(x)), end) for x in node.items})
        if not members:  # `{}`, the empty set
            return torch.zeros_like(i, dtype=torch.bool)
        table = torch.as_tensor(members, dtype=torch.int64, device=i.device)
        where = torch.searchsorted(table, i).clamp(max=len(members) - 1)
        return table[where] == i
    raise TypeError(f"not an index set: {node!r}")


def set_classes(node, blocks: Blocks, end: int) -> torch.Tensor:
    """Per block: FULL if every position is in the set, SKIP if none is, else PARTIAL."""
    if blocks.n == 0:
        return torch.zeros(0, dtype=torch.int64, device=blocks.lo.device)
    member = in_set(node, blocks.positions(), end).to(torch.int64)
    padded = torch.zeros(blocks.n * blocks.size, dtype=torch.int64, device=member.device)
    padded[:member.numel()] = member
    count = padded.view(blocks.n, blocks.size).sum(1)
    return _classes_from_count(count, blocks.count)


def _classes_from_count(count, total):
    return torch.where(count == 0, SKIP, torch.where(count == total, FULL, PARTIAL))


def threshold_classes(blocks: Blocks, m: int) -> torch.Tensor:
    """Per block, the class of ``position < m``."""
    return torch.where(blocks.hi < m, FULL, torch.where(blocks.lo >= m, SKIP, PARTIAL))


def product(rc: torch.Tensor, cc: torch.Tensor) -> Runs:
    """Runs of ``row_pred(p) and col_pred(k)`` from per-block classes of each side (exact:
    a non-skipped side has a member and a non-full side a non-member)."""
    c_start, c_end, c_cls = runs_1d(cc)
    parts = []
    for row_class in (FULL, PARTIAL):
        rows = torch.nonzero(rc == row_class).flatten()
        cls = c_cls if row_class == FULL else torch.full_like(c_cls, PARTIAL)
        parts.append(tile(rows, c_start, c_end, cls))
    return _sorted(Runs.cat(parts, rc.device), cc.numel())


def either(rc: torch.Tensor, cc: torch.Tensor) -> Runs:
    """Runs of ``row_pred(p) or col_pred(k)`` (``global``), exact for the same reason."""
    device = rc.device
    nk = cc.numel()
    parts = []
    rows_full = torch.nonzero(rc == FULL).flatten()
    one = torch.ones(1, dtype=torch.int64, device=device)
    parts.append(tile(rows_full, 0 * one, nk * one, FULL * one))
    rows_part = torch.nonzero(rc == PARTIAL).flatten()
    parts.append(tile(rows_part, *runs_1d(torch.where(cc == FULL, FULL, PARTIAL))))
    rows_none = torch.nonzero(rc == SKIP).flatten()
    parts.append(tile(rows_none, *runs_1d(cc)))
    return _sorted(Runs.cat(parts, device), nk)


def _sorted(runs: Runs, n_cols: int) -> Runs:
    if not len(runs):
        return runs
    return runs.select(torch.argsort(runs.row * (n_cols + 1) + runs.start))


# ---------------------------------------------------------------- stride


def stride(qb: Blocks, kb: Blocks, s: int, chunk_pairs: int = 1 << 22) -> Runs:
    """``d mod s == 0`` per block pair.  Exact (FULL/PARTIAL/SKIP) when both axes are
    arithmetic with the same step: there ``d = c + step * u`` with ``u`` running over a
    contiguous integer range, so the question is a linear congruence.  UNKNOWN otherwise
    (unless ``s == 1``).  O(1) per block pair, in chunks of query blocks; on contiguous axes
    with ``s > block_m + block_n`` only the blocks on the kept diagonals ``d = s * t`` are
    visited (``_stride_bands``), so the cost follows the kept blocks."""
    device = qb.lo.device
    if s == 1:
        return product(torch.full((qb.n,), FULL, device=device), torch.full((kb.n,), FULL,
                                                                            device=device))
    if qb.n == 0 or kb.n == 0:
        return Runs.empty(device)
    if qb.contiguous and kb.contiguous and s > qb.size + kb.size:
        return _stride_bands(qb, kb, s)
    _check_enumeration(f"stride({s})", qb.n * kb.n)
    equal = qb.step is not None and qb.step == kb.step
    parts = []
    rows_per = max(1, chunk_pairs // kb.n)
    cols = torch.arange(kb.n, device=device)[None, :]
    for r0 in range(0, qb.n, rows_per):
        r1 = min(qb.n, r0 + rows_per)
        if equal:
            rows = torch.arange(r0, r1, device=device)[:, None]
            cls = _stride_exact(qb, kb, s, rows, cols)
        else:
            cls = torch.full((r1 - r0, kb.n), UNKNOWN, dtype=torch.int64, device=device)
        parts.append(_runs_2d(cls, r0))
    return Runs.cat(parts, device)


def _stride_bands(qb: Blocks, kb: Blocks, s: int) -> Runs:
    """Contiguous axes, large ``s``: for query block ``[pa, pb]`` the kept keys are the bands
    ``[pa - s t, pb - s t]``; each band touches a few key blocks, classified exactly."""
    device = qb.lo.device
    k_first, k_last = int(kb.lo[0]), int(kb.hi[-1])
    t_hi = torch.div(qb.hi - k_first, s, rounding_mode="floor")
    t_lo = -torch.div(-(qb.lo - k_last), s, rounding_mode="floor")  # ceil
    count = (t_hi - t_lo + 1).clamp(min=0)
    _check_enumeration(f"stride({s})", int(count.sum()))
    row = torch.repeat_interleave(torch.arange(qb.n, device=device), count)
    first = torch.cumsum(count, 0) - count
    t = t_lo[row] + (torch.arange(row.numel(), device=device) - first[row])
    lo = (qb.lo[row] - s * t).clamp(min=k_first) - k_first
    hi = (qb.hi[row] - s * t).clamp(max=k_last) - k_first
    runs = Runs.make(row, torch.div(lo, kb.size, rounding_mode="floor"),
                     torch.div(hi, kb.size, rounding_mode="floor") + 1, PARTIAL)
    rows, cols, _ = expand(runs)
    cls = _stride_exact(qb, kb, s, rows, cols)
    return Runs.make(rows, cols, cols + 1, cls)  # overlapping bands: the caller normalises


def _stride_exact(qb: Blocks, kb: Blocks, s: int, rows, cols) -> torch.Tensor:
    """Classes of block pairs ``(rows, cols)`` (broadcasting index tensors), equal steps."""
    t = qb.step
    g = math.gcd(t, s)
    sp = s // g
    inv = pow((t // g) % sp, -1, sp) if sp > 1 else 0
    c = qb.lo[rows] - kb.lo[cols]
    umin = -(kb.count[cols] - 1)
    umax = qb.count[rows] - 1
    umin, umax = torch.broadcast_tensors(umin, umax)
    solvable = torch.remainder(c, g) == 0
    u0 = torch.remainder(torch.div(-c, g, rounding_mode="floor") * inv, sp) if sp > 1 \
        else torch.zeros_like(c)
    first = umin + torch.remainder(u0 - umin, sp)
    kept = solvable & (first <= umax)
    full = kept & ((sp == 1) | (umin == umax))
    return torch.where(full, FULL, torch.where(kept, PARTIAL, SKIP))


def _runs_2d(cls: torch.Tensor, row0: int) -> Runs:
    """Runs of a [rows, cols] class matrix (one chunk; used by stride and random)."""
    rows, cols = cls.shape
    if rows == 0 or cols == 0:
        return Runs.empty(cls.device)
    flat = torch.cat([cls, torch.zeros(rows, 1, dtype=cls.dtype, device=cls.device)], 1)
    start, end, value = runs_1d(flat.flatten())
    row = torch.div(start, cols + 1, rounding_mode="floor")
    return Runs(row + row0, start - row * (cols + 1), end - row * (cols + 1), value)


# ---------------------------------------------------------------- random


def random(qb: Blocks, kb: Blocks, density: float, cell: int, seed: int,
           budget: int = 1 << 22) -> Runs:
    """Layout of ``random(density, block = cell, seed)``: the class of layout block (m, n) is
    FULL if every random cell it touches is kept, SKIP if none is, else PARTIAL (exact on
    contiguous axes, where every touched cell holds a pair of the block) or UNKNOWN."""
    device = qb.lo.device
    if qb.n == 0 or kb.n == 0 or density <= 0.0:
        return Runs.empty(device)

    def fl(x):
        return torch.div(x, cell, rounding_mode="floor")

    i_lo, i_hi, j_lo, j_hi = fl(qb.lo), fl(qb.hi), fl(kb.lo), fl(kb.hi)
    j0 = int(j_lo[0])
    n_j = int(j_hi[-1]) - j0 + 1
    n_i = int(i_hi[-1]) - int(i_lo[0]) + 1
    _check_enumeration("random", max(n_i * n_j, qb.n * kb.n))
    j = torch.arange(j0, j0 + n_j, dtype=torch.int64, device=device)
    exact = qb.contiguous and kb.contiguous
    partial = PARTIAL if exact else UNKNOWN
    total = (i_hi - i_lo + 1)[:, None] * (j_hi - j_lo + 1)[None, :]
    parts = []
    r0 = 0
    while r0 < qb.n:
        # query blocks in this chunk: bounded hash-table and class-matrix sizes
        r1 = r0 + 1
        while r1 < qb.n and (int(i_hi[r1]) - int(i_lo[r0]) + 1) * n_j <= budget \
                and (r1 - r0 + 1) * kb.n <= budget:
            r1 += 1
        i0 = int(i_lo[r0])
        i = torch.arange(i0, int(i_hi[r1 - 1]) + 1, dtype=torch.int64, device=device)
        kept = random_keep(seed, i[:, None], j[None, :], density).to(torch.int64)
        pre = torch.zeros(i.numel() + 1, n_j + 1, dtype=torch.int64, device=device)
        pre[1:, 1:] = kept.cumsum(0).cumsum(1)
        a0, a1 = (i_lo[r0:r1] - i0)[:, None], (i_hi[r0:r1] - i0 + 1)[:, None]
        b0, b1 = (j_lo - j0)[None, :], (j_hi - j0 + 1)[None, :]
        count = pre[a1, b1] - pre[a0, b1] - pre[a1, b0] + pre[a0, b0]
        tot = total[r0:r1]
        cls = torch.where(count == 0, SKIP, torch.where(count == tot, FULL, partial))
        parts.append(_runs_2d(cls, r0))
        r0 = r1
    return Runs.cat(parts, device)


# ---------------------------------------------------------------- segment


def _id_runs(ids: torch.Tensor):
    """Maximal runs of equal ids: (start, end, id)."""
    n = ids.numel()
    change = torch.ones(n, dtype=torch.bool, device=ids.device)
    change[1:] = ids[1:] != ids[:-1]
    start = torch.nonzero(change).flatten()
    end = torch.cat([start[1:], torch.tensor([n], dtype=torch.int64, device=ids.device)])
    return start, end, ids[start]


def segment(qb: Blocks, kb: Blocks, seg_q: torch.Tensor, seg_k: torch.Tensor) -> Runs:
    """``seg_q[q] == seg_k[k]``: query-side id runs (split at query-block borders) matched by
    id with key-side id runs; a run covers its key blocks, FULL inside when the query block has
    a single id.  Exact on every axis (ids are read at the mapped positions)."""
    device = seg_q.device
    if qb.n == 0 or kb.n == 0:
        return Runs.empty(device)
    qid = seg_q[qb.axis.positions(0, qb.length).to(device)]
    kid = seg_k[kb.axis.positions(0, kb.length).to(device)]
    # query pieces: id runs cut at block borders
    change = torch.zeros(qid.numel(), dtype=torch.bool, device=device)
    change[0] = True
    change[1:] = qid[1:] != qid[:-1]
    change[::qb.size] = True
    p_start = torch.nonzero(change).flatten()
    p_row = torch.div(p_start, qb.size, rounding_mode="floor")
    p_id = qid[p_start]
    pieces_per_row = torch.bincount(p_row, minlength=qb.n)
    pure = pieces_per_row[p_row] == 1
    # key runs grouped by id
    k_start, k_end, k_ids = _id_runs(kid)
    order = torch.argsort(k_ids, stable=True)
    k_start, k_end, k_ids = k_start[order], k_end[order], k_ids[order]
    uniq, counts = torch.unique_consecutive(k_ids, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    where = torch.searchsorted(uniq, p_id).clamp(max=max(uniq.numel() - 1, 0))
    found = uniq[where] == p_id
    n_match = torch.where(found, counts[where], torch.zeros_like(where))
    piece = torch.repeat_interleave(torch.arange(p_id.numel(), device=device), n_match)
    offs = torch.cumsum(n_match, 0) - n_match
    run = first[where][piece] + (torch.arange(piece.numel(), device=device) - offs[piece])
    ks, ke = k_start[run], k_end[run]
    row = p_row[piece]
    bn = kb.size
    b_lo = torch.div(ks, bn, rounding_mode="floor")
    b_hi = torch.div(ke - 1, bn, rounding_mode="floor") + 1
    f_lo = torch.div(ks + bn - 1, bn, rounding_mode="floor")
    f_hi = torch.where(ke == kb.length, torch.full_like(ke, kb.n),
                       torch.div(ke, bn, rounding_mode="floor"))
    inner = torch.where(pure[piece], FULL, PARTIAL)
    has_inner = f_lo < f_hi
    parts = [Runs.make(row, b_lo, torch.where(has_inner, f_lo, b_hi), PARTIAL),
             Runs.make(row, f_lo, torch.where(has_inner, f_hi, f_lo), inner),
             Runs.make(row, torch.where(has_inner, f_hi, b_hi), b_hi, PARTIAL)]
    return Runs.cat(parts, device)  # overlapping: the caller normalises
