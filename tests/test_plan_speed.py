"""The fast plan paths give exactly what the straightforward ones give, and are fast.

* residue components reuse the layout of translated classes (``plan.lower``): compared with a
  per-class ``classify`` of every class;
* ``Plan.kept_pairs`` evaluates partial blocks in batches: compared with a per-block, per-head loop;
* document masks (``segment``, ``causal & segment``, ``window & segment``) take the dense
  difference-array path (``layout_segment``): compared with the general classifier, CSR tensors
  and the ``exact`` flag included, also where the refinement limit makes the general one
  conservative.
"""
from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlang
from attnlang import ir, layout, layout_segment, reference
from attnlang.layout import classify
from attnlang.plan import RESIDUE, build_plan
from attnlang.predicate import evaluate
from tests.strategies import bound_patterns, lengths, num_heads, segments_for

I = ir.Int
CSR_FIELDS = ("full_offsets", "full_indices", "partial_offsets", "partial_indices",
              "full_t_offsets", "full_t_indices", "partial_t_offsets", "partial_t_indices",
              "head_group")
SCALAR_FIELDS = ("q_len", "k_len", "block_m", "block_n", "num_heads", "num_q_blocks",
                 "num_k_blocks", "groups", "exact", "identity", "orig_q_len", "orig_k_len")


def assert_same_layout(a, b):
    for f in CSR_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    for f in SCALAR_FIELDS:
        assert getattr(a, f) == getattr(b, f), f


def slow_layouts(component, plan):
    """Every class classified on its own (what ``lower`` did before sharing layouts)."""
    return [classify(component.predicate, qa, ka, block_m=plan.block_m, block_n=plan.block_n,
                     q_len=plan.q_len, k_len=plan.k_len, num_heads=plan.num_heads,
                     segments=plan.segments)
            for qa, ka in zip(component.q_axes, component.k_axes)]


def slow_kept_pairs(plan):
    """Kept pairs by evaluating every visited block of every class, one block and head at a time."""
    seg_q = seg_k = None
    if plan.segments is not None:
        seg_q, seg_k = plan.segments if isinstance(plan.segments, (tuple, list)) \
            else (plan.segments, plan.segments)
    total = 0
    for comp in plan.components:
        for qa, ka, lay in zip(comp.q_axes, comp.k_axes, comp.layouts):
            cls = lay.classes()
            for g, heads in enumerate(lay.groups):
                for m, n in torch.nonzero(cls[g]).tolist():
                    qp = qa.positions(m * lay.block_m, min((m + 1) * lay.block_m, qa.length))
                    kp = ka.positions(n * lay.block_n, min((n + 1) * lay.block_n, ka.length))
                    for h in heads:
                        total += int(evaluate(comp.predicate, qp[:, None], kp[None, :],
                                              q_len=plan.q_len, k_len=plan.k_len, heads=h,
                                              num_heads=plan.num_heads, seg_q=seg_q,
                                              seg_k=seg_k).sum())
    return total


def _segments(draw, q_len, k_len, expr):
    uses = any(isinstance(n, ir.Segment) for n in expr.walk())
    return draw(segments_for(q_len, k_len)) if uses else None


@settings(deadline=None)
@given(st.data(), bound_patterns(max_leaves=4), st.integers(2, 9), lengths(160), num_heads(3),
       st.sampled_from([16, 32]), st.sampled_from([16, 32]), st.booleans())
def test_residue_plan_matches_per_class(data, pattern, s, lens, heads, bm, bn, union):
    expr = ir.Union(pattern, ir.Stride(I(s))) if union else ir.Intersect(pattern, ir.Stride(I(s)))
    q_len, k_len = lens
    segments = _segments(data.draw, q_len, k_len, expr)
    plan = build_plan(expr, q_len, k_len, block_m=bm, block_n=bn, num_heads=heads,
                      segments=segments)
    for comp in plan.components:
        for fast, slow in zip(comp.layouts, slow_layouts(comp, plan)):
            assert_same_layout(fast, slow)
    assert plan.kept_pairs == slow_kept_pairs(plan)


def test_residue_class_with_no_key_blocks_in_a_where_condition():
    """A residue class can be empty on one side (k_len 1, stride 2): bounds of a `where` condition
    over no blocks are not a constant (found by the property test above)."""
    expr = attnlang.parse("pattern x = where(q == 0 and q // 1 == 0) & stride(2)")["x"].ir
    plan = build_plan(expr, 2, 1, block_m=16, block_n=16)
    for comp in plan.components:
        for fast, slow in zip(comp.layouts, slow_layouts(comp, plan)):
            assert_same_layout(fast, slow)
    assert plan.kept_pairs == slow_kept_pairs(plan)


