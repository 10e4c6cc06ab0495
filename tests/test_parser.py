"""Every construct of LANGUAGE.md parses and checks to the expected IR; round trips."""
import re
from pathlib import Path

import pytest

from attnlang import ir
from attnlang.ast import Binary, Call, Compare, Name, Number, Range, SetLit, Unary
from attnlang.checker import check_source
from attnlang.parser import parse_ast

LANGUAGE_MD = Path("/work/shared/LANGUAGE.md")
I, P, V = ir.Int, ir.Param, ir.Var


def body(text, name=None):
    program = check_source(text)
    decl = program.patterns[-1] if name is None else [d for d in program.patterns
                                                      if d.name == name][0]
    return decl.body


def expr(text):
    """The IR of one pattern expression."""
    return body(f"pattern x = {text}")


CASES = [
    ("all", ir.All()),
    ("none", ir.Nothing()),
    ("causal", ir.Causal()),
    ("segment", ir.Segment()),
    ("window(2)", ir.Window(I(2), I(2))),
    ("window(127, 0)", ir.Window(I(127), I(0))),
    ("window(-1, 3)", ir.Window(I(-1), I(3))),
    ("window(back = 8, ahead = 0)", ir.Window(I(8), I(0))),
    ("window(ahead = 0, back = 8)", ir.Window(I(8), I(0))),
    ("window(4, ahead = 1)", ir.Window(I(4), I(1))),
    ("stride(128)", ir.Stride(I(128))),
    ("chunk(64)", ir.Chunk(I(64), I(0), I(0))),
    ("chunk(64, 1)", ir.Chunk(I(64), I(1), I(1))),
    ("chunk(64, 1, 0)", ir.Chunk(I(64), I(1), I(0))),
    ("chunk(size = 64, back = 2)", ir.Chunk(I(64), I(2), I(2))),
    ("rows(0..16)", ir.Rows(ir.Range(I(0), I(16)))),
    ("cols(4..)", ir.Cols(ir.Range(I(4), None))),
    ("cols(..4)", ir.Cols(ir.Range(None, I(4)))),
    ("global(-16..)", ir.Global(ir.Range(I(-16), None))),
    ("global({0, 5, -1})", ir.Global(ir.Listed((I(0), I(5), I(-1))))),
    ("global({})", ir.Global(ir.Listed(()))),
    ("cols(every(4))", ir.Cols(ir.Every(I(4), I(0)))),
    ("cols(every(4, 1))", ir.Cols(ir.Every(I(4), I(1)))),
    ("cols(every(128, 112..128))", ir.Cols(ir.Every(I(128), ir.Range(I(112), I(128))))),
    ("rows(0..4 | 10..12)", ir.Rows(ir.SetUnion(ir.Range(I(0), I(4)), ir.Range(I(10), I(12))))),
    ("heads(0..4)", ir.Heads(ir.Range(I(0), I(4)))),
    ("prefix(32)", ir.Prefix(I(32))),
    ("random(0.05)", ir.Random(ir.Float(0.05), I(64), I(0))),
    ("random(0.05, block = 32, seed = 7)", ir.Random(ir.Float(0.05), I(32), I(7))),
    ("random(1e-3, 16, 3)", ir.Random(ir.Float(0.001), I(16), I(3))),
    ("random(1)", ir.Random(I(1), I(64), I(0))),
    ("where((q + k) % 2 == 0)",
     ir.Where(ir.Compare("==", ir.BinOp("mod", ir.BinOp("+", V("q"), V("k")), I(2)), I(0)))),
    ("where(d // 3 >= -2)", ir.Where(ir.Compare(">=", ir.BinOp("div", V("d"), I(3)), I(-2)))),
    ("where(p < Lk and not h == 0 or Lq != 4)",
     ir.Where(ir.BoolOp("or", ir.BoolOp("and", ir.Compare("<", V("p"), V("Lk")),
                                        ir.BoolNot(ir.Compare("==", V("h"), I(0)))),
                        ir.Compare("!=", V("Lq"), I(4))))),
    ("where(0 <= d < 8)",
     ir.Where(ir.BoolOp("and", ir.Compare("<=", I(0), V("d")), ir.Compare("<", V("d"), I(8))))),
    ("where(abs(d) <= max(1, min(q, 2)))",
     ir.Where(ir.Compare("<=", ir.Func("abs", (V("d"),)),
                         ir.Func("max", (I(1), ir.Func("min", (V("q"), I(2)))))))),
    ("where(q * 2 - k mod 3 > 0)",
     ir.Where(ir.Compare(">", ir.BinOp("-", ir.BinOp("*", V("q"), I(2)),
                                        ir.BinOp("mod", V("k"), I(3))), I(0)))),
    ("causal | window(3)", ir.Union(ir.Causal(), ir.Window(I(3), I(3)))),
    ("causal & window(3)", ir.Intersect(ir.Causal(), ir.Window(I(3), I(3)))),
    ("causal - window(3)", ir.Difference(ir.Causal(), ir.Window(I(3), I(3)))),
    ("~causal", ir.Complement(ir.Causal())),
    # precedence: | < & < - < ~, left associative
    ("all | none & causal", ir.Union(ir.All(), ir.Intersect(ir.Nothing(), ir.Causal()))),
    ("all & none - causal", ir.Intersect(ir.All(), ir.Difference(ir.Nothing(), ir.Causal()))),
    ("~all - none", ir.Difference(ir.Complement(ir.All()), ir.Nothing())),
    ("all - none - causal", ir.Difference(ir.Difference(ir.All(), ir.Nothing()), ir.Causal())),
    ("all - (none - causal)", ir.Difference(ir.All(), ir.Difference(ir.Nothing(), ir.Causal()))),
    ("(all | none) & causal", ir.Intersect(ir.Union(ir.All(), ir.Nothing()), ir.Causal())),
    ("window(1 + 2 * 3)", ir.Window(*(ir.BinOp("+", I(1), ir.BinOp("*", I(2), I(3))),) * 2)),
    ("window(min(4, 8 div 2), max(1, 9 mod 4))",
     ir.Window(ir.Func("min", (I(4), ir.BinOp("div", I(8), I(2)))),
               ir.Func("max", (I(1), ir.BinOp("mod", I(9), I(4)))))),
    ("window(-(3), 5)", ir.Window(I(-3), I(5))),
    ("window(- -3)", ir.Window(I(3), I(3))),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0] for c in CASES])
