"""Recognise patterns that are one diagonal band: keys ``k`` with ``-ahead <= d <= back``.

``all``, ``causal``, ``window(back, ahead)``, and intersections and overlapping unions of them are
bands (``causal & window(1023, 0)`` is ``(1023, 0)``; ``causal`` is ``(None, 0)``, None standing
for no bound).  A band is the one shape whose keys per query are a single interval at a fixed
offset from the query, which is what the generated modules' warp-specialised backward
(``gluon_backward``) computes directly, with no block tables.
"""
from __future__ import annotations

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
