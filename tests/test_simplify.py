"""``simplify`` never changes a mask, folds every constant, and applies its rules."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang import ir
from attnlang.reference import mask
from attnlang.simplify import simplify
from strategies import bound_patterns, lengths, num_heads, segments_for

I = ir.Int


@st.composite
def worlds(draw, max_len=48):
    q_len, k_len = draw(lengths(max_len))
    return q_len, k_len, draw(num_heads(3)), draw(segments_for(q_len, k_len))


def _m(expr, world):
    q_len, k_len, heads, segments = world
    return mask(expr, q_len, k_len, num_heads=heads, segments=segments)


def _args_are_literals(expr):
    """Every argument of every primitive (and index set) is a literal after simplify."""
    for node in expr.walk():
        if isinstance(node, ir.Where):
            continue  # where keeps its variables; constant parts are checked below
        if isinstance(node, ir.Neg) and isinstance(node.operand, (ir.Int, ir.Float)):
            return False
        if isinstance(node, (ir.BinOp, ir.Func, ir.Neg)):
            if all(isinstance(c, (ir.Int, ir.Float)) for c in node.children()):
                return False
            if not any(isinstance(n, ir.Var) for n in node.walk()):
                return False
    return True


@settings(deadline=None)
@given(bound_patterns(), worlds())
def test_simplify_preserves_the_mask(expr, world):
    assert torch.equal(_m(simplify(expr), world), _m(expr, world)), str(expr)


@settings(deadline=None)
@given(bound_patterns(max_leaves=6, arith=True), worlds(32))
def test_simplify_folds_constant_arguments(expr, world):
    out = simplify(expr)
    assert _args_are_literals(out), str(out)
    assert torch.equal(_m(out, world), _m(expr, world))


@settings(deadline=None)
@given(bound_patterns(max_leaves=6))
def test_simplify_is_idempotent(expr):
    once = simplify(expr)
    assert simplify(once) == once, (str(expr), str(once))


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(-6, 10), st.integers(0, 12)), min_size=1, max_size=5),
       st.booleans(), st.booleans(), worlds(40))
def test_window_bands_merge_exactly(bands, with_causal, as_union, world):
    windows = [ir.Window(I(back), I(width - back)) for back, width in bands]
    parts = windows + ([ir.Causal()] if with_causal else [])
    expr = parts[0]
    for part in parts[1:]:
        expr = ir.Union(expr, part) if as_union else ir.Intersect(part, expr)
    out = simplify(expr)
    assert torch.equal(_m(out, world), _m(expr, world)), (str(expr), str(out))
    if not as_union:  # an intersection of bands is one band (or nothing)
        assert isinstance(out, (ir.Window, ir.Nothing, ir.Causal)), str(out)


@pytest.mark.parametrize("source, expected", [
    (ir.Union(ir.Causal(), ir.Nothing()), ir.Causal()),
    (ir.Intersect(ir.All(), ir.Stride(I(3))), ir.Stride(I(3))),
    (ir.Complement(ir.Complement(ir.Segment())), ir.Segment()),
    (ir.Difference(ir.Causal(), ir.Nothing()), ir.Causal()),
    (ir.Intersect(ir.Segment(), ir.Nothing()), ir.Nothing()),
    (ir.Union(ir.Prefix(I(3)), ir.All()), ir.All()),
    (ir.Union(ir.Stride(I(4)), ir.Stride(I(4))), ir.Stride(I(4))),
    (ir.Intersect(ir.Segment(), ir.Segment()), ir.Segment()),
    (ir.Intersect(ir.Causal(), ir.Window(I(8), I(8))), ir.Window(I(8), I(0))),
    (ir.Intersect(ir.Window(I(8), I(-2)), ir.Causal()), ir.Window(I(8), I(-2))),
    (ir.Intersect(ir.Causal(), ir.Window(I(-1), I(5))), ir.Nothing()),
    (ir.Window(I(-3), I(2)), ir.Nothing()),
    (ir.Stride(I(1)), ir.All()),
    (ir.Random(ir.Float(0.0), I(64), I(0)), ir.Nothing()),
    (ir.Random(ir.Float(1.0), I(16), I(3)), ir.All()),
    (ir.Random(ir.Float(0.5), I(16), I(3)), ir.Random(ir.Float(0.5), I(16), I(3))),
    (ir.Chunk(I(4), I(-2), I(1)), ir.Nothing()),
    (ir.Prefix(I(0)), ir.Nothing()),
    (ir.Difference(ir.Causal(), ir.Causal()), ir.Nothing()),
    (ir.Union(ir.Causal(), ir.Complement(ir.Causal())), ir.All()),
    (ir.Union(ir.Window(I(3), I(0)), ir.Window(I(9), I(-4))), ir.Window(I(9), I(0))),
    (ir.Union(ir.Window(I(3), I(0)), ir.Window(I(9), I(-5))),
     ir.Union(ir.Window(I(3), I(0)), ir.Window(I(9), I(-5)))),
    (ir.Union(ir.Causal(), ir.Window(I(9), I(-5))), ir.Causal()),
    (ir.Stride(ir.BinOp("+", I(2), ir.BinOp("*", I(3), I(2)))), ir.Stride(I(8))),
    (ir.Window(ir.Neg(I(-4)), ir.BinOp("div", I(-7), I(2))), ir.Window(I(4), I(-4))),
    (ir.Cols(ir.Range(ir.Func("max", (I(2), I(5))), ir.BinOp("mod", I(-7), I(3)))),
     ir.Cols(ir.Range(I(5), I(2)))),
    (ir.Where(ir.Compare("<", I(1), I(2))), ir.All()),
    (ir.Where(ir.BoolOp("and", ir.Compare("<", I(2), I(1)), ir.Compare("==", ir.Var("q"), I(0)))),
     ir.Nothing()),
    (ir.Where(ir.BoolOp("or", ir.Compare("<", I(2), I(1)), ir.Compare("==", ir.Var("q"),
                                                                      ir.BinOp("+", I(1), I(1))))),
     ir.Where(ir.Compare("==", ir.Var("q"), I(2)))),
    (ir.Where(ir.BoolNot(ir.Compare("==", ir.Var("q"), I(0)))),
     ir.Where(ir.BoolNot(ir.Compare("==", ir.Var("q"), I(0))))),
])
def test_rules(source, expected):
    assert simplify(source) == expected


def test_parameters_are_left_alone_but_constants_around_them_fold():
    w = ir.Param("w")
    expr = ir.Intersect(ir.Causal(), ir.Window(ir.BinOp("+", w, ir.BinOp("*", I(2), I(3))), w))
    assert simplify(expr) == ir.Intersect(ir.Causal(), ir.Window(ir.BinOp("+", w, I(6)), w))
    decl = ir.PatternDecl("p", (ir.ParamDecl("w", I(4)),), expr)
    assert simplify(decl).body == simplify(expr)


def test_deep_patterns_do_not_recurse():
    expr = ir.Causal()
    for i in range(3000):
        expr = ir.Union(expr, ir.Cols(ir.Listed((I(i % 70),))))
    out = simplify(expr)
    # duplicates are gone: causal and one cols(...) per distinct position
    assert sum(isinstance(n, ir.Cols) for n in out.walk()) == 70
    assert torch.equal(mask(out, 5, 80), mask(ir.Union(ir.Causal(), ir.Cols(ir.Range(I(0), I(70)))),
                                                5, 80))
    deep = ir.Stride(I(3))
    for _ in range(2000):
        deep = ir.Complement(deep)
    assert simplify(deep) == ir.Stride(I(3))