def test_construct_checks_to_expected_ir(text, expected):
    got = expr(text)
    assert got == expected
    assert check_source(f"pattern x = {got}").patterns[0].body == got  # round trip


def test_comments_whitespace_and_newlines_are_free():
    text = "# a comment\n\npattern   x\n  =  window( 3 ,\n 1 )  # trailing\n\t| causal\n"
    assert expr_from(text) == ir.Union(ir.Window(I(3), I(1)), ir.Causal())


def expr_from(text):
    return check_source(text).patterns[0].body


def test_parameters_and_defaults():
    decl = check_source("pattern lf(w = 256, g = 16, dens = 0.5, n, neg = -4) = "
                        "window(w) | global(0..g) | random(dens) | stride(n) | chunk(8, neg, 4)"
                        ).patterns[0]
    assert [(p.name, p.default) for p in decl.params] == [
        ("w", I(256)), ("g", I(16)), ("dens", ir.Float(0.5)), ("n", None), ("neg", I(-4))]
    assert decl.body == ir.Union(ir.Union(ir.Union(ir.Union(
        ir.Window(P("w"), P("w")), ir.Global(ir.Range(I(0), P("g")))),
        ir.Random(P("dens"), I(64), I(0))), ir.Stride(P("n"))),
        ir.Chunk(I(8), P("neg"), I(4)))


def test_empty_parameter_list_is_the_same_as_none():
    assert check_source("pattern a() = all") == check_source("pattern a = all")


def test_parameter_arithmetic_stays_symbolic():
    assert body("pattern sp(s = 128) = window(s - 1, 0)") == ir.Window(
        ir.BinOp("-", P("s"), I(1)), I(0))
    assert body("pattern s(m = 4) = rows(-m..)") == ir.Rows(ir.Range(ir.Neg(P("m")), None))


def test_reference_inlines_with_arguments_and_defaults():
    text = ("pattern longformer(w = 256, g = 16) = window(w) | global(0..g)\n"
            "pattern lf2 = longformer(w = 64) & causal\n"
            "pattern lf3(x) = longformer(x + 1, 3) - lf2\n"
            "pattern plain = longformer\n")
    program = check_source(text)
    lf2 = program.patterns[1]
    assert lf2.params == ()
    assert lf2.body == ir.Intersect(ir.Union(ir.Window(I(64), I(64)),
                                             ir.Global(ir.Range(I(0), I(16)))), ir.Causal())
    lf3 = program.patterns[2]
    assert [p.name for p in lf3.params] == ["x"]
    assert lf3.body == ir.Difference(
        ir.Union(ir.Window(*(ir.BinOp("+", P("x"), I(1)),) * 2), ir.Global(ir.Range(I(0), I(3)))),
        lf2.body)
    assert program.patterns[3].body == ir.Union(ir.Window(I(256), I(256)),
                                                ir.Global(ir.Range(I(0), I(16))))


def test_reference_substitution_does_not_capture_names():
    text = "pattern a(w) = window(w)\npattern b(w = 2) = a(w + 1)\n"
    assert body(text) == ir.Window(*(ir.BinOp("+", P("w"), I(1)),) * 2)