def test_translated_classes_share_layouts():
    expr = attnlang.parse("pattern x = causal & (window(127, 0) | stride(128))")["x"].ir
    plan = build_plan(expr, 4096, block_m=32, block_n=32)
    residue = [c for c in plan.components if c.kind == RESIDUE][0]
    assert residue.num_classes == 128
    assert len({id(lay) for lay in residue.layouts}) <= 4
    for fast, slow in zip(residue.layouts, slow_layouts(residue, plan)):
        assert_same_layout(fast, slow)


def test_position_dependent_classes_are_not_shared():
    # chunk reads absolute positions: classes are no translates of each other
    expr = attnlang.parse("pattern x = causal & stride(8) & chunk(20)")["x"].ir
    plan = build_plan(expr, 300, block_m=16, block_n=16)
    residue = plan.components[0]
    assert len({id(lay) for lay in residue.layouts}) == 8
    for fast, slow in zip(residue.layouts, slow_layouts(residue, plan)):
        assert_same_layout(fast, slow)
    assert plan.kept_pairs == slow_kept_pairs(plan)


def test_plan_with_128_classes_builds_fast():
    """A guard against a plan that grows past linear in what it keeps (such plans took minutes):
    ~0.05 s each on one idle core, bounded 100x above that.  One torch thread: two threads on a
    loaded two-core machine spun for seconds on these small ops."""
    expr = attnlang.parse("pattern x = causal & (window(127, 0) | stride(128))")["x"].ir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build_plan(expr, 1024)  # warm-up
        t0 = time.perf_counter()
        plan = build_plan(expr, 32768)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = plan.kept_pairs
        count = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert plan.components[1].num_classes == 128
    # causal & window(127, 0): 128 pairs per row (fewer in the first 127 rows); the stride
    # diagonals d = 128 t, t >= 1, add (32768 - 128 t) pairs each
    rows = sum(min(p + 1, 128) for p in range(32768))
    diagonals = sum(32768 - 128 * t for t in range(1, 256))
    assert kept == rows + diagonals
    assert build < 5.0, f"plan took {build:.2f} s (about 0.05 s expected)"
    assert count < 5.0, f"kept_pairs took {count:.2f} s (about 0.05 s expected)"


# ---------------------------------------------------------------- document masks


def _general(monkeypatch):
    """Switch the document-mask path off (the general classifier answers)."""
    monkeypatch.setattr(layout_segment, "band_of", lambda expr: None)


def _both(monkeypatch, expr, q_len, k_len, segments, **kw):
    fast = layout.build_layout(expr, q_len, k_len, segments=segments, **kw)
    with monkeypatch.context() as m:
        _general(m)
        slow = layout.build_layout(expr, q_len, k_len, segments=segments, **kw)
    return fast, slow


BANDS = st.sampled_from(["segment", "causal & segment", "segment & causal",
                         "window(40, 3) & segment", "segment & window(0, 17)",
                         "window(5, 200) & segment"])


@settings(deadline=None)
@given(st.data(), BANDS, lengths(300), num_heads(3), st.sampled_from([16, 32, 64]),
       st.sampled_from([16, 32]), st.sampled_from([1 << 24, 0, 3000]))
def test_document_layout_matches_general(data, source, lens, heads, bm, bn, limit):
    expr = attnlang.parse(f"pattern x = {source}")["x"].ir
    q_len, k_len = lens
    segments = data.draw(segments_for(q_len, k_len))
    assert layout_segment.band_of(expr) is not None
    with pytest.MonkeyPatch.context() as mp:
        fast, slow = _both(mp, expr, q_len, k_len, segments, block_m=bm, block_n=bn,
                           num_heads=heads, refine_limit=limit)
    assert_same_layout(fast, slow)


