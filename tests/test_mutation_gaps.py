"""Cases the rest of the suite did not pin down, found by mutation testing (one deliberate bug at
a time in simplify, layout_*, plan, analysis and checker; each test here fails on the bug named
in its docstring and passes on the real code).  Small and deterministic: no Hypothesis."""
from __future__ import annotations

import pytest
import torch

import attnlang
from attnlang import ir
from attnlang.reference import mask
from attnlang.simplify import simplify

from test_layout import truth_classes

I = ir.Int
V = ir.Var

LENGTHS = [(9, 9), (7, 12), (12, 5)]


def _same_mask(expr, out, lengths=LENGTHS):
    for q_len, k_len in lengths:
        assert torch.equal(mask(out, q_len, k_len), mask(expr, q_len, k_len)), \
            (str(expr), str(out), q_len, k_len)


# ---------------------------------------------------------------- simplify


@pytest.mark.parametrize("op, a, expected", [("div", 7, 0), ("div", -7, 0), ("mod", 7, 7),
                                             ("mod", -7, -7)])
def test_simplify_folds_division_by_zero_as_the_reference(op, a, expected):
    """Folding ``a div 0`` / ``a mod 0`` follows the reference (0 and a); the front end refuses
    a literal zero divisor, so only IR built by hand reaches this (mutants: ``else a`` for div,
    ``else 0`` for mod)."""
    value = ir.BinOp(op, I(a), I(0))
    assert simplify(value) == I(expected)
    expr = ir.Where(ir.Compare("==", value, I(expected)))
    assert simplify(expr) == ir.All()
    _same_mask(expr, simplify(expr))


@pytest.mark.parametrize("cond, truth", [(ir.Compare("<", I(1), I(2)), True),
                                         (ir.Compare(">", I(1), I(2)), False),
                                         (ir.BoolNot(ir.Compare("==", I(3), I(3))), False)])
def test_simplify_keeps_the_truth_of_a_bare_constant_condition(cond, truth):
    """A bare constant condition comes back as an IR comparison with the same truth value
    (mutant: ``0 == 1`` for true)."""
    out = simplify(cond)
    assert isinstance(out, ir.Compare)
    assert simplify(ir.Where(out)) == (ir.All() if truth else ir.Nothing())
    assert bool(mask(ir.Where(out), 2, 2).all()) is truth


@pytest.mark.parametrize("back, ahead", [(5, 1), (0, 1), (-1, 2), (3, 0), (0, 0), (4, -2)])
def test_causal_absorbs_only_the_windows_inside_it(back, ahead):
    """``causal | window(b, a)`` drops the window only when it lies inside ``d >= 0``:
    ``window(5, 1)`` keeps ``d = -1``, which causal does not (mutant: ``band[0] >= -1``)."""
    expr = ir.Union(ir.Causal(), ir.Window(I(back), I(ahead)))
    _same_mask(expr, simplify(expr))
    expr = ir.Union(ir.Window(I(back), I(ahead)), ir.Causal())
    _same_mask(expr, simplify(expr))


def test_double_negation_of_a_variable():
    """``-(-k)`` is ``k`` (mutant: ``--x`` folded to ``-x``), from the IR and from source."""
    expr = ir.Where(ir.Compare("<=", ir.Neg(ir.Neg(V("k"))), V("q")))
    out = simplify(expr)
    _same_mask(expr, out)
    assert out == ir.Where(ir.Compare("<=", V("k"), V("q")))
    pattern = attnlang.parse("pattern x = where(-(-k) <= q)")["x"]
    for q_len, k_len in LENGTHS:
        keep = mask(pattern.ir, q_len, k_len)[0]
        q = torch.arange(q_len)[:, None]
        k = torch.arange(k_len)[None, :]
        assert torch.equal(keep, k <= q), (q_len, k_len)


# ---------------------------------------------------------------- layouts


def _assert_layout(expr, q_len, k_len, bm=16, bn=16, segments=None, refine_limit=None,
                   exact=True):
    """The layout never marks a block FULL with a masked pair or skips one with a kept pair;
    with ``exact`` (and ``layout.exact``) every class is the true one."""
    from attnlang.layout import REFINE_LIMIT, build_layout

    limit = REFINE_LIMIT if refine_limit is None else refine_limit
    lay = build_layout(expr, q_len, k_len, bm, bn, segments=segments, refine_limit=limit)
    truth = truth_classes(mask(expr, q_len, k_len, segments=segments), bm, bn)
    cls = lay.classes()[lay.head_group.long()].long()
    assert not ((cls == 2) & (truth != 2)).any(), f"FULL with a masked pair: {expr}"
    assert not ((cls == 0) & (truth != 0)).any(), f"skipped with a kept pair: {expr}"
    if exact and lay.exact:
        assert torch.equal(cls, truth), f"not exact: {expr}"
    return lay


