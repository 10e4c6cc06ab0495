"""Binding parameters and checking argument values.

``bind(decl, params, fill_defaults=False)`` substitutes values for a declaration's parameters,
folds the constant arithmetic that results and re-checks the value rules of LANGUAGE.md section 3
now that the values are known.  The helpers here are shared with the checker, so that a value
error reads the same whether it is found in the source (``stride(0)``) or when binding
(``p.bind(s=0)``):

* ``fold(expr, env)``: the exact value of an integer expression, or None if it is not constant;
* ``check_values(expr, env)``: the value rules for every primitive and set in a pattern;
* ``substitute(expr, mapping)``: replace ``Param`` nodes (used for binding and for inlining);
* ``fold_constants(expr)``: replace constant arithmetic by literals;
* ``param_types(decl)``: which parameters are floats.

Parameter types: a parameter with a float default is a float, one with an integer default is an
integer, and a bare parameter is a float exactly when it is used, and used only, as a ``random``
density.  Floats are allowed only where a density is.
"""
from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import replace
from typing import Dict, Mapping, Optional

from . import ir
from .errors import AttnError, bad_argument

MAX_INT = 2 ** 62
SEED_LIMIT = 2 ** 32


# ---------------------------------------------------------------- folding


def fold(expr: ir.Node, env: Optional[Mapping[str, object]] = None):
    """The value of an integer (or density) expression, or None if it depends on something
    unknown (a ``Var``, or a ``Param`` not in ``env``).  Exact integers; ``div``/``mod`` floor.
    Raises ``AttnError`` for a division by zero or a result beyond ``±2**62``."""
    env = env or {}
    if isinstance(expr, (ir.Int, ir.Float)):
        return expr.value
    if isinstance(expr, ir.Param):
        return env.get(expr.name)
    if isinstance(expr, ir.Neg):
        value = fold(expr.operand, env)
        return None if value is None else _limit(-value, expr)
    if isinstance(expr, ir.BinOp):
        left, right = fold(expr.left, env), fold(expr.right, env)
        if left is None or right is None:
            return None
        if expr.op in ("div", "mod") and right == 0:
            what = "division" if expr.op == "div" else "'mod'"
            raise AttnError(f"{what} by zero", expr.span)
        value = {"+": lambda: left + right, "-": lambda: left - right,
                 "*": lambda: left * right, "div": lambda: left // right,
                 "mod": lambda: left % right}[expr.op]()
        return _limit(value, expr)
    if isinstance(expr, ir.Func):
        values = [fold(a, env) for a in expr.args]
        if any(v is None for v in values):
            return None
        return {"min": min, "max": max, "abs": lambda v: abs(v)}[expr.name](*values)
    return None


def _limit(value, node):
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise AttnError(f"integer value {value} is too large (the limit is 2**62)", node.span)
    return value


def fold_constants(node: ir.Node) -> ir.Node:
    """``node`` with every constant arithmetic sub-expression replaced by its literal."""
    if isinstance(node, (ir.BinOp, ir.Neg, ir.Func)):
        value = fold(node)
        if value is not None:
            literal = ir.Float(value) if isinstance(value, float) else ir.Int(value)
            return replace(literal, span=node.span)
    return node.rebuilt(fold_constants)


def substitute(node: ir.Node, mapping: Mapping[str, ir.Node]) -> ir.Node:
    """Replace each ``Param(name)`` with ``mapping[name]`` (one pass: replacements are not
    searched again).  A replacement without a span takes the span of the ``Param`` it replaces,
    so that value errors point at the place the parameter is used."""
    if isinstance(node, ir.Param):
        new = mapping.get(node.name)
        if new is None:
            return node
        return replace(new, span=node.span) if new.span is None else new
    return node.rebuilt(lambda child: substitute(child, mapping))


# ---------------------------------------------------------------- parameter types


