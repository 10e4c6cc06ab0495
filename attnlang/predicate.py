"""Evaluate a bound pattern expression at given (query, key) positions, vectorised.

The blocked PyTorch backend needs the mask *inside* a partial block, for a handful of query
rows and gathered key columns at a time — never an ``Lq x Lk`` matrix.  This module answers
exactly that: ``evaluate(expr, q_pos, k_pos, ...)`` broadcasts the position tensors like any
torch expression and returns a boolean tensor.  It follows LANGUAGE.md directly (floor ``div``
and ``mod``, negative set members counted from the end, the section-5 hash of ``random``,
``where`` arithmetic in int64) and is independent of ``reference.py``, which is the oracle it
is tested against.

Only the standard library, torch and ``attnlang.ir`` are used.
"""
from __future__ import annotations

import torch

from . import ir
from .errors import AttnError

MASK32 = 0xFFFFFFFF
WHERE_LIMIT = 1 << 62  # magnitudes allowed in where arithmetic (int64 with headroom)


def evaluate(expr, q_pos, k_pos, *, q_len, k_len=None, heads=None, num_heads=1, seg_q=None,
             seg_k=None):
    """Whether each (query, key) pair is kept by the bound pattern ``expr``.

    ``q_pos`` / ``k_pos``: integer tensors of ORIGINAL positions that broadcast against each
    other (typically ``[..., M, 1]`` and ``[..., 1, N]``).  ``heads``: query-head indices that
    broadcast too (``None`` means head 0).  ``seg_q`` / ``seg_k``: 1-D integer tensors of segment
    ids over the whole query / key range (indexed here by ``q_pos`` / ``k_pos``), needed only
    when the pattern uses ``segment``.  Returns a bool tensor of the broadcast shape.

    ``where`` arithmetic is int64; ``x div 0 = 0`` and ``x mod 0 = x``, the convention
    ``reference.py`` documents (it keeps every predicate total).
    """
    k_len = q_len if k_len is None else k_len
    q = torch.as_tensor(q_pos).to(torch.int64)
    k = torch.as_tensor(k_pos, device=q.device).to(torch.int64)
    h = (torch.zeros((), dtype=torch.int64, device=q.device) if heads is None
         else torch.as_tensor(heads, device=q.device).to(torch.int64))
    env = _Env(q, k, h, int(q_len), int(k_len), int(num_heads), seg_q, seg_k)
    out = env.pattern(expr)
    return out.expand(env.shape) if tuple(out.shape) != env.shape else out


