"""Bad programs: each error's message (a distinctive part), line and column.

Every case also checks the LANGUAGE.md section 7 format: ``FILE:LINE:COL: error: MESSAGE``, the
source line and a caret under the column, and that no Lark terminal name leaks out.
"""
import pytest

from attnlang.checker import check_source
from attnlang.errors import AttnError

# (source, part of the message, line, column)
BAD = [
    # ---- syntax
    ("pattern a = (window(3)", "expected ')' to close the '(' at 1:13", 1, 23),
    ("pattern a = window(3", "expected ',' or ')' to close the '(' at 1:19", 1, 21),
    ("pattern a =\n  window(3,\n   4", "to close the '(' at 2:9", 3, 5),
    ("pattern a = ", "expected an expression, found the end of the file", 1, 12),
    ("pattern a = causal |", "expected an expression", 1, 21),
    ("pattern a = window(3) | | causal", "expected an expression, found '|'", 1, 25),
    ("pattern = causal", "expected a pattern name after 'pattern'", 1, 9),
    ("pattern a causal", "expected '=' after the pattern name", 1, 11),
    ("pattern a(w) causal", "expected '=' after the parameter list", 1, 14),
    ("pattern a = window(w 3)", "expected ',' or ')' to close the '(' at 1:19", 1, 22),
    ("pattern a(", "expected a parameter name or ')'", 1, 11),
    ("pattern a(w 3) = all", "expected '=', ',' or ')' in the parameter list", 1, 13),
    ("pattern a = causal window(3)", "expected an operator or the next declaration", 1, 20),
    ("a = causal", "expected a declaration ('pattern NAME = ...')", 1, 1),
    ("pattern a = {1, 2", "expected ',' or '}' to close the '{' at 1:13", 1, 18),
    ("pattern a = where(q ! k)", "unexpected character '!'", 1, 21),
    ("pattern a = rows(0..4..8)", "a range has a single '..'", 1, 22),
    ("pattern and = all", "found the keyword 'and'", 1, 9),
    ("pattern a = where(q == k) = all", "write '==' to compare", 1, 27),
    ("pattern a = random(0.)", "unexpected character '.'", 1, 21),
    ("pattern a = caus\u00e9", "unexpected character '\u00e9'", 1, 17),
    ("", "no pattern declarations", 1, 1),
    ("# only a comment\n\n", "no pattern declarations", 1, 1),
    ("pattern a = window(99999999999999999999)", "integer literal is too large", 1, 20),
    ("pattern a = all\x00", "NUL byte", 1, 16),
    ("pattern a = " + "(" * 150 + "all" + ")" * 150, "nested too deeply", 1, 113),
    ("pattern a = " + "~" * 300 + "all", "nested too deeply (more than 200", 1, 113),
    # ---- names, recursion, declarations
    ("pattern a = windw(3)", "unknown name 'windw' (did you mean 'window'?)", 1, 13),
    ("pattern a = foo", "unknown name 'foo'", 1, 13),
    ("pattern a = b\npattern b = all", "pattern 'b' is declared later (at 2:9)", 1, 13),
    ("pattern a = causal | a", "refers to itself", 1, 22),
    ("pattern a = all\npattern a = none", "pattern 'a' is already declared at 1:9", 2, 9),
    ("pattern a(w, w) = window(w)", "parameter 'w' is declared twice", 1, 14),
    ("pattern window = all", "'window' is a reserved name and cannot name a pattern", 1, 9),
    ("pattern a(k) = all", "'k' is a reserved name and cannot name a parameter", 1, 11),
    ("pattern Lq = all", "'Lq' is a reserved name", 1, 9),
    ("pattern a = all\npattern b(a = 1) = window(a)", "has the same name as the pattern", 2, 11),
    ("pattern a(w = 2 * 3) = window(w)", "a parameter default must be a number literal", 1, 15),
    # ---- arity and keyword arguments
    ("pattern a = window(1, 2, 3)", "window() takes at most 2 arguments, got 3", 1, 26),
    ("pattern a = stride()", "stride() needs the argument 's'", 1, 13),
    ("pattern a = window", "'window' needs arguments: window(back, ahead = back)", 1, 13),
    ("pattern a = causal()", "'causal' takes no arguments", 1, 13),
    ("pattern a = window(back = 1, 2)", "a positional argument cannot follow a keyword", 1, 30),
    ("pattern a = window(1, back = 2)", "argument 'back' is given twice", 1, 23),
    ("pattern a = window(size = 2)", "window() has no parameter named 'size'", 1, 20),
    ("pattern a = where(q = k)", "(write '==' to compare)", 1, 19),
    ("pattern lf(w) = window(w)\npattern b = lf", "pattern 'lf' needs parameter 'w'", 2, 13),
    ("pattern lf(w = 1) = window(w)\npattern b = lf(x = 2)",
     "pattern 'lf' has no parameter named 'x' (its parameters: w)", 2, 16),
    ("pattern c = causal\npattern b = c(1)", "pattern 'c' takes no arguments, got 1", 2, 15),
    # ---- types
    ("pattern a = 0..4", "expected a pattern, found an index set", 1, 13),
    ("pattern a = causal | {1}", "'|' cannot combine a pattern and an index set", 1, 20),
    ("pattern a = window(causal)", "expected an integer, found a pattern", 1, 20),
    ("pattern a = rows(3)", "expected an index set, found an integer", 1, 18),
    ("pattern a = window(1.5)", "expected an integer, found a float", 1, 20),
    ("pattern a(f = 0.5) = window(f)", "parameter 'f' is a float (its default is 0.5)", 1, 29),
    ("pattern a = random(causal)", "expected a density", 1, 20),
    ("pattern a(x = 1) = random(x * 1)", "a density must be a number or a parameter", 1, 27),
    ("pattern a = rows(0..4 & 2..6)", "'&' is not defined on index sets", 1, 23),
    ("pattern a = cols(every(4, {1}))", "every's residue must be an integer or a range", 1, 27),
    ("pattern a = -causal", "write '~' for the complement", 1, 13),
    ("pattern a = ~3", "'~' is the complement of a pattern, found an integer", 1, 14),
    ("pattern a = causal + all", "'+' needs integers, found a pattern", 1, 13),
    ("pattern a = window(1 - causal)", "'-' needs two patterns or two integers", 1, 22),
    # ---- where-only constructs
    ("pattern a = window(q)", "'q' is a where-variable; it can only be used inside where", 1, 20),
    ("pattern a = window(abs(2))", "abs(...) can only be used inside where(...)", 1, 20),
    ("pattern a = causal and all", "'and' is only allowed inside where(...)", 1, 20),
    ("pattern a = causal or all", "write '|' for the union", 1, 20),
    ("pattern a = not causal", "'not' is only allowed inside where(...)", 1, 13),
    ("pattern a = window(1 < 2)", "comparisons are only allowed inside where(...)", 1, 22),
    ("pattern a = where(q + k)", "expected a condition, found an integer", 1, 19),
    ("pattern a = where(causal)", "expected a condition, found a pattern", 1, 19),
    ("pattern a = where(q > 0 & k > 0)", "inside where(...) write 'and'", 1, 25),
    ("pattern a = where(q mod 0 == 1)", "'mod' by zero", 1, 19),
    # ---- value rules
    ("pattern a = stride(0)", "stride must be at least 1, got 0", 1, 20),
    ("pattern a = random(1.5)", "density must be in [0, 1], got 1.5", 1, 20),
    ("pattern a = random(-0.1)", "density must be in [0, 1]", 1, 20),
    ("pattern a = chunk(0)", "chunk size must be at least 1, got 0", 1, 19),
    ("pattern a = window(1, -2)", "window keeps nothing: back + ahead must be at least 0", 1, 13),
    ("pattern a = chunk(8, -1, 0)", "chunk keeps nothing", 1, 13),
    ("pattern a = prefix(-1)", "prefix length must be at least 0, got -1", 1, 20),
    ("pattern a = random(0.1, seed = -1)", "seed must be in [0, 2**32), got -1", 1, 32),
    ("pattern a = random(0.1, seed = 4294967296)", "seed must be in [0, 2**32)", 1, 32),
    ("pattern a = cols(every(0))", "every modulus must be at least 1, got 0", 1, 24),
    ("pattern a = cols(every(4, 4))", "every residue must satisfy 0 <= r < 4, got 4", 1, 27),
    ("pattern a = cols(every(4, -1))", "every residue must satisfy 0 <= r < 4", 1, 27),
    ("pattern a = cols(every(4, 2..5))", "every residue range must lie within 0..4", 1, 27),
    ("pattern a = random(0.1, block = 0)", "random block size must be at least 1, got 0", 1, 33),
    ("pattern a = stride(4 - 2 * 2)", "stride must be at least 1, got 0", 1, 20),
    ("pattern a = window(1 div 0)", "division by zero", 1, 20),
    ("pattern a(s = 0) = stride(s)", "got 0 (with the parameters' default values)", 1, 27),
    ("pattern a(s) = stride(s)\npattern b = a(0)", "stride must be at least 1, got 0", 2, 15),
    ("pattern a(s) = stride(s - 1)\npattern b = a(1)", "(in pattern 'a', used here)", 2, 13),
    ("pattern r(x) = random(x)\npattern b = r(2)", "density must be in [0, 1], got 2", 2, 15),
    ("pattern r(x = 0.5) = random(x)\npattern b = r(causal)", "expected a density", 2, 15),
    ("pattern a(x = 1) = window(x)\npattern b(f = 0.5) = a(f)", "is a float", 2, 24),
]


