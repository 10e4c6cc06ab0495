"""Cases from a mutation run of attnlang/binding.py and attnlang/ir.py that the suite let through.

Each test names the mutant it kills and the rule of LANGUAGE.md (sections 1, 3 and 7) or the
documented helper behaviour it pins.  Errors are checked where the user sees them: the message,
the ``file:line:col`` and the echoed source line with its caret.  The two tests at the end are
where the code disagreed with LANGUAGE.md until round 65 (both fixed: ``Source.line``, and the
checker's arguments for unused parameters).
"""
import pytest

from attnlang import ir
from attnlang.binding import bind, check_values, param_types
from attnlang.checker import check_source
from attnlang.errors import AttnError


def decl(text):
    """The last declaration of ``text``, checked as file ``m.attn``."""
    return check_source(text, "m.attn").patterns[-1]


def bind_error(text, params, fill_defaults=False):
    with pytest.raises(AttnError) as info:
        bind(decl(text), params, fill_defaults=fill_defaults)
    return info.value


def where(exc):
    return exc.filename, exc.line, exc.column


def caret_column(exc):
    """The 1-based column the caret of the formatted error points at."""
    return str(exc).splitlines()[-1].index("^") - 4 + 1


# ---------------------------------------------------------------- fold


@pytest.mark.parametrize("op, message", [("mod", "'mod' by zero"), ("div", "division by zero")])
def test_zero_divisor_after_binding_is_a_positioned_error(op, message):
    """Kills fold 'mod by zero unchecked' (a ZeroDivisionError traceback) and 'zero message always
    division': a divisor that becomes 0 when the parameter is bound is reported at the
    arithmetic with the operator's own name (section 7: an error, never a traceback)."""
    text = f"pattern a(m) = stride(5 {op} m)"
    exc = bind_error(text, {"m": 0})
    assert exc.message == message
    assert where(exc) == ("m.attn", 1, 23)
    assert str(exc).splitlines()[1].strip() == text
    assert caret_column(exc) == 23


def test_folded_value_exactly_two_to_the_62_is_allowed():
    """Kills _limit '>' -> '>=': the limit is 2**62 inclusive, so 2**61 * 2 folds."""
    bound = bind(decl("pattern a(s) = stride(s * 2)"), {"s": 2 ** 61})
    assert bound.body == ir.Stride(ir.Int(2 ** 62))


def test_folded_value_below_minus_two_to_the_62_is_an_error():
    """Kills _limit 'abs(value) > MAX_INT' -> 'value > MAX_INT': a negative result beyond
    -2**62 is refused just like a positive one, at the arithmetic that makes it."""
    exc = bind_error("pattern a(s) = where(q < s * 4)", {"s": -2 ** 61})
    assert exc.message == "integer value -9223372036854775808 is too large (the limit is 2**62)"
    assert where(exc) == ("m.attn", 1, 26)
    # and -2**62 itself is fine
    bound = bind(decl("pattern a(s) = where(q < s * 2)"), {"s": -2 ** 61})
    assert str(bound) == "pattern a = where(q < -4611686018427387904)"


def test_abs_of_a_bound_negative_value_folds_to_its_magnitude():
    """Kills Func 'abs' -> identity: abs(-3) is 3 (section 4's abs)."""
    bound = bind(decl("pattern a(x) = where(k < abs(x))"), {"x": -3})
    assert str(bound) == "pattern a = where(k < 3)"


# ---------------------------------------------------------------- fold_constants


def test_folded_argument_keeps_the_position_of_its_expression():
    """Kills fold_constants 'drop the span of the literal': stride(s - 1) with s = 1 is reported
    at 's - 1' in the source, not at the start of the declaration."""
    exc = bind_error("pattern a(s) = stride(s - 1)", {"s": 1})
    assert exc.message == "stride must be at least 1, got 0"
    assert where(exc) == ("m.attn", 1, 23)
    assert caret_column(exc) == 23


