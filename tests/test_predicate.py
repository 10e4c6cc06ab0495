"""predicate.evaluate against the dense reference (the oracle), plus its edge cases."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang import ir, reference
from attnlang.predicate import evaluate, hash32, in_set, random_keep
from strategies import bound_patterns, lengths, mix32_int, num_heads, segment_ids

I = ir.Int


def full_grid(expr, q_len, k_len, heads, seg_q=None, seg_k=None):
    return evaluate(expr, torch.arange(q_len).view(-1, 1), torch.arange(k_len).view(1, -1),
                    q_len=q_len, k_len=k_len, heads=torch.arange(heads).view(-1, 1, 1),
                    num_heads=heads, seg_q=seg_q, seg_k=seg_k)


@settings(deadline=None)
@given(bound_patterns(), lengths(40), num_heads(3), st.data())
def test_matches_reference_mask(expr, lens, heads, data):
    q_len, k_len = lens
    seg_q = data.draw(segment_ids(q_len))
    seg_k = data.draw(segment_ids(k_len))
    expected = reference.mask(expr, q_len, k_len, num_heads=heads, segments=(seg_q, seg_k))
    got = full_grid(expr, q_len, k_len, heads, seg_q, seg_k)
    assert got.dtype == torch.bool
    assert torch.equal(got.expand_as(expected), expected)


@settings(deadline=None)
@given(bound_patterns(allow_segment=False), lengths(40), st.data())
def test_scattered_positions_match_reference(expr, lens, data):
    """Arbitrary (gathered, unsorted) position lists, as the blocked backend passes them."""
    q_len, k_len = lens
    qs = data.draw(st.lists(st.integers(0, q_len - 1), min_size=1, max_size=7))
    ks = data.draw(st.lists(st.integers(0, k_len - 1), min_size=1, max_size=7))
    dense = reference.mask(expr, q_len, k_len)[0]
    got = evaluate(expr, torch.tensor(qs).view(-1, 1), torch.tensor(ks).view(1, -1),
                   q_len=q_len, k_len=k_len)
    assert torch.equal(got, dense[torch.tensor(qs)][:, torch.tensor(ks)])


def test_random_hash_matches_reference_and_language_md():
    i = torch.arange(-5, 40).view(-1, 1)
    j = torch.arange(0, 30).view(1, -1)
    assert torch.equal(random_keep(7, i, j, 0.3), reference.random_keep(7, i, j, 0.3))

    mix = mix32_int  # LANGUAGE.md section 5, written out in plain integers

    for seed, a, b in [(0, 0, 0), (2 ** 32 - 1, -1, 5), (123456789, 77, -3)]:
        expected = mix((mix((mix(seed) + (a & 0xFFFFFFFF)) & 0xFFFFFFFF) + (b & 0xFFFFFFFF))
                       & 0xFFFFFFFF)
        assert int(hash32(seed, torch.tensor(a), torch.tensor(b))) == expected


def test_where_division_by_zero_follows_reference_convention():
    # x div 0 = 0 and x mod 0 = x (reference.py): k div (q - q) == 0 everywhere.
    q, k = ir.Var("q"), ir.Var("k")
    zero = ir.BinOp("-", q, q)
    expr = ir.Where(ir.BoolOp("and", ir.Compare("==", ir.BinOp("div", k, zero), I(0)),
                              ir.Compare("==", ir.BinOp("mod", k, zero), k)))
    assert bool(full_grid(expr, 5, 6, 1).all())


def test_floor_division_of_negative_distances():
    # q = 0 of Lq = Lk = 10: p = 0, d = -k.  d div 3 == -1 <=> -3 <= d <= -1 <=> k in {1, 2, 3}
    # (division rounding towards zero would give {3, 4, 5}).
    d = ir.Var("d")
    expr = ir.Where(ir.Compare("==", ir.BinOp("div", d, I(3)), I(-1)))
    keep = full_grid(expr, 10, 10, 1)[0, 0]
    assert keep.nonzero().flatten().tolist() == [1, 2, 3]
    stride = full_grid(ir.Stride(I(4)), 10, 10, 1)[0, 0]  # d mod 4 == 0 with d = -k
    assert stride.nonzero().flatten().tolist() == [0, 4, 8]


def test_missing_segments_names_the_argument():
    with pytest.raises(ValueError, match="segments"):
        full_grid(ir.Segment(), 3, 3, 1)


def test_heads_sets_count_from_the_end():
    s = ir.Range(I(-2), None)  # the last two heads
    keep = in_set(s, torch.arange(5), 5)
    assert keep.tolist() == [False, False, False, True, True]