@pytest.mark.parametrize("source,part,line,column", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_program(source, part, line, column):
    with pytest.raises(AttnError) as info:
        check_source(source, "bad.attn")
    err = info.value
    assert part in err.message
    assert (err.line, err.column) == (line, column), err.format()
    text = err.format()
    assert text.startswith(f"bad.attn:{line}:{column}: error: ")
    shown = text.split("\n")
    if err.source_line:
        assert len(shown) == 3 and shown[2].endswith("^")
    for leak in ("RPAR", "LPAR", "RBRACE", "DOTDOT", "$END", "Token", "Tree(", "lark"):
        assert leak not in err.message


def test_there_are_enough_cases():
    assert len(BAD) >= 25


def test_caret_is_under_the_column():
    with pytest.raises(AttnError) as info:
        check_source("pattern a =\n    causal | stride(0)\n", "c.attn")
    head, line, caret = info.value.format().split("\n")
    assert head == "c.attn:2:21: error: stride must be at least 1, got 0"
    assert line.strip() == "causal | stride(0)"
    assert caret.index("^") == line.index("0")


def test_control_characters_of_the_echoed_line_are_shown_as_pictures():
    """A NUL (or an escape) in the source is not written to the terminal as is; each control
    character takes one column, so the caret stays under the reported one."""
    with pytest.raises(AttnError) as info:
        check_source("pattern a = \x1b[2Jall\x00", "c.attn")
    _, line, caret = info.value.format().split("\n")
    assert line == "    pattern a = \u241b[2Jall\u2400"
    assert caret.index("^") == line.index("\u2400") and info.value.column == 20


def test_not_a_string():
    with pytest.raises(AttnError, match="expected source text"):
        check_source(b"pattern a = all", "x.attn")