# ---------------------------------------------------------------- where bounds (layout_where)

d, q, k = V("d"), V("q"), V("k")

WHERE_CASES = [
    # (mutant it kills, condition)
    ("div by an interval holding 0 at its end: zero_inside with < and >",
     ir.Compare("==", ir.BinOp("div", I(-1), k), I(0))),
    ("negation's bounds swapped", ir.Compare(">=", ir.Neg(k), I(-2))),
    ("abs of a non-positive interval: lo = -lo", ir.Compare("<=", ir.Func("abs", (d,)), I(2))),
    ("abs of a non-positive interval (keys)",
     ir.Compare("<=", ir.Func("abs", (ir.BinOp("-", k, I(40)),)), I(3))),
    ("subtraction of intervals: a.lo - b.lo", ir.Compare("<=", ir.BinOp("-", q, k), I(2))),
    ("'<' can be false only when a.hi >= b.lo: a.hi > b.lo", ir.Compare("<", d, I(15))),
    ("'==' a point only when both sides are one value",
     ir.Compare("==", I(0), k)),
    ("mod by an interval of positive divisors: lo = 1",
     ir.Compare("==", ir.BinOp("mod", q, ir.BinOp("+", k, I(1))), I(0))),
    ("mod by an interval of mixed sign: hi = b.hi - 2",
     ir.Compare(">=", ir.BinOp("mod", I(-1), ir.BinOp("-", k, I(3))), I(11))),
    ("q = p - (Lk - Lq): offset sign", ir.Compare("<=", k, q)),
    ("d's bounds: p.lo - k.lo", ir.Compare(">=", d, I(0))),
]


@pytest.mark.parametrize("name, cond", WHERE_CASES, ids=[c[0] for c in WHERE_CASES])
@pytest.mark.parametrize("q_len, k_len", [(64, 64), (40, 70), (70, 40)])
def test_where_bounds_are_sound(name, cond, q_len, k_len):
    """Interval bounds of ``where`` never mark a block FULL or SKIP wrongly, with and without
    refinement of the blocks they leave undecided."""
    expr = ir.Where(cond)
    _assert_layout(expr, q_len, k_len)
    _assert_layout(expr, q_len, k_len, refine_limit=0, exact=False)


def test_where_bounds_decide_strict_comparisons_at_the_edge():
    """``d < 1`` on a block with ``d`` in [1, 31] cannot be true: SKIP from the bounds alone,
    so without refinement the layout is still the true one (mutant: ``alo <= bhi``)."""
    for cond in (ir.Compare("<", d, I(1)), ir.Compare(">", I(1), d)):
        lay = _assert_layout(ir.Where(cond), 96, 96, refine_limit=0, exact=False)
        truth = truth_classes(mask(ir.Where(cond), 96, 96), 16, 16)
        assert torch.equal(lay.classes().long(), truth)


# ---------------------------------------------------------------- document masks (layout_segment)


def test_segment_ids_given_as_a_list_of_two_ints_are_one_tensor_of_ids():
    """``[0, 1]`` at length 2 is one id per position, not a (seg_q, seg_k) pair (mutant: any
    two-element list is a pair, and the scalars are refused)."""
    from attnlang.layout import build_layout
    from attnlang.layout_segment import segment_pair

    seg_q, seg_k = segment_pair([0, 1], 2, 2)
    assert seg_q.tolist() == seg_k.tolist() == [0, 1]
    lay = build_layout(ir.Segment(), 2, 2, 16, 16, segments=[0, 1])
    assert lay.partial_blocks == 1
    assert mask(ir.Segment(), 2, 2, segments=[0, 1])[0].tolist() == [[True, False],
                                                                      [False, True]]


def test_boolean_segment_ids_are_refused():
    """Segment ids are integers; a bool tensor is an error (mutant: the dtype check dropped)."""
    from attnlang.layout import build_layout

    ids = torch.tensor([True] * 8 + [False] * 8)
    with pytest.raises(ValueError, match="integer"):
        build_layout(ir.Segment(), 16, 16, 16, 16, segments=ids)
    with pytest.raises(ValueError, match="integer"):
        mask(ir.Segment(), 16, 16, segments=ids)


