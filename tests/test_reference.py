"""The dense reference against the language tables, an independent hash and naive attention."""
from __future__ import annotations

import math
import random as pyrandom

import pytest
import torch
from hypothesis import given, settings, strategies as st

from attnlang import ir
from attnlang.reference import attention, keeps, mask, mix32, random_hash, random_keep
from strategies import (PRIMITIVE_KINDS, bound_patterns, lengths, num_heads, primitives,
                        segments_for)
from budget import scaled

I = ir.Int


def _seg_pair(segments, q_len, k_len):
    if segments is None:
        return None, None
    if isinstance(segments, tuple):
        return segments
    return segments, segments


def assert_matches_keeps(expr, q_len, k_len, heads, segments, sample_seed=0, max_checks=700):
    """``mask`` agrees with the per-element ``keeps`` everywhere (or on a seeded sample)."""
    m = mask(expr, q_len, k_len, num_heads=heads, segments=segments)
    assert m.shape == (heads, q_len, k_len) and m.dtype == torch.bool
    seg_q, seg_k = _seg_pair(segments, q_len, k_len)
    cells = [(h, q, k) for h in range(heads) for q in range(q_len) for k in range(k_len)]
    if len(cells) > max_checks:
        rng = pyrandom.Random(sample_seed)
        corners = [(h, q, k) for h in (0, heads - 1) for q in (0, q_len - 1) for k in (0, k_len - 1)]
        cells = corners + rng.sample(cells, max_checks)
    for h, q, k in cells:
        expected = keeps(expr, q, k, q_len, k_len, h=h, num_heads=heads, seg_q=seg_q, seg_k=seg_k)
        assert bool(m[h, q, k]) == expected, (str(expr), h, q, k)


@pytest.mark.parametrize("kind", PRIMITIVE_KINDS)
@settings(deadline=None, max_examples=scaled(15))
@given(data=st.data())
def test_each_primitive_matches_the_table(kind, data):
    expr = data.draw(primitives(kind))
    q_len, k_len = data.draw(lengths())
    heads = data.draw(num_heads())
    segments = data.draw(segments_for(q_len, k_len))
    assert_matches_keeps(expr, q_len, k_len, heads, segments, data.draw(st.integers(0, 99)))


@settings(deadline=None)
@given(data=st.data())
def test_random_patterns_match_keeps(data):
    expr = data.draw(bound_patterns())
    q_len, k_len = data.draw(lengths(40))
    heads = data.draw(num_heads(3))
    segments = data.draw(segments_for(q_len, k_len))
    assert_matches_keeps(expr, q_len, k_len, heads, segments, data.draw(st.integers(0, 99)),
                         max_checks=400)


# ---------------------------------------------------------------- hand-checked masks


def _rows(m):
    return [[int(x) for x in row] for row in m[0]]


def test_window_two_is_five_keys_centred_on_self():
    m = mask(ir.Window(I(2), I(2)), 9)
    assert [int(r.sum()) for r in m[0]] == [3, 4, 5, 5, 5, 5, 5, 4, 3]
    assert bool(m[0, 4, 2]) and bool(m[0, 4, 6]) and not bool(m[0, 4, 7])


def test_bottom_right_alignment_with_kv_cache():
    # 2 new queries over 5 keys: the last query sits at the last key (p = q + 3).
    assert _rows(mask(ir.Causal(), 2, 5)) == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # more queries than keys: the first rows have p < 0 and see nothing causally.
    assert _rows(mask(ir.Causal(), 4, 2)) == [[0, 0], [0, 0], [1, 0], [1, 1]]


def test_negative_window_bound_keeps_only_future_keys():
    m = mask(ir.Window(I(-1), I(3)), 6)
    assert [k for k in range(6) if m[0, 1, k]] == [2, 3, 4]


def test_stride_uses_mathematical_mod_for_future_keys():
    m = mask(ir.Stride(I(3)), 7)
    assert [k for k in range(7) if m[0, 1, k]] == [1, 4]


