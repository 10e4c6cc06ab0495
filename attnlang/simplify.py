"""``simplify(expr)``: rewrite a pattern into an equal, simpler one.

Every rule here keeps the mask identical for every ``Lq``, ``Lk``, head count and segment ids
(tests/test_simplify.py checks that on random patterns against the dense reference).  The rules
are deliberately modest; each one carries the one-line argument for why it is exact.

1. Constant folding in every argument and inside ``where``: integer ``+ - * div mod``, unary
   minus, ``min``/``max``/``abs``, comparisons and ``and``/``or``/``not`` with constant sides.
   ``div``/``mod`` floor (Python's ``//`` and ``%``); by zero they follow the reference's
   convention (``x div 0 = 0``, ``x mod 0 = x``).  ``Neg`` never wraps a literal afterwards.
2. Identities of the set algebra on flattened ``|`` and ``&`` chains: ``none``/``all`` units and
   absorbers, duplicates, ``a | ~a``, ``a & ~a``; ``~~a``, ``a - none``, ``a - all``, ``a - a``.
3. Band arithmetic on ``d``: windows (and ``causal``, the band ``d >= 0``) intersect into one
   window; overlapping or touching windows in a union merge; empty bands become ``none``.
4. Degenerate primitives: ``stride(1)``, ``prefix(m <= 0)``, ``random`` with threshold 0 or 2^32,
   ``where`` with a constant predicate.

The traversal is iterative (explicit stack), so deep trees are fine.  Equality tests between
operands (duplicates, complements) are only made for operands of at most ``_SMALL`` nodes, since
dataclass equality and hashing recurse.  Anything with an unbound ``Param`` is folded as far as
constants allow and otherwise left alone.
"""
from __future__ import annotations

import math
from dataclasses import replace

from . import ir

__all__ = ["simplify"]

_SMALL = 64  # operands compared for equality have at most this many nodes
_U32_RANGE = 1 << 32


def simplify(expr):
    """Return an expression with the same mask as ``expr``, constants folded (see module doc).

    Also accepts a ``PatternDecl`` (its body is simplified) and plain argument expressions.
    """
    if isinstance(expr, ir.PatternDecl):
        return replace(expr, body=simplify(expr.body))
    values = []
    stack = [(expr, False, None)]
    while stack:
        node, expanded, parent = stack.pop()
        kids = list(node.children())
        if not expanded and kids:
            stack.append((node, True, parent))
            stack.extend((kid, False, type(node)) for kid in reversed(kids))
            continue
        new_kids = values[len(values) - len(kids):] if kids else []
        if kids:
            del values[-len(kids):]
        if isinstance(node, (ir.Union, ir.Intersect)) and parent is type(node):
            # an inner link of a | or & chain: the chain's top node flattens and simplifies the
            # whole chain at once (linear time on long chains instead of quadratic)
            values.append(_rebuild(node, new_kids))
            continue
        values.append(_local(node, new_kids))
    result = values[0]
    if isinstance(result, bool):  # a bare constant predicate; keep it an IR node
        return ir.Compare("==", ir.Int(0), ir.Int(0 if result else 1))
    return result


# ---------------------------------------------------------------- rebuilding


def _rebuild(node, new_kids):
    """``node`` with its child nodes replaced by ``new_kids``, in ``children()`` order."""
    it = iter(new_kids)
    return node.rebuilt(lambda _child: next(it))


def _local(node, kids):
    """Simplify one node whose children are already simplified (values may be Python bools)."""
    if isinstance(node, (ir.BinOp, ir.Neg, ir.Func, ir.Compare, ir.BoolOp, ir.BoolNot, ir.Where)):
        folded = _fold(node, kids)
        if folded is not None:
            return folded
    current = _rebuild(node, kids) if kids else node
    for _ in range(16):  # each rewrite only shrinks the node; 16 is far more than ever needed
        nxt = _pattern_rule(current)
        if nxt is current:
            return current
        current = nxt
    return current


# ---------------------------------------------------------------- rule 1: constant folding


def _ival(node):
    """The int value of an ``Int`` literal, else None (bools are never arguments)."""
    return node.value if isinstance(node, ir.Int) else None


