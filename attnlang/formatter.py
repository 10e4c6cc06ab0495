"""Canonical source for a whole file, keeping pattern references and comments.

``format_source(text, filename)`` checks the program (a program with errors is not formatted:
the ``AttnError`` is raised) and prints its AST, not its IR, so ``lf(w = 64) & causal`` stays a
reference.  Precedence, spacing and spelling are ``printer.py``'s (``BINARY_PREC``,
``UNARY_PREC``, ``format_float``): one space around binary operators, ``div``/``mod`` for
``//``/``%``, the fewest parentheses, ``name = value`` for keyword arguments, floats as Python's
``repr``.  Arguments stay as written (positional or by name).

Layout: one declaration per line, except that a declaration longer than 100 characters whose
body is a chain of ``|`` continues on lines that start with ``    | ``; ``pattern name = ...``
without ``()`` when there are no parameters.  Comments are kept:

* a comment on a line of its own stays on its own line, before whatever followed it;
* a comment at the end of a declaration's last line stays at the end of that line (after two
  spaces);
* a comment inside a declaration that spans several lines moves to its own line just before
  the declaration (its place inside the expression cannot be kept on one line).

One blank line is kept wherever the source had one or more between two items; blank lines at
the start and end of the file are dropped.  The output is a fixed point of ``format_source``.
"""
from __future__ import annotations

from typing import List, Tuple

from . import ast
from .checker import check_module
from .parser import parse_ast
from .printer import BINARY_PREC, PREC_ADD, PREC_ATOM, PREC_CMP, PREC_RANGE, UNARY_PREC, \
    format_float


def format_source(text: str, filename: str = "<string>") -> str:
    """The canonical text of a whole ``.attn`` file (raises ``AttnError`` if it has errors)."""
    module = parse_ast(text, filename)
    check_module(module)
    return format_module(module)


def format_module(module: ast.Module) -> str:
    lines = module.source.text.split("\n")
    blank = [not line.strip() for line in lines]
    last_line_of = {}
    for index, d in enumerate(module.decls):
        last_line_of[d.span.end_line] = index  # the last declaration ending on that line
    items: List[Tuple[int, int, str]] = []  # (first source line, last source line, text)
    moved = {i: [] for i in range(len(module.decls))}
    trailing = {}
    for c in module.comments:
        own_line = not lines[c.line - 1][:c.column - 1].strip()
        owner = _inside(module.decls, c.line)
        if owner is not None and c.line == module.decls[owner].span.end_line and not own_line:
            trailing[last_line_of[c.line]] = c.text
        elif owner is not None:
            moved[owner].append(c.text)
        else:
            items.append((c.line, c.line, c.text))
    for index, d in enumerate(module.decls):
        text = declaration(d)
        if index in trailing:
            text += "  " + trailing[index]
        group = "\n".join(moved[index] + [text])
        items.append((d.span.line, d.span.end_line, group))
    items.sort(key=lambda item: item[:2])
    out: List[str] = []
    previous_end = None
    for first, last, text in items:
        if previous_end is not None and any(blank[previous_end:first - 1]):
            out.append("")
        out.append(text)
        previous_end = max(last, previous_end or 0)
    return "\n".join(out) + "\n"


def _inside(decls, line: int):
    """Index of the declaration whose lines include ``line`` (the last one on shared lines)."""
    found = None
    for index, d in enumerate(decls):
        if d.span.line <= line <= d.span.end_line:
            found = index
    return found


LINE_LIMIT = 100


def declaration(d: ast.Decl) -> str:
    """One declaration: one line, or, if that is longer than LINE_LIMIT and the body is a chain
    of ``|``, the chain filled greedily with continuation lines that start with ``    | ``."""
    params = ""
    if d.params:
        params = "(" + ", ".join(
            p.name if p.default is None else f"{p.name} = {expression(p.default)}"
            for p in d.params) + ")"
    head = f"pattern {d.name}{params} = "
    single = head + expression(d.body)
    operands = _union_chain(d.body)
    if len(single) <= LINE_LIMIT or len(operands) < 2:
        return single
    lines = [head + _wrap(operands[0], BINARY_PREC["|"])]
    for operand in operands[1:]:
        text = _wrap(operand, BINARY_PREC["|"] + 1)
        if len(lines[-1]) + 3 + len(text) <= LINE_LIMIT:
            lines[-1] += " | " + text
        else:
            lines.append("    | " + text)
    return "\n".join(lines)


def _union_chain(node: ast.Expr) -> List[ast.Expr]:
    """The operands of a left-leaning chain ``a | b | c`` (just ``[node]`` for anything else)."""
    operands = []
    while isinstance(node, ast.Binary) and node.op == "|":
        operands.append(node.right)
        node = node.left
    operands.append(node)
    return operands[::-1]


def expression(node: ast.Expr) -> str:
    return _fmt(node)[0]


def _wrap(node: ast.Expr, min_prec: int) -> str:
    text, prec = _fmt(node)
    return f"({text})" if prec < min_prec else text


def _fmt(node: ast.Expr):
    if isinstance(node, ast.Number):
        value = node.value
        return (format_float(value) if isinstance(value, float) else str(value)), PREC_ATOM
    if isinstance(node, ast.Name):
        return node.name, PREC_ATOM
    if isinstance(node, ast.Call):
        args = [expression(a.value) if a.name is None else f"{a.name} = {expression(a.value)}"
                for a in node.args]
        return f"{node.name}({', '.join(args)})", PREC_ATOM
    if isinstance(node, ast.SetLit):
        return "{" + ", ".join(expression(i) for i in node.items) + "}", PREC_ATOM
    if isinstance(node, ast.Unary):
        prec = UNARY_PREC[node.op]
        operand = _wrap(node.operand, prec)
        if node.op == "not":
            return f"not {operand}", prec
        return node.op + operand, prec
    if isinstance(node, ast.Binary):
        prec = BINARY_PREC[node.op]
        return f"{_wrap(node.left, prec)} {node.op} {_wrap(node.right, prec + 1)}", prec
    if isinstance(node, ast.Compare):
        parts = [_wrap(node.operands[0], PREC_CMP + 1)]
        for op, operand in zip(node.ops, node.operands[1:]):
            parts += [op, _wrap(operand, PREC_CMP + 1)]
        return " ".join(parts), PREC_CMP
    if isinstance(node, ast.Range):
        lo = "" if node.lo is None else _wrap(node.lo, PREC_ADD)
        hi = "" if node.hi is None else _wrap(node.hi, PREC_ADD)
        return f"{lo}..{hi}", PREC_RANGE
    raise TypeError(f"cannot format {type(node).__name__}")  # pragma: no cover
