"""Static analysis of a pattern at concrete sizes: density, block density, FLOPs, memory, empty
rows and future keys, per head group — without a dense mask for structured patterns.

How each number is obtained (``Report.format`` prints them):

* kept pairs / density: FULL blocks count by area; PARTIAL blocks are evaluated element-wise
  (``predicate.evaluate``), which costs ``block_m * block_n`` per partial block.  When that
  exceeds ``count_limit`` pairs, the partial blocks are *sampled* (a fixed
  pseudo-random subset) and the density is an estimate (``density_exact`` False).  Small sizes
  (``H * Lq * Lk <= dense_limit``) use ``reference.mask`` directly.
* block density: kept blocks / all blocks of the layout in the original order; with a plan
  (``plan.computed_pairs``), ``plan_block_density`` is the fraction of pairs the plan's kernels
  visit.
* FLOPs vs dense: pairs inside kept blocks (clipped at the sequence ends) / ``Lq * Lk``; attention
  costs ``4 * D`` FLOPs per pair forward, so this is also the FLOP ratio.
* empty rows: queries with no kept key; query blocks with a FULL block need no work, the
  partial blocks of the others are evaluated (None beyond ``count_limit``).
* future keys: whether any kept pair has ``d < 0``, from the layout of ``pattern - causal``
  (its partial blocks searched for a kept pair when that layout is conservative).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch

from . import ir
from .layout import Layout, build_layout

DENSE_LIMIT = 1 << 22  # H * Lq * Lk up to which the dense reference is used
COUNT_LIMIT = 1 << 24  # element evaluations allowed for counting partial blocks
EXAMPLES = 5


@dataclass(frozen=True)
class GroupReport:
    """Statistics of one head group (heads with identical layouts)."""

    heads: Tuple[int, ...]
    kept_pairs: int
    density: float
    density_exact: bool
    kept_blocks: int
    full_blocks: int
    partial_blocks: int
    block_density: float
    flops_fraction: float
    empty_rows: Optional[int]  # None: not computed (too large to evaluate)
    empty_row_examples: Tuple[int, ...]
    future_keys: Optional[bool]  # None: undecided (conservative layout)


@dataclass(frozen=True)
class Report:
    pattern: str
    q_len: int
    k_len: int
    num_heads: int
    block_m: int
    block_n: int
    layout_bytes: int
    groups: Tuple[GroupReport, ...]
    plan_block_density: Optional[float] = None  # filled from a plan, when there is one
    notes: Tuple[str, ...] = field(default=())

    @property
    def density(self) -> float:
        """Kept pairs / pairs, over all heads."""
        kept = sum(g.kept_pairs * len(g.heads) for g in self.groups)
        return kept / (self.num_heads * self.q_len * self.k_len)

    @property
    def flops_saved(self) -> float:
        """1 - (pairs inside kept blocks) / (all pairs), over all heads."""
        return 1.0 - self.flops_fraction

    @property
    def block_density(self) -> float:
        return sum(g.block_density * len(g.heads) for g in self.groups) / self.num_heads

    @property
    def flops_fraction(self) -> float:
        return sum(g.flops_fraction * len(g.heads) for g in self.groups) / self.num_heads

    def format(self) -> str:
        lines = [f"Lq={self.q_len} Lk={self.k_len} H={self.num_heads} "
                 f"blocks {self.block_m}x{self.block_n}: layout {_bytes(self.layout_bytes)}"
                 + ("" if self.plan_block_density is None
                    else f", plan visits {100 * self.plan_block_density:.2f}% of pairs")]
        for g in self.groups:
            heads = "all heads" if len(g.heads) == self.num_heads else f"heads {_heads(g.heads)}"
            empty = "?" if g.empty_rows is None else str(g.empty_rows)
            if g.empty_rows:
                more = "..." if g.empty_rows > len(g.empty_row_examples) else ""
                empty += f" (q = {', '.join(map(str, g.empty_row_examples))}{more})"
            future = {True: "yes", False: "no", None: "?"}[g.future_keys]
            lines.append(
                f"  {heads}: density {100 * g.density:.3f}%{'' if g.density_exact else ' (est.)'}"
                f", block density {100 * g.block_density:.2f}% ({g.full_blocks} full, "
                f"{g.partial_blocks} partial), FLOPs saved {100 * (1 - g.flops_fraction):.2f}%"
                f", empty rows {empty}, future keys {future}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _heads(heads) -> str:
    return ", ".join(map(str, heads)) if len(heads) <= 6 else \
        f"{', '.join(map(str, heads[:5]))}, ... ({len(heads)})"


def _block_extents(lay: Layout, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    h = torch.clamp(lay.q_len - rows * lay.block_m, max=lay.block_m)
    w = torch.clamp(lay.k_len - cols * lay.block_n, max=lay.block_n)
    return h * w


def _entries(lay: Layout, offsets, indices, group: int):
    qb = lay.num_q_blocks
    off = offsets[group * qb:(group + 1) * qb + 1].to(torch.int64).cpu()
    counts = off[1:] - off[:-1]
    rows = torch.arange(qb).repeat_interleave(counts)
    cols = indices[int(off[0]):int(off[-1])].to(torch.int64).cpu()
    return rows, cols


def _segments_pair(segments, q_len, k_len):
    if segments is None:
        return None, None
    if isinstance(segments, (tuple, list)):
        return torch.as_tensor(segments[0]).cpu(), torch.as_tensor(segments[1]).cpu()
    seg = torch.as_tensor(segments).cpu()
    return seg, seg


def _block_area(lay: Layout) -> int:
    """Pairs ``_scan`` evaluates a block: blocks longer than a sequence hold only its length."""
    return min(lay.block_m, lay.q_len) * min(lay.block_n, lay.k_len)


def _scan(expr, lay, rows, cols, head, ctx):
    """Evaluate blocks ``(rows[i], cols[i])`` element-wise, a chunk at a time: yields
    ``(query indices [b, bm], keep [b, bm, bn])`` with padding positions masked out."""
    from .predicate import evaluate

    q_len, k_len, num_heads, seg_q, seg_k = ctx
    bm, bn = lay.block_m, lay.block_n
    rows_in, cols_in = min(bm, q_len), min(bn, k_len)  # no block holds more (see _block_area)
    chunk = max(1, (1 << 22) // (rows_in * cols_in))
    for s in range(0, rows.numel(), chunk):
        r, c = rows[s:s + chunk], cols[s:s + chunk]
        qi = r[:, None] * bm + torch.arange(rows_in)[None, :]
        ki = c[:, None] * bn + torch.arange(cols_in)[None, :]
        valid = (qi < q_len)[:, :, None] & (ki < k_len)[:, None, :]
        keep = evaluate(expr, qi.clamp(max=q_len - 1)[:, :, None],
                        ki.clamp(max=k_len - 1)[:, None, :], q_len=q_len, k_len=k_len,
                        heads=head, num_heads=num_heads, seg_q=seg_q, seg_k=seg_k) & valid
        yield qi, keep


def _kept_in_partial(expr, lay, rows, cols, head, ctx, limit):
    """Kept pairs in the partial blocks: exact within ``limit`` evaluations, else estimated
    from a fixed pseudo-random subset (even spacing would alias with periodic patterns)."""
    total = rows.numel()
    per_block = _block_area(lay)
    if total * per_block <= limit:
        return sum(int(keep.sum()) for _, keep in _scan(expr, lay, rows, cols, head, ctx)), True
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(total, generator=gen)[:max(1, limit // per_block)]
    kept = sum(int(keep.sum()) for _, keep in _scan(expr, lay, rows[pick], cols[pick], head, ctx))
    return round(kept * total / pick.numel()), False


def _rows_with_keys(expr, lay, fr, pr, pc, head, ctx, limit):
    """bool [Lq]: queries with a kept key, or None if deciding needs more than ``limit``
    evaluations.  Query blocks with a FULL block need no work; only the partial blocks of
    query blocks without one are evaluated."""
    qb, bm = lay.num_q_blocks, lay.block_m
    has_full = torch.zeros(qb, dtype=torch.bool)
    has_full[fr] = True
    todo = ~has_full[pr]
    if int(todo.sum()) * _block_area(lay) > limit:
        return None
    has_key = has_full.repeat_interleave(bm)[:lay.q_len].clone()
    for qi, keep in _scan(expr, lay, pr[todo], pc[todo], head, ctx):
        has_key[qi[keep.any(2)]] = True
    return has_key


def _future(expr, lay, group, head, ctx, limit):
    """Whether a kept pair has d < 0, from the layout ``lay`` of ``expr - causal``: FULL or
    (exact) PARTIAL blocks say yes; otherwise partial blocks are searched until a kept pair."""
    full = int(lay._per_group(lay.full_offsets)[group])
    part = int(lay._per_group(lay.partial_offsets)[group])
    if full > 0 or (part > 0 and lay.exact):
        return True
    if part == 0:
        return False
    rows, cols = _entries(lay, lay.partial_offsets, lay.partial_indices, group)
    future = ir.Difference(expr, ir.Causal())
    per_block = _block_area(lay)
    n = min(rows.numel(), max(1, limit // per_block))
    for _, keep in _scan(future, lay, rows[:n], cols[:n], head, ctx):
        if bool(keep.any()):
            return True
    return False if n == rows.numel() else None


def analyze(pattern_expr, q_len, k_len=None, num_heads=1, block_m=128, block_n=128,
            segments=None, plan=None, *, count_limit: int = COUNT_LIMIT,
            dense_limit: int = DENSE_LIMIT) -> Report:
    """Statistics of a bound, simplified pattern expression (or an ``api.Pattern``) at concrete
    sizes; see the module docstring for how each number is obtained."""
    if hasattr(pattern_expr, "decl"):  # an api.Pattern: its bound, simplified expression
        pattern_expr = pattern_expr.ir
    k_len = q_len if k_len is None else k_len
    lay = build_layout(pattern_expr, q_len, k_len, block_m, block_n, num_heads=num_heads,
                       segments=segments)
    future_lay = build_layout(ir.Difference(pattern_expr, ir.Causal()), q_len, k_len, block_m,
                              block_n, num_heads=num_heads, segments=segments)
    dense = None
    if num_heads * q_len * k_len <= dense_limit:
        from .reference import mask

        dense = mask(pattern_expr, q_len, k_len, num_heads=num_heads, segments=segments)
    seg_q, seg_k = _segments_pair(segments, q_len, k_len)
    pairs = q_len * k_len
    qb, kb = lay.num_q_blocks, lay.num_k_blocks
    reports = []
    for g, heads in enumerate(lay.groups):
        fr, fc = _entries(lay, lay.full_offsets, lay.full_indices, g)
        pr, pc = _entries(lay, lay.partial_offsets, lay.partial_indices, g)
        full_area = int(_block_extents(lay, fr, fc).sum())
        computed = full_area + int(_block_extents(lay, pr, pc).sum())
        ctx = (q_len, k_len, num_heads, seg_q, seg_k)
        if dense is not None:
            row_keys = dense[heads[0]].any(1)
            kept, exact = int(dense[heads[0]].sum()), True
        else:
            part, exact = _kept_in_partial(pattern_expr, lay, pr, pc, heads[0], ctx,
                                           count_limit)
            kept = full_area + part
            row_keys = _rows_with_keys(pattern_expr, lay, fr, pr, pc, heads[0], ctx,
                                       count_limit)
        if row_keys is not None:
            empty = torch.nonzero(~row_keys).flatten()
            n_empty, examples = int(empty.numel()), tuple(empty[:EXAMPLES].tolist())
        else:
            n_empty, examples = None, ()
        future = _future(pattern_expr, future_lay, int(future_lay.head_group[heads[0]]),
                         heads[0], ctx, count_limit)
        n_full, n_part = fr.numel(), pr.numel()
        reports.append(GroupReport(
            heads=tuple(heads), kept_pairs=kept, density=kept / pairs, density_exact=exact,
            kept_blocks=n_full + n_part, full_blocks=n_full, partial_blocks=n_part,
            block_density=(n_full + n_part) / max(1, qb * kb), flops_fraction=computed / pairs,
            empty_rows=n_empty, empty_row_examples=examples, future_keys=future))
    notes = [] if lay.exact else ["some partial blocks are conservative (where/random too large "
                                  "to refine): block counts are upper bounds"]
    plan_density = _plan_density(plan, pattern_expr, q_len, k_len, num_heads, block_m, block_n,
                                 segments, notes)
    return Report(str(pattern_expr), q_len, k_len, num_heads, block_m, block_n, lay.nbytes,
                  tuple(reports), plan_density, tuple(notes))


def _plan_density(plan, expr, q_len, k_len, num_heads, block_m, block_n, segments, notes):
    """Fraction of pairs the plan's kernels visit (``plan.computed_pairs``), if a plan exists."""
    if plan is None:
        try:
            from .plan import build_plan
        except ImportError:
            return None
        try:
            plan = build_plan(expr, q_len, k_len, block_m=block_m, block_n=block_n,
                              num_heads=num_heads, segments=segments)
        except Exception as exc:  # the plan is optional: report why it is missing
            notes.append(f"no plan ({type(exc).__name__}: {exc})")
            return None
    computed = getattr(plan, "computed_pairs", None)
    if computed is None:
        return None
    return int(computed) / (num_heads * q_len * k_len)
