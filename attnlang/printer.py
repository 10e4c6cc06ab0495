"""Canonical source text of IR nodes: ``parse(str(ir)) == ir``.

Operator precedence (loosest first) is the grammar's, which is Python's:
``or`` < ``and`` < ``not`` < comparisons < ``|`` < ``&`` < ``..`` < ``+ -`` < ``* div mod`` <
unary ``- ~`` < atoms.  Binary operators are left-associative, so a right operand of equal
precedence is parenthesised.  Canonical spelling: ``div``/``mod`` (not ``//``/``%``), one space
around binary operators, ``name = value`` for keyword arguments, defaults left out.
"""
from __future__ import annotations

from . import ir

PREC_OR, PREC_AND, PREC_NOT, PREC_CMP, PREC_UNION, PREC_INTER, PREC_RANGE, PREC_ADD, PREC_MUL, \
    PREC_UNARY, PREC_ATOM = range(1, 12)

_BIN_PREC = {"+": PREC_ADD, "-": PREC_ADD, "*": PREC_MUL, "div": PREC_MUL, "mod": PREC_MUL}

# Every operator of the surface syntax in canonical spelling, for printers of other trees
# (formatter.py prints the AST with these, so there is one precedence table).
BINARY_PREC = {"or": PREC_OR, "and": PREC_AND, **{op: PREC_CMP for op in ir.COMPARE_OPS},
               "|": PREC_UNION, "&": PREC_INTER, **_BIN_PREC}
UNARY_PREC = {"not": PREC_NOT, "-": PREC_UNARY, "~": PREC_UNARY}


def to_source(node: ir.Node) -> str:
    text, _ = _fmt(node)
    return text


def _wrap(node: ir.Node, min_prec: int) -> str:
    text, prec = _fmt(node)
    return f"({text})" if prec < min_prec else text


def _binary(op: str, left: ir.Node, right: ir.Node, prec: int):
    return f"{_wrap(left, prec)} {op} {_wrap(right, prec + 1)}", prec


def _float(value: float) -> str:
    text = repr(float(value))
    return text if ("." in text or "e" in text or "n" in text) else text + ".0"


format_float = _float  # public name for formatter.py


def _call(name: str, positional=(), keywords=()):
    args = [to_source(a) for a in positional]
    args += [f"{key} = {to_source(value)}" for key, value in keywords]
    return f"{name}({', '.join(args)})", PREC_ATOM


def _fmt(node: ir.Node):  # noqa: C901 - one case per node type
    n = node
    if isinstance(n, ir.Int):
        return (str(n.value), PREC_ATOM) if n.value >= 0 else (str(n.value), PREC_UNARY)
    if isinstance(n, ir.Float):
        return _float(n.value), PREC_ATOM
    if isinstance(n, (ir.Param, ir.Var)):
        return n.name, PREC_ATOM
    if isinstance(n, ir.BinOp):
        return _binary(n.op, n.left, n.right, _BIN_PREC[n.op])
    if isinstance(n, ir.Neg):
        return "-" + _wrap(n.operand, PREC_UNARY), PREC_UNARY
    if isinstance(n, ir.Func):
        return _call(n.name, n.args)
    if isinstance(n, ir.Compare):
        return _binary(n.op, n.left, n.right, PREC_CMP)
    if isinstance(n, ir.BoolOp):
        return _binary(n.op, n.left, n.right, PREC_OR if n.op == "or" else PREC_AND)
    if isinstance(n, ir.BoolNot):
        return "not " + _wrap(n.operand, PREC_NOT), PREC_NOT
    if isinstance(n, ir.Range):
        lo = _wrap(n.lo, PREC_ADD) if n.lo is not None else ""
        hi = _wrap(n.hi, PREC_ADD) if n.hi is not None else ""
        return f"{lo}..{hi}", PREC_RANGE
    if isinstance(n, ir.Every):
        if isinstance(n.residue, ir.Int) and n.residue.value == 0:
            return _call("every", (n.modulus,))
        return _call("every", (n.modulus, n.residue))
    if isinstance(n, ir.Listed):
        return "{" + ", ".join(to_source(i) for i in n.items) + "}", PREC_ATOM
    if isinstance(n, ir.SetUnion):
        return _binary("|", n.left, n.right, PREC_UNION)
    if isinstance(n, ir.All):
        return "all", PREC_ATOM
    if isinstance(n, ir.Nothing):
        return "none", PREC_ATOM
    if isinstance(n, ir.Causal):
        return "causal", PREC_ATOM
    if isinstance(n, ir.Segment):
        return "segment", PREC_ATOM
    if isinstance(n, ir.Window):
        return _call("window", (n.back,) if n.ahead == n.back else (n.back, n.ahead))
    if isinstance(n, ir.Stride):
        return _call("stride", (n.s,))
    if isinstance(n, ir.Chunk):
        zero = ir.Int(0)
        if n.back == zero and n.ahead == zero:
            return _call("chunk", (n.size,))
        if n.ahead == n.back:
            return _call("chunk", (n.size, n.back))
        return _call("chunk", (n.size, n.back, n.ahead))
    if isinstance(n, (ir.Rows, ir.Cols, ir.Global, ir.Heads)):
        return _call(type(n).__name__.lower(), (n.set,))
    if isinstance(n, ir.Prefix):
        return _call("prefix", (n.m,))
    if isinstance(n, ir.Random):
        keywords = []
        if n.block != ir.Int(64):
            keywords.append(("block", n.block))
        if n.seed != ir.Int(0):
            keywords.append(("seed", n.seed))
        return _call("random", (n.density,), keywords)
    if isinstance(n, ir.Where):
        return _call("where", (n.pred,))
    if isinstance(n, ir.Union):
        return _binary("|", n.left, n.right, PREC_UNION)
    if isinstance(n, ir.Intersect):
        return _binary("&", n.left, n.right, PREC_INTER)
    if isinstance(n, ir.Difference):
        return _binary("-", n.left, n.right, PREC_ADD)
    if isinstance(n, ir.Complement):
        return "~" + _wrap(n.operand, PREC_UNARY), PREC_UNARY
    if isinstance(n, ir.ParamDecl):
        if n.default is None:
            return n.name, PREC_ATOM
        return f"{n.name} = {to_source(n.default)}", PREC_ATOM
    if isinstance(n, ir.PatternDecl):
        params = f"({', '.join(to_source(p) for p in n.params)})" if n.params else ""
        return f"pattern {n.name}{params} = {to_source(n.body)}", PREC_ATOM
    if isinstance(n, ir.Program):
        return "".join(to_source(p) + "\n" for p in n.patterns), PREC_ATOM
    raise TypeError(f"cannot print {type(n).__name__}")
