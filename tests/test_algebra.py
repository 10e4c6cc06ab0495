"""Set-algebra laws on reference masks: the combinators mean what LANGUAGE.md says."""
from __future__ import annotations

import torch
from hypothesis import given, settings, strategies as st

from attnlang import ir
from attnlang.reference import mask
from strategies import bound_patterns, lengths, num_heads, segments_for

small_patterns = bound_patterns(max_leaves=4)


@st.composite
def worlds(draw):
    """A (q_len, k_len, heads, segments) to evaluate masks in."""
    q_len, k_len = draw(lengths(48))
    return q_len, k_len, draw(num_heads(3)), draw(segments_for(q_len, k_len))


def _m(expr, world):
    q_len, k_len, heads, segments = world
    return mask(expr, q_len, k_len, num_heads=heads, segments=segments)


def _same(a, b, world):
    assert torch.equal(_m(a, world), _m(b, world)), (str(a), str(b))


@settings(deadline=None)
@given(small_patterns, small_patterns, worlds())
def test_de_morgan(a, b, world):
    _same(ir.Complement(ir.Union(a, b)), ir.Intersect(ir.Complement(a), ir.Complement(b)), world)
    _same(ir.Complement(ir.Intersect(a, b)), ir.Union(ir.Complement(a), ir.Complement(b)), world)


@settings(deadline=None)
@given(small_patterns, small_patterns, small_patterns, worlds())
def test_distributivity_both_ways(a, b, c, world):
    _same(ir.Intersect(a, ir.Union(b, c)), ir.Union(ir.Intersect(a, b), ir.Intersect(a, c)), world)
    _same(ir.Union(a, ir.Intersect(b, c)), ir.Intersect(ir.Union(a, b), ir.Union(a, c)), world)


@settings(deadline=None)
@given(small_patterns, small_patterns, worlds())
def test_difference_is_intersection_with_complement(a, b, world):
    _same(ir.Difference(a, b), ir.Intersect(a, ir.Complement(b)), world)
    assert not (_m(ir.Difference(a, b), world) & _m(b, world)).any()


@settings(deadline=None)
@given(small_patterns, worlds())
def test_idempotence_and_involution(a, world):
    _same(ir.Union(a, a), a, world)
    _same(ir.Intersect(a, a), a, world)
    _same(ir.Complement(ir.Complement(a)), a, world)
    assert torch.equal(_m(ir.Complement(a), world), ~_m(a, world))


@settings(deadline=None)
@given(small_patterns, small_patterns, small_patterns, worlds())
def test_commutativity_and_associativity(a, b, c, world):
    _same(ir.Union(a, b), ir.Union(b, a), world)
    _same(ir.Intersect(a, b), ir.Intersect(b, a), world)
    _same(ir.Union(ir.Union(a, b), c), ir.Union(a, ir.Union(b, c)), world)
    _same(ir.Intersect(ir.Intersect(a, b), c), ir.Intersect(a, ir.Intersect(b, c)), world)


@settings(deadline=None)
@given(small_patterns, worlds())
def test_units_and_absorbers(a, world):
    _same(ir.Union(a, ir.Nothing()), a, world)
    _same(ir.Intersect(a, ir.All()), a, world)
    _same(ir.Union(a, ir.All()), ir.All(), world)
    _same(ir.Intersect(a, ir.Nothing()), ir.Nothing(), world)
    _same(ir.Union(a, ir.Complement(a)), ir.All(), world)


@settings(deadline=None)
@given(worlds(), st.integers(0, 5), st.integers(1, 6))
def test_documented_identities(world, m, s):
    # global(S) = rows(S) | cols(S); prefix-LM; OpenAI `local` is a causal band
    S = ir.Range(ir.Int(m), ir.Int(m + s))
    _same(ir.Global(S), ir.Union(ir.Rows(S), ir.Cols(S)), world)
    _same(ir.Intersect(ir.Causal(), ir.Window(ir.Int(s), ir.Int(s))),
          ir.Window(ir.Int(s), ir.Int(0)), world)
    _same(ir.Chunk(ir.Int(1), ir.Int(s), ir.Int(m)), ir.Window(ir.Int(s), ir.Int(m)), world)
    _same(ir.Cols(ir.Every(ir.Int(s), ir.Range(ir.Int(0), ir.Int(s)))), ir.All(), world)