def test_chunk_and_local_attention_buckets():
    m = mask(ir.Chunk(I(3), I(0), I(0)), 7)
    assert [k for k in range(7) if m[0, 4, k]] == [3, 4, 5]
    m = mask(ir.Intersect(ir.Chunk(I(3), I(1), I(0)), ir.Causal()), 7)
    assert [k for k in range(7) if m[0, 4, k]] == [0, 1, 2, 3, 4]


def test_index_sets_count_negative_positions_from_the_end():
    last_three = mask(ir.Cols(ir.Range(I(-3), None)), 2, 10)
    assert [k for k in range(10) if last_three[0, 0, k]] == [7, 8, 9]
    mid = mask(ir.Cols(ir.Range(I(-4), I(-1))), 1, 10)
    assert [k for k in range(10) if mid[0, 0, k]] == [6, 7, 8]
    listed = mask(ir.Cols(ir.Listed((I(1), I(-1)))), 1, 10)
    assert [k for k in range(10) if listed[0, 0, k]] == [1, 9]
    upto = mask(ir.Cols(ir.Range(None, I(2))), 1, 10)
    assert [k for k in range(10) if upto[0, 0, k]] == [0, 1]


def test_every_with_residue_range():
    m = mask(ir.Cols(ir.Every(I(4), ir.Range(I(1), I(3)))), 1, 12)
    assert [k for k in range(12) if m[0, 0, k]] == [1, 2, 5, 6, 9, 10]
    m = mask(ir.Cols(ir.Every(I(4), I(3))), 1, 12)
    assert [k for k in range(12) if m[0, 0, k]] == [3, 7, 11]


def test_global_rows_prefix():
    g = mask(ir.Global(ir.Range(I(0), I(2))), 5)
    assert _rows(g)[0] == [1] * 5 and _rows(g)[3] == [1, 1, 0, 0, 0]
    pre = mask(ir.Union(ir.Causal(), ir.Prefix(I(3))), 5)
    assert _rows(pre)[0] == [1, 1, 1, 0, 0] and _rows(pre)[4] == [1] * 5


def test_heads_count_negative_members_from_the_head_count():
    m = mask(ir.Heads(ir.Listed((I(0), I(-1)))), 2, 3, num_heads=4)
    assert [bool(m[h].all()) for h in range(4)] == [True, False, False, True]
    assert not m[1].any()


def test_segment_self_and_cross():
    seg = torch.tensor([0, 0, 1, 1, 1])
    m = mask(ir.Intersect(ir.Causal(), ir.Segment()), 5, segments=seg)
    assert _rows(m)[3] == [0, 0, 1, 1, 0]
    cross = mask(ir.Segment(), 2, 3, segments=(torch.tensor([5, 7]), torch.tensor([7, 5, 7])))
    assert _rows(cross) == [[0, 1, 0], [1, 0, 1]]


def test_where_checkerboard_and_variables():
    checker = ir.Where(ir.Compare("==", ir.BinOp("mod", ir.BinOp("+", ir.Var("q"), ir.Var("k")),
                                                 I(2)), I(0)))
    m = mask(checker, 4, 6)
    assert all(bool(m[0, q, k]) == ((q + k) % 2 == 0) for q in range(4) for k in range(6))
    lens = ir.Where(ir.BoolOp("and", ir.Compare("==", ir.Var("Lq"), I(3)),
                              ir.Compare("==", ir.Var("Lk"), I(5))))
    assert mask(lens, 3, 5).all() and not mask(lens, 3, 6).any()
    heads = ir.Where(ir.Compare(">", ir.Var("h"), I(0)))
    m = mask(heads, 2, 2, num_heads=3)
    assert not m[0].any() and m[1:].all()


