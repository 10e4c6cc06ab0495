"""Block layouts (attnlang.layout) against the dense reference mask.

The truth for a block is computed from ``reference.mask``: FULL if every pair of the block is kept,
SKIPPED if none is, else PARTIAL.  Layouts must be correct always and (at these small sizes, where
refinement of UNKNOWN blocks is within budget) exact.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlang import ir
from attnlang.layout import Axis, build_layout, classify
from attnlang.reference import mask as ref_mask
from tests.strategies import bound_patterns, lengths, num_heads, segments_for

I = ir.Int
BLOCKS = st.sampled_from([16, 32, 64])


def truth_classes(keep: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """[H, Qb, Kb] block classes of a dense [H, Lq, Lk] bool mask."""
    H, Lq, Lk = keep.shape
    qb, kb = -(-Lq // bm), -(-Lk // bn)
    pad = torch.zeros(H, qb * bm, kb * bn, dtype=torch.int64)
    valid = torch.zeros_like(pad)
    pad[:, :Lq, :Lk] = keep.long()
    valid[:, :Lq, :Lk] = 1
    kept = pad.view(H, qb, bm, kb, bn).sum((2, 4))
    total = valid.view(H, qb, bm, kb, bn).sum((2, 4))
    return torch.where(kept == 0, 0, torch.where(kept == total, 2, 1))


def per_head(lay) -> torch.Tensor:
    return lay.classes()[lay.head_group.long()].long()


def assert_correct(lay, truth, exact=True):
    cls = per_head(lay)
    wrong_full = (cls == 2) & (truth != 2)
    wrong_skip = (cls == 0) & (truth != 0)
    assert not wrong_full.any(), f"FULL blocks with a masked pair: {wrong_full.nonzero()[:4]}"
    assert not wrong_skip.any(), f"skipped blocks with a kept pair: {wrong_skip.nonzero()[:4]}"
    if exact:
        assert torch.equal(cls, truth), f"not exact at {(cls != truth).nonzero()[:4]}"


def csr_rows(offsets, indices):
    offsets = offsets.long()
    return [indices[offsets[r]:offsets[r + 1]].long().tolist() for r in range(offsets.numel() - 1)]


def assert_csr_consistent(lay):
    cls = lay.classes().long()
    G, Qb, Kb = cls.shape
    for value, (off, idx), (t_off, t_idx) in (
            (2, (lay.full_offsets, lay.full_indices), (lay.full_t_offsets, lay.full_t_indices)),
            (1, (lay.partial_offsets, lay.partial_indices),
             (lay.partial_t_offsets, lay.partial_t_indices))):
        assert off.dtype == idx.dtype == t_off.dtype == t_idx.dtype == torch.int32
        rows = csr_rows(off, idx)
        assert len(rows) == G * Qb
        for r, cols in enumerate(rows):
            assert cols == sorted(set(cols))
            assert cols == torch.nonzero(cls[r // Qb, r % Qb] == value).flatten().tolist()
        t_rows = csr_rows(t_off, t_idx)
        assert len(t_rows) == G * Kb
        for c, qs in enumerate(t_rows):
            assert qs == sorted(set(qs))
            assert qs == torch.nonzero(cls[c // Kb, :, c % Kb] == value).flatten().tolist()


# ---------------------------------------------------------------- random patterns


@settings(deadline=None)
@given(data=st.data(), expr=bound_patterns(), lens=lengths(), bm=BLOCKS, bn=BLOCKS,
       heads=num_heads())
def test_random_patterns_exact_against_reference(data, expr, lens, bm, bn, heads):
    q_len, k_len = lens
    uses_segment = any(isinstance(n, ir.Segment) for n in expr.walk())
    segs = data.draw(segments_for(q_len, k_len)) if uses_segment else None
    lay = build_layout(expr, q_len, k_len, bm, bn, num_heads=heads, segments=segs)
    truth = truth_classes(ref_mask(expr, q_len, k_len, num_heads=heads, segments=segs), bm, bn)
    assert lay.exact
    assert_correct(lay, truth, exact=True)
    assert_csr_consistent(lay)
    assert lay.kept_blocks == int((truth > 0).sum())


@settings(deadline=None)
@given(expr=bound_patterns(allow_segment=False), lens=lengths(), bm=BLOCKS, bn=BLOCKS)
def test_without_refinement_still_correct(expr, lens, bm, bn):
    """With refinement disabled, UNKNOWN blocks become PARTIAL: never a wrong FULL or skip."""
    q_len, k_len = lens
    lay = build_layout(expr, q_len, k_len, bm, bn, num_heads=2, refine_limit=0)
    truth = truth_classes(ref_mask(expr, q_len, k_len, num_heads=2), bm, bn)
    assert_correct(lay, truth, exact=False)


PRIMITIVE_EXAMPLES = [
    ir.All(), ir.Nothing(), ir.Causal(), ir.Window(I(5), I(2)), ir.Window(I(-1), I(3)),
    ir.Window(I(40), I(0)), ir.Stride(I(3)), ir.Stride(I(40)), ir.Chunk(I(20), I(1), I(0)),
    ir.Chunk(I(7), I(0), I(0)), ir.Rows(ir.Range(I(3), I(40))), ir.Cols(ir.Every(I(7), I(2))),
    ir.Cols(ir.Every(I(64), ir.Range(I(48), I(64)))), ir.Global(ir.Listed((I(0), I(-1), I(50)))),
    ir.Global(ir.Range(I(-10), None)), ir.Prefix(I(33)), ir.Random(ir.Float(0.3), I(8), I(5)),
    ir.Random(ir.Float(0.5), I(40), I(5)), ir.Random(ir.Float(1.0), I(64), I(0)),
]


@pytest.mark.parametrize("expr", PRIMITIVE_EXAMPLES, ids=str)
@pytest.mark.parametrize("q_len,k_len,bm,bn", [(100, 100, 16, 16), (77, 130, 16, 32),
                                               (130, 61, 32, 16)])
def test_primitives_exact_without_refinement(expr, q_len, k_len, bm, bn):
    """Every primitive (except where) is exact from analysis alone: no element-wise work."""
    lay = build_layout(expr, q_len, k_len, bm, bn, refine_limit=0)
    assert lay.exact
    assert_correct(lay, truth_classes(ref_mask(expr, q_len, k_len), bm, bn))


def test_combinations_are_exact():
    cases = [ir.Union(ir.Causal(), ir.Complement(ir.Causal())),  # all, from two partial halves
             ir.Intersect(ir.Causal(), ir.Union(ir.Window(I(15), I(0)), ir.Stride(I(16)))),
             ir.Difference(ir.Window(I(30), I(30)), ir.Causal()),
             ir.Intersect(ir.Window(I(3), I(3)), ir.Complement(ir.Window(I(3), I(3))))]
    for expr in cases:
        lay = build_layout(expr, 120, 100, 16, 32)
        assert lay.exact
        assert_correct(lay, truth_classes(ref_mask(expr, 120, 100), 16, 32))
    assert build_layout(cases[0], 120, 100, 16, 32).partial_blocks == 0
    assert build_layout(cases[3], 120, 100, 16, 32).kept_blocks == 0


def test_where_is_refined_or_conservative():
    expr = ir.Where(ir.Compare("<=", ir.Var("d"), I(3)))  # causal-like, via where
    truth = truth_classes(ref_mask(expr, 96, 96), 16, 16)
    assert_correct(build_layout(expr, 96, 96, 16, 16), truth, exact=True)
    # interval bounds alone decide every block away from the band edge (d in [1, 31] and
    # [-15, 15] stay UNKNOWN, reported PARTIAL without refinement: here they are truly partial)
    lazy = build_layout(expr, 96, 96, 16, 16, refine_limit=0)
    assert not lazy.exact
    assert_correct(lazy, truth, exact=True)


def test_where_bounds_at_scale():
    """A band written with where behaves like window at 2^16 tokens: bounded, then refined."""
    d = ir.Var("d")
    band = ir.Where(ir.BoolOp("and", ir.Compare(">=", d, I(0)), ir.Compare("<", d, I(512))))
    lay = build_layout(band, 1 << 16)
    ref = build_layout(ir.Window(I(511), I(0)), 1 << 16)
    assert lay.exact
    assert torch.equal(lay.full_indices, ref.full_indices)
    assert torch.equal(lay.partial_indices, ref.partial_indices)
    weird = ir.Where(ir.Compare("==", ir.BinOp("mod", ir.BinOp("*", ir.Var("q"), ir.Var("k")),
                                                       I(5)), ir.Var("h")))
    for q_len, k_len in ((64, 64), (70, 33)):
        assert_correct(build_layout(weird, q_len, k_len, 16, 16, num_heads=3, refine_limit=0),
                       truth_classes(ref_mask(weird, q_len, k_len, num_heads=3), 16, 16),
                       exact=False)


def test_segments_exact_and_on_their_device():
    seg = torch.tensor([0] * 30 + [1] * 5 + [2] * 40 + [0] * 25)
    for expr, limit in ((ir.Segment(), 0), (ir.Intersect(ir.Segment(), ir.Causal()), 1 << 20)):
        lay = build_layout(expr, 100, 100, 16, 16, segments=seg, refine_limit=limit)
        assert lay.exact
        assert_correct(lay, truth_classes(ref_mask(expr, 100, segments=seg), 16, 16))
        assert lay.full_indices.device == seg.device


# ---------------------------------------------------------------- heads


def test_head_groups_share_layouts():
    expr = ir.Union(ir.Intersect(ir.Heads(ir.Range(I(0), I(2))), ir.Causal()),
                    ir.Intersect(ir.Heads(ir.Range(I(2), None)), ir.Stride(I(3))))
    lay = build_layout(expr, 70, 70, 16, 16, num_heads=5)
    assert lay.groups == ((0, 1), (2, 3, 4))
    assert lay.head_group.tolist() == [0, 0, 1, 1, 1]
    assert_correct(lay, truth_classes(ref_mask(expr, 70, num_heads=5), 16, 16))
    assert_csr_consistent(lay)
    where_h = ir.Where(ir.Compare("==", ir.BinOp("mod", ir.Var("k"), I(3)), ir.Var("h")))
    lay = build_layout(where_h, 40, 40, 16, 16, num_heads=3)
    assert len(lay.groups) == 3
    assert_correct(lay, truth_classes(ref_mask(where_h, 40, num_heads=3), 16, 16))


# ---------------------------------------------------------------- mapped axes (plan)


def sub_mask(expr, q_axis, k_axis, q_len, k_len, heads=1):
    dense = ref_mask(expr, q_len, k_len, num_heads=heads)
    qp, kp = q_axis.positions(), k_axis.positions()
    return dense[:, qp][:, :, kp]


@settings(deadline=None)
@given(expr=bound_patterns(allow_segment=False, allow_where=False), data=st.data())
def test_mapped_axes_against_reference(expr, data):
    q_len, k_len = data.draw(st.integers(20, 70)), data.draw(st.integers(20, 70))
    s = data.draw(st.integers(1, 5))
    kind = data.draw(st.sampled_from(["residue", "gather"]))
    if kind == "residue":
        rq, rk = data.draw(st.integers(0, s - 1)), data.draw(st.integers(0, s - 1))
        q_axis = Axis(-(-(q_len - rq) // s), start=rq, step=s)
        k_axis = Axis(-(-(k_len - rk) // s), start=rk, step=s)
    else:
        q_axis = Axis(q_len)
        chosen = sorted(data.draw(st.sets(st.integers(0, k_len - 1), min_size=1)))
        k_axis = Axis(len(chosen), index=torch.tensor(chosen, dtype=torch.int64))
    lay = classify(expr, q_axis, k_axis, block_m=16, block_n=16, q_len=q_len, k_len=k_len,
                   num_heads=2)
    assert lay.identity == (q_axis.is_identity and k_axis.is_identity)
    truth = truth_classes(sub_mask(expr, q_axis, k_axis, q_len, k_len, 2), 16, 16)
    assert_correct(lay, truth, exact=True)


def test_residue_stride_is_exact_without_refinement():
    """``causal & stride(8)`` in residue coordinates: all FULL/skip (no PARTIAL off-diagonal)."""
    expr = ir.Intersect(ir.Causal(), ir.Stride(I(8)))
    q_len = k_len = 200
    for r in range(8):
        q_axis = Axis(-(-(q_len - r) // 8), start=r, step=8)
        k_axis = Axis(-(-(k_len - r) // 8), start=r, step=8)
        lay = classify(expr, q_axis, k_axis, block_m=16, block_n=16, q_len=q_len, k_len=k_len,
                       refine_limit=0)
        assert lay.exact
        assert_correct(lay, truth_classes(sub_mask(expr, q_axis, k_axis, q_len, k_len), 16, 16))
    with pytest.raises(ValueError, match="identity"):
        lay.to_block_mask()


# ---------------------------------------------------------------- FlexAttention interop


@pytest.mark.parametrize("expr", [ir.Causal(), ir.Window(I(20), I(5)),
                                  ir.Union(ir.Window(I(8), I(8)), ir.Global(ir.Range(I(0), I(4)))),
                                  ir.Intersect(ir.Heads(ir.Range(I(1), None)), ir.Stride(I(3)))],
                         ids=str)
def test_block_mask_matches_flex(expr):
    from torch.nn.attention.flex_attention import create_block_mask

    from attnlang.predicate import evaluate

    q_len, k_len, H = 200, 170, 2

    def mask_mod(b, h, q_idx, kv_idx):
        return evaluate(expr, q_idx, kv_idx, q_len=q_len, k_len=k_len, heads=h, num_heads=H)

    ours = build_layout(expr, q_len, k_len, 128, 128, num_heads=H).to_block_mask()
    theirs = create_block_mask(mask_mod, 1, H, q_len, k_len, device="cpu", _compile=False)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    full_theirs = theirs.full_kv_num_blocks
    assert torch.equal(ours.full_kv_num_blocks, full_theirs)


# ---------------------------------------------------------------- cost


def test_window_at_one_million_tokens_is_linear():
    """window(512) at 2^20 tokens: fast, and no quadratic allocation (peak RSS of a child)."""
    code = textwrap.dedent("""
        import resource, sys, time, torch
        sys.path.insert(0, '.')
        torch.set_num_threads(1)  # spinning thread pools on a shared machine distort timings
        from attnlang import ir
        from attnlang.layout import build_layout
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        lay = build_layout(ir.Window(ir.Int(512), ir.Int(512)), 1 << 20)
        dt = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(dt, (peak - base) * 1024, lay.kept_blocks, lay.nbytes)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    seconds, grew, kept, nbytes = out.stdout.split()
    assert float(seconds) < 5.0
    assert int(kept) == 8192 * 9 - 2 * (4 + 3 + 2 + 1)  # key blocks m-4..m+4, clipped at ends
    # a Qb x Kb int64 array alone would be 512 MiB; an Lq x Lk mask 1 TiB
    assert int(grew) < 200 * 2 ** 20
    assert int(nbytes) < 2 * 2 ** 20


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,match", [
    (dict(q_len=0), "q_len"), (dict(q_len=64, k_len=-1), "k_len"),
    (dict(q_len=64, block_m=48), "block_m"), (dict(q_len=64, block_n=8), "block_n"),
    (dict(q_len=64, num_heads=0), "num_heads"),
])
def test_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_layout(ir.Causal(), **kwargs)


