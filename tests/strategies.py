"""Hypothesis strategies shared by the whole test suite.

* ``bound_patterns(...)``: random *bound* pattern expressions over every primitive, with small
  constant arguments the checker accepts (window/chunk bands that keep something, strides,
  sizes, moduli and blocks >= 1, densities in [0, 1], seeds in [0, 2^32)).
* ``primitives(kind)``: one primitive of the named kind (``"window"``, ``"random"``, ...).
* ``int_exprs(params, variables)``: integer expressions over parameters, ``where`` variables and
  literals, never with a foldable constant subexpression (so the checker leaves them alone).
* ``decls()``: random ``ir.PatternDecl``s with parameters and symbolic arguments, for the
  printer/parser round trip.
* ``lengths()``, ``num_heads()``, ``segment_ids(length)``, ``segments_for(q_len, k_len)``.

Sizes stay small (lengths <= 70, heads <= 5) so dense masks are cheap.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
from hypothesis import strategies as st

from attnlang import ir

I = ir.Int

MAX_LEN = 70
PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67)
PRIMITIVE_KINDS = ("all", "none", "causal", "window", "stride", "chunk", "rows", "cols", "global",
                   "prefix", "random", "segment", "heads", "where")
WHERE_VARS = ir.WHERE_VARIABLES
PARAM_NAMES = ("w", "s", "g", "m", "blk", "n2")
FLOAT_PARAM = "dens"
DENSITIES = (0.0, 0.05, 0.25, 0.5, 0.9, 1.0)


# ---------------------------------------------------------------- lengths, heads, segments


def lengths(max_len: int = MAX_LEN):
    """``(q_len, k_len)``: equal, q > k, q < k, and pairs of small primes."""
    size = st.integers(1, max_len)
    primes = st.sampled_from([p for p in PRIMES if p <= max_len])
    return st.one_of(
        size.map(lambda n: (n, n)),
        st.tuples(size, size),
        st.tuples(primes, primes),
    )


def num_heads(max_heads: int = 5):
    return st.integers(1, max_heads)


@st.composite
def segment_ids(draw, length: int, sorted_runs: bool | None = None):
    """A 1-D int64 tensor of ``length`` segment ids: packed documents (non-decreasing runs) by
    default, sometimes arbitrary ids (the language does not require sorted ids)."""
    if sorted_runs is None:
        sorted_runs = draw(st.booleans()) or draw(st.booleans())  # 3 in 4 sorted
    if sorted_runs:
        cuts = draw(st.lists(st.integers(1, max(1, length - 1)), max_size=5, unique=True))
        ids, seg = [], 0
        cut_set = set(cuts)
        for i in range(length):
            if i in cut_set:
                seg += 1
            ids.append(seg)
    else:
        ids = draw(st.lists(st.integers(0, 3), min_size=length, max_size=length))
    return torch.tensor(ids, dtype=torch.int64)


@st.composite
def segments_for(draw, q_len: int, k_len: int):
    """What ``reference.mask(segments=...)`` takes: one tensor if ``q_len == k_len`` (sometimes a
    pair anyway), else a pair ``(seg_q, seg_k)``."""
    if q_len == k_len and draw(st.booleans()):
        return draw(segment_ids(k_len))
    return draw(segment_ids(q_len)), draw(segment_ids(k_len))


# ---------------------------------------------------------------- integer expressions


def _is_literal(e) -> bool:
    return isinstance(e, (ir.Int, ir.Float))


def int_exprs(params=(), variables=(), max_leaves: int = 4, lo: int = -6, hi: int = 12):
    """Integer expressions over ``params`` (``ir.Param``), ``variables`` (``ir.Var``, for ``where``)
    and literals in ``[lo, hi]``.

    No compound node has only literal children, so there is nothing for the checker to fold
    (``Neg`` never wraps a literal: the IR invariant).  ``div``/``mod`` divide by a non-zero
    literal, or (with ``variables``) by an expression over them, which may be zero at some
    pairs; ``abs`` appears only when ``variables`` are given (it is a ``where`` function).
    """
    names = [ir.Param(p) for p in params] + [ir.Var(v) for v in variables]
    literal = st.integers(lo, hi).map(I)
    leaves = st.one_of(literal, st.sampled_from(names)) if names else literal
    if not names:
        return literal

    def extend(children):
        nonzero = st.integers(lo, hi).filter(lambda v: v != 0).map(I)
        binop = st.builds(ir.BinOp, st.sampled_from(["+", "-", "*"]), children, children)
        # inside `where` a divisor may depend on the variables, and so be zero at some pairs
        # (x div 0 = 0, x mod 0 = x: docs/language.md); elsewhere it is a non-zero literal
        divisor = st.one_of(nonzero, children.filter(lambda e: not _is_literal(e))) \
            if variables else nonzero
        divmod_ = st.builds(ir.BinOp, st.sampled_from(["div", "mod"]), children, divisor)
        neg = children.filter(lambda e: not _is_literal(e) and not isinstance(e, ir.Neg)).map(
            ir.Neg)
        minmax = st.builds(lambda f, a, b: ir.Func(f, (a, b)), st.sampled_from(["min", "max"]),
                           children, children)
        options = [binop, divmod_, neg, minmax]
        if variables:
            options.append(children.map(lambda a: ir.Func("abs", (a,))))
        return st.one_of(options).filter(
            lambda e: not all(_is_literal(c) for c in e.children()))

    return st.recursive(leaves, extend, max_leaves=max_leaves)


@functools.lru_cache(maxsize=None)
def _where_preds(params=(), max_leaves: int = 4):
    """Boolean ``where`` predicates over ``q k p d h Lq Lk`` (and ``params``)."""
    num = int_exprs(params, WHERE_VARS, max_leaves=3)
    compare = st.builds(ir.Compare, st.sampled_from(ir.COMPARE_OPS), num, num).filter(
        lambda c: not (_is_literal(c.left) and _is_literal(c.right)))

    def extend(children):
        return st.one_of(
            st.builds(ir.BoolOp, st.sampled_from(["and", "or"]), children, children),
            children.map(ir.BoolNot),
        )

    return st.recursive(compare, extend, max_leaves=max_leaves)


# ---------------------------------------------------------------- arguments


class _Args:
    """Draws pattern arguments: literals in a range, or (with params) symbolic expressions."""

    def __init__(self, params=()):
        self.params = tuple(params)

    def int(self, lo, hi):
        literal = st.integers(lo, hi)
        if self.params:
            symbolic = int_exprs(self.params, max_leaves=3).filter(lambda e: not _is_literal(e))
            return st.one_of(literal.map(I), symbolic)
        return literal.map(I)


def _constant_expr_for(value: int):
    """Constant arithmetic equal to ``value`` (input for testing constant folding only)."""
    return st.one_of(
        st.just(I(value)),
        st.integers(-5, 5).map(lambda x: ir.BinOp("+", I(x), I(value - x))),
        st.integers(-5, 5).map(lambda x: ir.BinOp("-", I(value + x), I(x))),
        st.integers(1, 4).map(lambda x: ir.BinOp("div", I(value * x + (x - 1)), I(x))),
        st.integers(0, 5).map(lambda x: ir.Func("max", (I(value), I(value - x)))),
        st.just(ir.Neg(I(-value))),
        st.just(ir.Neg(ir.Neg(I(value)))),
    )


# ---------------------------------------------------------------- index sets


def _index_sets(args: _Args, lo: int, hi: int, max_leaves: int = 3):
    """Position sets: ``a..b``, ``a..`` (including ``-m..``), ``..b``, ``every(s, r)`` with ``r``
    an integer or a residue range, ``{..}`` lists (negative members too) and unions."""
    bound = args.int(lo, hi)

    @st.composite
    def every(draw):
        modulus = draw(args.int(1, 8))
        # residues are drawn within the literal modulus (or a nominal one for a symbolic modulus)
        s = modulus.value if isinstance(modulus, ir.Int) else draw(st.integers(1, 8))
        kind = draw(st.sampled_from(["int", "range", "lo", "hi"]))
        if kind == "int":
            return ir.Every(modulus, I(draw(st.integers(0, s - 1))))
        a = draw(st.integers(0, s))
        b = draw(st.integers(a, s))
        if kind == "range":
            return ir.Every(modulus, ir.Range(I(a), I(b)))
        if kind == "lo":
            return ir.Every(modulus, ir.Range(I(a), None))
        return ir.Every(modulus, ir.Range(None, I(b)))

    leaves = st.one_of(
        st.builds(ir.Range, bound, bound),
        st.builds(lambda a: ir.Range(a, None), bound),
        st.builds(lambda b: ir.Range(None, b), bound),
        every(),
        st.lists(bound, min_size=1, max_size=4).map(lambda xs: ir.Listed(tuple(xs))),
    )
    return st.recursive(leaves, lambda c: st.builds(ir.SetUnion, c, c), max_leaves=max_leaves)


# ---------------------------------------------------------------- patterns


@st.composite
def _band(draw, args: _Args, lo: int, hi: int):
    """``(back, ahead)`` whose band keeps something when both are literals (back + ahead >= 0)."""
    back = draw(args.int(lo, hi))
    if draw(st.booleans()) and not (isinstance(back, ir.Int) and back.value < 0):
        return back, back  # the one-argument form, window(w)
    ahead = draw(args.int(lo, hi))
    if isinstance(back, ir.Int) and isinstance(ahead, ir.Int) and back.value + ahead.value < 0:
        ahead = I(-back.value)
    return back, ahead


def _primitive(kind: str, args: _Args, params=()):
    """A strategy for one primitive of ``kind`` with checker-valid arguments."""
    if kind == "all":
        return st.just(ir.All())
    if kind == "none":
        return st.just(ir.Nothing())
    if kind == "causal":
        return st.just(ir.Causal())
    if kind == "segment":
        return st.just(ir.Segment())
    if kind == "window":
        return _band(args, -5, 14).map(lambda ba: ir.Window(*ba))
    if kind == "stride":
        return args.int(1, 9).map(ir.Stride)
    if kind == "chunk":
        return st.builds(lambda size, ba: ir.Chunk(size, *ba), args.int(1, 12), _band(args, -2, 3))
    if kind in ("rows", "cols", "global"):
        cls = {"rows": ir.Rows, "cols": ir.Cols, "global": ir.Global}[kind]
        return _index_sets(args, -20, 40).map(cls)
    if kind == "heads":
        return _index_sets(args, -4, 6).map(ir.Heads)
    if kind == "prefix":
        return args.int(0, 40).map(ir.Prefix)
    if kind == "random":
        density = st.one_of(st.sampled_from(DENSITIES), st.floats(0.0, 1.0)).map(ir.Float)
        if FLOAT_PARAM in params:
            density = st.one_of(density, st.just(ir.Param(FLOAT_PARAM)))
        seed = st.one_of(st.sampled_from([0, 1, 7, 2 ** 32 - 1]), st.integers(0, 2 ** 32 - 1))
        return st.builds(ir.Random, density, args.int(1, 12), seed.map(I))
    if kind == "where":
        return _where_preds(tuple(p for p in params if p != FLOAT_PARAM)).map(ir.Where)
    raise ValueError(f"unknown primitive kind {kind!r}")


def primitives(kind: str):
    """One bound primitive of the given kind (``PRIMITIVE_KINDS``)."""
    return _primitive(kind, _Args())


def band_intersections(max_leaves: int = 3):
    """Intersections of ``all``, ``causal`` and windows: patterns that are one band."""
    leaves = st.one_of(st.just(ir.All()), st.just(ir.Causal()), primitives("window"))
    return st.recursive(leaves, lambda kids: st.builds(ir.Intersect, kids, kids),
                        max_leaves=max_leaves)


def _combine(children):
    return st.one_of(
        st.builds(ir.Union, children, children),
        st.builds(ir.Intersect, children, children),
        st.builds(ir.Difference, children, children),
        children.map(ir.Complement),
    )


def bound_patterns(max_leaves: int = 8, allow_where: bool = True, allow_segment: bool = True,
                   allow_random: bool = True, allow_heads: bool = True, arith: bool = False):
    """Random bound pattern expressions over all primitives and the four combinators.

    ``arith=True`` writes arguments as constant arithmetic (``2 + 3``, ``-(-4)``, ...), which the
    checker would have folded: input for testing ``simplify``'s constant folding only.
    """
    kinds = [k for k in PRIMITIVE_KINDS
             if not (k == "where" and not allow_where or k == "segment" and not allow_segment
                     or k == "random" and not allow_random or k == "heads" and not allow_heads)]
    leaves = st.one_of([_primitive(k, _Args()) for k in kinds])
    patterns = st.recursive(leaves, _combine, max_leaves=max_leaves)
    return patterns.flatmap(_with_arith) if arith else patterns


def _with_arith(expr):
    """``expr`` with each integer literal rewritten as constant arithmetic of equal value."""
    @st.composite
    def rewrite(draw):
        def go(node):
            if isinstance(node, ir.Int):
                return draw(_constant_expr_for(node.value))
            changes = {}
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if isinstance(value, ir.Node):
                    changes[f.name] = go(value)
                elif isinstance(value, tuple):
                    changes[f.name] = tuple(go(v) if isinstance(v, ir.Node) else v for v in value)
            return dataclasses.replace(node, **changes) if changes else node
        return go(expr)
    return rewrite()


@functools.lru_cache(maxsize=None)  # strategies are immutable; building them is slow
def _symbolic_patterns(params, max_leaves: int):
    args = _Args(params=tuple(p for p in params if p != FLOAT_PARAM))
    leaves = st.one_of([_primitive(k, args, params) for k in PRIMITIVE_KINDS])
    return st.recursive(leaves, _combine, max_leaves=max_leaves)


def _fold_arg(e, env):
    """The constant value of argument ``e`` under ``env`` (param -> value), or None."""
    if isinstance(e, (ir.Int, ir.Float)):
        return e.value
    if isinstance(e, ir.Param):
        return env.get(e.name)
    if isinstance(e, ir.Neg):
        v = _fold_arg(e.operand, env)
        return None if v is None else -v
    if isinstance(e, ir.Func):
        vals = [_fold_arg(a, env) for a in e.args]
        if any(v is None for v in vals):
            return None
        return {"min": min, "max": max, "abs": abs}[e.name](*vals)
    if isinstance(e, ir.BinOp):
        a, b = _fold_arg(e.left, env), _fold_arg(e.right, env)
        if a is None or b is None:
            return None
        if e.op in ("div", "mod") and b == 0:
            return None
        return {"+": a + b, "-": a - b, "*": a * b}.get(e.op) if e.op in "+-*" else (
            a // b if e.op == "div" else a % b)
    return None  # Var (where only)


def _valid_with(body, env) -> bool:
    """The value rules of LANGUAGE.md section 3 hold for every argument that is constant once
    the parameters in ``env`` take their values (what the checker verifies for defaults)."""
    def at_least(e, low):
        v = _fold_arg(e, env)
        return v is None or v >= low

    def band(n):
        back, ahead = _fold_arg(n.back, env), _fold_arg(n.ahead, env)
        return back is None or ahead is None or back + ahead >= 0

    for n in body.walk():
        if isinstance(n, ir.BinOp) and n.op in ("div", "mod") and _fold_arg(n.right, env) == 0:
            return False
        if isinstance(n, ir.Window) and not band(n):
            return False
        if isinstance(n, ir.Stride) and not at_least(n.s, 1):
            return False
        if isinstance(n, ir.Chunk) and not (at_least(n.size, 1) and band(n)):
            return False
        if isinstance(n, ir.Prefix) and not at_least(n.m, 0):
            return False
        if isinstance(n, ir.Random) and not at_least(n.block, 1):
            return False
        if isinstance(n, ir.Every):
            s = _fold_arg(n.modulus, env)
            if s is not None and s < 1:
                return False
            r = n.residue
            bounds = [r] if not isinstance(r, ir.Range) else [b for b in (r.lo, r.hi) if b]
            for b in bounds:
                v = _fold_arg(b, env)
                limit = s if isinstance(r, ir.Range) else (None if s is None else s - 1)
                if v is not None and (v < 0 or (limit is not None and v > limit)):
                    return False
    return True


@st.composite
def decls(draw, max_leaves: int = 6):
    """Random ``ir.PatternDecl``s with parameters (with and without defaults) and symbolic
    arguments; exactly the parameters the body uses are declared.  A default is kept only if
    the arguments it makes constant obey the value rules (the checker checks defaults)."""
    names = draw(st.lists(st.sampled_from(PARAM_NAMES), max_size=3, unique=True))
    if draw(st.booleans()):
        names.append(FLOAT_PARAM)
    body = draw(_symbolic_patterns(tuple(sorted(names)), max_leaves))
    used = {n.name for n in body.walk() if isinstance(n, ir.Param)}
    params, env = [], {}
    for name in names:
        if name not in used:
            continue
        if name == FLOAT_PARAM:
            default = ir.Float(draw(st.sampled_from(DENSITIES)))
        else:
            default = draw(st.one_of(st.none(), st.integers(0, 64).map(I)))
            if default is not None and not _valid_with(body, {**env, name: default.value}):
                default = None
        if default is not None:
            env[name] = default.value
        params.append(ir.ParamDecl(name, default))
    name = draw(st.sampled_from(["pat", "longformer_like", "mixed2", "Pattern_3", "_x"]))
    return ir.PatternDecl(name, tuple(params), body)


def mix32_int(x: int) -> int:
    """LANGUAGE.md section 5's 32-bit mix, written out in plain Python integers: the tests'
    copy, independent of attnlang's tensor code (random's hash and dropout's build on it)."""
    m = 0xFFFFFFFF
    x &= m
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)