def param_types(decl: ir.PatternDecl) -> Dict[str, str]:
    """``{name: "int" | "float"}`` for the declaration's parameters (see the module docstring)."""
    uses, density_uses = Counter(), Counter()
    for node in decl.body.walk():
        if isinstance(node, ir.Param):
            uses[node.name] += 1
        if isinstance(node, ir.Random) and isinstance(node.density, ir.Param):
            density_uses[node.density.name] += 1
    types = {}
    for p in decl.params:
        if isinstance(p.default, ir.Float):
            types[p.name] = "float"
        elif p.default is not None:
            types[p.name] = "int"
        else:
            only_density = uses[p.name] > 0 and uses[p.name] == density_uses[p.name]
            types[p.name] = "float" if only_density else "int"
    return types


# ---------------------------------------------------------------- value rules


class _Report:
    """Where a value error is reported: at the offending node if it lies inside ``site`` (or no
    site is given), else at ``site`` with ``note`` appended; ``fallback`` if a node has no span."""

    def __init__(self, fallback=None, site=None, note="", outside=None):
        self.fallback, self.site, self.note = fallback, site, note
        self.outside = outside if outside is not None else site

    def fail(self, message: str, span) -> None:
        if self.site is not None and not _inside(span, self.site):
            raise AttnError(message + self.note, self.outside)
        raise AttnError(message, span if span is not None else self.fallback)

    def keeps_position(self, exc: AttnError) -> bool:
        """Whether ``exc`` (from folding) already points at a place this report would use."""
        if exc.line <= 0:
            return False
        if self.site is None:
            return True
        site = self.site
        return (site.line, site.column) <= (exc.line, exc.column) <= (site.end_line,
                                                                       site.end_column)


def _inside(span, site) -> bool:
    if span is None or span.source is not site.source:
        return False
    start, end = (span.line, span.column), (span.end_line, span.end_column)
    return (site.line, site.column) <= start and end <= (site.end_line, site.end_column)


def check_values(expr: ir.Node, env: Optional[Mapping[str, object]] = None, *, fallback=None,
                 site=None, note: str = "", outside=None) -> None:
    """Raise ``AttnError`` if a constant argument in ``expr`` breaks a value rule of LANGUAGE.md
    section 3 (arguments that depend on unknown parameters are skipped).  An error at a node
    outside ``site`` is reported at ``outside`` (default: ``site``) with ``note`` appended."""
    report = _Report(fallback, site, note, outside)
    env = env or {}

    def value(node):
        try:
            return fold(node, env)
        except AttnError as exc:
            if report.keeps_position(exc):
                raise  # already at the offending sub-expression
            report.fail(exc.message, node.span if node.span is not None else None)

    def at_least(node, low, what):
        v = value(node)
        if v is not None and v < low:
            report.fail(f"{what} must be at least {low}, got {v}", node.span)

    def band(node, kind):
        back, ahead = value(node.back), value(node.ahead)
        if back is not None and ahead is not None and back + ahead < 0:
            report.fail(f"{kind} keeps nothing: back + ahead must be at least 0, got "
                        f"{back} + {ahead} = {back + ahead}", node.span)

    for node in expr.walk():
        if isinstance(node, ir.BinOp) and node.op in ("div", "mod"):
            if value(node.right) == 0:  # a constant zero divisor is an error, even in where
                what = "division" if node.op == "div" else "'mod'"
                report.fail(f"{what} by zero", node.span)
        elif isinstance(node, ir.Compare):  # constant arithmetic inside where, folded by bind
            value(node.left)
            value(node.right)
        elif isinstance(node, ir.Window):
            band(node, "window")
        elif isinstance(node, ir.Stride):
            at_least(node.s, 1, "stride")
        elif isinstance(node, ir.Chunk):
            at_least(node.size, 1, "chunk size")
            band(node, "chunk")
        elif isinstance(node, ir.Prefix):
            at_least(node.m, 0, "prefix length")
        elif isinstance(node, ir.Random):
            density = value(node.density)
            if density is not None and not 0 <= density <= 1:
                report.fail(f"density must be in [0, 1], got {density}", node.density.span)
            at_least(node.block, 1, "random block size")
            seed = value(node.seed)
            if seed is not None and not 0 <= seed < SEED_LIMIT:
                report.fail(f"seed must be in [0, 2**32), got {seed}", node.seed.span)
        elif isinstance(node, ir.Every):
            _check_every(node, value, at_least, report)


