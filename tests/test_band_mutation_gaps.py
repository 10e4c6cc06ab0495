"""Explicit cases for `attnlang.band`'s recognisers that mutation testing found the suite missed.

Each case names the structure a recogniser must give a pattern (or None), worked out by hand from
the docstrings; where one is given, its pairs are also checked against the dense mask
(`attnlang.reference.mask`) at several lengths, bottom-right aligned queries included.  The
patterns are built as IR, as the recognisers see them (unions of ranges are not simplified).
"""
import pytest
import torch

from attnlang import ir
from attnlang.band import band_of, banded_of, chunked_band_of, strided_band_of
from attnlang.reference import mask as dense_mask

LENGTHS = [(1, 1), (7, 7), (20, 20), (13, 29), (29, 13), (40, 40)]
I = ir.Int


def W(back, ahead):
    return ir.Window(I(back), I(ahead))


def _range(lo, hi):
    return ir.Range(None if lo is None else I(lo), None if hi is None else I(hi))


def rows(lo, hi):
    return ir.Rows(_range(lo, hi))


def cols(lo, hi):
    return ir.Cols(_range(lo, hi))


def glob(lo, hi):
    return ir.Global(_range(lo, hi))


def stride(s):
    return ir.Stride(I(s))


def chunk(size, back=0, ahead=0):
    return ir.Chunk(I(size), I(back), I(ahead))


C, A = ir.Causal(), ir.All()


def _chain(node, terms, right=False):
    """``a op b op c`` nested to the left (``(a op b) op c``) or to the right."""
    terms = list(terms)
    if right:
        out = terms[-1]
        for t in reversed(terms[:-1]):
            out = node(t, out)
        return out
    out = terms[0]
    for t in terms[1:]:
        out = node(out, t)
    return out


def OR(*terms, right=False):
    return _chain(ir.Union, terms, right)


def AND(*terms, right=False):
    return _chain(ir.Intersect, terms, right)


def _grid(Lq, Lk):
    """(positions p of the queries, keys k, distances p - k) as broadcastable tensors."""
    p = torch.arange(Lq)[:, None] + (Lk - Lq)
    k = torch.arange(Lk)[None, :]
    return p, k, p - k


def _band_mask(back, ahead, Lq, Lk):
    _, _, d = _grid(Lq, Lk)
    big = Lq + Lk
    return (d <= (big if back is None else back)) & (d >= -(big if ahead is None else ahead))


def _span_mask(span, x, Lq, Lk):
    big = Lq + Lk
    start = -big if span[0] is None else span[0]
    stop = big if span[1] is None else span[1]
    return (x >= start) & (x < stop)


BAND_CASES = [  # (expr, band_of's answer)
    (W(0, 0), (0, 0)),                        # the diagonal alone keeps one distance
    (W(-1, 0), None),                         # keeps no distance
    (W(3, -4), None),
    (AND(W(2, -1), W(-1, 3)), None),          # distances 1..2 and -3..-1: nothing in common
    (C, (None, 0)),
    (A, (None, None)),
    (W(3, 1), (3, 1)),
    (W(1, 3), (1, 3)),
    (AND(W(5, 2), W(3, 4)), (3, 2)),
    (AND(W(1, 9), W(8, 6)), (1, 6)),
    (AND(C, W(5, 2)), (5, 0)),
    (AND(W(5, 2), C), (5, 0)),
    (AND(A, W(3, 1)), (3, 1)),
    (AND(W(3, 1), A), (3, 1)),
    (AND(C, A), (None, 0)),
    (OR(W(10, 0), W(0, 4)), (10, 4)),
    (OR(W(1, 6), W(4, 2)), (4, 6)),
    (OR(C, W(2, 3)), (None, 3)),
    (OR(W(2, 3), C), (None, 3)),
    (OR(W(2, 3), A), (None, None)),
    (OR(W(4, 1), W(7, -5)), (7, 1)),          # distances -1..4 and 5..7 touch
    (OR(W(7, -5), W(4, 1)), (7, 1)),
    (OR(W(3, 1), W(7, -5)), None),            # distance 4 is not kept
    (OR(W(7, -5), W(3, 1)), None),
    (OR(C, W(-3, 5)), None),                  # distances 0.. and -5..-3: -1, -2 missing
    (OR(W(-3, 5), C), None),
    (OR(W(-3, 5), W(9, 0)), None),
    (OR(W(9, 0), W(-3, 5)), None),
]