def test_bad_segments():
    with pytest.raises(ValueError, match="segments"):
        build_layout(ir.Segment(), 64)
    with pytest.raises(ValueError, match="segments"):
        build_layout(ir.Segment(), 64, segments=torch.zeros(63, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        build_layout(ir.Segment(), 64, segments=torch.zeros(64))
    with pytest.raises(ValueError, match="pair"):
        build_layout(ir.Segment(), 64, 32, segments=torch.zeros(64, dtype=torch.int64))


def test_too_large_is_refused_with_estimate():
    with pytest.raises(ValueError, match=r"about \d+ kept blocks"):
        build_layout(ir.All(), 10_000_000, block_m=16, block_n=16)


def test_enumeration_guard():
    with pytest.raises(ValueError, match=r"stride\(3\).*about \d+"):
        build_layout(ir.Stride(I(3)), 10_000_000, block_m=16, block_n=16)
    with pytest.raises(ValueError, match=r"random.*about \d+"):
        build_layout(ir.Random(ir.Float(0.1), I(1), I(0)), 10_000_000, block_m=16, block_n=16)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_with_our_block_mask():
    """The BlockMask's default mask_mod masks partial blocks right: flex_attention == reference."""
    from torch.nn.attention.flex_attention import flex_attention

    from attnlang.reference import attention

    expr = ir.Union(ir.Intersect(ir.Causal(), ir.Window(I(20), I(0))),
                    ir.Intersect(ir.Heads(ir.Range(I(1), None)), ir.Stride(I(7))))
    L, H = 160, 2
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, H, L, 16) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=build_layout(expr, L, num_heads=H).to_block_mask())
    ref, _ = attention(q, k, v, ref_mask(expr, L, num_heads=H)[None])
    assert (out.double() - ref).abs().max() < 1e-5


