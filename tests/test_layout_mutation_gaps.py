"""Cases of ``layout_runs``, ``layout_segment`` and ``layout_where`` that the rest of the suite
did not pin down, found by mutation testing (one deliberate bug at a time; each test fails on the
mutant named in its docstring and passes on the real code).  Small and deterministic: no
Hypothesis.  Layout-level tests compare with the dense reference mask; a few tests read a
function's documented contract directly where the layout cannot see the difference."""
from __future__ import annotations

import pytest
import torch

import attnlang
from attnlang import ir, layout_segment
from attnlang.layout import build_layout
from attnlang.layout_runs import FULL, IDENT, PARTIAL, SKIP, UNKNOWN, Runs, combine
from attnlang.reference import mask

from test_layout import assert_csr_consistent, truth_classes

I = ir.Int
V = ir.Var


def _expr(source):
    return attnlang.parse(f"pattern x = {source}")["x"].ir


def _classes(lay):
    return lay.classes()[lay.head_group.long()].long()


def _check(expr, q_len, k_len, bm, bn, segments=None, refine_limit=1 << 24, exact=True):
    """The layout's classes equal the dense reference's block classes (and ``lay.exact``)."""
    lay = build_layout(expr, q_len, k_len, bm, bn, segments=segments, refine_limit=refine_limit)
    truth = truth_classes(mask(expr, q_len, k_len, segments=segments), bm, bn)
    assert torch.equal(_classes(lay), truth), (_classes(lay).tolist(), truth.tolist())
    assert lay.exact is exact
    return lay


def _runs(row, start, end, cls):
    t = torch.tensor
    return Runs(t(row), t(start), t(end), t(cls))


def _as_lists(runs):
    return list(zip(runs.row.tolist(), runs.start.tolist(), runs.end.tolist(),
                    runs.cls.tolist()))


# ---------------------------------------------------------------- layout_runs


def test_make_drops_skipped_classes_and_empty_intervals():
    """``Runs.make`` drops SKIP runs as its docstring says (mutant: keep only ``end > start``,
    so SKIP runs survive into the run list; the layout itself cannot tell, since ``combine``
    ignores them)."""
    t = torch.tensor
    runs = Runs.make(t([0, 0, 1]), t([0, 3, 1]), t([2, 3, 4]), t([SKIP, FULL, PARTIAL]))
    assert _as_lists(runs) == [(1, 1, 4, PARTIAL)]


def test_combine_overlaps_full_beats_partial_beats_unknown():
    """Overlapping runs within one operand: FULL beats PARTIAL beats UNKNOWN (the documented
    precedence).  Mutants: PARTIAL tested before FULL, UNKNOWN before PARTIAL."""
    raw = _runs([0, 0, 1, 1], [0, 1, 0, 1], [3, 2, 3, 2], [PARTIAL, FULL, UNKNOWN, PARTIAL])
    out = combine(IDENT, [raw], 2, 3)
    assert _as_lists(out) == [(0, 0, 1, PARTIAL), (0, 1, 2, FULL), (0, 2, 3, PARTIAL),
                              (1, 0, 1, UNKNOWN), (1, 1, 2, PARTIAL), (1, 2, 3, UNKNOWN)]


def test_complement_of_a_partial_block_stays_partial_without_refinement():
    """``NOT`` maps PARTIAL to PARTIAL: ``~causal`` is exact with no element-wise work
    (``refine_limit=0``).  Mutant: ``NOT[PARTIAL] = UNKNOWN`` (the diagonal is then reported
    PARTIAL only conservatively: ``exact`` is False)."""
    _check(ir.Complement(ir.Causal()), 64, 64, 16, 16, refine_limit=0)


def test_unknown_or_full_is_full_without_refinement():
    """``UNKNOWN | FULL`` is FULL: the diagonal of ``where(d >= 0)`` (UNKNOWN) under a window
    that covers it is FULL with ``refine_limit=0``.  Mutant: ``OR[UNKNOWN][FULL] = UNKNOWN``
    (reported PARTIAL, layout not exact)."""
    expr = ir.Union(ir.Where(ir.Compare(">=", V("d"), I(0))), _expr("window(16, 16)"))
    _check(expr, 64, 64, 16, 16, refine_limit=0)


# ---------------------------------------------------------------- layout_segment


def test_document_unknown_blocks_under_the_refine_limit_are_settled():
    """Blocks partial for both band and segment (the general path's UNKNOWN) are settled
    exactly when the count check runs but they stay under ``refine_limit``: block (1, 0) of
    ``window(5, 0) & segment`` below is SKIP (its band and segment pairs are disjoint).
    Mutant: ``torch.where(unknown, ...)`` without ``over`` (reported PARTIAL)."""
    seg_k = torch.tensor([0] * 16 + [1] * 16)
    seg_q = torch.tensor([1] * 21 + [0] * 11)
    expr = _expr("window(5, 0) & segment")
    _check(expr, 32, 32, 16, 16, segments=(seg_q, seg_k), refine_limit=1000)


# deterministic document-mask cases (the suite pins several of these only through Hypothesis)
_DOC_IDS = [0] * 5 + [1] * 11 + [2] * 16 + [3] * 8  # 40 keys: the last key block one document