def test_document_layout_counts_the_general_paths_unknown_blocks(monkeypatch):
    """Over the refine limit, the document path reports PARTIAL exactly the blocks the general
    classifier would leave UNKNOWN: a block whose ``d`` range starts at ``-ahead`` lies inside
    the band (mutant: ``d_min > -ahead`` counts it, crossing the limit too early)."""
    from attnlang import layout, layout_segment

    expr = attnlang.parse("pattern x = window(20, 15) & segment")["x"].ir
    ids = torch.tensor([0] * 10 + [1] * 30 + [2] * 24)
    for units in range(0, 12):
        limit = units * 16 * 16
        fast = layout.build_layout(expr, 64, 64, 16, 16, segments=ids, refine_limit=limit)
        with monkeypatch.context() as m:
            m.setattr(layout_segment, "band_of", lambda e: None)
            slow = layout.build_layout(expr, 64, 64, 16, 16, segments=ids, refine_limit=limit)
        assert fast.exact == slow.exact, limit
        assert torch.equal(fast.classes(), slow.classes()), limit


def test_unsorted_key_ids_with_a_query_id_above_every_key_id():
    """Unsorted (but contiguous) key ids and a query id larger than all of them: that query
    keeps nothing (mutant: ``perm[i0]`` unclamped, an IndexError)."""
    seg_k = torch.tensor([3] * 6 + [1] * 5 + [2] * 9)
    seg_q = torch.tensor([9] * 7 + [1] * 6 + [3] * 7)
    for source in ("segment", "causal & segment", "window(4, 2) & segment"):
        expr = attnlang.parse(f"pattern x = {source}")["x"].ir
        _assert_layout(expr, 20, 20, segments=(seg_q, seg_k))


# ---------------------------------------------------------------- plans


def _plan_pairs(plan, q_len, k_len):
    """[Lq, Lk] count of the components keeping each pair, from their layouts (FULL blocks
    by area, PARTIAL blocks through the predicate), mapped back to original positions."""
    count = torch.zeros(q_len, k_len, dtype=torch.int64)
    for comp in plan.components:
        pred = mask(comp.predicate, q_len, k_len)[0]
        for qa, ka, lay in zip(comp.q_axes, comp.k_axes, comp.layouts):
            qp, kp = qa.positions(), ka.positions()
            cls = lay.classes()[0].long()
            visited = (cls > 0).repeat_interleave(lay.block_m, 0)[:qa.length]
            visited = visited.repeat_interleave(lay.block_n, 1)[:, :ka.length]
            count[qp[:, None], kp[None, :]] += (pred[qp][:, kp] & visited).long()
    return count


@pytest.mark.parametrize("source", ["causal - stride(4)", "window(9, 3) - stride(3)",
                                    "(causal - stride(5)) | cols({1})"])
def test_a_stride_under_a_difference_is_not_a_residue_factor(source):
    """``a - stride(s)`` keeps pairs with ``d mod s != 0``: residue classes of ``s`` never hold
    them, so the term must not become a residue component (mutant: ``_factors`` returns the
    right side of a difference uncomplemented)."""
    expr = attnlang.parse(f"pattern x = {source}")["x"].ir
    for q_len, k_len in [(40, 40), (33, 50)]:
        want = mask(expr, q_len, k_len)[0]
        plan = attnlang.parse(f"pattern x = {source}")["x"].plan(q_len, k_len, block_m=16,
                                                                  block_n=16)
        assert torch.equal(_plan_pairs(plan, q_len, k_len), want.long()), source
        assert plan.kept_pairs == int(want.sum())


def test_several_strides_split_by_the_largest_modulus():
    """``stride(2) & stride(8)`` is dense in the residue classes of 8, as ``stride(8)`` is
    (mutant: ``min(strides)``: classes of 2, a quarter of each visited pair kept)."""
    from attnlang.plan import RESIDUE, build_plan, decompose

    both = ir.Intersect(ir.Causal(), ir.Intersect(ir.Stride(I(2)), ir.Stride(I(8))))
    alone = ir.Intersect(ir.Causal(), ir.Stride(I(8)))
    (spec,) = decompose(both)
    assert (spec.kind, spec.modulus) == (RESIDUE, 8)
    plan = build_plan(both, 256, block_m=16, block_n=16)
    ref = build_plan(alone, 256, block_m=16, block_n=16)
    assert plan.kept_pairs == ref.kept_pairs == int(mask(alone, 256, 256).sum())
    assert plan.computed_pairs == ref.computed_pairs


# ---------------------------------------------------------------- analysis


def test_empty_rows_are_queries_without_keys():
    """Empty rows count queries (rows of the mask), not keys (mutant: ``any(0)``)."""
    from attnlang.analysis import analyze

    cols0 = ir.Cols(ir.Listed((I(0),)))
    (g,) = analyze(cols0, 32, 48, block_m=16, block_n=16).groups
    assert (g.empty_rows, g.empty_row_examples) == (0, ())
    rows3 = ir.Rows(ir.Listed((I(3),)))
    (g,) = analyze(rows3, 32, 32, block_m=16, block_n=16).groups
    assert g.empty_rows == 31 and g.empty_row_examples == (0, 1, 2, 4, 5)


