"""Source text -> AST (``ast.Module``), with syntax errors as ``AttnError`` in plain words.

The grammar is ``grammar/attn.lark`` (Lark, LALR(1), basic lexer).  The Lark parser is built once
per process, lazily (about 40 ms), and shared: it holds no per-parse state.

Guards, so that no input can make the front end crash or hang:

* NUL bytes are refused up front (binary files), other stray characters by the lexer;
* brackets may nest at most ``MAX_BRACKETS`` deep and expressions at most ``MAX_DEPTH`` levels
  (checked while parsing, before anything recursive runs, so later stages can recurse safely);
* integer literals beyond ``±MAX_INT`` (``2**62``) and floats that overflow are refused;
* a file with no declarations is an error ("no pattern declarations" at 1:1).

Syntax errors say what was expected in words ("expected an expression", "expected ')' to close
the '(' at 3:14"), never Lark's terminal names.
"""
from __future__ import annotations

from typing import List, Optional

from . import ast
from .errors import AttnError
from .ir import Source, Span

MAX_BRACKETS = 100  # nesting of ( and {
MAX_DEPTH = 200  # nesting of expression nodes (a chain of 200 `|` is 200 levels)
MAX_INT = 2 ** 62

_PARSER = None


def _lark():
    """The shared Lark LALR parser, built on first use."""
    global _PARSER
    if _PARSER is None:
        from lark import Lark

        from .resources import grammar_path

        _PARSER = Lark(grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="basic",
                       propagate_positions=True, maybe_placeholders=False,
                       tree_class=_depth_tree_class())
    return _PARSER


class _TooDeep(Exception):
    """Raised while parsing, as soon as a parse tree gets deeper than MAX_DEPTH."""

    def __init__(self, tree):
        super().__init__("too deep")
        self.tree = tree


_TREE_CLASS = None


def _depth_tree_class():
    """A Lark ``Tree`` that knows its depth and refuses to grow past MAX_DEPTH.

    Checking while the parser reduces (rather than afterwards) stops a pathological input, such
    as a megabyte of ``all | all | ...``, after a few hundred tokens instead of after the whole
    file has been parsed."""
    global _TREE_CLASS
    if _TREE_CLASS is None:
        from lark import Tree

        class DepthTree(Tree):
            __slots__ = ("depth",)

            def __init__(self, data, children, meta=None):
                super().__init__(data, children, meta)
                if data.startswith("_") or data == "start":
                    # Lark's helpers for `x*` lists grow by one child per item; measuring them
                    # each time would be quadratic.  Their items were measured already.
                    self.depth = 0
                    return
                self.depth = 1 + max((getattr(c, "depth", 0) for c in children), default=0)
                if self.depth > MAX_DEPTH:
                    raise _TooDeep(self)

        _TREE_CLASS = DepthTree
    return _TREE_CLASS


def parse_ast(text: str, filename: str = "<string>") -> ast.Module:
    """Parse ``text`` into an ``ast.Module``; raises ``AttnError`` with a position on errors."""
    if not isinstance(text, str):
        raise AttnError(f"expected source text (str), got {type(text).__name__}",
                        filename=filename)
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the program
        text = text[1:]
    source = Source(filename, text)
    _refuse_binary(text, source)
    _check_brackets(text, source)
    tree = _parse_tree(text, source)
    decls = tuple(_Builder(source).decl(child) for child in tree.children)
    if not decls:
        raise AttnError("no pattern declarations (a file declares patterns with "
                        "'pattern NAME = EXPR')", Span(source, 1, 1, 1, 1))
    end = decls[-1].span
    return ast.Module(decls, _comments(text), source,
                      Span(source, 1, 1, end.end_line, end.end_column))


# ---------------------------------------------------------------- guards


def _position(text: str, index: int):
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _refuse_binary(text: str, source: Source) -> None:
    index = text.find("\x00")
    if index >= 0:
        line, column = _position(text, index)
        raise AttnError("the file contains a NUL byte; attnlang reads text files only",
                        Span(source, line, column, line, column + 1))


def _check_brackets(text: str, source: Source) -> None:
    """Refuse brackets nested deeper than MAX_BRACKETS (comments skipped; no strings exist)."""
    depth = 0
    in_comment = False
    for index, ch in enumerate(text):
        if in_comment:
            in_comment = ch != "\n"
        elif ch == "#":
            in_comment = True
        elif ch in "({":
            depth += 1
            if depth > MAX_BRACKETS:
                line, column = _position(text, index)
                raise AttnError(f"brackets are nested too deeply (more than {MAX_BRACKETS} "
                                f"levels)", Span(source, line, column, line, column + 1))
        elif ch in ")}":
            depth = max(0, depth - 1)


def _comments(text: str):
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        index = line.find("#")
        if index >= 0:
            found.append(ast.Comment(line[index:].rstrip(), number, index + 1))
    return tuple(found)