def check_where_range(expr, q_len: int, k_len: int, num_heads: int = 1) -> None:
    """Refuse ``where`` arithmetic that could leave 64-bit integers at these lengths.

    LANGUAGE.md section 4 promises exact integer arithmetic; every evaluator (this module, the
    block classifier, the kernels) works in int64, so an expression whose magnitude could pass
    ``2**62`` would silently wrap.  The bound is the one ``reference.mask`` uses (``|q| <= Lq``,
    ``|p| <= Lq + Lk``, ``|d| <= 2 (Lq + Lk)``, ``+ -`` add bounds, ``*`` multiplies them, ``div``
    keeps the dividend's, ``mod``/``min``/``max`` take the larger), so the reference, the layout
    and the plan refuse exactly the same patterns, with an ``AttnError`` at the expression."""
    var_bound = {"q": q_len, "k": k_len, "p": q_len + k_len, "d": 2 * (q_len + k_len),
                 "h": num_heads, "Lq": q_len, "Lk": k_len}
    memo = {}  # id(node) -> (bound, depends on a where-variable)
    for where in expr.walk():
        if not isinstance(where, ir.Where):
            continue
        stack = [(where.pred, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in memo:
                continue
            kids = list(node.children())
            if not ready and kids:
                stack.append((node, True))
                stack.extend((kid, False) for kid in kids if id(kid) not in memo)
                continue
            got = [memo[id(kid)] for kid in kids]
            bounds = [b for b, _ in got]
            variable = any(v for _, v in got)
            if isinstance(node, (ir.Int, ir.Float)):
                bound = abs(int(node.value))
            elif isinstance(node, ir.Var):
                bound, variable = var_bound[node.name], True
            elif isinstance(node, ir.BinOp):
                a, b = bounds
                bound = {"+": a + b, "-": a + b, "*": a * b, "div": a}.get(node.op, max(a, b))
            elif isinstance(node, (ir.Neg, ir.Func)):
                bound = max(bounds)
            else:  # comparisons and boolean operators
                bound = 0
            if variable and bound > WHERE_LIMIT:
                raise AttnError(f"where arithmetic '{node}' may exceed 63 bits (2**62) at "
                                f"q_len={q_len}, k_len={k_len}, num_heads={num_heads}; where is "
                                f"evaluated with 64-bit integers, use smaller constants",
                                node.span)
            memo[id(node)] = (bound, variable)


class _Env:
    """The coordinates of one evaluation and the recursive evaluator over pattern nodes."""

    def __init__(self, q, k, h, q_len, k_len, num_heads, seg_q, seg_k):
        self.q, self.k, self.h = q, k, h
        self.q_len, self.k_len, self.num_heads = q_len, k_len, num_heads
        self.p = q + (k_len - q_len)
        self.d = self.p - k
        self.seg_q, self.seg_k = seg_q, seg_k
        self.shape = tuple(torch.broadcast_shapes(q.shape, k.shape, h.shape))
        self.device = q.device

    def const_bool(self, value: bool):
        return torch.full((), value, dtype=torch.bool, device=self.device)

    # ------------------------------------------------------------------ patterns
    def pattern(self, n):  # noqa: C901 - one case per node type
        if isinstance(n, ir.All):
            return self.const_bool(True)
        if isinstance(n, ir.Nothing):
            return self.const_bool(False)
        if isinstance(n, ir.Causal):
            return self.d >= 0
        if isinstance(n, ir.Window):
            return (self.d >= -_int(n.ahead)) & (self.d <= _int(n.back))
        if isinstance(n, ir.Stride):
            return torch.remainder(self.d, _int(n.s)) == 0
        if isinstance(n, ir.Chunk):
            size = _int(n.size)
            diff = _floordiv(self.p, size) - _floordiv(self.k, size)
            return (diff >= -_int(n.ahead)) & (diff <= _int(n.back))
        if isinstance(n, ir.Rows):
            return in_set(n.set, self.p, self.k_len)
        if isinstance(n, ir.Cols):
            return in_set(n.set, self.k, self.k_len)
        if isinstance(n, ir.Global):
            return in_set(n.set, self.p, self.k_len) | in_set(n.set, self.k, self.k_len)
        if isinstance(n, ir.Prefix):
            m = _int(n.m)
            return (self.p < m) & (self.k < m)
        if isinstance(n, ir.Random):
            block = _int(n.block)
            return random_keep(_int(n.seed), _floordiv(self.p, block), _floordiv(self.k, block),
                               float(ir.const(n.density)))
        if isinstance(n, ir.Segment):
            if self.seg_q is None or self.seg_k is None:
                raise ValueError("segments: the pattern uses 'segment' but no segment ids were "
                                 "given; expected segment ids for queries and keys")
            sq = torch.as_tensor(self.seg_q, device=self.device).reshape(-1)
            sk = torch.as_tensor(self.seg_k, device=self.device).reshape(-1)
            return sq[self.q] == sk[self.k]
        if isinstance(n, ir.Heads):
            return in_set(n.set, self.h, self.num_heads)
        if isinstance(n, ir.Where):
            return self.boolean(n.pred)
        if isinstance(n, ir.Union):
            return self.pattern(n.left) | self.pattern(n.right)
        if isinstance(n, ir.Intersect):
            return self.pattern(n.left) & self.pattern(n.right)
        if isinstance(n, ir.Difference):
            return self.pattern(n.left) & ~self.pattern(n.right)
        if isinstance(n, ir.Complement):
            return ~self.pattern(n.operand)
        raise TypeError(f"not a pattern expression: {n!r}")

    # ------------------------------------------------------------------ where
    def boolean(self, n):
        if isinstance(n, ir.Compare):
            left, right = self.integer(n.left), self.integer(n.right)
            return _COMPARE[n.op](left, right)
        if isinstance(n, ir.BoolOp):
            left, right = self.boolean(n.left), self.boolean(n.right)
            return (left & right) if n.op == "and" else (left | right)
        if isinstance(n, ir.BoolNot):
            return ~self.boolean(n.operand)
        raise TypeError(f"not a boolean expression: {n!r}")

    def integer(self, n):
        if isinstance(n, (ir.Int, ir.Float)):
            return torch.tensor(int(n.value), dtype=torch.int64, device=self.device)
        if isinstance(n, ir.Var):
            return {"q": self.q, "k": self.k, "p": self.p, "d": self.d, "h": self.h,
                    "Lq": torch.tensor(self.q_len, device=self.device),
                    "Lk": torch.tensor(self.k_len, device=self.device)}[n.name]
        if isinstance(n, ir.Neg):
            return -self.integer(n.operand)
        if isinstance(n, ir.BinOp):
            left, right = self.integer(n.left), self.integer(n.right)
            if n.op == "+":
                return left + right
            if n.op == "-":
                return left - right
            if n.op == "*":
                return left * right
            zero = right == 0
            safe = torch.where(zero, torch.ones_like(right), right)
            if n.op == "div":
                return torch.where(zero, torch.zeros_like(left), _floordiv(left, safe))
            return torch.where(zero, left, torch.remainder(left, safe))
        if isinstance(n, ir.Func):
            args = [self.integer(a) for a in n.args]
            if n.name == "min":
                return torch.minimum(args[0], args[1])
            if n.name == "max":
                return torch.maximum(args[0], args[1])
            if n.name == "abs":
                return torch.abs(args[0])
        if isinstance(n, ir.Param):
            raise TypeError(f"parameter {n.name!r} is unbound (bind the pattern first)")
        raise TypeError(f"not an integer expression: {n!r}")


_COMPARE = {
    "==": torch.eq, "!=": torch.ne, "<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge,
}


def _int(expr) -> int:
    return int(ir.const(expr))


def _floordiv(a, b):
    return torch.div(a, b, rounding_mode="floor")


# ---------------------------------------------------------------------- index sets


def resolve(value: int, end: int) -> int:
    """A set bound or member: negative values count from ``end`` (``-m`` is ``end - m``)."""
    return value + end if value < 0 else value


def in_set(node, i, end: int):
    """Membership of the integer tensor ``i`` in the bound index set ``node``.

    ``end`` is the length negative members count back from (``Lk`` for positions, ``H`` for
    heads).  ``every`` residues are taken literally (``i mod s`` is always in ``[0, s)``).
    """
    if isinstance(node, ir.Range):
        keep = torch.ones_like(i, dtype=torch.bool)
        if node.lo is not None:
            keep = keep & (i >= resolve(_int(node.lo), end))
        if node.hi is not None:
            keep = keep & (i < resolve(_int(node.hi), end))
        return keep
    if isinstance(node, ir.Every):
        r = torch.remainder(i, _int(node.modulus))
        if isinstance(node.residue, ir.Range):
            keep = torch.ones_like(r, dtype=torch.bool)
            if node.residue.lo is not None:
                keep = keep & (r >= _int(node.residue.lo))
            if node.residue.hi is not None:
                keep = keep & (r < _int(node.residue.hi))
            return keep
        return r == _int(node.residue)
    if isinstance(node, ir.Listed):
        keep = torch.zeros_like(i, dtype=torch.bool)
        for item in node.items:
            keep = keep | (i == resolve(_int(item), end))
        return keep
    if isinstance(node, ir.SetUnion):
        return in_set(node.left, i, end) | in_set(node.right, i, end)
    raise TypeError(f"not an index set: {node!r}")


# ---------------------------------------------------------------------- the hash of random


def _mul32(x, c: int):
    """``(x * c) mod 2^32`` for ``0 <= x < 2^32`` without int64 overflow (split ``c``)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) & 0xFFFF) * 65536) & MASK32


def mix32(x):
    """LANGUAGE.md section 5 ``mix32`` on int64 tensors holding unsigned 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash32(seed, i, j):
    """``mix32(mix32(mix32(seed) + i) + j)``; ``i``/``j`` (int64, maybe negative) enter mod 2^32."""
    s = mix32(torch.as_tensor(int(seed) & MASK32, dtype=torch.int64, device=_device(i)))
    x = mix32((s + (i & MASK32)) & MASK32)
    return mix32((x + (j & MASK32)) & MASK32)


def random_keep(seed: int, i, j, density: float):
    """The keep decision of ``random``: ``hash(seed, i, j) < floor(density * 2^32)``."""
    threshold = int(density * 4294967296.0)
    return hash32(seed, i, j) < threshold


def _device(t):
    return t.device if isinstance(t, torch.Tensor) else None
