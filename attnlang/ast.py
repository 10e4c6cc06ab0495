"""The abstract syntax tree: what the user wrote, with a source span on every node.

The parser (``parser.py``) builds it; the checker (``checker.py``) turns it into IR and the
formatter (``formatter.py``) prints it back as canonical source that keeps pattern references
and comments.  Unlike the IR, the AST does not know what an expression *is* (a pattern, an
integer, an index set or a condition): ``a | b`` is one ``Binary`` node whatever ``a`` and ``b``
are.  Operators are stored in canonical spelling (``mod``/``div``; ``%`` and ``//`` are read as
them).  Spans are ``ir.Span`` objects pointing into one ``ir.Source``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from .ir import Source, Span


@dataclass(frozen=True)
class Number:
    """An integer or float literal (never negative: ``-3`` is ``Unary("-", Number(3))``)."""

    value: Union[int, float]
    span: Span


@dataclass(frozen=True)
class Name:
    """A bare name: a primitive (``causal``), a parameter, a where-variable or a pattern."""

    name: str
    span: Span


@dataclass(frozen=True)
class Arg:
    """One call argument; ``name`` is None for a positional one (``name_span`` then too)."""

    name: Optional[str]
    value: "Expr"
    span: Span
    name_span: Optional[Span] = None


@dataclass(frozen=True)
class Call:
    """``name(args)``: a primitive, ``every``/``min``/``max``/``abs``, or a pattern reference."""

    name: str
    args: Tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Unary:
    """``-x``, ``~x`` or ``not x``."""

    op: str
    operand: "Expr"
    span: Span
    op_span: Span


@dataclass(frozen=True)
class Binary:
    """``left op right`` with op one of ``or and | & + - * div mod``."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span
    op_span: Span


@dataclass(frozen=True)
class Compare:
    """A comparison chain ``a < b <= c`` (``len(operands) == len(ops) + 1``)."""

    ops: Tuple[str, ...]
    operands: Tuple["Expr", ...]
    span: Span
    op_spans: Tuple[Span, ...]


@dataclass(frozen=True)
class Range:
    """``lo..hi`` with either bound possibly missing."""

    lo: Optional["Expr"]
    hi: Optional["Expr"]
    span: Span


@dataclass(frozen=True)
class SetLit:
    """``{a, b, c}``."""

    items: Tuple["Expr", ...]
    span: Span


Expr = Union[Number, Name, Call, Unary, Binary, Compare, Range, SetLit]


@dataclass(frozen=True)
class ParamDef:
    """``name`` or ``name = default`` in a parameter list (the checker requires a literal)."""

    name: str
    default: Optional[Expr]
    span: Span


@dataclass(frozen=True)
class Decl:
    """``pattern name(params) = body``; ``params`` is None when the parentheses are left out."""

    name: str
    params: Optional[Tuple[ParamDef, ...]]
    body: Expr
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment: its text (from ``#``, trailing blanks removed) and where it starts."""

    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Module:
    """A whole file: its declarations in order, its comments and the source they came from."""

    decls: Tuple[Decl, ...]
    comments: Tuple[Comment, ...]
    source: Source
    span: Span

