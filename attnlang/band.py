"""Recognise patterns that are one diagonal band: keys ``k`` with ``-ahead <= d <= back``.

``all``, ``causal``, ``window(back, ahead)``, and intersections and overlapping unions of them are
bands (``causal & window(1023, 0)`` is ``(1023, 0)``; ``causal`` is ``(None, 0)``, None standing
for no bound).  A band is the one shape whose keys per query are a single interval at a fixed
offset from the query, which is what the generated modules' warp-specialised backward
(``gluon_backward``) computes directly, with no block tables.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from . import ir

Band = Tuple[Optional[int], Optional[int]]  # (back, ahead); None: unbounded on that side


def _lower(x, y):
    return y if x is None else x if y is None else min(x, y)


def _upper(x, y):
    return None if x is None or y is None else max(x, y)


def band_of(expr) -> Optional[Band]:
    """``(back, ahead)`` when the bound, simplified pattern ``expr`` keeps exactly the pairs
    ``-ahead <= d <= back`` (with at least one distance kept); None otherwise."""
    found = _band(expr)
    if found is None:
        return None
    back, ahead = found
    if back is not None and ahead is not None and back + ahead < 0:
        return None  # keeps nothing
    return found


def _band(expr) -> Optional[Band]:
    if isinstance(expr, ir.All):
        return None, None
    if isinstance(expr, ir.Causal):
        return None, 0
    if isinstance(expr, ir.Window):
        return int(ir.const(expr.back)), int(ir.const(expr.ahead))
    if isinstance(expr, (ir.Intersect, ir.Union)):
        left, right = _band(expr.left), _band(expr.right)
        if left is None or right is None:
            return None
        if isinstance(expr, ir.Intersect):
            return _lower(left[0], right[0]), _lower(left[1], right[1])
        # a union is one band when the two distance intervals [-ahead, back] overlap or touch
        for a, b in ((left, right), (right, left)):
            if a[0] is not None and b[1] is not None and a[0] + 1 < -b[1]:
                return None  # a ends (at distance back) before b starts (at -ahead)
        if any(x is not None and y is not None and x + y < 0 for x, y in (left, right)):
            return None  # an empty side: the union is the other, but keep this simple
        return _upper(left[0], right[0]), _upper(left[1], right[1])
    return None


Interval = Tuple[Optional[int], Optional[int]]  # start <= i < stop; None: no bound there
Banded = Tuple[Band, Optional[Interval], Optional[Interval]]  # (band, rows, cols)


def banded_of(expr) -> Optional[Banded]:
    """``(band, rows, cols)`` when the bound, simplified pattern ``expr`` is a union of one band
    (``band_of``) with ``rows(a..b)``, ``cols(a..b)`` or ``global(a..b)`` terms -- Longformer's
    ``window(w) | global(0..g)`` -- keeping exactly the pairs of the band, the queries at
    positions ``p`` in ``rows`` (all their keys) and the keys ``k`` in ``cols`` (for every query);
    rows or cols None where the pattern has none.  The sets must be ranges that count from the
    start (``a..b``, ``..b``, ``a..`` with bounds of 0 or more; ranges of one kind that overlap
    or touch are joined); None otherwise, and for a band alone (that is ``band_of``'s).  A range
    with no start (``..b``) has start None: with ``Lq > Lk`` the first queries sit at positions
    below 0."""
    bands, rows, cols = [], [], []
    for term in _operands(expr, ir.Union):
        if isinstance(term, (ir.Rows, ir.Cols, ir.Global)):
            span = _interval(term.set)
            if span is None:
                return None
            if span[1] is not None and span[0] is not None and span[1] <= span[0]:
                continue  # an empty range keeps nothing
            if not isinstance(term, ir.Cols):
                rows.append(span)
            if not isinstance(term, ir.Rows):
                cols.append(span)
        else:
            bands.append(term)
    if not bands or not (rows or cols):
        return None
    band = bands[0]
    for other in bands[1:]:
        band = ir.Union(band, other)
    found = band_of(band)
    if found is None:
        return None
    rows, cols = _joined(rows), _joined(cols)
    if rows is False or cols is False:
        return None
    return found, rows, cols


def _operands(expr, node):
    """The operands of a chain of binary ``node`` (``ir.Union``, ``ir.Intersect``): ``a | b | c``
    -> a, b, c."""
    if isinstance(expr, node):
        yield from _operands(expr.left, node)
        yield from _operands(expr.right, node)
    else:
        yield expr


def _interval(index_set) -> Optional[Interval]:
    """[start, stop) of a range that counts from the start (bounds of 0 or more, None where it
    has none), else None."""
    if not isinstance(index_set, ir.Range):
        return None
    lo, hi = (None if x is None else int(ir.const(x)) for x in (index_set.lo, index_set.hi))
    if any(x is not None and x < 0 for x in (lo, hi)):
        return None  # counts from the end: depends on Lk
    return lo, hi


def _joined(spans):
    """One interval covering exactly the union of ``spans`` (None for none; False where they
    leave a gap)."""
    if not spans:
        return None
    spans = sorted(spans, key=lambda s: -1 if s[0] is None else s[0])
    start, stop = spans[0]
    for lo, hi in spans[1:]:
        if stop is not None and lo is not None and lo > stop:
            return False
        stop = None if stop is None or hi is None else max(stop, hi)
    return start, stop


Strided = Tuple[int, Band]  # (step s, band of distances)


def strided_band_of(expr) -> Optional[Strided]:
    """``(s, (back, ahead))`` when the bound, simplified pattern ``expr`` keeps exactly the
    pairs of a band (``band_of``; ``all`` where it has none) whose distance is a multiple of
    ``s > 1``: an intersection of ``stride`` terms with band terms, the dilated window
    ``window(2048) & stride(4)``.  In the residue classes of s (queries and keys ``r, r + s,
    ...``; with ``Lk - Lq`` a multiple of s a class's queries meet only its own keys) it is
    the band `gluon_hopper.class_band` of the classes' own positions; None otherwise, for a
    band alone, and where no distance is kept."""
    factors = list(_operands(expr, ir.Intersect))
    steps = [int(ir.const(f.s)) for f in factors if isinstance(f, ir.Stride)]
    rest = [f for f in factors if not isinstance(f, ir.Stride)]
    if not steps or any(s < 1 for s in steps):
        return None
    step = math.lcm(*steps)
    if step == 1:
        return None
    found = _band_of_factors(rest)
    if found is None:
        return None
    back, ahead = found
    if back is not None and ahead is not None and back // step + ahead // step < 0:
        return None  # no multiple of the step in the band (`gluon_hopper.class_band`)
    return step, found


Chunked = Tuple[Band, int]  # (band, chunk size)


def chunked_band_of(expr) -> Optional[Chunked]:
    """``((back, ahead), size)`` when the bound, simplified pattern ``expr`` keeps exactly the
    pairs of a band (``band_of``; ``all`` where it has none) whose position and key lie in one
    chunk of ``size`` (``p div size = k div size``): an intersection of one ``chunk(size)``
    term (no chunks back or ahead) with band terms, the fixed pattern's local part ``causal &
    chunk(128)``; None otherwise (a band alone included), and where the band keeps nothing."""
    factors = list(_operands(expr, ir.Intersect))
    chunks = [f for f in factors if isinstance(f, ir.Chunk)]
    rest = [f for f in factors if not isinstance(f, ir.Chunk)]
    if len(chunks) != 1 or ir.const(chunks[0].back) != 0 or ir.const(chunks[0].ahead) != 0:
        return None
    size = int(ir.const(chunks[0].size))
    if size < 1:
        return None
    found = _band_of_factors(rest)
    return None if found is None else (found, size)


def _band_of_factors(factors) -> Optional[Band]:
    """``band_of`` the intersection of ``factors`` (``all``'s band where there are none)."""
    if not factors:
        return None, None
    band = factors[0]
    for other in factors[1:]:
        band = ir.Intersect(band, other)
    return band_of(band)