def test_where_division_by_zero_convention():
    # x div 0 = 0 and x mod 0 = x (documented in reference.py), identical in mask and keeps
    div0 = ir.Where(ir.Compare("==", ir.BinOp("div", ir.Var("q"), ir.BinOp("-", ir.Var("k"),
                                                                          I(2))), I(0)))
    mod0 = ir.Where(ir.Compare("==", ir.BinOp("mod", ir.Var("q"), ir.BinOp("-", ir.Var("k"),
                                                                          I(2))), ir.Var("q")))
    for expr in (div0, mod0):
        m = mask(expr, 6)
        assert m[0, :, 2].all()
        for q in range(6):
            for k in range(6):
                assert bool(m[0, q, k]) == keeps(expr, q, k, 6, 6)
    assert not bool(mask(div0, 6)[0, 5, 3])  # 5 div 1 = 5


def test_where_floor_division_on_negative_values():
    expr = ir.Where(ir.Compare("==", ir.BinOp("div", ir.Var("d"), I(3)), I(-1)))
    m = mask(expr, 1, 6)  # p = 5; d = 5 - k in [0, 5]: no negative d here
    assert not m.any()
    m = mask(expr, 6, 6)  # d in [-3, -1] -> div 3 == -1
    assert [k for k in range(6) if m[0, 0, k]] == [1, 2, 3]


def test_where_overflow_is_refused():
    big = ir.Where(ir.Compare(">", ir.BinOp("*", ir.BinOp("*", ir.Var("q"), I(2 ** 40)),
                                            I(2 ** 40)), I(0)))
    with pytest.raises(ValueError, match="63 bits"):
        mask(big, 4)


def test_deep_patterns_are_fine():
    expr, expected = ir.Causal(), mask(ir.Causal(), 8, 60)
    for i in range(3000):  # 3000 nested levels: the evaluator must not recurse
        if i % 2:
            col = ir.Cols(ir.Listed((I(i % 50),)))
            expr, expected = ir.Union(expr, col), expected | mask(col, 8, 60)
        else:
            expr, expected = ir.Complement(expr), ~expected
    assert torch.equal(mask(expr, 8, 60), expected)


def test_shared_subtrees_are_evaluated_correctly():
    w = I(2)
    m = mask(ir.Window(w, w), 5)  # back and ahead are the same object
    assert [int(r.sum()) for r in m[0]] == [3, 4, 5, 4, 3]


# ---------------------------------------------------------------- argument errors


def test_unbound_parameter_is_a_type_error():
    with pytest.raises(TypeError, match="'w' is not bound"):
        mask(ir.Window(ir.Param("w"), I(0)), 4)