def test_min_and_max_of_bound_values_fold_to_literals():
    """Kills fold_constants 'skip Func': arguments are fixed when bound, so min/max fold too."""
    bound = bind(decl("pattern a(s, t) = stride(min(s, 3)) | prefix(max(t, 5))"),
                 {"s": 2, "t": 9})
    assert bound.body == ir.Union(ir.Stride(ir.Int(2)), ir.Prefix(ir.Int(9)))
    assert str(bound) == "pattern a = stride(2) | prefix(9)"


# ---------------------------------------------------------------- parameter types


def test_unused_bare_parameter_is_an_integer():
    """Kills param_types 'unused bare parameter -> float': a bare parameter is a float only
    when it is used, and only as a density; an unused one takes integers only."""
    assert param_types(decl("pattern a(x) = all")) == {"x": "int"}
    exc = bind_error("pattern a(x) = all", {"x": 0.5})
    assert exc.message == "parameter 'x' of pattern 'a' must be an integer, got 0.5"
    assert where(exc) == ("m.attn", 1, 1)


def test_parameter_used_as_density_and_as_integer_is_an_integer():
    """Kills param_types 'any density use -> float': x in window(x) must be an integer
    (floats are allowed only where a density is), so x = 0.5 is refused."""
    text = "pattern a(x) = random(x) | window(x)"
    assert param_types(decl(text)) == {"x": "int"}
    exc = bind_error(text, {"x": 0.5})
    assert exc.message == "parameter 'x' of pattern 'a' must be an integer, got 0.5"


# ---------------------------------------------------------------- check_values reporting


def test_fold_error_at_a_node_without_position_uses_the_fallback():
    """Kills _Report.keeps_position 'line <= 0' -> '< 0': a fold error from a node with no
    span is reported at the fallback span (check_values' documented contract), not at no
    position at all."""
    source = ir.Source("f.attn", "pattern a = stride(1 div 0)\n")
    fallback = ir.Span(source, 1, 1, 1, 28)
    expr = ir.Stride(ir.BinOp("div", ir.Int(1), ir.Int(0)))
    with pytest.raises(AttnError) as info:
        check_values(expr, fallback=fallback)
    assert info.value.message == "division by zero"
    assert where(info.value) == ("f.attn", 1, 1)


def test_default_breaking_a_band_is_reported_at_the_band_that_ends_the_declaration():
    """Kills _inside 'end <' : the window ends where the declaration ends, and it is still inside
    the declaration, so the error points at the window, with no 'inside a pattern' note."""
    with pytest.raises(AttnError) as info:
        check_source("pattern a(b = -3) = window(b, 1)", "m.attn")
    assert info.value.message == ("window keeps nothing: back + ahead must be at least 0, got "
                                  "-3 + 1 = -2 (with the parameters' default values)")
    assert where(info.value) == ("m.attn", 1, 21)


def test_first_error_in_source_order_is_reported():
    """Kills Node.walk 'children not reversed' (a pre-order walk right to left): with two bad
    arguments, the one the user wrote first is reported."""
    with pytest.raises(AttnError) as info:
        check_source("pattern b = stride(0) | prefix(-1)", "m.attn")
    assert info.value.message == "stride must be at least 1, got 0"
    assert where(info.value) == ("m.attn", 1, 20)
    order = [type(n).__name__ for n in decl("pattern c = stride(1) | prefix(2)").body.walk()]
    assert order == ["Union", "Stride", "Int", "Prefix", "Int"]


# ---------------------------------------------------------------- bind: defaults and literals


def test_filled_default_is_reported_where_the_parameter_is_used():
    """Kills bind 'fill_defaults keeps the default's own node' (its span is the parameter list):
    a default that breaks a rule only together with a bound value is reported at its use."""
    exc = bind_error("pattern a(m, r = 5) = rows(every(m, r))", {"m": 3}, fill_defaults=True)
    assert exc.message == "every residue must satisfy 0 <= r < 3, got 5"
    assert where(exc) == ("m.attn", 1, 37)