@pytest.mark.parametrize("expr,want", BAND_CASES, ids=[str(c[0]) for c in BAND_CASES])
def test_band_of_cases(expr, want):
    """band_of gives the band worked out by hand (None where the pattern is not one band with a
    distance kept), and a band it gives keeps exactly the pattern's pairs."""
    found = band_of(expr)
    assert found == want
    if found is not None:
        for Lq, Lk in LENGTHS:
            assert torch.equal(dense_mask(expr, Lq, Lk)[0], _band_mask(*found, Lq, Lk))


BANDED_CASES = [  # (expr, banded_of's answer)
    (OR(W(3, 3), rows(0, 0), rows(2, 5)), ((3, 3), (2, 5), None)),  # an empty range is no gap
    (OR(W(3, 3), rows(4, 4)), None),                                 # nothing beside the band
    (OR(W(3, 3), glob(0, 4)), ((3, 3), (0, 4), (0, 4))),
    (OR(W(3, 3), rows(0, 4)), ((3, 3), (0, 4), None)),
    (OR(W(3, 3), cols(0, 4)), ((3, 3), None, (0, 4))),
    (OR(W(2, 0), rows(1, 3), cols(0, 5)), ((2, 0), (1, 3), (0, 5))),
    (W(8, 8), None),                                                 # a band alone
    (OR(W(1, 1), rows(0, 4), rows(6, 9), cols(0, 2)), None),         # rows 4, 5 missing
    (OR(W(1, 1), cols(0, 2), cols(6, 9), rows(0, 2)), None),
    (OR(W(2, 2), ir.Cols(ir.Every(I(4), I(0)))), None),
    (OR(W(2, 2), ir.Cols(ir.Every(I(4), I(0))), rows(0, 3)), None),
    (OR(W(1, 0), W(0, 3), rows(0, 2)), ((1, 3), (0, 2), None)),
    (OR(W(1, 0), W(0, 1), W(5, 0), rows(0, 2)), ((5, 1), (0, 2), None)),
    (OR(W(1, 0), rows(0, 2), W(0, 1), W(5, 0)), ((5, 1), (0, 2), None)),
    (OR(rows(0, 2), W(1, 1), cols(0, 3), right=True), ((1, 1), (0, 2), (0, 3))),
    (OR(W(1, 1), rows(0, 2), cols(0, 3), right=True), ((1, 1), (0, 2), (0, 3))),
    (OR(rows(0, 2), cols(0, 3), W(1, 1), right=True), ((1, 1), (0, 2), (0, 3))),
    (OR(OR(rows(0, 2), W(1, 1)), OR(cols(0, 3), rows(2, 4))), ((1, 1), (0, 4), (0, 3))),
    (OR(W(2, 2), rows(0, 3)), ((2, 2), (0, 3), None)),
    (OR(W(2, 2), cols(0, None)), ((2, 2), None, (0, None))),
    (OR(W(2, 2), rows(-1, None)), None),                             # counts from the end
    (OR(W(2, 2), rows(2, -1)), None),
    (OR(W(2, 2), cols(-3, 5)), None),
    (OR(W(2, 2), rows(5, 10), rows(None, 6)), ((2, 2), (None, 10), None)),
    (OR(W(2, 2), rows(None, 6), rows(5, 10)), ((2, 2), (None, 10), None)),
    (OR(W(2, 2), rows(0, 4), rows(4, 9)), ((2, 2), (0, 9), None)),  # ranges that touch
    (OR(W(2, 2), cols(4, 9), cols(0, 4)), ((2, 2), None, (0, 9))),
    (OR(W(2, 2), rows(0, 4), rows(5, 9)), None),                     # row 4 missing
    (OR(W(2, 2), cols(0, 4), cols(5, 9)), None),
    (OR(W(2, 2), rows(0, 10), rows(2, 5)), ((2, 2), (0, 10), None)),
    (OR(W(2, 2), rows(0, None), rows(2, 5)), ((2, 2), (0, None), None)),
    (OR(W(2, 2), rows(2, 5), rows(0, None)), ((2, 2), (0, None), None)),
    (OR(W(2, 2), rows(3, 6), rows(0, None)), ((2, 2), (0, None), None)),
]


