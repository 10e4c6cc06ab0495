"""attnlang.analysis: statistics against the dense reference (small sizes) and known formulas."""
from __future__ import annotations

import torch
from hypothesis import given, settings

from attnlang import ir
from attnlang.analysis import analyze
from attnlang.reference import mask as ref_mask
from tests.strategies import bound_patterns, lengths, num_heads
from budget import scaled

I = ir.Int


@settings(deadline=None, max_examples=scaled(15))
@given(expr=bound_patterns(allow_segment=False), lens=lengths(), heads=num_heads(3))
def test_layout_path_agrees_with_dense(expr, lens, heads):
    """The no-dense-mask path (dense_limit=0) gives the reference's exact numbers."""
    q_len, k_len = lens
    dense = ref_mask(expr, q_len, k_len, num_heads=heads)
    report = analyze(expr, q_len, k_len, num_heads=heads, block_m=16, block_n=16, dense_limit=0)
    assert sum(len(g.heads) for g in report.groups) == heads
    for g in report.groups:
        m = dense[g.heads[0]]
        for h in g.heads:
            assert torch.equal(dense[h], m)
        assert g.density_exact
        assert g.kept_pairs == int(m.sum())
        empty = torch.nonzero(~m.any(1)).flatten()
        assert g.empty_rows == empty.numel()
        assert list(g.empty_row_examples) == empty[:5].tolist()
        p = torch.arange(q_len).view(-1, 1) + (k_len - q_len)
        future = bool((m & (p - torch.arange(k_len).view(1, -1) < 0)).any())
        assert g.future_keys == future
    assert abs(report.density - float(dense.double().mean())) < 1e-12


def test_window_numbers_at_scale():
    """window(512) at 2^16: exact density by formula, FLOPs and block density from the layout."""
    n, w = 1 << 16, 512
    report = analyze(ir.Window(I(w), I(w)), n, block_m=128, block_n=128, plan=None)
    (g,) = report.groups
    kept = sum(min(n - 1, q + w) - max(0, q - w) + 1 for q in range(n))
    assert g.kept_pairs == kept and g.density_exact
    assert g.empty_rows == 0 and g.future_keys is True
    assert g.kept_blocks == 512 * 9 - 2 * (4 + 3 + 2 + 1)
    assert abs(g.block_density - g.kept_blocks / 512 ** 2) < 1e-12
    assert abs(report.flops_saved - (1 - g.kept_blocks * 128 * 128 / n ** 2)) < 1e-12
    assert 0 < report.layout_bytes < 200_000
    assert "density" in report.format()


def test_causal_rows_and_future():
    """rows(0..100): 100 rows see everything (future keys), the rest are empty."""
    report = analyze(ir.Rows(ir.Range(I(0), I(100))), 4096, block_m=64, block_n=64)
    (g,) = report.groups
    assert g.kept_pairs == 100 * 4096
    assert g.empty_rows == 4096 - 100 and g.empty_row_examples == (100, 101, 102, 103, 104)
    assert g.future_keys is True
    causal = analyze(ir.Intersect(ir.Causal(), ir.Stride(I(3))), 2048, block_m=64, block_n=64)
    assert causal.groups[0].future_keys is False


def test_sampled_density_is_flagged_and_close():
    expr = ir.Intersect(ir.Causal(), ir.Stride(I(128)))
    n = 1 << 14
    report = analyze(expr, n, block_m=128, block_n=128, count_limit=1 << 20)
    (g,) = report.groups
    assert not g.density_exact and g.empty_rows is None
    exact = sum(q // 128 + 1 for q in range(n)) / n ** 2
    assert abs(g.density - exact) < 0.2 * exact


def test_heads_are_reported_per_group():
    expr = ir.Union(ir.Intersect(ir.Heads(ir.Range(I(0), I(2))), ir.Causal()),
                    ir.Intersect(ir.Heads(ir.Range(I(2), None)), ir.Window(I(4), I(4))))
    report = analyze(expr, 256, num_heads=4, block_m=16, block_n=16)
    assert [g.heads for g in report.groups] == [(0, 1), (2, 3)]
    assert report.groups[0].future_keys is False and report.groups[1].future_keys is True


def test_plan_density_from_a_plan_object():
    class FakePlan:
        computed_pairs, kept_pairs = 1000, 900

    report = analyze(ir.Causal(), 100, plan=FakePlan(), block_m=16, block_n=16)
    assert report.plan_block_density == 1000 / 100 ** 2
    assert "plan visits 10.00%" in report.format()


def test_segments_at_scale():
    n = 1 << 15
    seg = torch.arange(n) * 4 // n
    report = analyze(ir.Intersect(ir.Segment(), ir.Causal()), n, segments=seg)
    d = n // 4
    assert report.groups[0].kept_pairs == 4 * d * (d + 1) // 2


def test_blocks_longer_than_the_sequences_evaluate_only_its_pairs(monkeypatch):
    """A 65536-token block over 1000 x 700 tokens: each evaluation covers the sequence's pairs,
    not the block's 2^32 (which took tens of GB), and the numbers are the reference's."""
    from attnlang import predicate

    largest = []
    evaluate = predicate.evaluate

    def recorded(expr, q_pos, k_pos, **kw):
        largest.append(torch.broadcast_shapes(q_pos.shape, k_pos.shape).numel())
        return evaluate(expr, q_pos, k_pos, **kw)

    monkeypatch.setattr(predicate, "evaluate", recorded)
    expr = ir.Union(ir.Intersect(ir.Causal(), ir.Window(I(5), I(0))),
                    ir.Cols(ir.Listed((I(3), I(600)))))
    report = analyze(expr, 1000, 700, block_m=1 << 16, block_n=1 << 16, dense_limit=0)
    (g,) = report.groups
    assert g.kept_pairs == int(ref_mask(expr, 1000, 700).sum()) and g.density_exact
    assert largest and max(largest) <= 1000 * 700