# ---------------------------------------------------------------- syntax errors in words


def _parse_tree(text: str, source: Source):
    from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

    try:
        return _lark().parse(text)
    except _TooDeep as exc:
        line, column = _first_position(exc.tree)
        raise AttnError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)",
                        Span(source, line, column, line, column + 1)) from None
    except UnexpectedToken as exc:
        raise _token_error(exc, source) from None
    except UnexpectedCharacters as exc:
        raise _character_error(exc, text, source) from None
    except UnexpectedInput as exc:  # pragma: no cover - LALR raises only the two above
        raise AttnError("syntax error", Span(source, exc.line, exc.column)) from None


_EXPRESSION_START = {"NAME", "INT", "FLOAT", "LPAR", "LBRACE", "MINUS", "TILDE", "NOT", "DOTDOT"}
_KEYWORDS = {"PATTERN", "AND", "OR", "NOT", "DIV", "MOD"}
_CLOSERS = {"LPAR": ("RPAR", ")"), "LBRACE": ("RBRACE", "}")}
_HINTS = {
    "!": " (write '!=' to compare, or 'not')",
    ".": " (a range is written 'a..b'; a float needs digits on both sides of the point, as in 0.5)",
    "/": " (write 'div' or '//' for floor division)",
    '"': " (attnlang has no strings)",
    "'": " (attnlang has no strings)",
    "^": " (write '~' for the complement, '&' for intersection)",
}
_SPELLING = {
    "PATTERN": "'pattern'", "NAME": "a name", "INT": "a number", "FLOAT": "a number",
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "EQUAL": "'='", "COMPARE": "a comparison", "BAR": "'|'", "AMP": "'&'", "DOTDOT": "'..'",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "DIV": "'div'", "MOD": "'mod'",
    "PERCENT": "'%'", "DSLASH": "'//'", "TILDE": "'~'", "AND": "'and'", "OR": "'or'",
    "NOT": "'not'", "$END": "the end of the file",
}


def _found(token) -> str:
    kind = token.type
    if kind == "$END":
        return "the end of the file"
    if kind == "NAME":
        return f"the name '{token}'"
    if kind in ("INT", "FLOAT"):
        return f"the number {token if len(token) <= 30 else token[:30] + '...'}"
    if kind in _KEYWORDS:
        return f"the keyword '{token}'"
    return f"'{token}'"


def _first_position(tree):
    """Line and column of the first token under ``tree`` (its meta is not set yet)."""
    node = tree
    while not hasattr(node, "line"):
        node = node.children[0]
    return node.line, node.column


def _token_end(item):
    if hasattr(item, "end_line"):
        return item.end_line, item.end_column
    meta = item.meta
    return meta.end_line, meta.end_column


def _type(item):
    return getattr(item, "type", None)


def _expected_words(expected, stack) -> str:
    """What the parser wanted, in words, from its expected terminals and its value stack."""
    exp = set(expected)
    opener_at = next((i for i in range(len(stack) - 1, -1, -1)
                      if _type(stack[i]) in _CLOSERS), None)
    opener = stack[opener_at] if opener_at is not None else None
    in_params = (opener_at is not None and opener_at >= 2 and _type(opener) == "LPAR"
                 and _type(stack[opener_at - 1]) == "NAME"
                 and _type(stack[opener_at - 2]) == "PATTERN")
    if {"NAME", "INT"} <= exp:
        for closer, spelled in (("RPAR", "')'"), ("RBRACE", "'}'")):
            if closer in exp:
                return f"expected an expression or {spelled}"
        return "expected an expression"
    if stack and _type(stack[-1]) == "PATTERN":
        return "expected a pattern name after 'pattern'"
    if len(stack) >= 2 and _type(stack[-1]) == "NAME" and _type(stack[-2]) == "PATTERN":
        return "expected '=' after the pattern name"
    if exp == {"EQUAL"}:
        return "expected '=' after the parameter list"
    if in_params and exp == {"NAME", "RPAR"}:
        return "expected a parameter name or ')'"
    if in_params and "EQUAL" in exp:
        return "expected '=', ',' or ')' in the parameter list"
    if opener is not None:
        closer, spelled = _CLOSERS[opener.type]
        if closer in exp:
            where = f"{opener.line}:{opener.column}"
            comma = "',' or " if "COMMA" in exp else ""
            return f"expected {comma}'{spelled}' to close the '{opener}' at {where}"
    if "PATTERN" in exp:
        if "BAR" in exp:
            return "expected an operator or the next declaration ('pattern NAME = ...')"
        return "expected a declaration ('pattern NAME = ...')"
    words = sorted({_SPELLING.get(t, t) for t in exp})
    return "expected " + (" or ".join(words) if len(words) <= 3 else "one of " + ", ".join(words))