def _check_every(node: ir.Every, value, at_least, report) -> None:
    at_least(node.modulus, 1, "every modulus")
    s = value(node.modulus)
    r = node.residue
    if isinstance(r, ir.Range):
        lo = 0 if r.lo is None else value(r.lo)
        hi = s if r.hi is None else value(r.hi)
        bad = [v for v in (lo, hi) if v is not None and (v < 0 or (s is not None and v > s))]
        if bad:
            limit = f"0..{s}" if s is not None else "0.. (residues are never negative)"
            report.fail(f"every residue range must lie within {limit}, got {bad[0]}", r.span)
        return
    v = value(r)
    if v is not None and (v < 0 or (s is not None and v >= s)):
        limit = f"0 <= r < {s}" if s is not None else "r >= 0"
        report.fail(f"every residue must satisfy {limit}, got {v}", r.span)


# ---------------------------------------------------------------- bind


def bind(decl: ir.PatternDecl, params: Mapping[str, object],
         fill_defaults: bool = False) -> ir.PatternDecl:
    """Substitute ``params`` (and, with ``fill_defaults``, the defaults of the others) into
    ``decl``, fold constant arithmetic and check the value rules.  The result keeps the
    parameters that are still unbound.  Errors are ``AttnError``s pointing at the place a
    value is used, or at the declaration."""
    if not isinstance(params, Mapping):
        raise bad_argument("params", params, "a dict of parameter values")
    known = {p.name: p for p in decl.params}
    for name in params:
        if name not in known:
            listing = (f"its parameters: {', '.join(known)}" if known
                       else "it has no parameters")
            raise AttnError(f"pattern '{decl.name}' has no parameter {name!r} ({listing})",
                            decl.span)
    types = param_types(decl)
    mapping: Dict[str, ir.Node] = {}
    for name, given in params.items():
        mapping[name] = _literal(decl, name, given, types[name])
    if fill_defaults:
        for p in decl.params:
            if p.name in mapping:
                continue
            if p.default is None:
                raise AttnError(f"pattern '{decl.name}' needs parameter '{p.name}'", decl.span)
            mapping[p.name] = type(p.default)(p.default.value)
    body = fold_constants(substitute(decl.body, mapping))
    check_values(body, fallback=decl.span)
    remaining = tuple(p for p in decl.params if p.name not in mapping)
    return ir.PatternDecl(decl.name, remaining, body, span=decl.span)


def _literal(decl: ir.PatternDecl, name: str, given, kind: str) -> ir.Node:
    """The IR literal for a Python value given for parameter ``name`` of type ``kind``."""
    what = f"parameter '{name}' of pattern '{decl.name}'"
    accepted = "an integer" if kind == "int" else "a number in [0, 1]"
    if isinstance(given, bool) or not isinstance(given, numbers.Real):
        raise AttnError(f"{what} must be {accepted}, got {given!r} "
                        f"({type(given).__name__})", decl.span)
    if isinstance(given, numbers.Integral):
        value = int(given)
        if abs(value) > MAX_INT:
            raise AttnError(f"{what} is too large: {value} (the limit is 2**62)", decl.span)
        return ir.Int(value)
    if kind == "int":
        raise AttnError(f"{what} must be an integer, got {given!r}", decl.span)
    value = float(given)
    if not math.isfinite(value):
        raise AttnError(f"{what} must be {accepted}, got {given!r}", decl.span)
    return ir.Float(value)
