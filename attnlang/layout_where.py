"""Interval bounds of ``where`` predicates over a block: FULL, SKIP or UNKNOWN without evaluating
the block element by element.

For a block, each coordinate lies in an interval (``q``, ``k``, ``p`` from the block's position
bounds, ``d = p - k`` in ``[p_lo - k_hi, p_hi - k_lo]``; ``h``, ``Lq``, ``Lk`` are constants).
Integer expressions are bounded by interval arithmetic (sound: the true value always lies inside)
and comparisons give "can be true" / "can be false"; a block is FULL when the predicate cannot be
false, SKIP when it cannot be true, else UNKNOWN (``layout`` refines those element-wise).

Bounds are float64 tensors with ``±inf`` for "unbounded"; anything beyond 2^52 in magnitude is
widened to infinity, so rounding never makes a bound unsound.  Vectorised over all block pairs
of a chunk.  Only the standard library, torch and ``ir`` are used.
"""
from __future__ import annotations

import torch

from . import ir

_EXACT = float(1 << 52)
INF = float("inf")


def _widen(lo, hi):
    lo = torch.where(torch.isnan(lo) | (lo < -_EXACT), -INF, lo)
    hi = torch.where(torch.isnan(hi) | (hi > _EXACT), INF, hi)
    return lo, hi


def _const(x, like):
    t = torch.full_like(like, float(x))
    return _widen(t, t.clone())


def _corners(op, a, b):
    vals = [op(x, y) for x in a for y in b]
    lo = torch.stack(vals).nan_to_num(nan=-INF).amin(0)
    hi = torch.stack(vals).nan_to_num(nan=INF).amax(0)
    return _widen(lo, hi)


def _singleton(b):
    """Whether the bounds ``b`` are one finite constant everywhere (no blocks: not a singleton)."""
    return b[0].numel() > 0 and bool(((b[0] == b[1]) & torch.isfinite(b[0])).all()) and \
        bool((b[0] == b[0].flatten()[0]).all())


def _div(a, b):
    if _singleton(b):
        c = float(b[0].flatten()[0])
        if c == 0:
            return _const(0, a[0])
        return _corners(lambda x, y: torch.floor(x / y), a, (b[0], b[0]))
    zero_inside = (b[0] <= 0) & (b[1] >= 0)
    lo, hi = _corners(lambda x, y: torch.floor(x / y), a, b)
    return (torch.where(zero_inside, -INF, lo), torch.where(zero_inside, INF, hi))


def _mod(a, b):
    if _singleton(b):
        c = float(b[0].flatten()[0])
        if c == 0:
            return a
        same = torch.floor(a[0] / c) == torch.floor(a[1] / c)
        same &= torch.isfinite(a[0]) & torch.isfinite(a[1])
        lo_r, hi_r = torch.remainder(a[0], c), torch.remainder(a[1], c)
        if c > 0:
            return torch.where(same, lo_r, 0.0), torch.where(same, hi_r, c - 1)
        return torch.where(same, lo_r, c + 1), torch.where(same, hi_r, 0.0)
    lo = torch.minimum(torch.minimum(a[0], b[0] + 1), torch.zeros_like(a[0]))
    hi = torch.maximum(torch.maximum(a[1], b[1] - 1), torch.zeros_like(a[1]))
    pos, neg = b[0] > 0, b[1] < 0
    lo = torch.where(pos, 0.0, torch.where(neg, b[0] + 1, lo))
    hi = torch.where(pos, b[1] - 1, torch.where(neg, 0.0, hi))
    return lo, hi


def _num(n, env):  # noqa: C901 - one case per node type
    if isinstance(n, (ir.Int, ir.Float)):
        return _const(n.value, env["like"])
    if isinstance(n, ir.Var):
        return env[n.name]
    if isinstance(n, ir.Neg):
        lo, hi = _num(n.operand, env)
        return -hi, -lo
    if isinstance(n, ir.Func):
        args = [_num(a, env) for a in n.args]
        if n.name == "abs":
            lo, hi = args[0]
            return (torch.where(lo >= 0, lo, torch.where(hi <= 0, -hi, 0.0)),
                    torch.maximum(hi, -lo))
        f = torch.minimum if n.name == "min" else torch.maximum
        return f(args[0][0], args[1][0]), f(args[0][1], args[1][1])
    if isinstance(n, ir.BinOp):
        a, b = _num(n.left, env), _num(n.right, env)
        if n.op == "+":
            return _widen(a[0] + b[0], a[1] + b[1])
        if n.op == "-":
            return _widen(a[0] - b[1], a[1] - b[0])
        if n.op == "*":
            return _corners(torch.mul, a, b)
        return _div(a, b) if n.op == "div" else _mod(a, b)
    raise TypeError(f"not an integer expression: {n!r}")


def _truth(n, env):
    """(can be true, can be false) bool tensors."""
    if isinstance(n, ir.Compare):
        (alo, ahi), (blo, bhi) = _num(n.left, env), _num(n.right, env)
        op = n.op
        if op in (">", ">="):
            (alo, ahi), (blo, bhi) = (blo, bhi), (alo, ahi)
            op = "<" if op == ">" else "<="
        if op == "<":
            return alo < bhi, ahi >= blo
        if op == "<=":
            return alo <= bhi, ahi > blo
        overlap = (alo <= bhi) & (blo <= ahi)
        point = (alo == ahi) & (blo == bhi) & (alo == blo)
        return (overlap, ~point) if op == "==" else (~point, overlap)
    if isinstance(n, ir.BoolOp):
        (t1, f1), (t2, f2) = _truth(n.left, env), _truth(n.right, env)
        return (t1 & t2, f1 | f2) if n.op == "and" else (t1 | t2, f1 & f2)
    if isinstance(n, ir.BoolNot):
        t, f = _truth(n.operand, env)
        return f, t
    raise TypeError(f"not a predicate: {n!r}")


def where_classes(pred, p_lo, p_hi, k_lo, k_hi, *, q_len, k_len, head):
    """int64 classes (2 FULL, 0 SKIP, 3 UNKNOWN) of ``where(pred)`` for query blocks with key
    coordinates ``[p_lo, p_hi]`` (``[R, 1]``) against key blocks ``[k_lo, k_hi]`` (``[1, N]``)."""
    f = torch.float64
    like = torch.zeros(p_lo.shape[0], k_lo.shape[-1], dtype=f, device=p_lo.device)
    p_lo, p_hi, k_lo, k_hi = (x.to(f) + like for x in (p_lo, p_hi, k_lo, k_hi))
    off = float(k_len - q_len)
    env = {"like": like, "p": (p_lo, p_hi), "k": (k_lo, k_hi), "q": (p_lo - off, p_hi - off),
           "d": (p_lo - k_hi, p_hi - k_lo), "h": _const(head, like), "Lq": _const(q_len, like),
           "Lk": _const(k_len, like)}
    can_true, can_false = _truth(pred, env)
    can_true = can_true.expand_as(like)
    can_false = can_false.expand_as(like)
    return torch.where(~can_true, 0, torch.where(~can_false, 2, 3)).to(torch.int64)
