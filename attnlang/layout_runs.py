"""Run lists: the sparse representation ``layout`` computes block layouts in.

A block layout row (one query block of one head group) is a set of key-block intervals, each
with a class.  A ``Runs`` value stores the non-skipped intervals of many rows at once, flat:
``row``, ``start``, ``end`` (key-block interval ``[start, end)``) and ``cls`` (int64 tensors).
Skipped blocks are implicit, so memory is proportional to the number of runs, which is at most
the number of kept blocks (plus one per row after a complement).  ``all`` over a 10M-token
sequence is 78k runs, not 6 billion blocks.

Classes form a 4-valued logic (why 4: combining two per-block verdicts loses information, e.g.
``causal | ~causal`` is full although both sides are partial on the diagonal):

* ``SKIP`` (0): no pair of the block is kept;
* ``PARTIAL`` (1): known to hold both a kept and a masked pair;
* ``FULL`` (2): every pair is kept;
* ``UNKNOWN`` (3): could be any of the above (``where``, or a combination of two partial
  verdicts); ``layout`` refines these by evaluating the block element-wise, or reports them as
  partial (always safe).

``combine`` applies a truth table to one or two run lists with a sweep over sorted interval
end points, vectorised over all rows (sort + cumsum), in ``O(R log R)`` for ``R`` runs.

Only the standard library and torch are used (``attnlang compile`` copies this module).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SKIP, PARTIAL, FULL, UNKNOWN = 0, 1, 2, 3
_S, _M, _F, _U = SKIP, PARTIAL, FULL, UNKNOWN

# Truth tables indexed [a][b] (a, b in S, M, F, U).
OR = ((_S, _M, _F, _U),
      (_M, _U, _F, _U),
      (_F, _F, _F, _F),
      (_U, _U, _F, _U))
AND = ((_S, _S, _S, _S),
       (_S, _U, _M, _U),
       (_S, _M, _F, _U),
       (_S, _U, _U, _U))
NOT = (_F, _M, _S, _U)
# a - b == a & ~b
DIFF = tuple(tuple(AND[a][NOT[b]] for b in range(4)) for a in range(4))
IDENT = (_S, _M, _F, _U)


def _long(values, device):
    return torch.as_tensor(values, dtype=torch.int64, device=device)


@dataclass(frozen=True)
class Runs:
    """Flat runs of many rows; sorted by ``(row, start)`` and disjoint once normalised."""

    row: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    cls: torch.Tensor

    @staticmethod
    def empty(device="cpu") -> "Runs":
        z = torch.zeros(0, dtype=torch.int64, device=device)
        return Runs(z, z, z, z)

    @property
    def device(self):
        return self.row.device

    def __len__(self) -> int:
        return int(self.row.numel())

    def select(self, keep: torch.Tensor) -> "Runs":
        return Runs(self.row[keep], self.start[keep], self.end[keep], self.cls[keep])

    def blocks(self) -> int:
        return int((self.end - self.start).sum()) if len(self) else 0

    @staticmethod
    def cat(parts, device="cpu") -> "Runs":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Runs.empty(device)
        return Runs(*(torch.cat([getattr(p, f) for p in parts])
                      for f in ("row", "start", "end", "cls")))

    @staticmethod
    def make(row, start, end, cls) -> "Runs":
        """Runs from broadcastable tensors, dropping empty intervals and skipped classes."""
        row, start, end, cls = torch.broadcast_tensors(row, start, end, torch.as_tensor(
            cls, dtype=torch.int64, device=row.device))
        keep = (end > start) & (cls != SKIP)
        return Runs(row[keep], start[keep], end[keep], cls[keep])


def runs_1d(cls: torch.Tensor):
    """Maximal runs of equal non-skip class in a 1-D class sequence: (start, end, cls)."""
    n = cls.numel()
    if n == 0:
        z = cls.new_zeros(0, dtype=torch.int64)
        return z, z, z
    change = torch.ones(n, dtype=torch.bool, device=cls.device)
    change[1:] = cls[1:] != cls[:-1]
    starts = torch.nonzero(change).flatten()
    ends = torch.cat([starts[1:], _long([n], cls.device)])
    values = cls[starts].to(torch.int64)
    keep = values != SKIP
    return starts[keep], ends[keep], values[keep]


def tile(rows: torch.Tensor, start, end, cls) -> Runs:
    """The same 1-D run list (start, end, cls) in each of ``rows``."""
    r, c = rows.numel(), start.numel()
    if r == 0 or c == 0:
        return Runs.empty(rows.device)
    return Runs(rows.repeat_interleave(c), start.repeat(r), end.repeat(r), cls.repeat(r))


def combine(table, operands, n_rows: int, n_cols: int) -> Runs:
    """Apply ``table`` (``IDENT``/``NOT`` for one operand, ``OR``/``AND``/``DIFF`` for two).

    Within one operand overlapping runs are allowed (FULL beats PARTIAL beats UNKNOWN where they
    overlap), so ``combine(IDENT, [raw], ...)`` normalises raw emissions.  The result is sorted,
    disjoint, and adjacent runs of equal class are merged.
    """
    device = operands[0].device
    width = n_cols + 1
    keys, deltas = [], []
    n_ops = len(operands)
    for o, runs in enumerate(operands):
        if not len(runs):
            continue
        d = torch.zeros(len(runs), 3 * n_ops, dtype=torch.int64, device=device)
        for j, c in enumerate((_F, _M, _U)):
            d[:, 3 * o + j] = (runs.cls == c).to(torch.int64)
        keys += [runs.row * width + runs.start, runs.row * width + runs.end]
        deltas += [d, -d]
    unary = table if n_ops == 1 else None
    empty_class = unary[_S] if unary is not None else table[_S][_S]
    if empty_class != _S:  # the complement of nothing is something: every row needs its ends
        rows = torch.arange(n_rows, dtype=torch.int64, device=device)
        keys += [rows * width, rows * width + n_cols]
        deltas += [torch.zeros(2 * n_rows, 3 * n_ops, dtype=torch.int64, device=device)]
    if not keys:
        return Runs.empty(device)
    key = torch.cat(keys)
    delta = torch.cat(deltas)
    order = torch.argsort(key, stable=True)
    key = key[order]
    cover = torch.cumsum(delta[order], dim=0)
    # the coverage after the last event at each distinct point
    last = torch.ones(key.numel(), dtype=torch.bool, device=device)
    last[:-1] = key[1:] != key[:-1]
    point = key[last]
    cover = cover[last]
    if point.numel() < 2:
        return Runs.empty(device)
    row = torch.div(point, width, rounding_mode="floor")
    pos = point - row * width
    same_row = row[1:] == row[:-1]
    cls_ops = []
    for o in range(n_ops):
        f, m, u = cover[:-1, 3 * o] > 0, cover[:-1, 3 * o + 1] > 0, cover[:-1, 3 * o + 2] > 0
        c = torch.where(f, _F, torch.where(m, _M, torch.where(u, _U, _S)))
        cls_ops.append(c)
    tab = torch.as_tensor(table, dtype=torch.int64, device=device)
    if n_ops == 1:
        cls = tab[cls_ops[0]]
    else:
        cls = tab[cls_ops[0], cls_ops[1]]
    keep = same_row & (cls != _S) & (pos[1:] > pos[:-1])
    return _merge(row[:-1][keep], pos[:-1][keep], pos[1:][keep], cls[keep])


def _merge(row, start, end, cls) -> Runs:
    """Merge adjacent runs (sorted, disjoint) of the same row and class."""
    n = row.numel()
    if n == 0:
        return Runs(row, start, end, cls)
    first = torch.ones(n, dtype=torch.bool, device=row.device)
    first[1:] = (row[1:] != row[:-1]) | (start[1:] != end[:-1]) | (cls[1:] != cls[:-1])
    heads = torch.nonzero(first).flatten()
    tails = torch.cat([heads[1:] - 1, _long([n - 1], row.device)])
    return Runs(row[heads], start[heads], end[tails], cls[heads])


def expand(runs: Runs):
    """Every block of the runs: (row, block index, class), in run order."""
    lengths = runs.end - runs.start
    total = int(lengths.sum()) if len(runs) else 0
    device = runs.device
    if total == 0:
        z = torch.zeros(0, dtype=torch.int64, device=device)
        return z, z, z
    which = torch.repeat_interleave(torch.arange(len(runs), device=device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    col = runs.start[which] + (torch.arange(total, device=device) - first[which])
    return runs.row[which], col, runs.cls[which]
