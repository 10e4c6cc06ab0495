"""Cases the rest of the suite did not pin down in the dense reference (attnlang/reference.py),
found by mutation testing it: each test fails on the deliberate bug named in its docstring and
passes on the real code.  The expected values come from LANGUAGE.md (or, where it is silent, from
reference.py's documented choices), written out here by hand or by a naive loop that shares no
code with reference.py.  Small and deterministic: no Hypothesis."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from attnlang import ir
from attnlang.reference import attention, keeps, mask
from test_reference import _naive_attention

I, F, V = ir.Int, ir.Float, ir.Var
U32 = 0xFFFFFFFF


def _mix32(x: int) -> int:
    """LANGUAGE.md section 5, on Python ints."""
    x &= U32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & U32
    x ^= x >> 15
    x = (x * 0x846CA68B) & U32
    x ^= x >> 16
    return x


def _hash(seed: int, i: int, j: int) -> int:
    """``hash(seed, i, j) = mix32(mix32(mix32(seed) + i) + j)``, all modulo 2^32."""
    return _mix32(_mix32(_mix32(seed) + i) + j)


def _threshold(density: float) -> int:
    """``floor(density * 2^32)``, exactly (no float rounding)."""
    return math.floor(Fraction(density) * 2 ** 32)


def _check(expr, q_len, k_len, expected, heads=1, seg_q=None, seg_k=None):
    """``mask`` and ``keeps`` both equal ``expected(h, q, p, k)`` (p = q + Lk - Lq) everywhere."""
    segments = None if seg_q is None else (torch.tensor(seg_q), torch.tensor(seg_k))
    m = mask(expr, q_len, k_len, num_heads=heads, segments=segments)
    want = [[[bool(expected(h, q, q + k_len - q_len, k)) for k in range(k_len)]
             for q in range(q_len)] for h in range(heads)]
    assert m.tolist() == want, str(expr)
    for h in range(heads):
        for q in range(q_len):
            for k in range(k_len):
                got = keeps(expr, q, k, q_len, k_len, h=h, num_heads=heads, seg_q=seg_q,
                            seg_k=seg_k)
                assert got == want[h][q][k], (str(expr), h, q, k)


# ---------------------------------------------------------------- random (sections 3 and 5)


@pytest.mark.parametrize("offset, kept", [(0, False), (0.5, False), (1, True)])
def test_random_threshold_is_the_floor_and_the_comparison_strict(offset, kept):
    """Kills ``random_threshold`` floor -> ceil (offset 0.5), ``random_keep`` ``<`` -> ``<=``
    (offset 0), ``2^32`` -> ``2^32 - 1`` in the threshold (offset 1) and ``keeps``' ``<`` ->
    ``<=``: a pair is kept iff ``hash < floor(density * 2^32)``.  The density is placed exactly at
    the pair's own hash value ``v``: ``(v + offset) / 2^32``."""
    seed, block = 7, 2
    v = _hash(seed, 2, 3)
    density = (v + offset) / 2 ** 32
    expr = ir.Random(F(density), I(block), I(seed))
    m = mask(expr, 8, 8)
    assert bool(m[0, 4, 6]) is kept and bool(m[0, 5, 7]) is kept  # blocks (2, 3)
    assert keeps(expr, 4, 6, 8, 8) is kept
    _check(expr, 8, 8, lambda h, q, p, k: _hash(seed, p // block, k // block)
           < _threshold(density))


def test_random_block_of_a_negative_position_floors():
    """Kills ``i = p div block`` with truncation instead of floor: with ``Lq > Lk`` the first
    queries have ``p < 0``, and ``div`` floors (``-1 div 4 == -1``, block -1 in two's
    complement), so ``p = -1`` and ``p = 1`` are in different blocks."""
    seed, block, density = 1, 4, 0.5
    expr = ir.Random(F(density), I(block), I(seed))
    _check(expr, 12, 4, lambda h, q, p, k: _hash(seed, p // block, k // block)
           < _threshold(density))
    # not vacuous: truncating p div 4 (blocks -1 and 0 merged) would change some verdict
    assert any((_hash(seed, p // block, 0) < 2 ** 31) != (_hash(seed, int(p / block), 0) < 2 ** 31)
               for p in range(-8, 0))


# ---------------------------------------------------------------- where: constant sub-predicates


def _zero():
    return ir.BinOp("-", V("Lq"), V("Lq"))  # 0, but not a literal (the parser refuses `div 0`)


@pytest.mark.parametrize("pred, kept", [
    # x div 0 = 0 and x mod 0 = x (reference.py's documented convention) on plain ints
    (ir.Compare("==", ir.BinOp("div", V("Lk"), _zero()), I(0)), True),
    (ir.Compare("==", ir.BinOp("mod", V("Lk"), _zero()), V("Lk")), True),
    (ir.Compare("==", ir.Func("max", (V("Lq"), V("Lk"))), V("Lk")), True),
    (ir.Compare("==", ir.Func("min", (V("Lq"), V("Lk"))), V("Lq")), True),
    (ir.BoolOp("and", ir.Compare("==", V("Lq"), I(3)), ir.Compare("==", V("Lk"), I(5))), True),
    (ir.BoolOp("and", ir.Compare("==", V("Lq"), I(3)), ir.Compare("==", V("Lk"), I(6))), False),
    (ir.BoolNot(ir.Compare("==", V("Lq"), I(3))), False),
    (ir.Compare(">", V("Lq"), I(100)), False),
])
def test_where_predicates_on_the_lengths_alone(pred, kept):
    """Kills, in ``_floordiv``/``_mod``/``_tmax``/``BoolOp``/``BoolNot``/``_as_bool``'s
    plain-int paths (taken when both operands are ``Lq``/``Lk``/literals): ``x div 0 = x``,
    ``x mod 0 = 0``, ``max`` -> ``min``, ``and`` -> ``or``, a dropped ``not`` and a constant
    predicate made True.  Lq = 3, Lk = 5: the predicate is constant over the whole mask."""
    _check(ir.Where(pred), 3, 5, lambda h, q, p, k: kept)


def test_where_mixes_a_constant_and_a_tensor_predicate():
    """Kills ``_as_bool`` turning a constant False into True inside ``or``:
    ``where(q == 0 or Lq > 100)`` keeps only query row 0."""
    pred = ir.BoolOp("or", ir.Compare("==", V("q"), I(0)), ir.Compare(">", V("Lq"), I(100)))
    _check(ir.Where(pred), 3, 5, lambda h, q, p, k: q == 0)


def test_where_tensor_division_and_remainder_by_zero():
    """Kills ``_mod``'s tensor path with ``x mod 0 = 0`` and ``keeps``' ``x div 0 = x``:
    ``k mod 0 == k`` and ``k div 0 == 0`` hold everywhere (reference.py's convention)."""
    zero = ir.BinOp("-", V("q"), V("q"))
    _check(ir.Where(ir.Compare("==", ir.BinOp("mod", V("k"), zero), V("k"))), 3, 5,
           lambda h, q, p, k: True)
    _check(ir.Where(ir.Compare("==", ir.BinOp("div", V("k"), zero), I(0))), 3, 5,
           lambda h, q, p, k: True)


# ---------------------------------------------------------------- index sets


def test_every_residue_range_without_upper_bound_runs_to_the_modulus():
    """Kills ``every(s, a..)`` taking a missing upper residue bound as ``s - 1``: the residues
    are ``a <= i mod s < s``, so ``every(4, 2..)`` is ``{2, 3, 6, 7, ...}``."""
    expr = ir.Cols(ir.Every(I(4), ir.Range(I(2), None)))
    _check(expr, 2, 10, lambda h, q, p, k: k % 4 >= 2)


def test_every_compares_a_negative_residue_literally():
    """Kills a negative ``every`` residue counting from the modulus (``-1`` -> ``s - 1``):
    reference.py documents that the from-end rule is for positions, not residues, so
    ``every(4, -1)`` (``i mod 4 == -1``) keeps nothing.  (The parser refuses such a residue; this
    pins ``mask`` on the IR.)"""
    _check(ir.Cols(ir.Every(I(4), I(-1))), 2, 9, lambda h, q, p, k: False)


@pytest.mark.parametrize("residue", [I(1), ir.Range(I(1), I(3))])
def test_rows_every_on_negative_positions_uses_the_mathematical_mod(residue):
    """Kills ``every``'s membership with ``fmod`` (C remainder) instead of the mathematical
    ``mod``: with ``Lq > Lk``, ``p`` is negative for the first queries, and ``-2 mod 3 == 1``."""
    lo, hi = (1, 2) if isinstance(residue, ir.Int) else (1, 3)
    expr = ir.Rows(ir.Every(I(3), residue))
    _check(expr, 7, 2, lambda h, q, p, k: lo <= p % 3 < hi)


def test_negative_range_bounds_count_from_the_key_length_not_the_query_length():
    """Kills ``rows``/``cols`` resolving ``-m..`` against ``Lq``: LANGUAGE.md section 3, ``-m..``
    is the last ``m`` positions, ``Lk - m <= i``, for rows (``p``) and columns (``k``) alike."""
    last2 = ir.Range(I(-2), None)
    _check(ir.Rows(last2), 3, 6, lambda h, q, p, k: p >= 4)
    _check(ir.Cols(last2), 3, 6, lambda h, q, p, k: k >= 4)
    _check(ir.Rows(last2), 6, 3, lambda h, q, p, k: p >= 1)
    _check(ir.Cols(last2), 6, 3, lambda h, q, p, k: k >= 1)


def test_upper_bound_zero_is_not_from_the_end():
    """Kills ``keeps`` treating an upper bound of 0 as negative (``hi <= 0`` -> ``hi + end``):
    ``..0`` and ``0..0`` are empty, ``0..`` is everything."""
    _check(ir.Cols(ir.Range(None, I(0))), 2, 4, lambda h, q, p, k: False)
    _check(ir.Cols(ir.Range(I(0), I(0))), 2, 4, lambda h, q, p, k: False)
    _check(ir.Cols(ir.Range(I(0), None)), 2, 4, lambda h, q, p, k: True)


def test_negative_heads_count_from_the_head_count_not_the_key_length():
    """Kills ``heads`` resolving a negative bound against ``Lk``: ``heads(-1..)`` is the last
    head (``H - 1 <= h``)."""
    expr = ir.Heads(ir.Range(I(-1), None))
    _check(expr, 2, 5, lambda h, q, p, k: h == 2, heads=3)
    expr = ir.Heads(ir.Listed((I(-2),)))
    _check(expr, 2, 5, lambda h, q, p, k: h == 1, heads=3)


# ---------------------------------------------------------------- primitives


def test_chunk_back_and_ahead_are_not_swapped():
    """Kills ``chunk`` comparing ``c >= -back`` (or otherwise mixing ``back``/``ahead``):
    ``chunk(2, 1, 0)`` keeps ``0 <= p div 2 - k div 2 <= 1``, the own and previous chunk."""
    expr = ir.Chunk(I(2), I(1), I(0))
    _check(expr, 6, 6, lambda h, q, p, k: 0 <= p // 2 - k // 2 <= 1)
    expr = ir.Chunk(I(2), I(0), I(1))
    _check(expr, 6, 6, lambda h, q, p, k: -1 <= p // 2 - k // 2 <= 0)


def test_chunk_of_a_negative_position_floors():
    """Kills ``chunk``'s ``p div size`` truncating: with ``Lq > Lk``, ``p = -1`` is in chunk
    ``-1`` (``div`` floors), so ``chunk(3)`` keeps no key for it."""
    expr = ir.Chunk(I(3), I(0), I(0))
    _check(expr, 7, 3, lambda h, q, p, k: p // 3 == k // 3)
    assert not mask(expr, 7, 3)[0, 3].any()  # p = -1


def test_prefix_excludes_the_key_at_m():
    """Kills ``prefix``'s ``k < m`` -> ``k <= m``: ``prefix(2)`` is ``p < 2 and k < 2``."""
    _check(ir.Prefix(I(2)), 4, 4, lambda h, q, p, k: p < 2 and k < 2)
    _check(ir.Prefix(I(2)), 2, 4, lambda h, q, p, k: p < 2 and k < 2)


def test_segment_is_equality_of_query_and_key_ids():
    """Kills ``segment`` with ``>=`` for ``==``, with the key ids read from the query ids, and
    ``mask`` swapping ``(seg_q, seg_k)``: ``seg_q[q] == seg_k[k]`` (LANGUAGE.md section 3)."""
    seg_q, seg_k = [0, 0, 1], [0, 1, 1]
    _check(ir.Segment(), 3, 3, lambda h, q, p, k: seg_q[q] == seg_k[k], seg_q=seg_q,
           seg_k=seg_k)
    seg = [0, 0, 1, 1]
    _check(ir.Segment(), 4, 4, lambda h, q, p, k: seg[q] == seg[k], seg_q=seg, seg_k=seg)


# ---------------------------------------------------------------- attention (section 6)


def _qkv(hq=2, hkv=1, lq=3, lk=4, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, hq, lq, d, generator=g, dtype=torch.float64),
            torch.randn(1, hkv, lk, d, generator=g, dtype=torch.float64),
            torch.randn(1, hkv, lk, d, generator=g, dtype=torch.float64))


def test_an_explicit_zero_scale_is_not_the_default():
    """Kills ``if scale is None`` -> ``if not scale``: ``scale = 0.0`` makes every kept key
    equally likely (out = mean of the kept values, lse = log(number kept))."""
    q, k, v = _qkv()
    keep = torch.tril(torch.ones(3, 4, dtype=torch.bool), diagonal=1)
    out, lse = attention(q, k, v, mask=keep, scale=0.0)
    for i in range(3):
        n = i + 2
        assert torch.allclose(out[0, :, i], v[0, 0, :n].mean(0).expand(2, -1), atol=1e-12)
        assert torch.allclose(lse[0, :, i], torch.full((2,), math.log(n), dtype=torch.float64))


def test_bias_is_added_after_scaling():
    """Kills the bias being multiplied by ``scale``: the bias is added to the *scaled* scores
    (reference.attention's docstring)."""
    q, k, v = _qkv(d=16)
    bias = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    keep = torch.ones(1, 2, 3, 4, dtype=torch.bool)
    out, lse = attention(q, k, v, bias=bias)
    want_out, want_lse = _naive_attention(q, k, v, keep, 1 / 4, bias)
    assert torch.allclose(out, want_out, atol=1e-12) and torch.allclose(lse, want_lse)


def test_a_huge_masked_score_does_not_empty_a_row():
    """Kills the row maximum being taken over masked scores too: a masked key scoring far above
    the kept one would underflow the kept weight to 0 and empty the row.  Softmax runs over the
    kept keys only (LANGUAGE.md section 6): out = V[kept], lse = the kept score (0 here)."""
    q = torch.tensor([[[[30.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[30.0], [0.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0], [2.0]]]], dtype=torch.float64)
    out, lse = attention(q, k, v, mask=torch.tensor([False, True]))
    assert out.item() == 2.0 and lse.item() == 0.0


@pytest.mark.parametrize("how", ["mask", "-inf bias"])
def test_a_row_whose_kept_scores_are_all_below_minus_709_is_not_nan(how):
    """LANGUAGE.md section 6, "Nothing is NaN unless an input is": one kept key scoring -900
    (the other masked by the mask, or by a -inf bias) gives out = V[kept], lse = -900 and finite
    gradients.  The reference failed this until round 65 (found by this file's mutation run):
    masked scores were replaced by 0 and then shifted by the row maximum over the kept keys, so
    where every kept score is below about -709.78 a masked entry's ``exp(0 - row_max)``
    overflowed to inf and ``inf * 0`` was NaN (out NaN, lse -inf, dV NaN)."""
    q = torch.tensor([[[[30.0]]]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[[[30.0], [-30.0]]]], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([[[[1.0], [2.0]]]], dtype=torch.float64, requires_grad=True)
    if how == "mask":
        out, lse = attention(q, k, v, mask=torch.tensor([False, True]))
    else:
        out, lse = attention(q, k, v, bias=torch.tensor([-math.inf, 0.0], dtype=torch.float64))
    assert out.item() == 2.0 and lse.item() == -900.0
    (out.sum() + lse.sum()).backward()
    assert v.grad.tolist() == [[[[0.0], [1.0]]]]
    # d lse / d q = k[kept] * scale (1), d lse / d k[kept] = q; out is constant in q and k
    assert q.grad.tolist() == [[[[-30.0]]]] and k.grad.tolist() == [[[[0.0], [30.0]]]]


def test_a_dropout_probability_of_one_is_refused():
    """Kills ``dropout_p`` allowed to be 1 (which divides by ``1 - p = 0``): the probability is
    in ``[0, 1)``."""
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="dropout_p"):
        attention(q, k, v, dropout_mask=torch.ones(1, 2, 3, 4, dtype=torch.bool),
                  dropout_p=1.0)
