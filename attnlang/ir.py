"""The intermediate representation: frozen, hashable dataclasses.

Every node carries an optional ``span`` (where it came from in the user's source) that is
excluded from equality and hashing, so two IRs that mean the same text compare equal.

Three families of nodes share one expression language, exactly as the surface syntax does:

* integer expressions (arguments, ``where`` arithmetic): ``Int``, ``Float``, ``Param``, ``Var``,
  ``BinOp``, ``Neg``, ``Func``;
* boolean expressions (inside ``where`` only): ``Compare``, ``BoolOp``, ``BoolNot``;
* index sets: ``Range``, ``Every``, ``Listed``, ``SetUnion``;
* patterns: the primitives of LANGUAGE.md section 3 and ``Union``, ``Intersect``,
  ``Difference``, ``Complement``.

A ``PatternDecl`` is one checked declaration: pattern references are already inlined (with their
arguments substituted), so a declaration stands on its own and ``str(decl)`` is canonical source
that parses back to an equal declaration.  ``str(node)`` of any node is its canonical text.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, Tuple, Union as TUnion


@dataclass(frozen=True, eq=False)
class Source:
    """The text a program was parsed from (identity-compared; only spans point at it; its repr
    names the file only, so a repr of an AST does not repeat the text at every span)."""

    filename: str
    text: str = field(repr=False)

    def line(self, number: int) -> str:
        """Line ``number`` (from 1) of `text_lines`; ``""`` past the text."""
        lines = text_lines(self.text)
        return lines[number - 1] if 1 <= number <= len(lines) else ""


def text_lines(text: str) -> list:
    """``text``'s lines as the lexer counts them: ``\\n`` alone ends one (``str.splitlines``
    also breaks at ``\\f``, ``\\x85``, ``\\u2028``, a lone ``\\r`` ...), a ``\\r`` before it
    dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


@dataclass(frozen=True)
class Span:
    source: Optional[Source]
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    @property
    def filename(self) -> str:
        return self.source.filename if self.source is not None else "<string>"


def _span():
    return field(default=None, compare=False, hash=False, repr=False)


