"""Block layouts: which (query block, key block) pairs a pattern keeps fully, partly or not at all.

``build_layout(expr, Lq, Lk, block_m, block_n)`` lowers a bound, simplified pattern to the
block-sparse form kernels iterate: per query block, the key blocks that are FULL (no mask
needed) and PARTIAL (mask inside), in CSR form, plus the transpose for the backward pass.
``classify`` does the same over *mapped* axes (``Axis``): residue classes ``start + step * i``
or gathered index lists, which ``plan`` uses to make strided and scattered patterns dense.

How (and why it costs only O(kept blocks + query blocks)): every primitive yields, per query
block, a short list of key-block intervals with a class (``layout_prims``); combinators merge
those lists with 4-valued logic (``layout_runs``).  No ``Lq x Lk`` or ``Qb x Kb`` array is made
for structured patterns: ``classes()`` (for tests and pictures) is the only dense one.
Exceptions, by nature: ``stride`` with ``s <= block_m + block_n`` decides every block pair in
O(1) each (on the identity every block pair is then kept anyway), ``random`` hashes every random
cell, ``where`` bounds every block pair, and set primitives count members along an axis (linear
in its length).

Correctness and exactness (a FULL block never has a masked pair, a skipped block never a kept
one, always):

* exact for every primitive and for ``| & - ~`` of them on identity axes, and on arithmetic axes
  of equal step (the plan's residue classes): combining two partial verdicts yields UNKNOWN,
  which is settled by evaluating that single block element-wise (``predicate.evaluate``);
* ``where`` is bounded per block pair by interval arithmetic (``layout_where``): FULL/SKIP
  where the bounds decide, UNKNOWN (refined the same way) where they do not;
* refinement costs ``block_m * block_n`` per UNKNOWN block; when the UNKNOWN blocks of a layout
  exceed ``refine_limit`` pairs (default 2^24) they are reported PARTIAL instead (correct,
  conservative) and ``Layout.exact`` is False.  On gathered axes (and arithmetic axes of
  different steps) ``window``, ``chunk``, ``stride`` and ``random`` give UNKNOWN where the
  bounds cannot decide, and the same refinement applies.

Only the standard library, torch, ``ir`` and the sibling ``layout_*`` modules are imported
(``predicate`` lazily, for refinement only): ``attnlang compile`` copies these sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from . import ir
from . import layout_prims as prims
from .errors import bad_argument, positive_int
from .layout_runs import AND, DIFF, FULL, IDENT, NOT, OR, PARTIAL, SKIP, UNKNOWN, Runs, combine, \
    expand
from .layout_where import where_classes
from .predicate import check_where_range
from . import layout_segment
from .layout_segment import segment_pair

MAX_INDEX_ENTRIES = (1 << 31) - 1  # int32 CSR indices; also capped by half the free memory
REFINE_LIMIT = 1 << 24  # element evaluations allowed to settle UNKNOWN blocks
WHERE_PAIR_LIMIT = 1 << 24  # block pairs bounded by interval arithmetic for a where


# ---------------------------------------------------------------- axes


@dataclass(frozen=True)
class Axis:
    """Mapped index ``i`` (``0 <= i < length``) -> original position.

    Arithmetic axis: ``position(i) = start + step * i`` (``step >= 1``).  Gather axis:
    ``position(i) = index[i]`` (int64, strictly ascending); ``start``/``step`` unused.
    """

    length: int
    start: int = 0
    step: int = 1
    index: Optional[torch.Tensor] = None

    def positions(self, lo: int = 0, hi: Optional[int] = None) -> torch.Tensor:
        """Original positions of mapped indices ``[lo, hi)`` (int64)."""
        hi = self.length if hi is None else hi
        if self.index is not None:
            return self.index[lo:hi].to(torch.int64)
        return self.start + self.step * torch.arange(lo, hi, dtype=torch.int64)

    @property
    def is_identity(self) -> bool:
        return self.index is None and self.start == 0 and self.step == 1

    def runs(self) -> Optional[Tuple[int, int, int, int]]:
        """A gather axis's positions as runs of equal width at a fixed period: ``(start,
        period, width, count)`` where they are exactly ``start + period * i + j`` for ``i <
        count``, ``j < width`` in that order (``every(128, 112..128)``'s columns: runs of 16
        keys every 128), so that a tensor's rows at them are a strided view of it; else None
        (and for arithmetic axes, and gather axes without positions)."""
        index = self.index
        if index is None or index.numel() == 0:
            return None
        index = index.to(torch.int64).cpu()
        breaks = torch.nonzero(index[1:] != index[:-1] + 1)
        width = int(breaks[0]) + 1 if breaks.numel() else index.numel()
        if index.numel() % width:
            return None
        rows = index.view(-1, width)
        if not torch.equal(rows - rows[:, :1], torch.arange(width).expand_as(rows)):
            return None
        starts = rows[:, 0]
        period = int(starts[1] - starts[0]) if starts.numel() > 1 else width
        if not bool((starts[1:] - starts[:-1] == period).all()):
            return None
        return int(starts[0]), period, width, rows.shape[0]


# ---------------------------------------------------------------- the layout


@dataclass(frozen=True, eq=False)
class Layout:
    """A block layout per head group, as CSR (forward) and its transpose (backward).

    Rows ``r = g * num_q_blocks + m`` list key blocks ``n`` (ascending); transpose rows
    ``c = g * num_k_blocks + n`` list query blocks.  ``groups[g]`` holds the heads sharing
    layout ``g`` (``head_group[h] = g``); ``q_len``/``k_len`` are the mapped axis lengths.
    """

    q_len: int
    k_len: int
    block_m: int
    block_n: int
    num_heads: int
    num_q_blocks: int
    num_k_blocks: int
    groups: Tuple[Tuple[int, ...], ...]
    head_group: torch.Tensor
    full_offsets: torch.Tensor
    full_indices: torch.Tensor
    partial_offsets: torch.Tensor
    partial_indices: torch.Tensor
    full_t_offsets: torch.Tensor
    full_t_indices: torch.Tensor
    partial_t_offsets: torch.Tensor
    partial_t_indices: torch.Tensor
    exact: bool = True  # False where UNKNOWN blocks were reported PARTIAL (over refine_limit)
    identity: bool = True  # both axes are the identity (to_block_mask is allowed)
    expr: object = None
    orig_q_len: int = 0
    orig_k_len: int = 0
    segments: object = None

    def __repr__(self) -> str:
        return (f"Layout({self.q_len}x{self.k_len}, blocks {self.block_m}x{self.block_n}, "
                f"{self.num_heads} head(s) in {self.num_groups} group(s), "
                f"{self.full_blocks} full + {self.partial_blocks} partial blocks"
                f"{'' if self.exact else ', conservative'})")

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def _sizes(self) -> torch.Tensor:
        return torch.tensor([len(g) for g in self.groups], dtype=torch.int64)

    def _per_group(self, offsets) -> torch.Tensor:
        counts = (offsets[1:] - offsets[:-1]).to(torch.int64).cpu()
        return counts.view(self.num_groups, -1).sum(1) if counts.numel() else \
            torch.zeros(self.num_groups, dtype=torch.int64)

    @property
    def full_blocks(self) -> int:
        """FULL blocks summed over heads (what a kernel visits without a mask)."""
        return int((self._per_group(self.full_offsets) * self._sizes()).sum())

    @property
    def partial_blocks(self) -> int:
        """PARTIAL blocks summed over heads."""
        return int((self._per_group(self.partial_offsets) * self._sizes()).sum())

    @property
    def kept_blocks(self) -> int:
        """FULL + PARTIAL blocks summed over heads."""
        return self.full_blocks + self.partial_blocks

    @property
    def nbytes(self) -> int:
        """Memory of the CSR tensors (forward, transpose and head map)."""
        tensors = (self.head_group, self.full_offsets, self.full_indices, self.partial_offsets,
                   self.partial_indices, self.full_t_offsets, self.full_t_indices,
                   self.partial_t_offsets, self.partial_t_indices)
        return sum(t.numel() * t.element_size() for t in tensors)

    def classes(self) -> torch.Tensor:
        """int8 ``[G, Qb, Kb]`` (0 skipped, 1 partial, 2 full); dense, for tests and pictures.
        Per head: ``layout.classes()[layout.head_group.long()]`` is ``[H, Qb, Kb]``."""
        out = torch.zeros(self.num_groups * self.num_q_blocks, self.num_k_blocks,
                          dtype=torch.int8)
        for offsets, indices, value in ((self.partial_offsets, self.partial_indices, PARTIAL),
                                        (self.full_offsets, self.full_indices, FULL)):
            counts = (offsets[1:] - offsets[:-1]).to(torch.int64).cpu()
            rows = torch.arange(counts.numel()).repeat_interleave(counts)
            out[rows, indices.to(torch.int64).cpu()] = value
        return out.view(self.num_groups, self.num_q_blocks, self.num_k_blocks)

    def to_string(self, group: int = 0) -> str:
        """The layout of one head group: one character per block ('█' full, '░' partial,
        '·' skipped), one line per query block."""
        if not 0 <= group < self.num_groups:
            raise bad_argument("group", group, f"a head group in [0, {self.num_groups})")
        chars = {SKIP: "·", PARTIAL: "░", FULL: "█"}
        cls = self.classes()[group].tolist()
        return "\n".join("".join(chars[c] for c in row) for row in cls)

    def to_block_mask(self, mask_mod=None):
        """A FlexAttention ``BlockMask`` with this layout (identity axes only).

        ``mask_mod`` defaults to this pattern evaluated element-wise (``predicate.evaluate``),
        so partial blocks are masked correctly when the result is used with flex_attention.
        """
        if not self.identity:
            raise ValueError("to_block_mask: the layout is over mapped axes (a plan component); "
                             "only identity-axis layouts (build_layout) convert to a BlockMask")
        from torch.nn.attention.flex_attention import BlockMask

        hg = self.head_group.to(torch.int64).cpu()
        qb, kb = self.num_q_blocks, self.num_k_blocks

        def dense(offsets, indices):
            counts = (offsets[1:] - offsets[:-1]).to(torch.int64).cpu().view(-1, qb)
            width = max(1, kb)
            table = torch.zeros(counts.shape[0] * qb, width, dtype=torch.int32)
            rows = torch.arange(counts.numel()).repeat_interleave(counts.flatten())
            first = torch.cumsum(counts.flatten(), 0) - counts.flatten()
            slot = torch.arange(rows.numel()) - first[rows]
            table[rows, slot] = indices.to(torch.int32).cpu()
            table = table.view(-1, qb, width)
            return counts[hg].to(torch.int32)[None], table[hg][None]

        kv_num, kv_idx = dense(self.partial_offsets, self.partial_indices)
        full_num, full_idx = dense(self.full_offsets, self.full_indices)
        if mask_mod is None:
            mask_mod = self._mask_mod()
        return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx,
                                        BLOCK_SIZE=(self.block_m, self.block_n),
                                        mask_mod=mask_mod, seq_lengths=(self.q_len, self.k_len))

    def _mask_mod(self):
        expr, lq, lk, nh = self.expr, self.orig_q_len, self.orig_k_len, self.num_heads
        segs = segment_pair(self.segments, lq, lk)
        from .predicate import evaluate

        sq, sk = segs if segs is not None else (None, None)

        def mask_mod(b, h, q_idx, kv_idx):
            return evaluate(expr, q_idx, kv_idx, q_len=lq, k_len=lk, heads=h, num_heads=nh,
                            seg_q=sq, seg_k=sk)
        return mask_mod


# ---------------------------------------------------------------- argument checks


def _block_size(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise bad_argument(name, value, "a power of two >= 16")
    return value


def _check_axis(name, axis, orig_len):
    if not isinstance(axis, Axis):
        raise bad_argument(name, axis, "a layout.Axis")
    if axis.length < 0:
        raise bad_argument(f"{name}.length", axis.length, "an integer >= 0")
    if axis.index is None:
        if axis.step < 1:
            raise bad_argument(f"{name}.step", axis.step, "an integer >= 1")
        last = axis.start + axis.step * (axis.length - 1)
        if axis.length and (axis.start < 0 or last >= orig_len):
            raise bad_argument(name, axis, f"positions inside [0, {orig_len})")
    elif axis.index.numel() != axis.length:
        raise bad_argument(f"{name}.index", f"{axis.index.numel()} positions",
                   f"length = {axis.length} positions")


def _memory_budget() -> int:
    """Index entries allowed: int32 limit, and half the available memory (8 bytes/entry:
    forward and transpose)."""
    limit = MAX_INDEX_ENTRIES
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limit = min(limit, int(line.split()[1]) * 1024 // 2 // 8)
    except OSError:
        pass
    return limit


# ---------------------------------------------------------------- classification


def _head_groups(expr, heads: Sequence[int], num_heads: int):
    """Heads with identical layouts: same membership in every ``heads(S)`` of the pattern (and
    one group per head if a ``where`` reads ``h``)."""
    sets = [n.set for n in expr.walk() if isinstance(n, ir.Heads)]
    reads_h = any(isinstance(n, ir.Var) and n.name == "h" for n in expr.walk())
    member = [prims.in_set(s, torch.tensor(list(heads), dtype=torch.int64), num_heads).tolist()
              for s in sets]
    groups = {}
    for i, h in enumerate(heads):
        key = tuple(m[i] for m in member) + ((h,) if reads_h else ())
        groups.setdefault(key, []).append(i)
    return [tuple(v) for v in groups.values()]


class _Classifier:
    """Post-order walk of a pattern for one head group, producing normalised runs."""

    def __init__(self, qb, kb, head, num_heads, q_len, k_len, segs):
        self.qb, self.kb, self.head, self.num_heads = qb, kb, head, num_heads
        self.q_len, self.k_len, self.segs = q_len, k_len, segs
        self.device = qb.lo.device
        self.cache = {}

    def norm(self, runs, table=IDENT):
        return combine(table, [runs], self.qb.n, self.kb.n)

    def full(self):
        rows = torch.arange(self.qb.n, dtype=torch.int64, device=self.device)
        return Runs.make(rows, torch.zeros_like(rows), torch.full_like(rows, self.kb.n), FULL)

    def run(self, expr) -> Runs:
        # keyed by id: hashing a deep IR is recursive, and patterns may nest thousands deep
        stack, done = [(expr, False)], self.cache
        while stack:
            node, visited = stack.pop()
            if id(node) in done:
                continue
            kids = [c for c in node.children() if ir.is_pattern(c)] \
                if isinstance(node, ir.COMBINATORS) else []
            if visited or not kids:
                done[id(node)] = self.node(node, [done[id(c)] for c in kids])
            else:
                stack.append((node, True))
                stack.extend((c, False) for c in kids if id(c) not in done)
        return done[id(expr)]

    def node(self, n, kids) -> Runs:  # noqa: C901 - one case per node type
        qb, kb, nq, nk = self.qb, self.kb, self.qb.n, self.kb.n
        if isinstance(n, ir.Union):
            return combine(OR, kids, nq, nk)
        if isinstance(n, ir.Intersect):
            return combine(AND, kids, nq, nk)
        if isinstance(n, ir.Difference):
            return combine(DIFF, kids, nq, nk)
        if isinstance(n, ir.Complement):
            return combine(NOT, kids, nq, nk)
        c = ir.const
        if isinstance(n, ir.All):
            return self.full()
        if isinstance(n, ir.Nothing):
            return Runs.empty(self.device)
        if isinstance(n, ir.Causal):
            return self.norm(prims.window(qb, kb, prims._BIG, 0))
        if isinstance(n, ir.Window):
            return self.norm(prims.window(qb, kb, int(c(n.back)), int(c(n.ahead))))
        if isinstance(n, ir.Chunk):
            return self.norm(prims.chunk(qb, kb, int(c(n.size)), int(c(n.back)),
                                         int(c(n.ahead))))
        if isinstance(n, ir.Stride):
            return self.norm(prims.stride(qb, kb, int(c(n.s))))
        if isinstance(n, (ir.Rows, ir.Cols, ir.Global)):
            rc = prims.set_classes(n.set, qb, self.k_len) if not isinstance(n, ir.Cols) else \
                torch.full((nq,), FULL, dtype=torch.int64, device=self.device)
            cc = prims.set_classes(n.set, kb, self.k_len) if not isinstance(n, ir.Rows) else \
                torch.full((nk,), FULL, dtype=torch.int64, device=self.device)
            runs = prims.either(rc, cc) if isinstance(n, ir.Global) else prims.product(rc, cc)
            return self.norm(runs)
        if isinstance(n, ir.Prefix):
            m = int(c(n.m))
            return self.norm(prims.product(prims.threshold_classes(qb, m),
                                           prims.threshold_classes(kb, m)))
        if isinstance(n, ir.Random):
            return self.norm(prims.random(qb, kb, float(c(n.density)), int(c(n.block)),
                                          int(c(n.seed))))
        if isinstance(n, ir.Segment):
            if self.segs is None:
                raise bad_argument("segments", None, "segment ids (a 1-D integer tensor, or a pair "
                           "(seg_q, seg_k)): the pattern uses `segment`")
            return self.norm(prims.segment(qb, kb, *self.segs))
        if isinstance(n, ir.Heads):
            inside = bool(prims.in_set(n.set, torch.tensor([self.head]), self.num_heads)[0])
            return self.full() if inside else Runs.empty(self.device)
        if isinstance(n, ir.Where):
            return self.where(n)
        raise TypeError(f"not a pattern expression: {n!r}")

    def where(self, n) -> Runs:
        """Interval bounds per block pair (``layout_where``) up to WHERE_PAIR_LIMIT pairs,
        UNKNOWN everywhere beyond (refinement or a conservative PARTIAL follows)."""
        qb, kb, nq, nk = self.qb, self.kb, self.qb.n, self.kb.n
        if nq * nk > WHERE_PAIR_LIMIT:
            rows = torch.arange(nq, dtype=torch.int64, device=self.device)
            return Runs.make(rows, torch.zeros_like(rows), torch.full_like(rows, nk), UNKNOWN)
        parts = []
        step = max(1, (1 << 20) // max(nk, 1))
        for r0 in range(0, nq, step):
            r1 = min(nq, r0 + step)
            cls = where_classes(n.pred, qb.lo[r0:r1, None], qb.hi[r0:r1, None], kb.lo[None, :],
                                kb.hi[None, :], q_len=self.q_len, k_len=self.k_len,
                                head=self.head)
            parts.append(prims._runs_2d(cls, r0))
        return Runs.cat(parts, self.device)


def _evaluate_blocks(todo: Runs, expr, qb, kb, head, ctx, evaluate):
    """Classes of every block of ``todo`` by element-wise evaluation, as one-block runs."""
    row, col, _ = expand(todo)
    q_len, k_len, num_heads, segs = ctx
    device = todo.device
    q_all = qb.axis.positions(0, qb.length).to(device)
    k_all = kb.axis.positions(0, kb.length).to(device)
    out = []
    step = max(1, (1 << 22) // (qb.size * kb.size))
    for s in range(0, row.numel(), step):
        r, n = row[s:s + step], col[s:s + step]
        qi = r[:, None] * qb.size + torch.arange(qb.size, device=device)[None, :]
        ki = n[:, None] * kb.size + torch.arange(kb.size, device=device)[None, :]
        q_ok, k_ok = qi < qb.length, ki < kb.length
        qp = q_all[qi.clamp(max=qb.length - 1)]
        kp = k_all[ki.clamp(max=kb.length - 1)]
        sq, sk = segs if segs is not None else (None, None)
        keep = evaluate(expr, qp[:, :, None], kp[:, None, :], q_len=q_len, k_len=k_len,
                        heads=head, num_heads=num_heads, seg_q=sq, seg_k=sk)
        valid = q_ok[:, :, None] & k_ok[:, None, :]
        kept = (keep & valid).flatten(1).sum(1)
        total = valid.flatten(1).sum(1)
        cls = torch.where(kept == 0, SKIP, torch.where(kept == total, FULL, PARTIAL))
        out.append(Runs.make(r, n, n + 1, cls))
    return out


def _refine(runs: Runs, expr, qb, kb, head, ctx, limit: int):
    """Settle UNKNOWN runs by evaluating their blocks element-wise; returns (runs, exact)."""
    unknown = runs.cls == UNKNOWN
    if not bool(unknown.any()):
        return runs, True
    todo = runs.select(unknown)
    if todo.blocks() * qb.size * kb.size > limit:
        return combine(IDENT, [Runs(runs.row, runs.start, runs.end,
                                    torch.where(unknown, PARTIAL, runs.cls))],
                       qb.n, kb.n), False
    try:
        from .predicate import evaluate
    except ImportError:  # a standalone copy without the evaluator: stay conservative
        return _refine(runs, expr, qb, kb, head, ctx, 0)
    try:
        out = _evaluate_blocks(todo, expr, qb, kb, head, ctx, evaluate)
    except RecursionError:  # the element evaluator recurses; very deep patterns stay PARTIAL
        return _refine(runs, expr, qb, kb, head, ctx, 0)
    rest = runs.select(~unknown)
    return combine(IDENT, [Runs.cat([rest] + out, runs.device)], qb.n, kb.n), True


def classify(expr, q_axis: Axis, k_axis: Axis, *, block_m: int, block_n: int, q_len: int,
             k_len: int, num_heads: int = 1, segments=None, heads=None,
             refine_limit: int = REFINE_LIMIT) -> Layout:
    """Block layout of ``expr`` over mapped coordinates.

    Query block ``m`` covers mapped indices ``[m*block_m, (m+1)*block_m) ∩ [0, q_axis.length)``,
    key block ``n`` likewise.  ``q_len``/``k_len`` are the ORIGINAL lengths (they define ``p``
    and negative set members).  ``heads``: the query-head indices the layout covers (default
    ``range(num_heads)``); ``num_heads`` is the total (for negative ``heads(S)`` members).
    """
    q_len, k_len = positive_int("q_len", q_len), positive_int("k_len", k_len)
    num_heads = positive_int("num_heads", num_heads)
    block_m, block_n = _block_size("block_m", block_m), _block_size("block_n", block_n)
    _check_axis("q_axis", q_axis, q_len)
    _check_axis("k_axis", k_axis, k_len)
    heads = list(range(num_heads)) if heads is None else [int(h) for h in heads]
    if not heads:
        raise bad_argument("heads", heads, "at least one head index")
    check_where_range(expr, q_len, k_len, num_heads)
    segs = segment_pair(segments, q_len, k_len)
    if segs is None and any(isinstance(n, ir.Segment) for n in expr.walk()):
        raise bad_argument("segments", None, "segment ids (a 1-D integer tensor of length k_len, or a "
                   "pair (seg_q, seg_k)): the pattern uses `segment`")
    if segs is not None and q_axis.is_identity and k_axis.is_identity:
        fast = _classify_documents(expr, segs, heads, num_heads, block_m, block_n, q_len, k_len,
                                   refine_limit, segments)
        if fast is not None:
            return fast
    device = segs[0].device if segs is not None else torch.device("cpu")
    qb = prims.make_blocks(q_axis, block_m, k_len - q_len, device)
    kb = prims.make_blocks(k_axis, block_n, 0, device)
    groups = _head_groups(expr, heads, num_heads)
    per_group, exact = [], True
    budget = _memory_budget()
    for g in groups:
        head = heads[g[0]]
        runs = _Classifier(qb, kb, head, num_heads, q_len, k_len, segs).run(expr)
        runs, ok = _refine(runs, expr, qb, kb, head, (q_len, k_len, num_heads, segs),
                           refine_limit)
        exact &= ok
        entries = sum(r.blocks() for r in per_group) + runs.blocks()
        if entries > budget:
            _too_large(entries, len(groups), q_len, k_len, block_m, block_n, budget)
        per_group.append(runs)
    return _assemble(per_group, groups, heads, qb, kb, q_axis, k_axis, exact, expr, q_len,
                     k_len, segments)


def _too_large(entries, n_groups, q_len, k_len, block_m, block_n, budget):
    raise ValueError(
        f"pattern: the block layout would hold about {entries} kept blocks "
        f"(so far, of {n_groups} head group(s)) at q_len={q_len}, k_len={k_len}, "
        f"blocks {block_m}x{block_n}; the limit is {budget} index entries (int32, half "
        f"the available memory); use larger blocks or shorter sequences")


def _classify_documents(expr, segs, heads, num_heads, block_m, block_n, q_len, k_len,
                        refine_limit, segments) -> Optional[Layout]:
    """The lean path for document masks (``layout_segment``): the same Layout as the general
    classifier, or None where it does not apply (another pattern, heads-dependent, ids of a key
    document not contiguous, or a block grid too large for a dense array)."""
    band = layout_segment.band_of(expr)
    if band is None:
        return None
    for presorted in (True, False):
        dense = layout_segment.classes(segs[0], segs[1], q_len, k_len, block_m, block_n, *band,
                                       refine_limit, presorted)
        if dense is None:
            return None
        done = layout_segment.csr_tables(*dense)
        if done is not None:
            break
    else:
        return None
    exact, entries, t = done
    # the memory budget reads /proc/meminfo: only worth it where it could bind (< 16 MiB free)
    if entries > (1 << 20):
        budget = _memory_budget()
        if entries > budget:
            _too_large(entries, 1, q_len, k_len, block_m, block_n, budget)
    nq, nk = dense[0].shape
    return Layout(q_len, k_len, block_m, block_n, len(heads), nq, nk, (tuple(heads),),
                  torch.zeros(len(heads), dtype=torch.int32, device=segs[0].device), *t,
                  exact=exact, identity=True, expr=expr, orig_q_len=q_len, orig_k_len=k_len,
                  segments=segments)


def _csr(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int):
    """CSR of entries sorted by (row, col): (offsets int32 [n_rows + 1], indices int32)."""
    counts = torch.bincount(rows, minlength=n_rows) if rows.numel() else \
        torch.zeros(n_rows, dtype=torch.int64, device=rows.device)
    offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets.to(torch.int32), cols.to(torch.int32)


def _assemble(per_group, groups, heads, qb, kb, q_axis, k_axis, exact, expr, q_len, k_len,
              segments) -> Layout:
    device = qb.lo.device
    nq, nk, ng = qb.n, kb.n, len(groups)
    tables = {}
    for value in (FULL, PARTIAL):
        rows, cols = [], []
        for g, runs in enumerate(per_group):
            r, n, _ = expand(runs.select(runs.cls == value))
            rows.append(r + g * nq)
            cols.append(n)
        rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64, device=device)
        cols = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64, device=device)
        fwd = _csr(rows, cols, ng * nq, nk)
        g, m = torch.div(rows, max(nq, 1), rounding_mode="floor"), rows - (rows // max(nq, 1)) * nq
        t_rows = g * nk + cols
        order = torch.argsort(t_rows * max(nq, 1) + m)
        bwd = _csr(t_rows[order], m[order], ng * nk, nq)
        tables[value] = fwd + bwd
    head_group = torch.zeros(len(heads), dtype=torch.int32, device=device)
    for g, members in enumerate(groups):
        head_group[list(members)] = g
    f, p = tables[FULL], tables[PARTIAL]
    return Layout(q_axis.length, k_axis.length, qb.size, kb.size, len(heads), nq, nk,
                  tuple(tuple(heads[i] for i in g) for g in groups), head_group,
                  f[0], f[1], p[0], p[1],
                  f[2], f[3], p[2], p[3], exact=exact,
                  identity=q_axis.is_identity and k_axis.is_identity, expr=expr,
                  orig_q_len=q_len, orig_k_len=k_len, segments=segments)


def build_layout(expr, q_len, k_len=None, block_m=128, block_n=128, num_heads=1, segments=None,
                 *, refine_limit: int = REFINE_LIMIT) -> Layout:
    """``classify`` over identity axes ``Axis(q_len)``, ``Axis(k_len)``."""
    q_len = positive_int("q_len", q_len)
    k_len = q_len if k_len is None else positive_int("k_len", k_len)
    return classify(expr, Axis(q_len), Axis(k_len), block_m=block_m, block_n=block_n,
                    q_len=q_len, k_len=k_len, num_heads=num_heads, segments=segments,
                    refine_limit=refine_limit)