def test_missing_required_parameter_when_filling_defaults():
    """Kills bind 'missing required parameter skipped': section 7 lists a missing required
    parameter among the errors; it is reported at the declaration."""
    exc = bind_error("pattern a(s) = stride(s)", {}, fill_defaults=True)
    assert exc.message == "pattern 'a' needs parameter 's'"
    assert where(exc) == ("m.attn", 1, 1)
    assert str(exc).splitlines()[1].strip() == "pattern a(s) = stride(s)"


def test_unknown_parameter_is_reported_at_the_declaration():
    """Kills bind 'unknown parameter error without span': the error points at the
    declaration's source line."""
    exc = bind_error("pattern a(s) = stride(s)", {"t": 1})
    assert exc.message == "pattern 'a' has no parameter 't' (its parameters: s)"
    assert where(exc) == ("m.attn", 1, 1)


def test_params_must_be_a_mapping():
    """Kills bind 'no Mapping check': a bad Python argument names itself, what was given and
    what is accepted."""
    with pytest.raises(ValueError) as info:
        bind(decl("pattern a(s) = stride(s)"), None)
    assert str(info.value) == "params: got None; expected a dict of parameter values"


def test_integer_parameter_limits_are_two_to_the_62_inclusive():
    """Kills _literal '>' -> '>=' and 'negative values unchecked'."""
    text = "pattern a(s) = window(s, 2)"
    assert bind(decl(text), {"s": 2 ** 62}).body.back == ir.Int(2 ** 62)
    assert bind(decl(text), {"s": -2}).body.back == ir.Int(-2)
    for value in (2 ** 62 + 1, -2 ** 62 - 1):
        exc = bind_error(text, {"s": value})
        assert exc.message == (f"parameter 's' of pattern 'a' is too large: {value} "
                               f"(the limit is 2**62)")
        assert where(exc) == ("m.attn", 1, 1)


@pytest.mark.parametrize("given, shown", [(True, "True (bool)"), (2.0, "2.0"), ("3", "'3' (str)")])
def test_integer_parameter_refuses_bools_floats_and_strings(given, shown):
    """Kills _literal 'bool accepted' and 'float accepted for an integer parameter': parameter
    types are float or int; only densities take floats, and True is not an integer here."""
    exc = bind_error("pattern a(s) = stride(s)", {"s": given})
    assert exc.message == f"parameter 's' of pattern 'a' must be an integer, got {shown}"
    assert where(exc) == ("m.attn", 1, 1)


@pytest.mark.parametrize("given, shown", [(float("nan"), "nan"), (float("inf"), "inf"),
                                          ("x", "'x' (str)")])
def test_density_parameter_refuses_non_numbers_with_what_it_accepts(given, shown):
    """Kills _literal 'non-finite floats accepted' and 'accepted always an integer': a density
    parameter takes a number in [0, 1], and says so."""
    exc = bind_error("pattern a(f) = random(f)", {"f": given})
    assert exc.message == f"parameter 'f' of pattern 'a' must be a number in [0, 1], got {shown}"
    assert where(exc) == ("m.attn", 1, 1)


def test_numpy_integers_are_integers():
    """Kills _literal 'numbers.Integral -> int': any integral number binds an integer."""
    np = pytest.importorskip("numpy")
    bound = bind(decl("pattern a(s) = stride(s)"), {"s": np.int64(3)})
    assert bound.body == ir.Stride(ir.Int(3))
    assert type(bound.body.s.value) is int


# ---------------------------------------------------------------- ir helpers


def test_source_line_numbers_are_one_based_and_include_the_last_line():
    """Kills Source.line '1 <=' -> '0 <=' and '<= len' -> '< len'."""
    source = ir.Source("s.attn", "first\nsecond")
    assert [source.line(n) for n in (0, 1, 2, 3)] == ["", "first", "second", ""]
    with pytest.raises(AttnError) as info:
        check_source("pattern a = causal\npattern b = stride(0)", "m.attn")
    assert str(info.value).splitlines()[1].strip() == "pattern b = stride(0)"


def test_span_without_source_is_named_string():
    """Kills Span.filename default: errors with no file read '<string>'."""
    assert ir.Span(None, 1, 1).filename == "<string>"


