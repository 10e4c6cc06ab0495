"""AST -> IR: names, arity, keyword arguments, types, value rules and pattern references.

``check_source(text, filename)`` parses and checks a whole file and returns an ``ir.Program``.
Every mistake is an ``AttnError`` at the offending place.  The AST does not say what an expression
is; the checker decides, bottom-up, whether each node is a *pattern*, an *integer*, a *float*
(a density), an *index set* or a *condition* (inside ``where`` only), and then each context says
which it needs.

Pattern references are inlined: ``lf(w = 64)`` becomes ``lf``'s body with ``64`` substituted for
``w`` and ``lf``'s defaults for the parameters not given.  Only patterns declared earlier may be
used, so there is no recursion.  To keep later (recursive) stages safe, an inlined pattern may be
at most ``MAX_DEPTH`` levels deep and ``MAX_NODES`` nodes large, and one deeper than
``PRINT_CHECK_DEPTH`` must print to canonical text that parses back (its brackets and parse tree
within the parser's limits), so that ``str(pattern)`` is always source attnlang reads.
"""
from __future__ import annotations

import difflib
import gc
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from . import ast, ir
from .binding import check_values, fold, param_types, substitute
from .errors import AttnError
from .ir import Span
from .parser import MAX_BRACKETS, MAX_DEPTH, parse_ast

MAX_NODES = 100_000
# Canonical text nests brackets at most as deep as its IR, and parses a few levels deeper than
# it: below this depth it always parses back, above it the checker tries (rare and cheap).
PRINT_CHECK_DEPTH = MAX_BRACKETS - 10

PATTERN, INT, FLOAT, SET, COND = "pattern", "integer", "float", "index set", "condition"
_ARTICLE = {PATTERN: "a pattern", INT: "an integer", FLOAT: "a float", SET: "an index set",
            COND: "a condition"}

NULLARY = {"all": ir.All, "none": ir.Nothing, "causal": ir.Causal, "segment": ir.Segment}
_REQ = object()  # marks a required argument in a signature
# name -> ((argument, kind, default), ...); kinds: INT, SET, COND, "density", "residue".
# Defaults: _REQ, a literal int, or the name of an earlier argument it repeats.
SIGNATURES = {
    "window": (("back", INT, _REQ), ("ahead", INT, "back")),
    "stride": (("s", INT, _REQ),),
    "chunk": (("size", INT, _REQ), ("back", INT, 0), ("ahead", INT, "back")),
    "rows": (("set", SET, _REQ),),
    "cols": (("set", SET, _REQ),),
    "global": (("set", SET, _REQ),),
    "heads": (("set", SET, _REQ),),
    "prefix": (("m", INT, _REQ),),
    "random": (("density", "density", _REQ), ("block", INT, 64), ("seed", INT, 0)),
    "where": (("condition", COND, _REQ),),
    "every": (("modulus", INT, _REQ), ("residue", "residue", 0)),
    "min": (("a", INT, _REQ), ("b", INT, _REQ)),
    "max": (("a", INT, _REQ), ("b", INT, _REQ)),
    "abs": (("a", INT, _REQ),),
}
RESERVED = frozenset(set(NULLARY) | set(SIGNATURES) | set(ir.WHERE_VARIABLES)
                     | {"every", "pattern", "and", "or", "not", "div", "mod", "min", "max", "abs"})


def check_source(text: str, filename: str = "<string>") -> ir.Program:
    """Parse and check ``text``; the IR of every declaration, references inlined.

    The cyclic garbage collector is paused meanwhile (and restored after): parsing allocates
    many small objects and no cycles, and the collector's passes would double the time of a big
    file."""
    paused = gc.isenabled()
    gc.disable()
    try:
        module = parse_ast(text, filename)
        return Checker(module).program()
    finally:
        if paused:
            gc.enable()


def check_module(module: ast.Module) -> ir.Program:
    return Checker(module).program()