def _conservative_layouts(monkeypatch):
    """``analyze`` with layouts that never refine UNKNOWN blocks (as at large sizes)."""
    from attnlang import analysis, layout

    def lazy(*args, **kw):
        return layout.build_layout(*args, refine_limit=0, **kw)

    monkeypatch.setattr(analysis, "build_layout", lazy)


def test_future_keys_of_a_conservative_layout_are_searched(monkeypatch):
    """A conservative layout of ``pattern - causal`` with partial blocks does not by itself mean
    future keys: they are searched (mutant: any partial block says yes), and an incomplete
    search says "undecided", not "no" (mutant: ``False``)."""
    from attnlang.analysis import analyze

    _conservative_layouts(monkeypatch)
    past = ir.Where(ir.Compare(">=", d, I(0)))  # causal, written so that bounds leave UNKNOWN
    (g,) = analyze(past, 64, block_m=16, block_n=16).groups
    assert g.future_keys is False
    one = ir.BoolOp("and", ir.Compare("==", q, I(60)), ir.Compare("==", k, I(63)))
    late = ir.Where(ir.BoolOp("or", ir.Compare(">=", d, I(0)), one))  # one future pair, late
    (g,) = analyze(late, 64, block_m=16, block_n=16).groups
    assert g.future_keys is True
    # the limit allows the four partial blocks: the pair in the last one is found (mutant:
    # one block fewer searched, "undecided"); a limit of one block cannot see it
    (g,) = analyze(late, 64, block_m=16, block_n=16, count_limit=4 * 256).groups
    assert g.future_keys is True
    (g,) = analyze(late, 64, block_m=16, block_n=16, count_limit=256).groups
    assert g.future_keys is None


def test_partial_blocks_counted_within_the_limit_are_exact():
    """Exactly ``count_limit`` pairs of partial blocks are still counted exactly (mutant:
    ``<`` samples them and flags the density as an estimate)."""
    from attnlang.analysis import analyze

    expr = ir.Window(I(5), I(5))
    full = analyze(expr, 64, block_m=16, block_n=16, dense_limit=0)
    (g,) = full.groups
    assert g.density_exact and g.partial_blocks > 0
    limit = g.partial_blocks * 16 * 16
    (h,) = analyze(expr, 64, block_m=16, block_n=16, dense_limit=0, count_limit=limit).groups
    assert h.density_exact and h.kept_pairs == g.kept_pairs == int(mask(expr, 64, 64).sum())


# ---------------------------------------------------------------- checker limits


def _error(source):
    with pytest.raises(attnlang.AttnError) as info:
        attnlang.parse(source, "lim.attn")
    return info.value


def test_inlined_size_limit_is_exactly_max_nodes():
    """A pattern of exactly MAX_NODES nodes is accepted, one more is not (mutant: ``>=``)."""
    from attnlang.checker import MAX_NODES, measure

    base = "cols({" + ", ".join(str(i) for i in range(94)) + "})"  # 96 nodes
    lines = [f"pattern p0 = {base}"] + [f"pattern p{i} = p{i - 1} | p{i - 1}"
                                        for i in range(1, 11)]  # p10: 1024 * 97 - 1 nodes
    for extra, ok in ((670, True), (671, False)):
        last = "pattern big = p10 | cols({" + ", ".join("0" * extra) + "})"
        source = "\n".join(lines + [last])
        if ok:
            assert measure(attnlang.parse(source)["big"].decl.body)[0] == MAX_NODES
        else:
            assert "too large" in _error(source).message


def test_inlined_depth_limit_is_exactly_max_depth():
    """Inlined to 201 levels: the depth error itself (mutant: ``> MAX_DEPTH + 1`` lets it
    through to the print-back check, which refuses it with another message)."""
    a = "pattern a = " + "~" * 100 + "all"
    err = _error(a + "\npattern b = " + "~" * 100 + "a")
    assert (err.line, err.column) == (2, 9)
    assert err.message.endswith("inlined (more than 200 levels)"), err.message


def test_too_large_reference_is_reported_at_the_reference():
    """The node budget stops at the reference that crosses MAX_NODES, before building the
    pattern (mutant: budget check relaxed; the error then points at the declaration)."""
    lines = ["pattern p0 = cols({0})"] + [f"pattern p{i} = p{i - 1} | p{i - 1}"
                                          for i in range(1, 16)]
    err = _error("\n".join(lines))
    assert (err.line, err.column) == (16, 21)
    assert "too large" in err.message