def test_rebuilt_returns_the_same_object_when_nothing_changes():
    """Kills Node.rebuilt 'tuple identity dropped' and 'always replace': the documented
    'the same object if every child comes back as itself'."""
    node = decl("pattern a = rows({1, 2}) | stride(min(3, 4)) | causal").body
    assert node.rebuilt(lambda child: child) is node
    listed = node.left.left.set
    assert listed.rebuilt(lambda child: child) is listed


def test_const_reads_floats_and_ints():
    """Kills ir.const 'Float refused': a bound density is a constant."""
    assert ir.const(ir.Float(0.25)) == 0.25
    assert ir.const(ir.Int(-3)) == -3
    with pytest.raises(TypeError):
        ir.const(ir.Param("x"))


def test_kind_predicates():
    """Kills is_pattern 'no combinators' and is_index_set 'no SetUnion'."""
    body = decl("pattern a = ~causal - rows(0..1 | every(2)) & all").body
    assert ir.is_pattern(body)
    assert all(ir.is_pattern(n) for n in (body.left, body.left.left, body.right))
    union = body.left.right.set
    assert isinstance(union, ir.SetUnion) and ir.is_index_set(union)
    assert not ir.is_index_set(body) and not ir.is_pattern(union)
    assert ir.is_bool(decl("pattern w = where(not q < k)").body.pred)


# ---------------------------------------------------------------- disagreements with LANGUAGE.md


@pytest.mark.parametrize("sep", ["\f", "\x85", "\u2028", "\r"])
def test_error_echoes_the_offending_line_after_a_form_feed_in_a_comment(sep):
    """The echoed source line is the lexer's line, which only ``\\n`` ends: ``Source.line``
    split with ``str.splitlines`` (which breaks at ``\\f``, ``\\x85``, ``\\u2028``, a lone ``\\r``
    ...) until round 65 and echoed ``two`` here, the caret under it (LANGUAGE.md section 7)."""
    text = f"# one{sep}two\npattern b = stride(0)\n"
    with pytest.raises(AttnError) as info:
        check_source(text, "m.attn")
    assert where(info.value) == ("m.attn", 2, 20)
    assert str(info.value).splitlines()[1].strip() == "pattern b = stride(0)"


def test_division_by_zero_in_an_unused_argument_is_an_error():
    """An argument for a parameter the pattern never uses is checked as any constant is: ``1 div
    0`` is an error here as anywhere else (it was accepted until round 65: only substituted
    arguments were folded)."""
    with pytest.raises(AttnError) as info:
        check_source("pattern a(x = 1) = causal\npattern b = a(x = 1 div 0)", "m.attn")
    assert info.value.message == "division by zero"
    assert where(info.value) == ("m.attn", 2, 19)


# ---------------------------------------------------------------- every residues


def test_negative_residue_range_bound_is_an_error():
    """Kills _check_every 'range: negative bound accepted': residues of 'i mod s' (the
    non-negative remainder, section 3) lie in 0..s, so a residue range may not start below 0,
    whether the modulus is known or still a parameter."""
    exc = bind_error("pattern a(v) = rows(every(4, v..3))", {"v": -1})
    assert exc.message == "every residue range must lie within 0..4, got -1"
    assert where(exc) == ("m.attn", 1, 30)
    with pytest.raises(AttnError) as info:
        check_source("pattern a(m) = rows(every(m, -1..2))", "m.attn")
    assert info.value.message == ("every residue range must lie within 0.. (residues are never "
                                  "negative), got -1")
    assert where(info.value) == ("m.attn", 1, 30)


def test_residue_range_with_both_bounds_bad_reports_the_lower_one():
    """Kills _check_every 'bad[0]' -> 'bad[-1]': the first bound written is the one reported."""
    exc = bind_error("pattern a(v, w) = rows(every(4, v..w))", {"v": -1, "w": 9})
    assert exc.message == "every residue range must lie within 0..4, got -1"
    assert where(exc) == ("m.attn", 1, 33)