def _fold(node, kids):  # noqa: C901 - one case per node type
    """Fold a node whose children are constants; None when nothing folds."""
    if isinstance(node, ir.BinOp):
        a, b = _ival(kids[0]), _ival(kids[1])
        if a is None or b is None:
            return None
        if node.op == "+":
            value = a + b
        elif node.op == "-":
            value = a - b
        elif node.op == "*":
            value = a * b
        elif node.op == "div":  # floor division; by zero -> 0 (reference convention)
            value = a // b if b != 0 else 0
        else:  # mod: remainder with the divisor's sign; by zero -> a
            value = a % b if b != 0 else a
        return ir.Int(value, span=node.span)
    if isinstance(node, ir.Neg):
        kid = kids[0]
        if isinstance(kid, ir.Int):  # -literal is a literal (the IR invariant)
            return ir.Int(-kid.value, span=node.span)
        if isinstance(kid, ir.Float):
            return ir.Float(-kid.value, span=node.span)
        if isinstance(kid, ir.Neg):  # --x == x for exact integers
            return kid.operand
        return None
    if isinstance(node, ir.Func):
        vals = [_ival(k) for k in kids]
        if any(v is None for v in vals):
            return None
        return ir.Int({"min": min, "max": max, "abs": abs}[node.name](*vals), span=node.span)
    if isinstance(node, ir.Compare):
        a, b = _ival(kids[0]), _ival(kids[1])
        if a is None or b is None:
            return None
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                ">=": a >= b}[node.op]
    if isinstance(node, ir.BoolOp):
        left, right = kids
        absorbing = node.op == "or"  # True absorbs `or`, False absorbs `and`
        for side, other in ((left, right), (right, left)):
            if isinstance(side, bool):
                # `x or True` = True, `x and False` = False; otherwise the constant is the unit
                return absorbing if side == absorbing else other
        return None
    if isinstance(node, ir.BoolNot):
        if isinstance(kids[0], bool):
            return not kids[0]
        if isinstance(kids[0], ir.BoolNot):  # not not x == x
            return kids[0].operand
        return None
    if isinstance(node, ir.Where):
        if isinstance(kids[0], bool):  # a constant predicate keeps all pairs or none
            return ir.All(span=node.span) if kids[0] else ir.Nothing(span=node.span)
        return None
    return None


# ---------------------------------------------------------------- rules 2-4: patterns


def _pattern_rule(n):  # noqa: C901 - one case per node type
    """One rewrite step at a pattern node, or ``n`` itself when no rule applies."""
    if isinstance(n, ir.Window):
        back, ahead = _ival(n.back), _ival(n.ahead)
        if back is not None and ahead is not None and back + ahead < 0:
            return ir.Nothing(span=n.span)  # -ahead <= d <= back is empty
        return n
    if isinstance(n, ir.Chunk):
        back, ahead = _ival(n.back), _ival(n.ahead)
        if back is not None and ahead is not None and back + ahead < 0:
            return ir.Nothing(span=n.span)  # -ahead <= c <= back is empty whatever c is
        return n
    if isinstance(n, ir.Stride):
        if _ival(n.s) == 1:
            return ir.All(span=n.span)  # d mod 1 == 0 always
        return n
    if isinstance(n, ir.Prefix):
        m = _ival(n.m)
        if m is not None and m <= 0:
            return ir.Nothing(span=n.span)  # k < m <= 0 is impossible for k >= 0
        return n
    if isinstance(n, ir.Random):
        if isinstance(n.density, (ir.Int, ir.Float)):
            threshold = math.floor(float(n.density.value) * 4294967296.0)
            if threshold <= 0:
                return ir.Nothing(span=n.span)  # no uint32 hash is < 0
            if threshold >= _U32_RANGE:
                return ir.All(span=n.span)  # every uint32 hash is < 2^32
        return n
    if isinstance(n, ir.Complement):
        x = n.operand
        if isinstance(x, ir.All):
            return ir.Nothing(span=n.span)
        if isinstance(x, ir.Nothing):
            return ir.All(span=n.span)
        if isinstance(x, ir.Complement):
            return x.operand  # ~~a == a
        return n
    if isinstance(n, ir.Difference):
        a, b = n.left, n.right
        if isinstance(b, ir.Nothing):
            return a  # a & ~none == a
        if isinstance(b, ir.All) or isinstance(a, ir.Nothing):
            return ir.Nothing(span=n.span)  # a & ~all == none; none & x == none
        if isinstance(a, ir.All):
            return ir.Complement(b, span=n.span)  # all & ~b == ~b
        if _same(a, b):
            return ir.Nothing(span=n.span)  # a & ~a == none
        return n
    if isinstance(n, ir.Union):
        return _chain(n, ir.Union, _union_operands)
    if isinstance(n, ir.Intersect):
        return _chain(n, ir.Intersect, _intersect_operands)
    return n


def _size_at_most(node, limit):
    count = 0
    for _ in node.walk():
        count += 1
        if count > limit:
            return False
    return True


def _same(a, b):
    """Structural equality, attempted only for small operands (equality recurses)."""
    return _size_at_most(a, _SMALL) and _size_at_most(b, _SMALL) and a == b


def _flatten(node, cls):
    """Operands of a chain of ``cls`` (associativity: grouping does not matter)."""
    out, stack = [], [node]
    while stack:
        x = stack.pop()
        if isinstance(x, cls):
            stack.append(x.right)
            stack.append(x.left)
        else:
            out.append(x)
    return out


