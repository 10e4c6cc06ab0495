"""The dense reference: boolean masks and float64 masked attention, straight from LANGUAGE.md.

This module is the *specification* every other stage is tested against, so it is written for
obviousness, not speed: ``mask`` builds the whole ``[H, Lq, Lk]`` boolean tensor (memory
``O(H * Lq * Lk)``), ``attention`` runs masked softmax attention in float64.

Choices where LANGUAGE.md is silent (kept identical in ``keeps``, the per-element evaluator):

* ``div``/``mod`` by zero inside ``where``: ``x div 0 = 0`` and ``x mod 0 = x`` (the convention
  of Lean and Isabelle; it keeps ``x == (x div y) * y + x mod y`` true and makes every predicate
  total, so the result never depends on evaluation order).
* ``every(s, r)`` compares the residue literally: ``i mod s == r`` (and ``lo <= i mod s < hi``
  for a residue range, a missing ``lo`` meaning 0 and a missing ``hi`` meaning ``s``); the
  "negative counts from the end" rule is for positions, not residues.
* A negative bound of a position range or a negative listed member counts from the end of its
  axis (``Lk`` for ``rows``/``cols``/``global``, ``H`` for ``heads``), each bound separately:
  ``-4..-1`` is ``Lk - 4 <= i < Lk - 1``.
* ``where`` arithmetic is exact as long as every intermediate fits in 63 bits; ``mask`` checks a
  bound on the magnitudes before evaluating (``predicate.check_where_range``, which the layout
  and the plan share) and raises ``AttnError`` at the expression otherwise.

The evaluator walks the IR with an explicit stack, so patterns nested thousands deep are fine.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import ir
from .errors import bad_argument, positive_int
from .layout_segment import segment_pair
from .predicate import check_where_range

__all__ = ["mask", "keeps", "attention", "random_keep", "random_hash", "mix32", "random_threshold"]

_U32 = 0xFFFFFFFF


# ---------------------------------------------------------------- the hash of random (section 5)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for ``x`` in ``[0, 2^32)`` without int64 overflow (16-bit halves)."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * (c & 0xFFFF)) & 0xFFFF) << 16)) & _U32


def mix32(x) -> torch.Tensor:
    """LANGUAGE.md's ``mix32`` on int64 tensors holding values in ``[0, 2^32)``."""
    x = torch.as_tensor(x, dtype=torch.int64) & _U32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def random_hash(seed, i, j) -> torch.Tensor:
    """``hash(seed, i, j) = mix32(mix32(mix32(seed) + i) + j)`` on uint32 (as int64 tensors).

    ``seed``, ``i`` and ``j`` enter modulo 2^32: a negative block index (possible when
    ``Lq > Lk``) is taken in two's complement, which ``& 0xFFFFFFFF`` on int64 gives exactly.
    """
    i = torch.as_tensor(i, dtype=torch.int64)
    j = torch.as_tensor(j, dtype=torch.int64)
    h = mix32(torch.as_tensor(int(seed) & _U32, dtype=torch.int64))
    h = mix32((h + i) & _U32)
    return mix32((h + j) & _U32)


def random_threshold(density) -> int:
    """``floor(density * 2^32)``: exact, since multiplying a float by 2^32 does not round."""
    return math.floor(float(density) * 4294967296.0)


def random_keep(seed, i, j, density) -> torch.Tensor:
    """Whether block pair ``(i, j)`` is kept by ``random(density, seed = seed)``: ``hash < threshold``.

    ``density`` 1.0 gives threshold 2^32, so every block is kept; 0.0 keeps none.
    """
    return random_hash(seed, i, j) < random_threshold(density)


# ---------------------------------------------------------------- the evaluator


class _Ctx:
    """Coordinates as int64 tensors shaped to broadcast to ``[H, Lq, Lk]``."""

    def __init__(self, q_len, k_len, num_heads, segs):
        self.Lq, self.Lk, self.H = q_len, k_len, num_heads
        self.q = torch.arange(q_len, dtype=torch.int64).view(1, q_len, 1)
        self.k = torch.arange(k_len, dtype=torch.int64).view(1, 1, k_len)
        self.p = self.q + (k_len - q_len)
        self.d = self.p - self.k
        self.h = torch.arange(num_heads, dtype=torch.int64).view(num_heads, 1, 1)
        self.segs = segs

    def var(self, name):
        return getattr(self, name)  # q k p d h are tensors; Lq and Lk plain ints