@dataclass
class _Declared:
    """What the checker keeps about an earlier declaration, for references to it."""

    decl: ir.PatternDecl
    types: Dict[str, str]
    size: int
    uses: Counter


@dataclass
class _Scope:
    decl: ast.Decl
    params: Dict[str, ir.ParamDecl]
    in_where: bool = False
    budget: int = 0


def _span_between(a: Span, b: Span) -> Span:
    return Span(a.source, a.line, a.column, b.end_line, b.end_column)


def measure(node: ir.Node) -> Tuple[int, int]:
    """(tree size, depth) of an IR node; iterative and linear in the *distinct* nodes, so
    shared sub-trees (from inlining) are cheap to measure."""
    memo: Dict[int, Tuple[int, int]] = {}
    stack = [(node, False)]
    while stack:
        current, ready = stack.pop()
        if id(current) in memo:
            continue
        kids = list(current.children())
        if ready:
            size = 1 + sum(memo[id(k)][0] for k in kids)
            depth = 1 + max((memo[id(k)][1] for k in kids), default=0)
            memo[id(current)] = (size, depth)
        else:
            stack.append((current, True))
            stack.extend((k, False) for k in kids if id(k) not in memo)
    return memo[id(node)]


def _check_printable(d, body) -> None:
    """Refuse an inlined pattern whose canonical text the parser would not read back."""
    try:
        parse_ast(f"pattern {d.name} = {body}", "<canonical text>")
    except AttnError as exc:
        raise AttnError(f"pattern '{d.name}' is nested too deeply once the patterns it uses are "
                        f"inlined: its canonical text would not parse back ({exc.message})",
                        d.name_span) from None