class Node:
    """Base of all IR nodes."""

    span: Optional[Span]

    def __str__(self) -> str:  # canonical source text
        from .printer import to_source

        return to_source(self)

    def children(self):
        for f in fields(self):
            if f.name == "span":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Node):
                yield value
            elif isinstance(value, tuple):
                for item in value:
                    if isinstance(item, Node):
                        yield item

    def rebuilt(self, visit):
        """This node with ``visit`` applied to each child, in ``children()`` order (span kept);
        the same object if every child comes back as itself."""
        changes = {}
        for f in fields(self):
            if f.name == "span":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Node):
                new = visit(value)
            elif isinstance(value, tuple) and any(isinstance(v, Node) for v in value):
                new = tuple(visit(v) if isinstance(v, Node) else v for v in value)
                if all(a is b for a, b in zip(new, value)):
                    new = value
            else:
                continue
            if new is not value:
                changes[f.name] = new
        return replace(self, **changes) if changes else self

    def walk(self):
        """This node and all nodes below it, pre-order (iterative: deep trees are fine)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(list(node.children())))


# ---------------------------------------------------------------- integer / float expressions


@dataclass(frozen=True, repr=False)
class Int(Node):
    value: int
    span: Optional[Span] = _span()

    def __repr__(self):
        return f"Int({self.value})"


@dataclass(frozen=True, repr=False)
class Float(Node):
    value: float
    span: Optional[Span] = _span()

    def __repr__(self):
        return f"Float({self.value!r})"


@dataclass(frozen=True)
class Param(Node):
    """A reference to a pattern parameter (unbound until ``bind``)."""

    name: str
    span: Optional[Span] = _span()


WHERE_VARIABLES = ("q", "k", "p", "d", "h", "Lq", "Lk")


@dataclass(frozen=True)
class Var(Node):
    """A ``where`` coordinate: one of ``q k p d h Lq Lk``."""

    name: str
    span: Optional[Span] = _span()


ARITH_OPS = ("+", "-", "*", "div", "mod")


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # one of ARITH_OPS; ``div``/``mod`` floor like Python's // and %
    left: "Expr"
    right: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Neg(Node):
    operand: "Expr"
    span: Optional[Span] = _span()


FUNCTIONS = {"min": 2, "max": 2, "abs": 1}


@dataclass(frozen=True)
class Func(Node):
    name: str  # min, max (two arguments) or abs (one; where only)
    args: Tuple["Expr", ...]
    span: Optional[Span] = _span()


# ---------------------------------------------------------------- boolean expressions (where)

COMPARE_OPS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True)
class Compare(Node):
    op: str
    left: "Expr"
    right: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class BoolOp(Node):
    op: str  # "and" | "or"
    left: "BoolExpr"
    right: "BoolExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class BoolNot(Node):
    operand: "BoolExpr"
    span: Optional[Span] = _span()


# ---------------------------------------------------------------- index sets


@dataclass(frozen=True)
class Range(Node):
    """``lo..hi`` (either bound may be missing); negative bounds count from the end."""

    lo: Optional["Expr"]
    hi: Optional["Expr"]
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Every(Node):
    """``every(modulus, residue)``: ``i mod modulus`` equals ``residue`` (an integer or a Range)."""

    modulus: "Expr"
    residue: TUnion["Expr", Range]
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Listed(Node):
    """``{a, b, c}``; negative members count from the end."""

    items: Tuple["Expr", ...]
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class SetUnion(Node):
    left: "IndexSet"
    right: "IndexSet"
    span: Optional[Span] = _span()


# ---------------------------------------------------------------- patterns


@dataclass(frozen=True)
class All(Node):
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Nothing(Node):
    """The primitive spelled ``none``."""

    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Causal(Node):
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Segment(Node):
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Window(Node):
    """``-ahead <= d <= back``."""

    back: "Expr"
    ahead: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Stride(Node):
    """``d mod s == 0``."""

    s: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Chunk(Node):
    """``-ahead <= (p div size) - (k div size) <= back``."""

    size: "Expr"
    back: "Expr"
    ahead: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Rows(Node):
    """``p in S``."""

    set: "IndexSet"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Cols(Node):
    """``k in S``."""

    set: "IndexSet"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Global(Node):
    """``p in S or k in S``."""

    set: "IndexSet"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Prefix(Node):
    """``p < m and k < m``."""

    m: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Random(Node):
    """``hash(seed, p div block, k div block) < floor(density * 2^32)`` (LANGUAGE.md section 5)."""

    density: "Expr"  # Float, Int or Param
    block: "Expr"
    seed: "Expr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Heads(Node):
    """``h in S`` (negative members count from the end of the head range)."""

    set: "IndexSet"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Where(Node):
    pred: "BoolExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Union(Node):
    left: "PatternExpr"
    right: "PatternExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Intersect(Node):
    left: "PatternExpr"
    right: "PatternExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Difference(Node):
    """``a - b`` is ``a & ~b``."""

    left: "PatternExpr"
    right: "PatternExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Complement(Node):
    operand: "PatternExpr"
    span: Optional[Span] = _span()


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class ParamDecl(Node):
    name: str
    default: Optional[TUnion[Int, Float]]  # None: must be given by ``bind``
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class PatternDecl(Node):
    name: str
    params: Tuple[ParamDecl, ...]
    body: "PatternExpr"
    span: Optional[Span] = _span()


@dataclass(frozen=True)
class Program(Node):
    patterns: Tuple[PatternDecl, ...]
    span: Optional[Span] = _span()


Expr = TUnion[Int, Float, Param, Var, BinOp, Neg, Func]
BoolExpr = TUnion[Compare, BoolOp, BoolNot]
IndexSet = TUnion[Range, Every, Listed, SetUnion]
PRIMITIVES = (All, Nothing, Causal, Segment, Window, Stride, Chunk, Rows, Cols, Global, Prefix,
              Random, Heads, Where)
COMBINATORS = (Union, Intersect, Difference, Complement)
PatternExpr = TUnion[All, Nothing, Causal, Segment, Window, Stride, Chunk, Rows, Cols, Global,
                     Prefix, Random, Heads, Where, Union, Intersect, Difference, Complement]


def const(expr: "Expr") -> int:
    """The value of a folded (bound) argument; raises TypeError if it still has free names."""
    if isinstance(expr, (Int, Float)):
        return expr.value
    raise TypeError(f"argument {expr} is not a constant (bind and simplify the pattern first)")


def is_pattern(node: Node) -> bool:
    return isinstance(node, PRIMITIVES + COMBINATORS)


def is_index_set(node: Node) -> bool:
    return isinstance(node, (Range, Every, Listed, SetUnion))


def is_bool(node: Node) -> bool:
    return isinstance(node, (Compare, BoolOp, BoolNot))
