"""Property tests for the front end: nothing but AttnError escapes, and round trips hold.

* random text built from the grammar's vocabulary, random Unicode and random bytes: checking
  either succeeds or raises ``AttnError`` (never another exception, never a hang);
* random well-formed IR (a recursive strategy over every node type): ``parse(str(ir)) == ir``,
  and ``fmt`` of that text is a fixed point that checks to the same IR.
"""
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlang import api, ir
from attnlang.checker import check_source
from attnlang.errors import AttnError
from attnlang.formatter import format_source

VOCABULARY = [
    "pattern", "p", "a", "b", "w", "=", "(", ")", "{", "}", ",", "|", "&", "-", "+", "*", "~",
    "..", "div", "mod", "%", "//", "and", "or", "not", "==", "!=", "<", "<=", ">", ">=",
    "all", "none", "causal", "segment", "window", "stride", "chunk", "rows", "cols", "global",
    "prefix", "random", "heads", "where", "every", "min", "max", "abs", "q", "k", "p", "d", "h",
    "Lq", "Lk", "0", "1", "3", "64", "-1", "0.5", "1e-3", "99999999999999999999", "#", "\n",
    " ", "back", "ahead", "block", "seed", "size",
]


def _only_attn_errors(text):
    try:
        program = check_source(text, "fuzz.attn")
    except AttnError as exc:
        assert exc.line >= 0 and exc.message
        exc.format()
        return None
    assert check_source(str(program)) == program
    formatted = format_source(text, "fuzz.attn")
    assert format_source(formatted) == formatted
    assert check_source(formatted) == program
    return program


@settings(deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=40))
def test_token_soup_raises_only_attn_errors(tokens):
    _only_attn_errors(" ".join(tokens))


@settings(deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=30))
def test_declaration_shaped_soup(tokens):
    _only_attn_errors("pattern a(w = 4) = window(w)\npattern b = " + " ".join(tokens))


@settings(deadline=None)
@given(st.text(max_size=200))
def test_random_unicode(text):
    _only_attn_errors(text)


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    try:
        api.parse(data, "bytes.attn")
    except AttnError:
        pass


# ---------------------------------------------------------------- well-formed IR

small = st.integers(0, 300)
names = st.sampled_from(ir.WHERE_VARIABLES)


def int_exprs(with_vars=False):
    leaves = st.one_of(st.integers(-50, 300).map(ir.Int),
                       names.map(ir.Var) if with_vars else st.integers(0, 9).map(ir.Int))

    def extend(children):
        return st.one_of(
            st.builds(ir.BinOp, st.sampled_from(["+", "-", "*"]), children, children),
            st.builds(ir.BinOp, st.sampled_from(["div", "mod"]), children,
                      st.integers(1, 9).map(ir.Int)),
            st.builds(lambda a: ir.Neg(a), children).filter(
                lambda n: not isinstance(n.operand, ir.Int)),
            st.builds(lambda f, a, b: ir.Func(f, (a, b)), st.sampled_from(["min", "max"]),
                      children, children),
            *([st.builds(lambda a: ir.Func("abs", (a,)), children)] if with_vars else []),
        )
    return st.recursive(leaves, extend, max_leaves=6)


def bool_exprs():
    compare = st.builds(ir.Compare, st.sampled_from(ir.COMPARE_OPS), int_exprs(True),
                        int_exprs(True))

    def extend(children):
        return st.one_of(st.builds(ir.BoolOp, st.sampled_from(["and", "or"]), children, children),
                         st.builds(ir.BoolNot, children))
    return st.recursive(compare, extend, max_leaves=4)


ranges = st.builds(ir.Range, st.one_of(st.none(), st.integers(-20, 20).map(ir.Int)),
                   st.one_of(st.none(), st.integers(-20, 40).map(ir.Int))).filter(
    lambda r: r.lo is not None or r.hi is not None)
every = st.integers(1, 16).flatmap(lambda s: st.builds(
    ir.Every, st.just(ir.Int(s)), st.one_of(
        st.integers(0, s - 1).map(ir.Int),
        st.builds(lambda a, b: ir.Range(ir.Int(min(a, b)), ir.Int(max(a, b))),
                  st.integers(0, s), st.integers(0, s)))))
listed = st.lists(st.integers(-9, 99).map(ir.Int), max_size=4).map(lambda xs: ir.Listed(tuple(xs)))
index_sets = st.recursive(st.one_of(ranges, every, listed),
                          lambda c: st.builds(ir.SetUnion, c, c), max_leaves=3)


@st.composite
def windows(draw):
    back = draw(st.integers(-20, 300))
    ahead = draw(st.integers(-back, 300))
    return ir.Window(ir.Int(back), ir.Int(ahead))


@st.composite
def chunks(draw):
    back = draw(st.integers(-3, 5))
    ahead = draw(st.integers(-back, 5))
    return ir.Chunk(ir.Int(draw(st.integers(1, 256))), ir.Int(back), ir.Int(ahead))


primitives = st.one_of(
    st.sampled_from([ir.All(), ir.Nothing(), ir.Causal(), ir.Segment()]),
    windows(), chunks(),
    st.builds(ir.Stride, st.integers(1, 300).map(ir.Int)),
    st.builds(ir.Prefix, small.map(ir.Int)),
    st.builds(ir.Rows, index_sets), st.builds(ir.Cols, index_sets),
    st.builds(ir.Global, index_sets), st.builds(ir.Heads, index_sets),
    st.builds(ir.Random, st.one_of(st.floats(0, 1).map(ir.Float), st.sampled_from([0, 1]).map(
        ir.Int)), st.integers(1, 256).map(ir.Int), st.integers(0, 2 ** 32 - 1).map(ir.Int)),
    st.builds(ir.Where, bool_exprs()),
    st.builds(lambda e: ir.Window(e, e), int_exprs().filter(lambda e: _value(e) >= 0)),
)


def _value(e):
    from attnlang.binding import fold
    return fold(e)


patterns = st.recursive(primitives, lambda c: st.one_of(
    st.builds(ir.Union, c, c), st.builds(ir.Intersect, c, c), st.builds(ir.Difference, c, c),
    st.builds(ir.Complement, c)), max_leaves=8)


@settings(deadline=None)
@given(patterns)
def test_printed_ir_parses_back_to_itself(pattern):
    text = f"pattern x = {pattern}"
    program = check_source(text)
    assert program.patterns[0].body == pattern
    formatted = format_source(text)
    assert format_source(formatted) == formatted
    assert check_source(formatted) == program


@settings(deadline=None)
@given(st.lists(patterns, min_size=1, max_size=3), st.data())
def test_programs_with_references_round_trip(bodies, data):
    lines = [f"pattern p{i} = {b}" for i, b in enumerate(bodies)]
    refs = data.draw(st.lists(st.integers(0, len(bodies) - 1), min_size=1, max_size=3))
    lines.append("pattern top = " + " | ".join(f"p{i}" for i in refs))
    text = "\n".join(lines) + "\n"
    program = check_source(text)
    assert check_source(str(program)) == program
    formatted = format_source(text)
    assert format_source(formatted) == formatted
    assert check_source(formatted) == program
    if all(len(line) <= 100 for line in text.splitlines()):
        assert formatted == text  # the printer's text is already canonical
    assert program.patterns[-1].body == check_source(
        f"pattern t = {program.patterns[-1].body}").patterns[0].body