def test_picture():
    lay = build_layout(ir.Causal(), 64, 64, 16, 16)
    assert lay.to_string() == "░···\n█░··\n██░·\n███░"
    with pytest.raises(ValueError, match="group"):
        lay.to_string(group=1)


@pytest.mark.parametrize("s", [33, 40, 97, 200])
@pytest.mark.parametrize("q_len,k_len,bm,bn", [(300, 300, 16, 16), (257, 190, 16, 32),
                                               (161, 305, 32, 16), (17, 33, 16, 16)])
def test_large_stride_bands_exact(s, q_len, k_len, bm, bn):
    """Large strides visit only their diagonals; still exact without refinement."""
    for expr in (ir.Stride(I(s)), ir.Intersect(ir.Causal(), ir.Stride(I(s)))):
        lay = build_layout(expr, q_len, k_len, bm, bn, refine_limit=0)
        assert_correct(lay, truth_classes(ref_mask(expr, q_len, k_len), bm, bn),
                       exact=isinstance(expr, ir.Stride))


def test_large_stride_cost_follows_kept_blocks():
    import time

    t = time.perf_counter()
    lay = build_layout(ir.Stride(I(4096)), 1 << 18, block_m=16, block_n=16)
    # 2^28 block pairs in all; visited: one key block per band, 64 bands per query block
    assert lay.kept_blocks == (1 << 14) * 64 and lay.full_blocks == 0
    assert time.perf_counter() - t < 15