def _chain(node, cls, process):
    operands = _flatten(node, cls)
    result = process(operands)
    if isinstance(result, ir.Node):
        return result  # an absorbing element
    if len(result) == len(operands) and all(r is o for r, o in zip(result, operands)):
        return node  # nothing changed: keep the original tree (and its grouping)
    if not result:
        return ir.All() if cls is ir.Intersect else ir.Nothing()
    out = result[0]
    for operand in result[1:]:
        out = cls(out, operand)
    return out


def _dedupe(operands):
    """Drop repeated small operands (idempotence: a | a == a, a & a == a), keeping the first."""
    seen, out = set(), []
    for x in operands:
        if _size_at_most(x, _SMALL):
            if x in seen:
                continue
            seen.add(x)
        out.append(x)
    return out, seen


def _has_complement_pair(operands, seen):
    """Some small ``a`` and ``~a`` both occur among the operands."""
    return any(isinstance(x, ir.Complement) and x.operand in seen for x in operands
               if _size_at_most(x, _SMALL))


def _const_window(x):
    """``(lo, hi)`` with the window keeping ``lo <= d <= hi``, or None if not constant."""
    if isinstance(x, ir.Window):
        back, ahead = _ival(x.back), _ival(x.ahead)
        if back is not None and ahead is not None:
            return -ahead, back
    return None


def _window(lo, hi):
    return ir.Window(ir.Int(hi), ir.Int(-lo))


def _union_operands(operands):
    """Units and absorbers of ``|``; duplicates; ``a | ~a``; merging of touching windows."""
    if any(isinstance(x, ir.All) for x in operands):
        return ir.All()  # a | all == all
    operands = [x for x in operands if not isinstance(x, ir.Nothing)]  # a | none == a
    operands, seen = _dedupe(operands)
    if _has_complement_pair(operands, seen):
        return ir.All()  # a | ~a == all
    has_causal = any(isinstance(x, ir.Causal) for x in operands)
    # Windows are intervals of d; two intervals that overlap or touch (integers) are one interval.
    bands = []  # [lo, hi, index of the first window of the band]
    drop = set()
    for i, x in enumerate(operands):
        band = _const_window(x)
        if band is None:
            continue
        if has_causal and band[0] >= 0:
            drop.add(i)  # lo >= 0: the window lies inside causal (d >= 0), so causal absorbs it
            continue
        bands.append([band[0], band[1], i])
    merged = True
    while merged:
        merged = False
        for a in range(len(bands)):
            for b in range(a + 1, len(bands)):
                (lo1, hi1, i1), (lo2, hi2, i2) = bands[a], bands[b]
                if max(lo1, lo2) <= min(hi1, hi2) + 1:
                    bands[a] = [min(lo1, lo2), max(hi1, hi2), min(i1, i2)]
                    del bands[b]
                    merged = True
                    break
            if merged:
                break
    window_slots = {i for i, x in enumerate(operands) if _const_window(x) is not None} - drop
    if not drop and len(bands) == len(window_slots):
        return operands  # no window merged or dropped
    first = {i: (lo, hi) for lo, hi, i in bands}
    out = []
    for i, x in enumerate(operands):
        if i in first:
            lo, hi = first[i]
            band = _const_window(x)
            out.append(x if band == (lo, hi) else _window(lo, hi))
        elif i not in window_slots and i not in drop:
            out.append(x)
    return out


def _intersect_operands(operands):
    """Units and absorbers of ``&``; duplicates; ``a & ~a``; windows and causal into one band."""
    if any(isinstance(x, ir.Nothing) for x in operands):
        return ir.Nothing()  # a & none == none
    operands = [x for x in operands if not isinstance(x, ir.All)]  # a & all == a
    operands, seen = _dedupe(operands)
    if _has_complement_pair(operands, seen):
        return ir.Nothing()  # a & ~a == none
    bands = [i for i, x in enumerate(operands) if _const_window(x) is not None]
    if not bands:
        return operands  # (several causals were already deduplicated)
    # lo <= d <= hi for every window, and d >= 0 for causal: one interval, or empty.
    lo = max(_const_window(operands[i])[0] for i in bands)
    hi = min(_const_window(operands[i])[1] for i in bands)
    causal = [i for i, x in enumerate(operands) if isinstance(x, ir.Causal)]
    if causal:
        lo = max(lo, 0)
    if lo > hi:
        return ir.Nothing()  # an empty band empties the intersection
    if len(bands) == 1 and not causal:
        return operands
    slots = set(bands) | set(causal)
    first = min(slots)
    out = []
    for i, x in enumerate(operands):
        if i == first:
            out.append(_window(lo, hi))
        elif i not in slots:
            out.append(x)
    return out