@pytest.mark.parametrize("kwargs, name", [
    (dict(q_len=0), "q_len"), (dict(q_len=4, k_len=-1), "k_len"),
    (dict(q_len=4, num_heads=0), "num_heads"), (dict(q_len=2.5), "q_len"),
    (dict(q_len=True), "q_len"),
])
def test_bad_sizes_are_named(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: got .*; expected an integer >= 1"):
        mask(ir.Causal(), **kwargs)


def test_segment_without_segments_names_the_argument():
    with pytest.raises(ValueError, match="segments"):
        mask(ir.Segment(), 4)
    with pytest.raises(ValueError, match="segments.*pair"):
        mask(ir.Segment(), 3, 4, segments=torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="length 4"):
        mask(ir.Segment(), 4, segments=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^segments: got 'abc'; expected a 1-D integer tensor"):
        mask(ir.Segment(), 4, segments="abc")  # (torch's own TypeError before)
    with pytest.raises(ValueError, match="segments"):
        mask(ir.Segment(), 4, segments=torch.zeros(4, dtype=torch.bool))


def test_not_a_pattern_is_refused():
    with pytest.raises(ValueError, match="expr"):
        mask(ir.Range(I(0), I(3)), 4)


# ---------------------------------------------------------------- the hash (section 5)


def _mix32_reference(x):
    """Written out step by step from LANGUAGE.md section 5, independently of the package."""
    x %= 2 ** 32
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2 ** 32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2 ** 32
    x ^= x >> 16
    return x


def _hash_reference(seed, i, j):
    return _mix32_reference((_mix32_reference((_mix32_reference(seed) + i) % 2 ** 32) + j) % 2 ** 32)


@pytest.mark.parametrize("seed, i, j", [(0, 0, 0), (0, 1, 0), (7, 3, 5), (2 ** 32 - 1, 0, 1),
                                        (7, -1, 3), (123456789, -5, -7), (42, 2 ** 31, 99)])
def test_hash_matches_an_independent_implementation(seed, i, j):
    assert int(random_hash(seed, i, j)) == _hash_reference(seed, i, j)


def test_hash_known_values():
    # mix32(0) = 0; mix32(1) computed by hand from the definition
    assert int(mix32(0)) == 0
    x = 1
    x ^= x >> 16
    x = x * 0x7FEB352D % 2 ** 32
    x ^= x >> 15
    x = x * 0x846CA68B % 2 ** 32
    x ^= x >> 16
    assert int(mix32(1)) == x
    # hash(0, 0, 0) = mix32(mix32(mix32(0) + 0) + 0) = 0
    assert int(random_hash(0, 0, 0)) == 0


@settings(deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.lists(st.integers(-2 ** 33, 2 ** 33), min_size=2,
                                               max_size=16))
def test_vectorised_hash_matches_scalar(seed, values):
    i = torch.tensor(values)
    j = torch.tensor(values[::-1])
    got = random_hash(seed, i, j).tolist()
    assert got == [_hash_reference(seed, a, b) for a, b in zip(values, values[::-1])]


def test_random_density_extremes_and_threshold():
    i = torch.arange(-20, 20).view(-1, 1)
    j = torch.arange(0, 20).view(1, -1)
    assert random_keep(3, i, j, 1.0).all()
    assert not random_keep(3, i, j, 0.0).any()
    h = random_hash(3, i, j)
    half = random_keep(3, i, j, 0.5)
    assert torch.equal(half, h < 2 ** 31)


def test_random_is_independent_of_the_lengths():
    expr = ir.Random(ir.Float(0.3), I(4), I(11))
    long = mask(expr, 40, 40)
    short = mask(expr, 10, 40)  # the same keys and the same p for the last ten queries
    assert torch.equal(short[0], long[0, 30:])
    assert 0.1 < long.double().mean() < 0.5


# ---------------------------------------------------------------- attention (section 6)


def _naive_attention(q, k, v, keep, scale, bias=None):
    """Row by row: softmax over the kept keys (``bias`` added to the scaled scores), zeros for
    an empty row."""
    B, H, Lq, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, H, Lq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((B, H, Lq), -math.inf, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                cols = [j for j in range(k.shape[2]) if keep[b, h, i, j]]
                if not cols:
                    continue
                s = torch.stack([scale * (q[b, h, i].double() @ k[b, h // group, j].double())
                                 + (0.0 if bias is None else float(bias[b, h, i, j]))
                                 for j in cols])
                lse[b, h, i] = torch.logsumexp(s, 0)
                w = torch.softmax(s, 0)
                out[b, h, i] = sum(w[t] * v[b, h // group, j].double() for t, j in enumerate(cols))
    return out, lse


@pytest.mark.parametrize("hq, hkv", [(2, 2), (4, 2), (3, 1)])
def test_attention_matches_naive_loop(hq, hkv):
    torch.manual_seed(0)
    B, Lq, Lk, D = 2, 5, 7, 4
    q = torch.randn(B, hq, Lq, D)
    k = torch.randn(B, hkv, Lk, D)
    v = torch.randn(B, hkv, Lk, D)
    pattern = ir.Union(ir.Intersect(ir.Causal(), ir.Heads(ir.Range(I(1), None))),
                       ir.Window(I(-3), I(3)))  # head 0: only keys ahead, some rows empty
    m = mask(pattern, Lq, Lk, num_heads=hq)
    out, lse = attention(q, k, v, m)
    expected_out, expected_lse = _naive_attention(q, k, v, m.expand(B, hq, Lq, Lk), 1 / math.sqrt(D))
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(lse, expected_lse)
    assert (lse[:, 0, -1] == -math.inf).all() and (out[:, 0, -1] == 0).all()  # empty row


def test_empty_rows_have_zero_output_and_gradient_without_nan():
    torch.manual_seed(1)
    q = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 6, 3, dtype=torch.float64, requires_grad=True)
    m = mask(ir.Rows(ir.Range(I(4), None)), 4, 6, num_heads=2)  # p = q + 2: rows 2, 3 kept
    out, lse = attention(q, k, v, m)
    assert (out[:, :, :2] == 0).all() and (lse[:, :, :2] == -math.inf).all()
    assert torch.isfinite(lse[:, :, 2:]).all()
    (out.sum() + lse[:, :, 2:].sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, :2] == 0).all()
    nothing = attention(q, k, v, torch.zeros(1, 1, 4, 6, dtype=torch.bool))
    assert (nothing[0] == 0).all() and (nothing[1] == -math.inf).all()


def test_attention_gradients_match_autograd_of_the_naive_loop():
    torch.manual_seed(2)
    shapes = (1, 2, 4, 3), (1, 1, 5, 3)
    q = torch.randn(*shapes[0], dtype=torch.float64, requires_grad=True)
    k = torch.randn(*shapes[1], dtype=torch.float64, requires_grad=True)
    v = torch.randn(*shapes[1], dtype=torch.float64, requires_grad=True)
    m = mask(ir.Union(ir.Causal(), ir.Heads(ir.Listed((I(1),)))), 4, 5, num_heads=2)
    out, lse = attention(q, k, v, m, scale=0.7)
    grads = torch.autograd.grad(out.pow(2).sum() + lse.sum(), (q, k, v))
    n_out, n_lse = _naive_attention(q, k, v, m.expand(1, 2, 4, 5), 0.7)
    n_grads = torch.autograd.grad(n_out.pow(2).sum() + n_lse.sum(), (q, k, v))
    for g, n in zip(grads, n_grads):
        torch.testing.assert_close(g, n)


def test_bias_and_dropout():
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 1, 3, 2) for _ in range(3))
    bias = torch.randn(1, 1, 3, 3)
    out, lse = attention(q, k, v, None, bias=bias)
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(2) + bias.double()
    torch.testing.assert_close(lse, torch.logsumexp(s, -1))
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v.double())
    # a -inf bias masks its pair; a row of -inf is an empty row, not NaN
    bias[0, 0, 0] = -math.inf
    out, lse = attention(q, k, v, None, bias=bias)
    assert lse[0, 0, 0] == -math.inf and (out[0, 0, 0] == 0).all() and torch.isfinite(out).all()
    keep = torch.tensor([[True, False, True]] * 3).view(1, 1, 3, 3)
    out_d, lse_d = attention(q, k, v, None, dropout_mask=keep, dropout_p=0.25)
    s0 = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(2)
    torch.testing.assert_close(out_d, (torch.softmax(s0, -1) * keep / 0.75) @ v.double())
    torch.testing.assert_close(lse_d, torch.logsumexp(s0, -1))  # lse is taken before dropout


@pytest.mark.parametrize("kwargs, name", [
    (dict(dropout_p=1.0), "dropout_p"), (dict(dropout_p=0.3), "dropout_mask"),
])
def test_attention_argument_errors(kwargs, name):
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=name):
        attention(q, q, q, None, **kwargs)


def test_attention_shape_errors():
    q = torch.randn(1, 3, 3, 4)
    kv = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="divides"):
        attention(q, kv, kv)
    with pytest.raises(ValueError, match="mask"):
        attention(q, q, q, torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], q, q)


def test_long_set_unions_are_fine():
    s = ir.Listed((I(0),))
    for i in range(1, 2500):
        s = ir.SetUnion(s, ir.Listed((I(i % 60),)))
    assert mask(ir.Cols(s), 3, 64)[0, 0].tolist() == [True] * 60 + [False] * 4


def test_a_mask_too_large_for_memory_names_the_sizes():
    """10^12 x 10^12 pairs: the allocator's RuntimeError became a ValueError naming the sizes."""
    with pytest.raises(ValueError, match=r"q_len, k_len, num_heads: got \(1000000000000, "):
        mask(ir.Causal(), 10 ** 12)
