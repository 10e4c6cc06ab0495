"""binding.bind: substitution, folding, value checks, and its errors."""
import pytest

from attnlang import ir
from attnlang.binding import bind, fold, fold_constants, param_types, substitute
from attnlang.checker import check_source
from attnlang.errors import AttnError

I, P = ir.Int, ir.Param

SOURCE = """\
pattern lf(w = 256, g = 16) = window(w) | global(0..g)
pattern sparse(s = 128) = causal & (window(s - 1, 0) | stride(s))
pattern need(w) = window(w, -w + 2 * w)
pattern rnd(dens, b = 64) = random(dens, block = b)
pattern mixed(x, f = 0.5) = window(x) | random(f)
pattern wh(m = 3) = where((q + k) mod m == 0)
pattern st(s) = stride(s)
"""


def decl(name):
    return {d.name: d for d in check_source(SOURCE, "b.attn").patterns}[name]


def test_bind_substitutes_and_folds():
    bound = bind(decl("sparse"), {"s": 64})
    assert bound.params == ()
    assert bound.body == ir.Intersect(ir.Causal(), ir.Union(ir.Window(I(63), I(0)),
                                                           ir.Stride(I(64))))
    assert str(bound) == "pattern sparse = causal & (window(63, 0) | stride(64))"


def test_bind_keeps_unbound_parameters_unless_filling_defaults():
    partial = bind(decl("lf"), {"w": 8})
    assert [p.name for p in partial.params] == ["g"]
    assert partial.body == ir.Union(ir.Window(I(8), I(8)), ir.Global(ir.Range(I(0), P("g"))))
    full = bind(decl("lf"), {"w": 8}, fill_defaults=True)
    assert full.params == ()
    assert full.body == ir.Union(ir.Window(I(8), I(8)), ir.Global(ir.Range(I(0), I(16))))
    assert bind(decl("lf"), {}, fill_defaults=True).body.left == ir.Window(I(256), I(256))


def test_bind_folds_where_arithmetic_and_keeps_variables():
    body = bind(decl("wh"), {}, fill_defaults=True).body
    assert body == ir.Where(ir.Compare("==", ir.BinOp("mod", ir.BinOp("+", ir.Var("q"),
                                                                       ir.Var("k")), I(3)), I(0)))


def test_bind_exact_integer_arithmetic():
    assert bind(decl("need"), {"w": 5}).body == ir.Window(I(5), I(5))


def test_unknown_parameter_names_the_known_ones():
    with pytest.raises(AttnError) as info:
        bind(decl("lf"), {"width": 3})
    assert "pattern 'lf' has no parameter 'width' (its parameters: w, g)" in info.value.message
    assert (info.value.filename, info.value.line, info.value.column) == ("b.attn", 1, 1)
    with pytest.raises(AttnError, match="it has no parameters"):
        bind(check_source("pattern c = causal").patterns[0], {"x": 1})


def test_missing_required_parameter():
    with pytest.raises(AttnError) as info:
        bind(decl("need"), {}, fill_defaults=True)
    assert info.value.message == "pattern 'need' needs parameter 'w'"
    assert info.value.line == 3
    assert bind(decl("need"), {}).params[0].name == "w"  # not filling: fine


@pytest.mark.parametrize("value", [True, "8", None, [8], 2.5, float("nan")])
def test_ill_typed_integer_values(value):
    with pytest.raises(AttnError, match="parameter 'w' of pattern 'lf' must be"):
        bind(decl("lf"), {"w": value})


def test_huge_integer_value():
    with pytest.raises(AttnError, match="too large"):
        bind(decl("lf"), {"w": 2 ** 70})


def test_float_parameters():
    assert param_types(decl("rnd")) == {"dens": "float", "b": "int"}
    assert param_types(decl("mixed")) == {"x": "int", "f": "float"}
    assert bind(decl("rnd"), {"dens": 0.25}).body.density == ir.Float(0.25)
    assert bind(decl("rnd"), {"dens": 1}).body.density == I(1)  # an int for a float is fine
    assert bind(decl("mixed"), {"f": 0}).body.right.density == I(0)
    with pytest.raises(AttnError, match="must be an integer, got 0.5"):
        bind(decl("mixed"), {"x": 0.5})
    with pytest.raises(AttnError, match="must be a number in \\[0, 1\\]"):
        bind(decl("rnd"), {"dens": float("inf")})


@pytest.mark.parametrize("name,params,message,column", [
    ("sparse", {"s": 0}, "window keeps nothing: back + ahead must be at least 0, got -1 + 0", 37),
    ("st", {"s": 0}, "stride must be at least 1, got 0", 24),
    ("lf", {"w": -1}, "window keeps nothing: back + ahead must be at least 0", 31),
    ("rnd", {"dens": 1.5}, "density must be in [0, 1], got 1.5", 36),
    ("rnd", {"dens": 0.5, "b": 0}, "random block size must be at least 1, got 0", 50),
])
def test_value_rules_point_at_the_use(name, params, message, column):
    with pytest.raises(AttnError) as info:
        bind(decl(name), params)
    assert message in info.value.message
    assert info.value.column == column, info.value.format()


def test_division_by_zero_when_folding():
    d = check_source("pattern a(n = 1) = window(8 div n)").patterns[0]
    with pytest.raises(AttnError) as info:
        bind(d, {"n": 0})
    assert info.value.message == "division by zero"
    assert info.value.column == 27


def test_bound_pattern_round_trips():
    for name in ("lf", "sparse", "rnd", "wh"):
        values = {"dens": 0.125} if name == "rnd" else {}
        bound = bind(decl(name), values, fill_defaults=True)
        again = check_source(str(bound)).patterns[0]
        assert again == bound


def test_params_must_be_a_mapping():
    with pytest.raises(ValueError, match="params"):
        bind(decl("lf"), [("w", 1)])


def test_helpers():
    assert fold(ir.BinOp("mod", I(-7), I(3))) == 2
    assert fold(ir.BinOp("div", I(-7), I(2))) == -4
    assert fold(ir.Func("max", (I(2), ir.Neg(I(5))))) == 2
    assert fold(ir.BinOp("+", P("a"), I(1))) is None
    assert fold(ir.BinOp("+", P("a"), I(1)), {"a": 4}) == 5
    assert fold(ir.Var("q")) is None
    with pytest.raises(AttnError, match="too large"):
        fold(ir.BinOp("*", I(2 ** 40), I(2 ** 40)))
    assert fold_constants(ir.Window(ir.BinOp("*", I(2), I(3)), P("w"))) == ir.Window(I(6), P("w"))
    node = ir.Stride(P("s", span=None))
    assert substitute(node, {"s": I(3)}) == ir.Stride(I(3))
    assert substitute(node, {"t": I(3)}) is node