def _floordiv(a, b):
    """Floor division with ``x div 0 = 0`` (see the module docstring)."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return a // b if b != 0 else 0
    b_t = torch.as_tensor(b, dtype=torch.int64)
    safe = torch.where(b_t == 0, torch.ones_like(b_t), b_t)
    out = torch.div(torch.as_tensor(a, dtype=torch.int64), safe, rounding_mode="floor")
    return torch.where(b_t == 0, torch.zeros_like(out), out)


def _mod(a, b):
    """Mathematical remainder (sign of the divisor, as Python's ``%``) with ``x mod 0 = x``."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return a % b if b != 0 else a
    a_t = torch.as_tensor(a, dtype=torch.int64)
    b_t = torch.as_tensor(b, dtype=torch.int64)
    safe = torch.where(b_t == 0, torch.ones_like(b_t), b_t)
    return torch.where(b_t == 0, a_t + torch.zeros_like(safe), torch.remainder(a_t, safe))


def _tmin(a, b):
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return min(a, b)
    return torch.minimum(torch.as_tensor(a, dtype=torch.int64), torch.as_tensor(b, dtype=torch.int64))


def _tmax(a, b):
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return max(a, b)
    return torch.maximum(torch.as_tensor(a, dtype=torch.int64), torch.as_tensor(b, dtype=torch.int64))


def _tabs(a):
    return abs(a) if not isinstance(a, torch.Tensor) else torch.abs(a)


_ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "div": _floordiv, "mod": _mod}
_CMP = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _as_bool(value, ctx):
    """A Python bool (constant predicate) or a bool tensor, as a tensor broadcastable to the mask."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((1, 1, 1), bool(value), dtype=torch.bool)


def _int_arg(value, what):
    """A pattern argument value (already evaluated) as a Python int."""
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{what} depends on q, k or the lengths; arguments must be constants")
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError(f"{what} must be an integer, got {value!r}")
        value = int(value)
    return value


def _from_end(x: int, end: int) -> int:
    return x + end if x < 0 else x


class _RangeSet:
    """``lo..hi`` as a membership test; a negative bound counts from ``end`` (LANGUAGE.md 3)."""

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi

    def __call__(self, i, end):
        keep = torch.ones_like(i, dtype=torch.bool)
        if self.lo is not None:
            keep = keep & (i >= _from_end(self.lo, end))
        if self.hi is not None:
            keep = keep & (i < _from_end(self.hi, end))
        return keep


def _position_set(node, vals):
    """An index set as ``member(i, end) -> bool tensor``; negative positions count from ``end``."""
    if isinstance(node, ir.Range):
        it = iter(vals)
        lo = _int_arg(next(it), "a range bound") if node.lo is not None else None
        hi = _int_arg(next(it), "a range bound") if node.hi is not None else None
        return _RangeSet(lo, hi)
    if isinstance(node, ir.Every):
        s = _int_arg(vals[0], "an every() modulus")
        if s < 1:
            raise ValueError(f"every({s}, ...): the modulus must be at least 1")
        residue = vals[1]
        if isinstance(residue, _RangeSet):  # residues are compared literally (no from-end rule)
            lo = 0 if residue.lo is None else residue.lo
            hi = s if residue.hi is None else residue.hi
            return lambda i, end: (torch.remainder(i, s) >= lo) & (torch.remainder(i, s) < hi)
        r = _int_arg(residue, "an every() residue")
        return lambda i, end: torch.remainder(i, s) == r
    if isinstance(node, ir.Listed):
        items = [_int_arg(v, "a listed position") for v in vals]

        def member(i, end):
            keep = torch.zeros_like(i, dtype=torch.bool)
            for x in items:  # a loop over the listed members, not over elements
                keep = keep | (i == _from_end(x, end))
            return keep
        return member
    if isinstance(node, ir.SetUnion):
        return _UnionSet(vals)
    raise TypeError(f"not an index set: {node}")


class _UnionSet:
    """A union of sets, kept flat so that long ``S1 | S2 | ...`` chains never nest calls."""

    def __init__(self, parts):
        self.parts = []
        for part in parts:
            self.parts.extend(part.parts if isinstance(part, _UnionSet) else [part])

    def __call__(self, i, end):
        keep = torch.zeros_like(i, dtype=torch.bool)
        for part in self.parts:
            keep = keep | part(i, end)
        return keep


def _visit(node, vals, ctx):  # noqa: C901 - one case per node type, as the language table
    """Value of ``node`` given the values of its children (in ``node.children()`` order)."""
    n = node
    # ---- integer / float expressions: (value, bound) pairs are handled by _evaluate
    if isinstance(n, (ir.Int, ir.Float)):
        return n.value
    if isinstance(n, ir.Param):
        raise TypeError(f"parameter {n.name!r} is not bound; bind the pattern before building "
                        f"a mask (Pattern.bind or binding.bind)")
    if isinstance(n, ir.Var):
        if ctx is None:
            raise TypeError(f"{n.name} may only appear inside where(...)")
        return ctx.var(n.name)
    if isinstance(n, ir.BinOp):
        return _ARITH[n.op](vals[0], vals[1])
    if isinstance(n, ir.Neg):
        return -vals[0]
    if isinstance(n, ir.Func):
        if n.name == "abs":
            return _tabs(vals[0])
        return (_tmin if n.name == "min" else _tmax)(vals[0], vals[1])
    if isinstance(n, ir.Compare):
        return _CMP[n.op](vals[0], vals[1])
    if isinstance(n, ir.BoolOp):
        a, b = vals
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return (a and b) if n.op == "and" else (a or b)
        a, b = _as_bool(a, ctx), _as_bool(b, ctx)
        return (a & b) if n.op == "and" else (a | b)
    if isinstance(n, ir.BoolNot):
        a = vals[0]
        return (not a) if not isinstance(a, torch.Tensor) else ~a
    if ir.is_index_set(n):
        return _position_set(n, vals)
    # ---- patterns
    if isinstance(n, ir.All):
        return torch.ones(1, 1, 1, dtype=torch.bool)
    if isinstance(n, ir.Nothing):
        return torch.zeros(1, 1, 1, dtype=torch.bool)
    if isinstance(n, ir.Causal):
        return ctx.d >= 0
    if isinstance(n, ir.Window):
        back, ahead = _int_arg(vals[0], "window back"), _int_arg(vals[1], "window ahead")
        return (ctx.d >= -ahead) & (ctx.d <= back)
    if isinstance(n, ir.Stride):
        s = _int_arg(vals[0], "stride")
        if s < 1:
            raise ValueError(f"stride({s}): the stride must be at least 1")
        return torch.remainder(ctx.d, s) == 0
    if isinstance(n, ir.Chunk):
        size, back, ahead = (_int_arg(v, "a chunk argument") for v in vals)
        if size < 1:
            raise ValueError(f"chunk({size}, ...): the chunk size must be at least 1")
        c = torch.div(ctx.p, size, rounding_mode="floor") - torch.div(ctx.k, size,
                                                                      rounding_mode="floor")
        return (c >= -ahead) & (c <= back)
    if isinstance(n, ir.Rows):
        return vals[0](ctx.p, ctx.Lk)
    if isinstance(n, ir.Cols):
        return vals[0](ctx.k, ctx.Lk)
    if isinstance(n, ir.Global):
        return vals[0](ctx.p, ctx.Lk) | vals[0](ctx.k, ctx.Lk)
    if isinstance(n, ir.Prefix):
        m = _int_arg(vals[0], "prefix")
        return (ctx.p < m) & (ctx.k < m)
    if isinstance(n, ir.Random):
        density, block, seed = vals
        block = _int_arg(block, "random block")
        seed = _int_arg(seed, "random seed")
        if block < 1:
            raise ValueError(f"random(..., block = {block}): the block must be at least 1")
        i = torch.div(ctx.p, block, rounding_mode="floor")
        j = torch.div(ctx.k, block, rounding_mode="floor")
        return random_keep(seed, i, j, float(density))
    if isinstance(n, ir.Segment):
        if ctx.segs is None:
            raise ValueError("segments: got None; the pattern uses `segment`, so pass segment ids "
                             "(a 1-D integer tensor of length k_len, or a pair (seg_q, seg_k))")
        seg_q, seg_k = ctx.segs
        return seg_q.view(1, -1, 1) == seg_k.view(1, 1, -1)
    if isinstance(n, ir.Heads):
        return vals[0](ctx.h, ctx.H)
    if isinstance(n, ir.Where):
        return _as_bool(vals[0], ctx)
    if isinstance(n, ir.Union):
        return vals[0] | vals[1]
    if isinstance(n, ir.Intersect):
        return vals[0] & vals[1]
    if isinstance(n, ir.Difference):
        return vals[0] & ~vals[1]
    if isinstance(n, ir.Complement):
        return ~vals[0]
    raise TypeError(f"cannot evaluate {type(n).__name__} as part of a pattern")


def _evaluate(root, ctx):
    """Post-order evaluation of ``root`` with an explicit stack (deep trees are fine).

    Values travel on a value stack (not keyed by node identity: the IR may share subtrees, as
    ``window(w)`` shares ``w`` between ``back`` and ``ahead``).  ``where`` arithmetic is checked
    to stay within int64 before (``mask``'s ``check_where_range``).
    """
    values = []
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        kids = list(node.children())
        if not expanded and kids:
            stack.append((node, True))
            stack.extend((kid, False) for kid in reversed(kids))
            continue
        n_kids = len(kids)
        vals = values[len(values) - n_kids:] if n_kids else []
        if n_kids:
            del values[-n_kids:]
        values.append(_visit(node, vals, ctx))
    return values[0]


def mask(expr, q_len: int, k_len: Optional[int] = None, num_heads: int = 1,
         segments=None) -> torch.Tensor:
    """The boolean mask ``[num_heads, q_len, k_len]`` of a bound pattern expression.

    ``k_len`` defaults to ``q_len``.  ``segments`` is needed by ``segment``: a 1-D integer tensor
    of length ``k_len`` (self-attention, ``q_len == k_len``) or a pair ``(seg_q, seg_k)``.
    Raises ``TypeError`` if a parameter is still unbound and ``ValueError`` for bad arguments.
    """
    if isinstance(expr, ir.PatternDecl):
        expr = expr.body
    if not isinstance(expr, ir.Node) or not ir.is_pattern(expr):
        raise bad_argument("expr", expr, "a pattern expression (an attnlang.ir pattern node)")
    q_len = positive_int("q_len", q_len)
    k_len = q_len if k_len is None else positive_int("k_len", k_len)
    num_heads = positive_int("num_heads", num_heads)
    check_where_range(expr, q_len, k_len, num_heads)
    segs = segment_pair(segments, q_len, k_len)
    try:
        ctx = _Ctx(q_len, k_len, num_heads,
                   None if segs is None else tuple(t.cpu() for t in segs))
        result = _evaluate(expr, ctx)
        return result.expand(num_heads, q_len, k_len).contiguous()
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and "alloc" not in str(exc):
            raise
        raise bad_argument("q_len, k_len, num_heads", (q_len, k_len, num_heads),
                           "sizes whose dense mask (one byte a pair, and int64 intermediates) "
                           "fits in memory; the layout and the plan need no dense mask") from None


# ---------------------------------------------------------------- per-element evaluator


def _mix32_int(x: int) -> int:
    """``mix32`` on a Python int (the per-element path does not share code with ``mix32``)."""
    x &= _U32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _U32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _U32
    x ^= x >> 16
    return x


def keeps(expr, q: int, k: int, q_len: int, k_len: int, h: int = 0, num_heads: int = 1,
          seg_q=None, seg_k=None) -> bool:
    """Whether ``expr`` keeps the pair ``(q, k)`` of head ``h``, in plain Python integers.

    An independent, element-at-a-time reading of the LANGUAGE.md tables (recursive: fine for the
    small patterns tests use).  It shares no evaluation code with ``mask``.
    """
    p = q + (k_len - q_len)
    d = p - k
    env = {"q": q, "k": k, "p": p, "d": d, "h": h, "Lq": q_len, "Lk": k_len}

    def num(e):
        if isinstance(e, (ir.Int, ir.Float)):
            return e.value
        if isinstance(e, ir.Var):
            return env[e.name]
        if isinstance(e, ir.Param):
            raise TypeError(f"parameter {e.name!r} is not bound")
        if isinstance(e, ir.Neg):
            return -num(e.operand)
        if isinstance(e, ir.Func):
            args = [num(a) for a in e.args]
            return {"min": min, "max": max, "abs": abs}[e.name](*args)
        if isinstance(e, ir.BinOp):
            a, b = num(e.left), num(e.right)
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "div":
                return 0 if b == 0 else a // b
            return a if b == 0 else a % b
        raise TypeError(f"not a number: {e!r}")

    def truth(e):
        if isinstance(e, ir.Compare):
            a, b = num(e.left), num(e.right)
            return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
                    ">=": a >= b}[e.op]
        if isinstance(e, ir.BoolOp):
            return (truth(e.left) and truth(e.right)) if e.op == "and" else \
                (truth(e.left) or truth(e.right))
        if isinstance(e, ir.BoolNot):
            return not truth(e.operand)
        raise TypeError(f"not a predicate: {e!r}")

    def member(s, i, end):
        if isinstance(s, ir.Range):
            lo = None if s.lo is None else num(s.lo)
            hi = None if s.hi is None else num(s.hi)
            if lo is not None and lo < 0:
                lo += end
            if hi is not None and hi < 0:
                hi += end
            return (lo is None or lo <= i) and (hi is None or i < hi)
        if isinstance(s, ir.Every):
            m = num(s.modulus)
            if isinstance(s.residue, ir.Range):
                lo = 0 if s.residue.lo is None else num(s.residue.lo)
                hi = m if s.residue.hi is None else num(s.residue.hi)
                return lo <= i % m < hi
            return i % m == num(s.residue)
        if isinstance(s, ir.Listed):
            return any(i == (x + end if x < 0 else x) for x in (num(item) for item in s.items))
        if isinstance(s, ir.SetUnion):
            return member(s.left, i, end) or member(s.right, i, end)
        raise TypeError(f"not an index set: {s!r}")

    def keep(e):
        if isinstance(e, ir.All):
            return True
        if isinstance(e, ir.Nothing):
            return False
        if isinstance(e, ir.Causal):
            return d >= 0
        if isinstance(e, ir.Window):
            return -num(e.ahead) <= d <= num(e.back)
        if isinstance(e, ir.Stride):
            return d % num(e.s) == 0
        if isinstance(e, ir.Chunk):
            size = num(e.size)
            return -num(e.ahead) <= p // size - k // size <= num(e.back)
        if isinstance(e, ir.Rows):
            return member(e.set, p, k_len)
        if isinstance(e, ir.Cols):
            return member(e.set, k, k_len)
        if isinstance(e, ir.Global):
            return member(e.set, p, k_len) or member(e.set, k, k_len)
        if isinstance(e, ir.Prefix):
            return p < num(e.m) and k < num(e.m)
        if isinstance(e, ir.Random):
            block, seed = num(e.block), num(e.seed)
            hv = _mix32_int(_mix32_int(_mix32_int(seed) + (p // block)) + (k // block))
            return hv < math.floor(num(e.density) * 2 ** 32)
        if isinstance(e, ir.Segment):
            if seg_q is None or seg_k is None:
                raise ValueError("segments: the pattern uses `segment`; pass seg_q and seg_k")
            return int(seg_q[q]) == int(seg_k[k])
        if isinstance(e, ir.Heads):
            return member(e.set, h, num_heads)
        if isinstance(e, ir.Where):
            return truth(e.pred)
        if isinstance(e, ir.Union):
            return keep(e.left) or keep(e.right)
        if isinstance(e, ir.Intersect):
            return keep(e.left) and keep(e.right)
        if isinstance(e, ir.Difference):
            return keep(e.left) and not keep(e.right)
        if isinstance(e, ir.Complement):
            return not keep(e.operand)
        raise TypeError(f"not a pattern: {e!r}")

    return bool(keep(expr.body if isinstance(expr, ir.PatternDecl) else expr))


# ---------------------------------------------------------------- attention (section 6)


def _check_tensor(name, t, dims):
    if not isinstance(t, torch.Tensor) or t.dim() != dims:
        given = f"tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else t
        raise bad_argument(name, given, f"a {dims}-D tensor")


def attention(q, k, v, mask=None, scale=None, bias=None, dropout_mask=None, dropout_p=0.0):
    """Float64 masked attention: returns ``(out [B, Hq, Lq, Dv], lse [B, Hq, Lq])``, both float64.

    ``q`` is ``[B, Hq, Lq, D]``, ``k``/``v`` are ``[B, Hkv, Lk, D]`` with ``Hq`` a multiple of
    ``Hkv`` (query head ``h`` reads kv head ``h // (Hq // Hkv)``).  ``mask`` is a bool tensor
    broadcastable to ``[B, Hq, Lq, Lk]`` (None keeps everything); ``bias`` is added to the scaled
    scores; a ``-inf`` bias masks its pair.  ``dropout_mask`` is a bool keep-mask of the same
    shape, applied to the probabilities and scaled by ``1 / (1 - dropout_p)``; ``lse`` is computed
    before dropout.  Empty rows give ``out = 0``, ``lse = -inf`` and zero gradients (never NaN).
    Differentiable: autograd through it gives the reference gradients.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, 4)
    B, Hq, Lq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2] \
            or k.shape[3] != D:
        raise bad_argument("k/v", f"shapes {tuple(k.shape)} and {tuple(v.shape)} with q "
                           f"{tuple(q.shape)}", "[B, Hkv, Lk, D] matching q's batch and head dim")
    Hkv = k.shape[1]
    if Hkv < 1 or Hq % Hkv != 0:
        raise bad_argument("k", f"{Hkv} key/value heads for {Hq} query heads",
                           "a number of kv heads that divides the number of query heads")
    if not 0.0 <= float(dropout_p) < 1.0:
        raise bad_argument("dropout_p", dropout_p, "a probability in [0, 1)")
    if dropout_p and dropout_mask is None:
        raise bad_argument("dropout_mask", None, "a bool keep-mask when dropout_p > 0 "
                           "(the reference is deterministic)")
    group = Hq // Hkv
    qd, kd, vd = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    if group > 1:
        kd = kd.repeat_interleave(group, dim=1)
        vd = vd.repeat_interleave(group, dim=1)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    scores = torch.matmul(qd, kd.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + torch.as_tensor(bias).to(torch.float64)
    Lk = k.shape[2]
    shape = (B, Hq, Lq, Lk)
    if mask is None:
        keep = torch.ones(shape, dtype=torch.bool, device=q.device)
    else:
        mask = torch.as_tensor(mask, device=q.device)
        if mask.dtype != torch.bool:
            raise bad_argument("mask", f"tensor of dtype {mask.dtype}", "a bool tensor")
        try:
            keep = mask.expand(shape) if mask.dim() <= 4 else None
        except RuntimeError:
            keep = None
        if keep is None:
            raise bad_argument("mask", f"tensor of shape {tuple(mask.shape)}",
                               f"a bool tensor broadcastable to {list(shape)}")
    keep = keep & (scores.detach() != -math.inf)
    # Safe softmax: the row maximum is taken over kept scores only (0 for an empty row), and
    # masked scores are replaced by it *before* exp, so no inf or NaN ever enters the graph: a
    # masked pair's exp is 1 before the keep mask zeroes it, whatever the kept scores are (0 in
    # its place overflowed exp where every kept score was below -709: inf * 0 = NaN).
    row_max = torch.where(keep, scores.detach(), torch.full_like(scores, -math.inf)).amax(-1,
                                                                                         keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    finite = torch.where(keep, scores, row_max)
    weights = torch.exp(finite - row_max) * keep.to(torch.float64)
    denom = weights.sum(-1, keepdim=True)
    nonempty = denom > 0
    safe_denom = torch.where(nonempty, denom, torch.ones_like(denom))
    probs = weights / safe_denom
    lse = torch.where(nonempty, torch.log(safe_denom) + row_max,
                      torch.full_like(denom, -math.inf)).squeeze(-1)
    if dropout_mask is not None:
        probs = probs * torch.as_tensor(dropout_mask, device=q.device).to(torch.float64) \
            / (1.0 - float(dropout_p))
    out = torch.matmul(probs, vd)
    return out, lse