def test_classify_subset_of_heads_and_axis_errors():
    expr = ir.Intersect(ir.Heads(ir.Listed((I(-1),))), ir.Causal())  # only the last head
    lay = classify(expr, Axis(40), Axis(40), block_m=16, block_n=16, q_len=40, k_len=40,
                   num_heads=4, heads=[1, 3])
    assert lay.num_heads == 2 and lay.groups == ((1,), (3,))
    assert lay.kept_blocks == 6 and lay.head_group.tolist() == [0, 1]
    with pytest.raises(ValueError, match="q_axis"):
        classify(expr, Axis(10, start=35), Axis(40), block_m=16, block_n=16, q_len=40, k_len=40)
    with pytest.raises(ValueError, match="k_axis.step"):
        classify(expr, Axis(10), Axis(4, step=0), block_m=16, block_n=16, q_len=40, k_len=40)
    with pytest.raises(ValueError, match="heads"):
        classify(expr, Axis(10), Axis(4), block_m=16, block_n=16, q_len=40, k_len=40, heads=[])


@given(st.integers(0, 40), st.integers(1, 12), st.integers(0, 6), st.integers(1, 9),
       st.integers(0, 4))
def test_gather_axis_runs_are_exactly_its_positions(start, width, gap, count, noise):
    """`Axis.runs` gives (start, period, width, count) only where the positions are exactly the
    runs ``start + period * i + j`` (j < width), and finds them wherever they are; a run cut
    short, split or moved, or a stray position, are not runs at a period (the index sets of `every`
    and of ranges)."""
    period = width + gap
    runs = [start + period * i + j for i in range(count) for j in range(width)]
    positions = list(runs)
    if noise == 1 and count > 1:  # the last run cut short
        positions = positions[:-1]
    elif noise == 2:  # a stray position after the runs
        positions.append(positions[-1] + period + 2)
    elif noise == 3 and count > 2 and gap:  # the last run moved one later
        positions = positions[:-width] + [p + 1 for p in positions[-width:]]
    elif noise == 4 and count > 1 and gap:  # the last position one later: a run split
        positions[-1] += 1
    got = Axis(len(positions), index=torch.tensor(positions)).runs()
    if got is not None:  # sound: exactly the positions
        s, p, w, n = got
        assert [s + p * i + j for i in range(n) for j in range(w)] == positions
    if positions == runs:  # complete: runs that touch (no gap) are one run
        assert got == ((start, period, width, count) if gap and count > 1 else
                       (start, width * count, width * count, 1))
    elif gap and width > 1:  # (runs of one position: a stray or a dropped one may be runs too)
        assert got is None, (positions, got)
    assert Axis(5).runs() is None and Axis(0, index=torch.tensor([])).runs() is None