@pytest.mark.parametrize("ids", [
    [3, 3, 3, 1, 1, 7, 7, 7, 7, 0, 0, 0, 0, 0, 2, 2],   # contiguous, not sorted
    [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2, 0, 1, 1, 1],   # ids in several runs: general path
])
def test_document_layout_unsorted_ids(monkeypatch, ids):
    ids = torch.tensor(ids)
    for source in ("segment", "causal & segment", "window(9, 2) & segment"):
        expr = attnlang.parse(f"pattern x = {source}")["x"].ir
        fast, slow = _both(monkeypatch, expr, ids.numel(), ids.numel(), ids, block_m=16,
                           block_n=16)
        assert_same_layout(fast, slow)
    # distinct ids in shuffled order: every id is one run, the sorted-ids guess fails
    shuffled = torch.randperm(64, generator=torch.Generator().manual_seed(1)) * 3
    fast, slow = _both(monkeypatch, expr, 64, 64, shuffled, block_m=16, block_n=16)
    assert_same_layout(fast, slow)


def test_document_plan_at_32k_is_fast_and_exact(monkeypatch):
    expr = attnlang.parse("pattern x = causal & segment")["x"].ir
    g = torch.Generator().manual_seed(0)
    cuts = torch.sort(torch.randperm(32767, generator=g)[:63] + 1).values
    ids = torch.zeros(32768, dtype=torch.int64)
    ids[cuts] = 1
    ids = ids.cumsum(0)
    build_plan(expr, 32768, segments=ids)
    t0 = time.perf_counter()
    plan = build_plan(expr, 32768, segments=ids)
    took = time.perf_counter() - t0
    _general(monkeypatch)
    slow = build_plan(expr, 32768, segments=ids)
    assert_same_layout(plan.components[0].layouts[0], slow.components[0].layouts[0])
    assert took < 1.0, f"document plan took {took:.3f} s (a few ms expected)"


def test_plans_say_whether_their_components_run_in_one_pass():
    """Identity and gather components read the queries in order: one pass (the generated module
    has the fused kernels exactly then); a residue component means a merge."""
    from attnlang import codegen, plan

    def parse(text):
        import attnlang
        return attnlang.parse(f"pattern x = {text}")["x"]

    fixed = parse("causal & (chunk(128) | cols(every(128, 112..128)))")
    strided = parse("causal & (window(127, 0) | stride(128))")
    assert "in one pass" in fixed.plan(1024).describe()
    assert "merged per query row" in strided.plan(1024).describe()
    assert "one pass" not in parse("causal").plan(1024).describe()
    assert plan.one_pass(["identity", "gather"]) and not plan.one_pass(["identity"])
    assert not plan.one_pass(["identity", "residue"])
    assert "FUSED = (_fwd_fused, _bwd_dq_fused)" in codegen.render_module(fixed)
    assert "FUSED = None" in codegen.render_module(strided)


# ---------------------------------------------------------------- moduli beyond the lengths


@settings(deadline=None)
@given(st.data(), bound_patterns(max_leaves=3, allow_segment=False), lengths(40), num_heads(2),
       st.booleans())
def test_a_modulus_beyond_the_lengths_keeps_the_classes_with_positions(data, pattern, lens, heads,
                                                                       union):
    """``stride(s)`` with ``s`` past ``q_len + k_len`` (up to 10**12): the plan keeps only the
    classes holding a query or a key (a loop over every class never ended), and still covers
    exactly the pattern's pairs."""
    q_len, k_len = lens
    s = data.draw(st.one_of(st.integers(q_len + k_len + 1, q_len + k_len + 40),
                            st.integers(10 ** 6, 10 ** 12)))
    expr = ir.Union(pattern, ir.Stride(I(s))) if union else ir.Intersect(pattern, ir.Stride(I(s)))
    plan = build_plan(expr, q_len, k_len, block_m=16, block_n=16, num_heads=heads)
    for comp in plan.components:
        # (the pattern may hold a stride of its own, whose modulus need not pass the lengths)
        if comp.kind == RESIDUE and comp.spec.modulus > q_len + k_len:
            assert comp.num_classes <= q_len + k_len
            assert all(qa.length or ka.length for qa, ka in zip(comp.q_axes, comp.k_axes))
        for fast, slow in zip(comp.layouts, slow_layouts(comp, plan)):
            assert_same_layout(fast, slow)
    assert plan.kept_pairs == int(reference.mask(expr, q_len, k_len, num_heads=heads).sum())


def test_column_sets_with_huge_moduli_and_ranges_are_linear_in_the_length():
    text = ("causal & (chunk(1000000000) | cols(every(1000000000000, 999999999990..1000000000000)"
            " | every(7, 2..5) | 3..1000000000000))")
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    t0 = time.perf_counter()
    plan = build_plan(expr, 300, 200, block_m=16, block_n=16)
    assert time.perf_counter() - t0 < 5.0
    assert plan.kept_pairs == int(reference.mask(expr, 300, 200).sum())
