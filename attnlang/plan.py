"""The component plan: a pattern split into disjoint parts, each dense in its own coordinates.

A block layout in the original order wastes work on strided and scattered patterns: in
``causal & stride(128)`` every 128x128 block holds about one kept pair per row, so a kernel that
visits blocks computes ~128 pairs for each one it keeps.  The plan changes coordinates instead:

* ``identity`` components visit blocks of the original order (windows, chunks, prefixes, global
  rows and contiguous column ranges, and anything else);
* ``residue`` components (for terms with a ``stride(s)`` factor) split queries and keys into ``s``
  residue classes, ``p = r (mod s)`` and ``k = r (mod s)``: ``d mod s == 0`` holds exactly within a
  class, so inside each class the term is dense (``causal & stride(128)`` becomes a causal triangle
  in each class);
* ``gather`` components (for terms with a ``cols(S)`` factor where ``S`` is scattered, e.g.
  ``every(128, 112..128)``) visit only the keys listed in ``S``, through an index list.

Disjointness: the pattern is written as a union of terms ``T1 | T2 | ...`` (distributing one
top-level intersection over a union); terms are grouped by coordinate system, and component ``i``
owns ``group_i & ~(group_1 | ... | group_{i-1})``.  So every kept pair belongs to exactly one
component and nothing is computed twice; a query row's results from several components are merged
by log-sum-exp (``out = sum_c exp(lse_c - lse) out_c`` with ``lse = logsumexp_c lse_c``).

Each component carries, per class, the mapping from mapped to original positions (``layout.Axis``)
and the block layout of its predicate *in mapped coordinates* (``layout.classify``).  The kernels
evaluate the predicate (in original coordinates) only on partial blocks.

This module imports only the standard library, torch and its siblings ``ir`` and ``layout``:
``attnlang compile`` copies it into standalone generated modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Tuple

import torch

from . import ir
from .layout import Axis, Layout, classify
from .layout_prims import in_set

IDENTITY, RESIDUE, GATHER = "identity", "residue", "gather"


# ---------------------------------------------------------------- length-independent structure


@dataclass(frozen=True)
class ComponentSpec:
    """What a component is, independent of the lengths: enough to generate its kernels."""

    kind: str                      # identity | residue | gather
    predicate: ir.Node             # the pairs it owns, original coordinates
    modulus: int = 1               # residue: number of classes s
    gather_set: Optional[ir.Node] = None   # gather: the key index set


def _union_terms(expr):
    """``a | b | c`` -> [a, b, c]; ``global(S)`` -> [rows(S), cols(S)]; and an intersection with a
    union inside is distributed: ``x & (a | b)`` -> [x & a, x & b]."""
    if isinstance(expr, ir.Union):
        return _union_terms(expr.left) + _union_terms(expr.right)
    if isinstance(expr, ir.Global):
        return [ir.Rows(expr.set), ir.Cols(expr.set)]
    if isinstance(expr, ir.Intersect):
        right = _union_terms(expr.right)
        if len(right) > 1:
            return [ir.Intersect(expr.left, part) for part in right]
        left = _union_terms(expr.left)
        if len(left) > 1:
            return [ir.Intersect(part, expr.right) for part in left]
    return [expr]


def _factors(expr):
    """The conjuncts of an intersection (``a & b & c`` -> [a, b, c]); ``a - b`` is ``a & ~b``."""
    if isinstance(expr, ir.Intersect):
        return _factors(expr.left) + _factors(expr.right)
    if isinstance(expr, ir.Difference):
        return _factors(expr.left) + [ir.Complement(expr.right)]
    return [expr]


def _is_scattered(s) -> bool:
    """A key set worth gathering: anything but plain ranges."""
    if isinstance(s, ir.SetUnion):
        return _is_scattered(s.left) or _is_scattered(s.right)
    return isinstance(s, (ir.Every, ir.Listed))


def _term_kind(term):
    """(kind, modulus, gather_set) for one union term."""
    strides = [ir.const(f.s) for f in _factors(term) if isinstance(f, ir.Stride) and ir.const(f.s) > 1]
    if strides:
        return RESIDUE, max(strides), None
    for f in _factors(term):
        if isinstance(f, ir.Cols) and _is_scattered(f.set):
            return GATHER, 1, f.set
    return IDENTITY, 1, None


def _union_of(terms):
    out = terms[0]
    for t in terms[1:]:
        out = ir.Union(out, t)
    return out


def decompose(expr) -> Tuple[ComponentSpec, ...]:
    """Split a bound, simplified pattern into disjoint component specs (see the module docstring)."""
    groups = {}  # (kind, modulus, gather_set) -> [terms], in first-seen order
    for term in _union_terms(expr):
        groups.setdefault(_term_kind(term), []).append(term)
    order = sorted(groups, key=lambda key: (key[0] != IDENTITY, key[0] != RESIDUE))
    specs, earlier = [], []
    for key in order:
        kind, modulus, gather_set = key
        own = _union_of(groups[key])
        predicate = own
        for prev in earlier:
            predicate = ir.Difference(predicate, prev)
        specs.append(ComponentSpec(kind, predicate, modulus, gather_set))
        earlier.append(own)
    return tuple(specs)


def one_pass(kinds) -> bool:
    """Whether components of these kinds run their forward (and dQ) in one pass, one program per
    query block walking every component's keys with one softmax: several components, each
    reading the queries in order (identity, gather).  A residue component reads its queries
    class by class, so patterns with one merge per-component results by log-sum-exp instead."""
    kinds = list(kinds)
    return len(kinds) > 1 and all(kind in (IDENTITY, GATHER) for kind in kinds)


# ---------------------------------------------------------------- lowering to concrete lengths


@dataclass(frozen=True, eq=False)
class Component:
    """One part of a plan at concrete lengths.

    ``q_axes[c]``/``k_axes[c]`` map class ``c``'s mapped indices to original positions;
    ``layouts[c]`` is the block layout of ``predicate`` over those axes.  Identity and gather
    components have one class; a residue component with modulus ``s`` has ``s`` classes.
    """

    spec: ComponentSpec
    q_axes: Tuple[Axis, ...]
    k_axes: Tuple[Axis, ...]
    layouts: Tuple[Layout, ...]

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def predicate(self):
        return self.spec.predicate

    @property
    def num_classes(self) -> int:
        return len(self.layouts)

    @property
    def computed_pairs(self) -> int:
        """Pairs inside the blocks the kernels visit (blocks clipped to the axes' lengths)."""
        total = 0
        for q_axis, k_axis, lay in zip(self.q_axes, self.k_axes, self.layouts):
            total += _visited_pairs(lay, q_axis.length, k_axis.length)
        return total

    def describe(self) -> str:
        extra = f" mod {self.spec.modulus}" if self.kind == RESIDUE else ""
        blocks = sum(lay.kept_blocks for lay in self.layouts)
        return f"{self.kind}{extra}: {self.predicate}  ({self.num_classes} class(es), {blocks} blocks)"


def _visited_pairs(lay: Layout, q_count: int, k_count: int, full_only: bool = False) -> int:
    """Sum over visited (or only full) blocks of rows x cols in the block, summed over heads."""
    bm, bn = lay.block_m, lay.block_n
    total = 0
    sizes = [len(g) for g in lay.groups]
    tables = [(lay.full_offsets, lay.full_indices)]
    if not full_only:
        tables.append((lay.partial_offsets, lay.partial_indices))
    for offsets, indices in tables:
        if indices.numel() == 0:
            continue
        counts = (offsets[1:] - offsets[:-1]).long().cpu()
        rows = torch.arange(counts.numel()).repeat_interleave(counts)
        m = rows % lay.num_q_blocks
        g = rows // lay.num_q_blocks
        n = indices.long().cpu()
        h = (torch.minimum((m + 1) * bm, torch.tensor(q_count)) - m * bm)
        w = (torch.minimum((n + 1) * bn, torch.tensor(k_count)) - n * bn)
        heads = torch.tensor(sizes, dtype=torch.long)[g]
        total += int((h * w * heads).sum())
    return total


@dataclass(frozen=True, eq=False)
class Plan:
    """A pattern at concrete lengths as disjoint components (see the module docstring)."""

    expr: ir.Node
    components: Tuple[Component, ...]
    q_len: int
    k_len: int
    num_heads: int
    block_m: int
    block_n: int
    segments: object = None

    @cached_property
    def computed_pairs(self) -> int:
        """Pairs inside the blocks the kernels visit, summed over heads (counted once)."""
        return sum(c.computed_pairs for c in self.components)

    @cached_property
    def kept_pairs(self) -> int:
        """Pairs the pattern keeps, summed over heads: full blocks by area, partial blocks
        evaluated element by element (cost proportional to the visited blocks; counted once)."""
        return sum(_kept_pairs(c, self) for c in self.components)

    @property
    def efficiency(self) -> float:
        """kept_pairs / computed_pairs (1.0 when nothing is computed)."""
        return self.kept_pairs / self.computed_pairs if self.computed_pairs else 1.0

    def describe(self) -> str:
        lines = [f"plan for {self.expr} at Lq={self.q_len}, Lk={self.k_len}, H={self.num_heads}, "
                 f"blocks {self.block_m}x{self.block_n}:"]
        for i, c in enumerate(self.components):
            lines.append(f"  [{i}] {c.describe()}")
        if one_pass(c.kind for c in self.components):
            lines.append("  forward and dQ in one pass over the components (queries in order)")
        elif len(self.components) > 1:
            lines.append("  components merged per query row by log-sum-exp")
        lines.append(f"  kept pairs {self.kept_pairs}, computed pairs {self.computed_pairs} "
                     f"({100 * self.efficiency:.1f}% useful)")
        return "\n".join(lines)


def _set_members(s, length: int) -> torch.Tensor:
    """Sorted members of an index set within [0, length) (negative members count from the end):
    the set's membership test over the positions, in time linear in ``length`` whatever its
    bounds and moduli."""
    return torch.nonzero(in_set(s, torch.arange(length, dtype=torch.int64), length)).flatten()


def _translation_invariant(expr) -> bool:
    """Whether ``expr`` depends on positions only through ``d = p - k`` (and on ``h``, ``Lq``,
    ``Lk``): then shifting both axes of a class by the same amount leaves its layout unchanged."""
    for node in expr.walk():
        if isinstance(node, ir.Var):
            if node.name in ("p", "q", "k"):
                return False
        elif ir.is_pattern(node) and not isinstance(node, _SHIFT_FREE):
            return False
    return True


_SHIFT_FREE = (ir.All, ir.Nothing, ir.Causal, ir.Window, ir.Stride, ir.Heads, ir.Where, ir.Union,
               ir.Intersect, ir.Difference, ir.Complement)


def lower(spec: ComponentSpec, q_len: int, k_len: int, *, block_m: int, block_n: int,
          num_heads: int, segments=None) -> Component:
    """Axes and block layouts of one component at concrete lengths.

    Residue classes ``r`` have query axis ``q0 + s i`` and key axis ``r + s j``; when the
    predicate only reads ``d`` (``_translation_invariant``), classes with equal axis lengths and
    equal ``q0 + (k_len - q_len) - r`` are translates of each other and get the same layout
    (computed once: a residue component has at most a handful of distinct ones).  A modulus
    beyond ``q_len + k_len`` leaves out the classes with neither queries nor keys (at most
    ``q_len + k_len`` classes remain, in order of ``r``), so its cost follows the lengths."""
    common = dict(block_m=block_m, block_n=block_n, q_len=q_len, k_len=k_len,
                  num_heads=num_heads, segments=segments)
    if spec.kind == IDENTITY:
        axes = [(Axis(q_len), Axis(k_len))]
    elif spec.kind == GATHER:
        index = _set_members(spec.gather_set, k_len)
        axes = [(Axis(q_len), Axis(int(index.numel()), index=index))]
    else:
        s, off = spec.modulus, k_len - q_len
        axes = []
        residues = range(s)
        if s > q_len + k_len:  # most classes hold no query and no key: only the others
            residues = sorted(set(range(k_len)) | {(q + off) % s for q in range(q_len)})
        for r in residues:
            q0 = (r - off) % s
            qn, kn = max(0, -(-(q_len - q0) // s)), max(0, -(-(k_len - r) // s))
            # an empty side starts at 0: its start is never read, and the kernels' tables hold
            # starts as int32 (q0 reaches s - 1)
            axes.append((Axis(qn, start=q0 if qn else 0, step=s),
                         Axis(kn, start=r if kn else 0, step=s)))
    shared = spec.kind == RESIDUE and _translation_invariant(spec.predicate)
    done, layouts = {}, []
    for qa, ka in axes:
        key = (qa.length, ka.length, qa.start + k_len - q_len - ka.start) if shared else None
        if key is None or key not in done:
            lay = classify(spec.predicate, qa, ka, **common)
            if key is None:
                layouts.append(lay)
                continue
            done[key] = lay
        layouts.append(done[key])
    return Component(spec, tuple(a[0] for a in axes), tuple(a[1] for a in axes), tuple(layouts))


def build_plan(expr, q_len: int, k_len: Optional[int] = None, block_m: int = 128,
               block_n: int = 128, num_heads: int = 1, segments=None) -> Plan:
    """The component plan of a bound, simplified pattern expression at concrete lengths."""
    k_len = q_len if k_len is None else k_len
    components = tuple(lower(spec, q_len, k_len, block_m=block_m, block_n=block_n,
                             num_heads=num_heads, segments=segments)
                       for spec in decompose(expr))
    return Plan(expr, components, q_len, k_len, num_heads, block_m, block_n, segments)


# pairs per ``predicate.evaluate`` call in ``_kept_pairs``: cache-sized chunks run faster on CPU
# than huge ones, and the Python overhead is one call per 16 blocks of 128 x 128
_EVAL_ELEMENTS = 1 << 18


def _partial_entries(lay: Layout):
    """Every (query block, key block, head group) of a layout's partial table: the blocks, one
    head of the group, and the group's size (its heads keep the same pairs: ``_head_groups``),
    as four int64 tensors."""
    offsets = lay.partial_offsets.to(torch.int64).cpu()
    counts = offsets[1:] - offsets[:-1]
    rows = torch.arange(counts.numel()).repeat_interleave(counts)
    cols = lay.partial_indices.to(torch.int64).cpu()
    group = torch.div(rows, max(lay.num_q_blocks, 1), rounding_mode="floor")
    m = rows - group * lay.num_q_blocks
    sizes = torch.tensor([len(g) for g in lay.groups], dtype=torch.int64)
    first_head = torch.tensor([g[0] for g in lay.groups], dtype=torch.int64)
    return m, cols, first_head[group], sizes[group]


def _kept_pairs(component: Component, plan: "Plan") -> int:
    """Kept pairs of one component: full blocks by area; partial blocks of every class and head
    group evaluated element-wise for one head of the group, batched (``_EVAL_ELEMENTS`` pairs per
    call), and counted once for each of its heads."""
    from .predicate import evaluate  # not needed by generated modules: imported only here

    segments = plan.segments
    seg_q = seg_k = None
    if segments is not None:
        seg_q, seg_k = segments if isinstance(segments, (tuple, list)) else (segments, segments)
    total = 0
    blocks, q_flat, k_flat = [], [], []
    q_base = k_base = 0
    for c, (q_axis, k_axis, lay) in enumerate(zip(component.q_axes, component.k_axes,
                                                  component.layouts)):
        total += _visited_pairs(lay, q_axis.length, k_axis.length, full_only=True)
        m, n, h, weight = _partial_entries(lay)
        if m.numel():
            blocks.append((m * lay.block_m + q_base, n * lay.block_n + k_base, h, weight,
                           torch.full_like(m, q_base + q_axis.length),
                           torch.full_like(m, k_base + k_axis.length)))
            q_flat.append(q_axis.positions().cpu())
            k_flat.append(k_axis.positions().cpu())
        # class positions are laid end to end: an entry's block starts at its class base
        q_base += q_axis.length if m.numel() else 0
        k_base += k_axis.length if m.numel() else 0
    if not blocks:
        return total
    bm, bn = component.layouts[0].block_m, component.layouts[0].block_n
    q0, k0, heads, weights, q_end, k_end = (torch.cat(parts) for parts in zip(*blocks))
    q_all, k_all = torch.cat(q_flat), torch.cat(k_flat)
    rm, rn = torch.arange(bm), torch.arange(bn)
    step = max(1, _EVAL_ELEMENTS // (bm * bn))
    for s in range(0, q0.numel(), step):
        qi = q0[s:s + step, None] + rm[None, :]
        ki = k0[s:s + step, None] + rn[None, :]
        q_ok, k_ok = qi < q_end[s:s + step, None], ki < k_end[s:s + step, None]
        qp = q_all[torch.where(q_ok, qi, 0)]
        kp = k_all[torch.where(k_ok, ki, 0)]
        keep = evaluate(component.predicate, qp[:, :, None], kp[:, None, :], q_len=plan.q_len,
                        k_len=plan.k_len, heads=heads[s:s + step, None, None],
                        num_heads=plan.num_heads, seg_q=seg_q, seg_k=seg_k)
        kept = (keep & q_ok[:, :, None] & k_ok[:, None, :]).sum((1, 2))
        total += int((kept * weights[s:s + step]).sum())
    return total