class Checker:
    """Checks one module's declarations in order."""

    def __init__(self, module: ast.Module):
        self.module = module
        self.declared: Dict[str, _Declared] = {}
        self.all_decls = {}
        for d in module.decls:
            self.all_decls.setdefault(d.name, d)

    def program(self) -> ir.Program:
        decls = tuple(self.declaration(d) for d in self.module.decls)
        return ir.Program(decls, span=self.module.span)

    # ------------------------------------------------------------ declarations

    def declaration(self, d: ast.Decl) -> ir.PatternDecl:
        if d.name in RESERVED:
            raise AttnError(f"'{d.name}' is a reserved name and cannot name a pattern",
                            d.name_span)
        if d.name in self.declared:
            first = self.all_decls[d.name].name_span
            raise AttnError(f"pattern '{d.name}' is already declared at "
                            f"{first.line}:{first.column}", d.name_span)
        params: Dict[str, ir.ParamDecl] = {}
        for p in d.params or ():
            params[p.name] = self.parameter(p, params)
        scope = _Scope(d, params)
        body = self.expect(d.body, scope, PATTERN)
        size, depth = measure(body)
        if depth > MAX_DEPTH:
            raise AttnError(f"pattern '{d.name}' is nested too deeply once the patterns it "
                            f"uses are inlined (more than {MAX_DEPTH} levels)", d.name_span)
        if size > MAX_NODES:
            raise AttnError(self._too_large(d.name), d.name_span)
        if depth > PRINT_CHECK_DEPTH:
            _check_printable(d, body)
        decl = ir.PatternDecl(d.name, tuple(params.values()), body, span=d.span)
        check_values(body, fallback=d.span)
        defaults = {p.name: p.default.value for p in decl.params if p.default is not None}
        if defaults:  # a default that breaks a rule is a mistake even if it is never used
            try:
                check_values(body, defaults, fallback=d.span, site=d.span,
                             outside=d.name_span,
                             note=f" (inside a pattern that '{d.name}' uses)")
            except AttnError as exc:
                raise AttnError(exc.message + " (with the parameters' default values)",
                                filename=exc.filename, line=exc.line, column=exc.column,
                                source_line=exc.source_line) from None
        uses = Counter(n.name for n in body.walk() if isinstance(n, ir.Param))
        self.declared[d.name] = _Declared(decl, param_types(decl), size, uses)
        return decl

    @staticmethod
    def _too_large(name: str) -> str:
        return (f"pattern '{name}' is too large once the patterns it uses are inlined "
                f"(more than {MAX_NODES} nodes)")

    def parameter(self, p: ast.ParamDef, earlier: Dict[str, ir.ParamDecl]) -> ir.ParamDecl:
        if p.name in RESERVED:
            raise AttnError(f"'{p.name}' is a reserved name and cannot name a parameter", p.span)
        if p.name in earlier:
            raise AttnError(f"parameter '{p.name}' is declared twice", p.span)
        if p.name in self.declared:  # names of later patterns cannot be used here anyway
            other = self.all_decls[p.name].name_span
            raise AttnError(f"parameter '{p.name}' has the same name as the pattern declared "
                            f"at {other.line}:{other.column}", p.span)
        default = None
        if p.default is not None:
            default = self.literal(p.default)
            if default is None:
                raise AttnError("a parameter default must be a number literal (such as 64, -1 "
                                "or 0.5)", p.default.span)
        return ir.ParamDecl(p.name, default, span=p.span)

    @staticmethod
    def literal(node: ast.Expr) -> Optional[ir.Node]:
        """An (optionally negated) number literal as ``Int``/``Float``, else None."""
        if isinstance(node, ast.Number):
            return (ir.Float if isinstance(node.value, float) else ir.Int)(node.value,
                                                                          span=node.span)
        if isinstance(node, ast.Unary) and node.op == "-":
            inner = Checker.literal(node.operand)
            if inner is not None:
                return type(inner)(-inner.value, span=node.span)
        return None

    # ------------------------------------------------------------ kinds and expectations

    def expect(self, node: ast.Expr, scope: _Scope, kind: str) -> ir.Node:
        value, got = self.expr(node, scope)
        if got == kind:
            return value
        if kind == INT and got == FLOAT and isinstance(value, ir.Param):
            default = scope.params[value.name].default
            raise AttnError(f"parameter '{value.name}' is a float (its default is "
                            f"{default.value}); an integer is needed here", node.span)
        hint = ""
        if kind == SET and got == INT:
            hint = " (write {n} for one position, or a range such as 0..16)"
        elif kind == COND:
            hint = " (such as q >= k or d mod 2 == 0)"
        raise AttnError(f"expected {_ARTICLE[kind]}, found {_ARTICLE[got]}{hint}", node.span)

    def expr(self, node: ast.Expr, scope: _Scope) -> Tuple[ir.Node, str]:
        if isinstance(node, ast.Number):
            lit = self.literal(node)
            return lit, FLOAT if isinstance(lit, ir.Float) else INT
        if isinstance(node, ast.Name):
            return self.name(node, scope)
        if isinstance(node, ast.Call):
            return self.call(node, scope)
        if isinstance(node, ast.Unary):
            return self.unary(node, scope)
        if isinstance(node, ast.Binary):
            return self.binary(node, scope)
        if isinstance(node, ast.Compare):
            return self.compare(node, scope)
        if isinstance(node, ast.Range):
            lo = None if node.lo is None else self.expect(node.lo, scope, INT)
            hi = None if node.hi is None else self.expect(node.hi, scope, INT)
            return ir.Range(lo, hi, span=node.span), SET
        if isinstance(node, ast.SetLit):
            items = tuple(self.expect(i, scope, INT) for i in node.items)
            return ir.Listed(items, span=node.span), SET
        raise TypeError(f"unknown AST node {type(node).__name__}")  # pragma: no cover

    # ------------------------------------------------------------ names

    def name(self, node: ast.Name, scope: _Scope):
        name = node.name
        if name in ir.WHERE_VARIABLES:
            if not scope.in_where:
                raise AttnError(f"'{name}' is a where-variable; it can only be used inside "
                                f"where(...)", node.span)
            return ir.Var(name, span=node.span), INT
        if name in scope.params:
            default = scope.params[name].default
            return ir.Param(name, span=node.span), FLOAT if isinstance(default, ir.Float) else INT
        if name in NULLARY:
            return NULLARY[name](span=node.span), PATTERN
        if name in SIGNATURES:
            raise AttnError(f"'{name}' needs arguments: {_signature(name)}", node.span)
        self._known_pattern(name, node.span, scope)
        return self.reference(name, (), node.span, scope), PATTERN

    def _known_pattern(self, name: str, span: Span, scope: _Scope) -> None:
        if name in self.declared:
            return
        if name == scope.decl.name:
            raise AttnError(f"pattern '{name}' refers to itself; a pattern may only use "
                            f"patterns declared before it (no recursion)", span)
        if name in self.all_decls:
            later = self.all_decls[name].name_span
            raise AttnError(f"pattern '{name}' is declared later (at {later.line}:"
                            f"{later.column}); a pattern may only use patterns declared "
                            f"before it", span)
        candidates = list(self.declared) + list(scope.params) + list(NULLARY) + list(SIGNATURES)
        if scope.in_where:
            candidates += list(ir.WHERE_VARIABLES)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.7)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise AttnError(f"unknown name '{name}'{hint}", span)

    # ------------------------------------------------------------ calls

    def call(self, node: ast.Call, scope: _Scope):
        name = node.name
        if name in NULLARY:
            raise AttnError(f"'{name}' takes no arguments; write it without parentheses",
                            node.span)
        if name in scope.params or name in ir.WHERE_VARIABLES:
            what = "a parameter" if name in scope.params else "a where-variable"
            raise AttnError(f"'{name}' is {what}, not something that can be called",
                            node.name_span)
        if name not in SIGNATURES:
            self._known_pattern(name, node.name_span, scope)
            return self.reference(name, node.args, node.span, scope), PATTERN
        if name == "abs" and not scope.in_where:
            raise AttnError("abs(...) can only be used inside where(...)", node.name_span)
        names = [a[0] for a in SIGNATURES[name]]
        required = [a[0] for a in SIGNATURES[name] if a[2] is _REQ]
        given = _match_arguments(node, names, required, f"{name}()",
                                 hint=" (write '==' to compare)" if name == "where" else "")
        values = {}
        for arg_name, kind, default in SIGNATURES[name]:
            if arg_name in given:
                values[arg_name] = self.argument(given[arg_name].value, kind, scope,
                                                 where=(name == "where"))
            elif isinstance(default, str):
                values[arg_name] = values[default]
            else:
                values[arg_name] = ir.Int(default, span=node.span)
        return _primitive(name, values, node.span)

    def argument(self, node: ast.Expr, kind: str, scope: _Scope, where=False) -> ir.Node:
        if kind == "density":
            value, got = self.expr(node, scope)
            if got not in (INT, FLOAT):
                raise AttnError(f"expected a density (a number in [0, 1]), found "
                                f"{_ARTICLE[got]}", node.span)
            if not isinstance(value, (ir.Int, ir.Float, ir.Param)):
                raise AttnError("a density must be a number or a parameter name, not an "
                                "expression", node.span)
            return value
        if kind == "residue":
            if isinstance(node, ast.Range):
                value, _ = self.expr(node, scope)
                return value
            value, got = self.expr(node, scope)
            if got != INT:
                raise AttnError(f"every's residue must be an integer or a range of residues "
                                f"(such as 112..128), found {_ARTICLE[got]}", node.span)
            return value
        if where:
            outer = scope.in_where
            scope.in_where = True
            try:
                return self.expect(node, scope, kind)
            finally:
                scope.in_where = outer
        return self.expect(node, scope, kind)

    def reference(self, name: str, args, span: Span, scope: _Scope) -> ir.Node:
        """Inline the earlier pattern ``name`` with ``args`` (AST arguments) substituted."""
        info = self.declared[name]
        params = info.decl.params
        given = _match_arguments_raw(args, span, [p.name for p in params],
                                     [p.name for p in params if p.default is None],
                                     f"pattern '{name}'")
        mapping: Dict[str, ir.Node] = {}
        predicted = info.size
        for p in params:
            if p.name in given:
                kind = "density" if info.types[p.name] == "float" else INT
                value = self.argument(given[p.name].value, kind, scope)
                if not info.uses[p.name]:  # (never substituted: its constants checked here)
                    fold(value)
            else:
                value = type(p.default)(p.default.value, span=span)
            mapping[p.name] = value
            predicted += info.uses[p.name] * (measure(value)[0] - 1)
        scope.budget += predicted
        if scope.budget > MAX_NODES:
            raise AttnError(self._too_large(scope.decl.name), span)
        body = substitute(info.decl.body, mapping)
        check_values(body, fallback=span, site=span,
                     note=f" (in pattern '{name}', used here)")
        return body

    # ------------------------------------------------------------ operators

    def unary(self, node: ast.Unary, scope: _Scope):
        if node.op == "not":
            if not scope.in_where:
                raise AttnError("'not' is only allowed inside where(...); write '~' for the "
                                "complement of a pattern", node.op_span)
            return ir.BoolNot(self.expect(node.operand, scope, COND), span=node.span), COND
        value, got = self.expr(node.operand, scope)
        if node.op == "~":
            if got != PATTERN:
                raise AttnError(f"'~' is the complement of a pattern, found {_ARTICLE[got]}",
                                node.operand.span)
            return ir.Complement(value, span=node.span), PATTERN
        if got == PATTERN:
            raise AttnError("unary '-' negates integers; write '~' for the complement of a "
                            "pattern", node.op_span)
        if isinstance(value, (ir.Int, ir.Float)):
            return type(value)(-value.value, span=node.span), got
        if got != INT:
            raise AttnError(f"unary '-' needs an integer, found {_ARTICLE[got]}",
                            node.operand.span)
        return ir.Neg(value, span=node.span), INT

    def binary(self, node: ast.Binary, scope: _Scope):
        op = node.op
        if op in ("and", "or"):
            if not scope.in_where:
                use = "'&' to intersect" if op == "and" else "'|' for the union of"
                raise AttnError(f"'{op}' is only allowed inside where(...); write {use} "
                                f"patterns", node.op_span)
            left = self.expect(node.left, scope, COND)
            right = self.expect(node.right, scope, COND)
            return ir.BoolOp(op, left, right, span=node.span), COND
        left, lk = self.expr(node.left, scope)
        right, rk = self.expr(node.right, scope)
        if op in ("|", "&"):
            if lk == rk == PATTERN:
                cls = ir.Union if op == "|" else ir.Intersect
                return cls(left, right, span=node.span), PATTERN
            if op == "|" and lk == rk == SET:
                return ir.SetUnion(left, right, span=node.span), SET
            raise AttnError(self._bad_set_op(op, lk, rk, scope), node.op_span)
        if op == "-" and lk == rk == PATTERN:
            return ir.Difference(left, right, span=node.span), PATTERN
        for side, kind in ((node.left, lk), (node.right, rk)):
            if kind != INT:
                if kind == FLOAT:
                    self.expect(side, scope, INT)  # the float-parameter message
                hint = " (write '|' for the union of patterns)" if op == "+" else ""
                if op == "-" and PATTERN in (lk, rk):
                    raise AttnError(f"'-' needs two patterns or two integers, found "
                                    f"{_ARTICLE[lk]} and {_ARTICLE[rk]}", node.op_span)
                raise AttnError(f"'{op}' needs integers, found {_ARTICLE[kind]}{hint}",
                                side.span)
        return ir.BinOp(op, left, right, span=node.span), INT

    @staticmethod
    def _bad_set_op(op: str, lk: str, rk: str, scope: _Scope) -> str:
        if {lk, rk} <= {INT, COND, FLOAT}:
            word = "or" if op == "|" else "and"
            where = f"; inside where(...) write '{word}'" if scope.in_where else ""
            plural = {INT: "integers", COND: "conditions", FLOAT: "floats"}[lk]
            return f"'{op}' combines patterns, not {plural}{where}"
        if op == "&" and lk == rk == SET:
            return "'&' is not defined on index sets (only '|' is)"
        return f"'{op}' cannot combine {_ARTICLE[lk]} and {_ARTICLE[rk]}"

    def compare(self, node: ast.Compare, scope: _Scope):
        if not scope.in_where:
            raise AttnError("comparisons are only allowed inside where(...)", node.op_spans[0])
        values = [self.expect(o, scope, INT) for o in node.operands]
        result = None
        for i, op in enumerate(node.ops):
            a, b = node.operands[i], node.operands[i + 1]
            cmp = ir.Compare(op, values[i], values[i + 1], span=_span_between(a.span, b.span))
            result = cmp if result is None else ir.BoolOp("and", result, cmp, span=node.span)
        return result, COND