@pytest.mark.parametrize("source", ["segment", "causal & segment", "segment & causal",
                                    "window(7, 2) & segment", "segment & window(0, 17)"])
@pytest.mark.parametrize("q_len", [40, 23])
def test_document_layouts_match_the_reference(source, q_len):
    """Document masks over partial last blocks (40 keys, blocks of 16) with ``Lq == Lk`` and
    ``Lq < Lk`` (the last queries' ids, bottom-right aligned), exact and with consistent
    transposed tables.  Mutants: ``p = q`` (no ``Lk - Lq`` shift), the band's lower edge one
    too far in, the last partial key block never FULL, the last partial query block never FULL
    (no ``max=q_len``), and the transposed FULL indices taken untransposed."""
    seg_k = torch.tensor(_DOC_IDS)
    seg_q = seg_k[40 - q_len:]
    lay = _check(_expr(source), q_len, 40, 16, 16, segments=(seg_q, seg_k))
    assert_csr_consistent(lay)


@pytest.mark.parametrize("source", ["segment", "causal & segment", "segment & window(0, 17)",
                                    "window(3, 0) & segment"])
def test_one_token_documents_keep_only_the_diagonal(source):
    """Every token its own document: each query keeps only its own key, so the diagonal
    blocks are PARTIAL and the rest SKIP.  Mutant: the band's lower edge ``p - back + 1`` (with
    ``back = 0`` the query's own key is lost and every block is skipped)."""
    ids = torch.arange(40)
    _check(_expr(source), 40, 40, 16, 16, segments=ids)


@pytest.mark.parametrize("source", ["causal & segment", "segment & causal",
                                    "window(3, 0) & segment", "window(7, 2) & segment"])
@pytest.mark.parametrize("bm, bn", [(16, 16), (32, 16), (16, 32)])
@pytest.mark.parametrize("limit", [0, 256, 1000])
def test_document_refine_limit_matches_the_general_path(source, bm, bn, limit):
    """Under a small ``refine_limit`` the document path reports exactly the general
    classifier's layout (classes and ``exact``): its count of the general path's UNKNOWN blocks
    must run whenever it might matter, and must count only blocks partial for the segment.
    Mutants: ``edges`` as a product (causal has one edge: the count is skipped),
    ``seg_partial`` without ``count[3] != row_size``, and the cheap bound with ``bm // bn``
    instead of ``ceil(bm / bn) + 2``."""
    expr = _expr(source)
    ids = torch.tensor(_DOC_IDS)
    fast = build_layout(expr, 40, 40, bm, bn, segments=ids, refine_limit=limit)
    original = layout_segment.band_of
    layout_segment.band_of = lambda e: None
    try:
        slow = build_layout(expr, 40, 40, bm, bn, segments=ids, refine_limit=limit)
    finally:
        layout_segment.band_of = original
    assert original(expr) is not None
    assert torch.equal(_classes(fast), _classes(slow)), (_classes(fast), _classes(slow))
    assert fast.exact == slow.exact


# ---------------------------------------------------------------- layout_where


def test_where_division_by_a_divisor_that_is_zero_everywhere():
    """``x div 0 = 0``: with one head ``h`` is the constant 0, so ``k div h >= 1`` keeps
    nothing (every block SKIP, from bounds alone).  Mutant: a singleton zero divisor returns the
    dividend's bounds (key blocks beyond 0 would be FULL)."""
    expr = ir.Where(ir.Compare(">=", ir.BinOp("div", V("k"), V("h")), I(1)))
    _check(expr, 64, 64, 16, 16, refine_limit=0)


def test_where_mod_by_a_divisor_interval_starting_at_zero():
    """``x mod 0 = x``: ``q mod k >= 20`` keeps ``(q, 0)`` for ``q >= 20``, so key block 0 is
    PARTIAL for those query blocks.  Mutant: a divisor interval ``[0, c]`` treated as positive
    (``b.lo >= 0``: remainders in ``[0, c - 1]``, the block wrongly SKIP)."""
    expr = ir.Where(ir.Compare(">=", ir.BinOp("mod", V("q"), V("k")), I(20)))
    _check(expr, 64, 64, 16, 16)


_Q, _K, _D = V("q"), V("k"), V("d")


@pytest.mark.parametrize("name, cond", [
    ("min of intervals (mutant: min and max swapped)",
     ir.Compare(">=", ir.Func("min", (_Q, _K)), I(20))),
    ("max of intervals (mutant: min and max swapped)",
     ir.Compare("<", ir.Func("max", (_Q, _K)), I(20))),
    ("'!=' (mutant: answered as '==')", ir.Compare("!=", _K, I(5))),
    ("'not' (mutant: not swapping can-be-true and can-be-false)",
     ir.BoolNot(ir.Compare(">=", _D, I(0)))),
    ("x mod 0 = x, h = 0 with one head (mutant: x mod 0 = 0)",
     ir.Compare(">=", ir.BinOp("mod", _K, V("h")), I(20))),
])
def test_where_bounds_are_sound_and_refined_exactly(name, cond):
    """Interval bounds never mark a block FULL or SKIP wrongly: after refinement the layout
    equals the reference's block classes."""
    _check(ir.Where(cond), 64, 64, 16, 16)