def _token_error(exc, source: Source) -> AttnError:
    token = exc.token
    stack = exc.interactive_parser.parser_state.value_stack if exc.interactive_parser else []
    message = f"{_expected_words(exc.expected, stack)}, found {_found(token)}"
    if token.type == "EQUAL" and "COMPARE" in exc.expected:
        message += " (write '==' to compare)"
    elif token.type == "DOTDOT":
        message += " (a range has a single '..')"
    if token.type == "$END" and stack:
        line, column = _token_end(stack[-1])
    else:
        line, column = token.line, token.column
    return AttnError(message, Span(source, line, column, line, column + 1))


def _character_error(exc, text: str, source: Source) -> AttnError:
    ch = text[exc.pos_in_stream]
    shown = f"'{ch}'" if ch.isprintable() else repr(ch)
    hint = _HINTS.get(ch, "")
    if not hint and ch.isalpha():
        hint = " (names use ASCII letters, digits and '_')"
    return AttnError(f"unexpected character {shown}{hint}",
                     Span(source, exc.line, exc.column, exc.line, exc.column + 1))


# ---------------------------------------------------------------- parse tree -> AST

_BINARY_SPELLING = {"OR": "or", "AND": "and", "BAR": "|", "AMP": "&", "PLUS": "+", "MINUS": "-",
                    "STAR": "*", "DIV": "div", "MOD": "mod", "PERCENT": "mod", "DSLASH": "div"}
_UNARY_SPELLING = {"MINUS": "-", "TILDE": "~", "NOT": "not"}


class _Builder:
    """Turns Lark's parse tree into AST nodes (recursion is safe: depth was checked)."""

    def __init__(self, source: Source):
        self.source = source

    def tspan(self, token) -> Span:
        return Span(self.source, token.line, token.column, token.end_line, token.end_column)

    def span(self, tree) -> Span:
        m = tree.meta
        return Span(self.source, m.line, m.column, m.end_line, m.end_column)

    def decl(self, tree) -> ast.Decl:
        _, name, *rest = tree.children
        params: Optional[tuple] = None
        if len(rest) == 2:
            params = tuple(self.param(p) for p in rest[0].children)
        return ast.Decl(str(name), params, self.expr(rest[-1]), self.span(tree), self.tspan(name))

    def param(self, tree) -> ast.ParamDef:
        name, *default = tree.children
        value = self.expr(default[0]) if default else None
        return ast.ParamDef(str(name), value, self.span(tree))

    def expr(self, tree) -> ast.Expr:
        return getattr(self, "_" + str(tree.data))(tree, tree.children)

    def _name(self, tree, children):
        return ast.Name(str(children[0]), self.span(tree))

    def _number(self, tree, children):
        token = children[0]
        span = self.span(tree)
        if token.type == "INT":
            digits = token.lstrip("0") or "0"
            if len(digits) > 19 or int(digits) > MAX_INT:
                raise AttnError(f"integer literal is too large (the limit is 2**62 = {MAX_INT})",
                                span)
            return ast.Number(int(digits), span)
        value = float(token)
        if value == float("inf"):
            raise AttnError("float literal is too large", span)
        return ast.Number(value, span)

    def _call(self, tree, children):
        name, *args = children
        built: List[ast.Arg] = []
        for arg in args:
            if getattr(arg, "data", None) == "keyword":
                key, value = arg.children
                built.append(ast.Arg(str(key), self.expr(value), self.span(arg), self.tspan(key)))
            else:
                value = self.expr(arg)
                built.append(ast.Arg(None, value, value.span))
        return ast.Call(str(name), tuple(built), self.span(tree), self.tspan(name))

    def _set(self, tree, children):
        return ast.SetLit(tuple(self.expr(c) for c in children), self.span(tree))

    def _unary(self, tree, children):
        op, operand = children
        return ast.Unary(_UNARY_SPELLING[op.type], self.expr(operand), self.span(tree),
                         self.tspan(op))

    def _binop(self, tree, children):
        left, op, right = children
        return ast.Binary(_BINARY_SPELLING[op.type], self.expr(left), self.expr(right),
                          self.span(tree), self.tspan(op))

    def _compare(self, tree, children):
        operands = tuple(self.expr(c) for c in children[0::2])
        ops = tuple(str(t) for t in children[1::2])
        spans = tuple(self.tspan(t) for t in children[1::2])
        return ast.Compare(ops, operands, self.span(tree), spans)

    def _range(self, tree, children):
        return ast.Range(self.expr(children[0]), self.expr(children[2]), self.span(tree))

    def _range_from(self, tree, children):
        return ast.Range(self.expr(children[0]), None, self.span(tree))

    def _range_to(self, tree, children):
        return ast.Range(None, self.expr(children[1]), self.span(tree))