def test_float_parameter_passes_through_references():
    text = "pattern r(dens) = random(dens)\npattern s(x) = r(x) | r(0.25)\n"
    assert body(text) == ir.Union(ir.Random(P("x"), I(64), I(0)),
                                  ir.Random(ir.Float(0.25), I(64), I(0)))


def test_language_md_examples_check_and_round_trip():
    blocks = re.findall(r"```\n(.*?)```", LANGUAGE_MD.read_text(), re.S)
    programs = [b for b in blocks if "pattern " in b]
    assert programs, "LANGUAGE.md has example programs"
    for text in programs:
        program = check_source(text)
        assert len(program.patterns) == text.count("pattern ")
        again = check_source(str(program))
        assert again == program
        assert str(again) == str(program)


def test_language_md_inline_examples():
    # Expressions quoted in the prose of LANGUAGE.md.
    for text in ["window(127, 0)", "window(2)", "chunk(64, 1, 0) & causal", "causal | prefix(16)",
                 "rows(-16..)", "cols(every(128, 112..128))", "window(back = 8, ahead = 0)",
                 "window(-1, 3)"]:
        got = expr(text)
        assert check_source(f"pattern x = {got}").patterns[0].body == got


def test_spans_on_every_node():
    text = ("pattern lf(w = 4) = window(w) | global(0..2)\n"
            "pattern b(s = 8) = lf(w = 2) & where((q + k) % 2 == 0) - cols(every(s, 1..3))\n")
    program = check_source(text, "f.attn")
    for decl in program.patterns:
        for node in decl.walk():
            assert node.span is not None, node
            assert node.span.filename == "f.attn"
            assert node.span.line >= 1 and node.span.column >= 1


def test_ast_shapes_and_spans():
    module = parse_ast("pattern a(w = 2) = window(w, -1) | {1, 2} - (0..3)\n"
                       "pattern b = where(0 < d <= 4)", "m.attn")
    assert [d.name for d in module.decls] == ["a", "b"]
    a = module.decls[0]
    assert (a.name_span.line, a.name_span.column) == (1, 9)
    assert isinstance(a.body, Binary) and a.body.op == "|"
    call = a.body.left
    assert isinstance(call, Call) and call.name == "window"
    assert isinstance(call.args[0].value, Name)
    neg = call.args[1].value
    assert isinstance(neg, Unary) and neg.op == "-" and isinstance(neg.operand, Number)
    assert (neg.span.line, neg.span.column) == (1, 30)
    diff = a.body.right
    assert isinstance(diff.left, SetLit) and isinstance(diff.right, Range)
    cmp = module.decls[1].body.args[0].value
    assert isinstance(cmp, Compare) and cmp.ops == ("<", "<=")
    assert module.source.filename == "m.attn"


def test_percent_and_double_slash_are_mod_and_div():
    assert expr("where(q % 2 == k // 3)") == expr("where(q mod 2 == k div 3)")


def test_float_literal_forms_and_ranges_lex_apart():
    assert expr("random(0.5)").density == ir.Float(0.5)
    assert expr("random(5e-1)").density == ir.Float(0.5)
    assert expr("random(1E-3)").density == ir.Float(0.001)
    assert expr("rows(0..4)").set == ir.Range(I(0), I(4))
    assert expr("rows(1 ..2)").set == ir.Range(I(1), I(2))


def test_trailing_commas_are_accepted():
    assert expr("window(3, 1,)") == ir.Window(I(3), I(1))
    assert expr("global({1, 2,})") == ir.Global(ir.Listed((I(1), I(2))))
    assert check_source("pattern a(w = 1,) = window(w)").patterns[0].params[0].name == "w"


def test_byte_order_mark_and_crlf():
    assert expr_from("\ufeffpattern a = causal\r\n| all\r\n") == ir.Union(ir.Causal(), ir.All())


def test_program_span_and_decl_spans():
    program = check_source("pattern a = all\n\npattern b = none\n", "p.attn")
    assert program.span.filename == "p.attn"
    assert [(d.span.line, d.span.column) for d in program.patterns] == [(1, 1), (3, 1)]


@pytest.mark.parametrize("text", [
    "pattern a = where(" + "not " * 196 + "q == 0)",
    "pattern a(w = 3) = window(" + "- -" * 98 + "w)",
    "pattern a = window(" + "min(" * 98 + "1" + ", 1)" * 98 + ")",
    "pattern a = " + " | ".join(["causal"] * 198),
    "pattern a = rows(" + " | ".join(["0..1"] * 196) + ")",
])
def test_nesting_just_inside_the_limits_works_end_to_end(text):
    from attnlang.formatter import format_source

    program = check_source(text)
    assert check_source(str(program)) == program
    assert check_source(format_source(text)) == program