@pytest.mark.parametrize("expr,want", BANDED_CASES, ids=[str(c[0]) for c in BANDED_CASES])
def test_banded_of_cases(expr, want):
    """banded_of gives the (band, rows, cols) worked out by hand (None for a band alone, sets
    that are not ranges counting from the start, and ranges of one kind with a gap), and what
    it gives keeps exactly the pattern's pairs."""
    found = banded_of(expr)
    assert found == want
    if found is not None:
        band, rows_span, cols_span = found
        for Lq, Lk in LENGTHS:
            p, k, _ = _grid(Lq, Lk)
            keep = _band_mask(*band, Lq, Lk)
            if rows_span is not None:
                keep = keep | _span_mask(rows_span, p, Lq, Lk)
            if cols_span is not None:
                keep = keep | _span_mask(cols_span, k, Lq, Lk)
            assert torch.equal(dense_mask(expr, Lq, Lk)[0], keep)


STRIDED_CASES = [  # (expr, strided_band_of's answer)
    (AND(stride(2), stride(3), W(9, 9)), (6, (9, 9))),
    (AND(stride(4), W(20, 20), stride(6)), (12, (20, 20))),
    (AND(W(0, 0), stride(2)), (2, (0, 0))),                # the distance 0 alone
    (AND(W(1, 1), stride(3)), (3, (1, 1))),
    (AND(W(5, -3), stride(4)), (4, (5, -3))),              # the distance 4 alone
    (AND(W(5, -3), stride(6)), None),                      # distances 3..5: no multiple of 6
    (AND(W(-3, 5), stride(4)), (4, (-3, 5))),              # the distance -4 alone
    (AND(W(-3, 5), stride(6)), None),
    (AND(W(8, 8), stride(1)), None),
    (stride(3), (3, (None, None))),
    (AND(C, stride(4), W(9, 2)), (4, (9, 0))),
]


@pytest.mark.parametrize("expr,want", STRIDED_CASES, ids=[str(c[0]) for c in STRIDED_CASES])
def test_strided_band_of_cases(expr, want):
    """strided_band_of gives the step (the least common multiple of the strides) and band
    worked out by hand (None where no distance is kept), and what it gives keeps exactly the
    pattern's pairs: the band's whose distance is a multiple of the step."""
    found = strided_band_of(expr)
    assert found == want
    if found is not None:
        step, band = found
        for Lq, Lk in LENGTHS:
            _, _, d = _grid(Lq, Lk)
            keep = _band_mask(*band, Lq, Lk) & (d % step == 0)
            assert torch.equal(dense_mask(expr, Lq, Lk)[0], keep)


CHUNKED_CASES = [  # (expr, chunked_band_of's answer)
    (chunk(16), ((None, None), 16)),
    (AND(C, chunk(16)), ((None, 0), 16)),
    (AND(chunk(8), C, W(3, 3)), ((3, 0), 8)),
    (AND(chunk(8), W(3, 3), C), ((3, 0), 8)),
    (AND(chunk(8), W(9, 2), C, W(3, 5)), ((3, 0), 8)),
    (AND(C, chunk(16), chunk(8)), None),                    # two chunk terms
    (AND(C, chunk(8), chunk(8)), None),
    (AND(C, chunk(8, 1, 0)), None),                         # a chunk back
    (AND(C, chunk(8, 0, 1)), None),                         # a chunk ahead
    (AND(chunk(8), stride(2)), None),                       # not a band beside the chunk
    (AND(chunk(8), C, stride(2)), None),
]


@pytest.mark.parametrize("expr,want", CHUNKED_CASES, ids=[str(c[0]) for c in CHUNKED_CASES])
def test_chunked_band_of_cases(expr, want):
    """chunked_band_of gives the band and chunk size worked out by hand (None for more than one
    chunk term, chunks back or ahead, and factors that are not a band), and what it gives keeps
    exactly the pattern's pairs: the band's whose position and key share a chunk (Lk >= Lq)."""
    found = chunked_band_of(expr)
    assert found == want
    if found is not None:
        band, size = found
        for Lq, Lk in LENGTHS:
            if Lk < Lq:
                continue
            p, k, _ = _grid(Lq, Lk)
            keep = _band_mask(*band, Lq, Lk) & (p // size == k // size)
            assert torch.equal(dense_mask(expr, Lq, Lk)[0], keep)