# ---------------------------------------------------------------- helpers


def _signature(name: str) -> str:
    parts = []
    for arg, _, default in SIGNATURES[name]:
        parts.append(arg if default is _REQ else f"{arg} = {default}")
    return f"{name}({', '.join(parts)})"


def _match_arguments(node: ast.Call, names, required, what, hint=""):
    return _match_arguments_raw(node.args, node.span, names, required, what, hint)


def _match_arguments_raw(args, span, names, required, what, hint=""):
    """Map call arguments to parameter names; errors for every arity/keyword mistake."""
    given: Dict[str, ast.Arg] = {}
    seen_keyword = False
    for index, arg in enumerate(args):
        if arg.name is None:
            if seen_keyword:
                raise AttnError("a positional argument cannot follow a keyword argument",
                                arg.span)
            if index >= len(names):
                count = "no arguments" if not names else (
                    f"at most {len(names)} argument{'s' if len(names) > 1 else ''}")
                raise AttnError(f"{what} takes {count}, got {len(args)}", arg.span)
            given[names[index]] = arg
            continue
        seen_keyword = True
        if arg.name not in names:
            listing = f"its parameters: {', '.join(names)}" if names else "it has no parameters"
            raise AttnError(f"{what} has no parameter named '{arg.name}' ({listing}){hint}",
                            arg.name_span)
        if arg.name in given:
            raise AttnError(f"argument '{arg.name}' is given twice", arg.name_span)
        given[arg.name] = arg
    for name in required:
        if name not in given:
            if what.startswith("pattern "):
                raise AttnError(f"{what} needs parameter '{name}'", span)
            raise AttnError(f"{what} needs the argument '{name}'", span)
    return given


def _primitive(name: str, v: Dict[str, ir.Node], span: Span):
    if name == "window":
        return ir.Window(v["back"], v["ahead"], span=span), PATTERN
    if name == "stride":
        return ir.Stride(v["s"], span=span), PATTERN
    if name == "chunk":
        return ir.Chunk(v["size"], v["back"], v["ahead"], span=span), PATTERN
    if name in ("rows", "cols", "global", "heads"):
        cls = {"rows": ir.Rows, "cols": ir.Cols, "global": ir.Global, "heads": ir.Heads}[name]
        return cls(v["set"], span=span), PATTERN
    if name == "prefix":
        return ir.Prefix(v["m"], span=span), PATTERN
    if name == "random":
        return ir.Random(v["density"], v["block"], v["seed"], span=span), PATTERN
    if name == "where":
        return ir.Where(v["condition"], span=span), PATTERN
    if name == "every":
        return ir.Every(v["modulus"], v["residue"], span=span), SET
    return ir.Func(name, tuple(v[a] for a in ("a", "b") if a in v), span=span), INT
