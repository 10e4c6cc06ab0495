"""The Gluon kernels' index helpers where the other tests left room (found by mutation testing):
the exact orders of `gluon_hopper.grouped` and `heavy_first`, the exact block sequence of
`two_ranges`, `partial_tile` exact on a band alone (a tile it calls partial is masked: wasted
work where all its pairs are kept), the forward's mask of a block with global rows and columns
(`gluon_forward._masked` with GLOBAL), the forward's tile order (longest rows first), and the
host's bounds within the kernels' int32.  Each check compares with a direct formula or the dense
masks, run as Python (`gluon_python.as_python`) on a machine without a GPU."""
import itertools

import pytest
import torch

gh = pytest.importorskip("attnlang.gluon_hopper")
gf = pytest.importorskip("attnlang.gluon_forward")
gb = pytest.importorskip("attnlang.gluon_backward")
from gluon_python import TENSOR_GL, as_python  # noqa: E402

INT32 = 2 ** 31 - 1


def _grouped_order(per_head, group, BH, items=None):
    """`grouped`'s order as its docstring words it: ``group`` heads at a time (the last group of
    fewer where BH is not a multiple), their items in turn -- every head's first item, then
    every head's second ... (``items``: the item each position names, default 0, 1, ...)."""
    items = list(range(per_head)) if items is None else items
    order = []
    for first in range(0, BH, group):
        heads = range(first, min(first + group, BH))
        order += [(bh, item) for item in items for bh in heads]
    return order


def test_grouped_takes_a_groups_heads_in_turn_item_by_item():
    """`grouped` over every index: exactly the order of its docstring (not only a permutation:
    a group's heads share their rows in L2, and their long items start together)."""
    grouped = as_python(gh.grouped)
    for per_head, group, BH in itertools.product(range(1, 6), range(1, 5), range(1, 8)):
        got = [grouped(i, per_head, group, BH) for i in range(per_head * BH)]
        assert got == _grouped_order(per_head, group, BH), (per_head, group, BH)


def test_heavy_first_takes_the_heavy_items_of_every_head_then_the_others_grouped():
    """`heavy_first`: the items [h0, h1) of every head first (item by item, the heads in turn),
    then every head's others -- from h1 on, then those before h0 -- in `grouped`'s order; so
    every (head, item) exactly once, for every span, one that ends at the last item included
    (global rows to the end of the sequence after some that are not)."""
    heavy_first = as_python(gh.heavy_first)
    for per_head, group, BH in itertools.product(range(1, 6), range(1, 4), range(1, 5)):
        for h0 in range(per_head + 1):
            for h1 in range(h0, per_head + 1):
                heavy = [(i % BH, h0 + i // BH) for i in range((h1 - h0) * BH)]
                rest = list(range(h1, per_head)) + list(range(h0))
                want = heavy + (_grouped_order(len(rest), group, BH, rest) if rest else [])
                got = [heavy_first(i, per_head, group, BH, h0, h1)
                       for i in range(per_head * BH)]
                assert got == want, (per_head, group, BH, h0, h1)


def test_two_ranges_is_exactly_the_union_of_its_ranges_in_order():
    """`two_ranges` and `block_at` (GLOBAL): the sequence is the blocks of [lo, hi) and
    [glo, ghi) -- no gap between two disjoint ranges, each block once, ascending -- for every
    pair of ranges the kernels give it (hi >= lo; the global range may be empty or reversed,
    e.g. global columns past the keys)."""
    two_ranges, block_at = as_python(gh.two_ranges), as_python(gh.block_at)
    for lo, glo, ghi in itertools.product(range(7), repeat=3):
        for hi in range(lo, 8):
            seq, n = two_ranges(lo, hi, glo, ghi)
            got = [block_at(seq, i, True) for i in range(n)]
            want = sorted(set(range(lo, hi)) | set(range(glo, ghi)))
            assert got == want, (lo, hi, glo, ghi, seq, n)


def _kept(p0, m, key0, n, back, ahead, globs=None):
    """Whether every pair of positions p0... (m) and keys key0... (n) is kept: the band (and
    with ``globs`` (ra, rb, ca, cb) its global rows and columns), by direct comparison."""
    p = torch.arange(p0, p0 + m)[:, None]
    k = torch.arange(key0, key0 + n)[None, :]
    keep = (p - k <= back) & (p - k >= -ahead)
    if globs is not None:
        ra, rb, ca, cb = globs
        keep = keep | ((p >= ra) & (p < rb)) | ((k >= ca) & (k < cb))
    return bool(keep.all())


def test_partial_tile_of_a_band_is_exactly_a_tile_with_a_pair_left_out():
    """`partial_tile` without GLOBAL, exhaustively on small tiles around the band's edges: true
    exactly where some pair is not kept -- masked where it must be, and a tile whose pairs are
    all kept never masked (a needless mask costs the softmax warpgroups' issue slots)."""
    partial = as_python(gh.partial_tile)
    for back, ahead in [(3, 0), (0, 2), (5, 5), (-1, 3), (2, -1), (40, 40)]:
        for m, n in [(4, 4), (3, 5), (1, 1)]:
            for p0, key0 in itertools.product(range(-6, 20), range(0, 20)):
                got = partial(p0, m, key0, n, back, ahead, (0,) * 6, False)
                assert got == (not _kept(p0, m, key0, n, back, ahead)), \
                    (back, ahead, m, n, p0, key0)


def test_partial_tile_with_global_rows_and_columns_leaves_whole_tiles_unmasked():
    """`partial_tile` with GLOBAL, exhaustively on small tiles: true where some pair is not
    kept, and false where the band alone keeps every pair, where every position is a global
    row, or where every key is a global column (the tiles the kernels leave unmasked)."""
    partial = as_python(gh.partial_tile)
    for back, ahead in [(3, 0), (0, 2), (-1, 3), (40, 40)]:
        for ra, rb, ca, cb in [(0, 4, 0, 4), (2, 7, 5, 9), (-40, 3, 0, 0), (0, 0, 6, 40),
                               (4, 9, 3, 8)]:
            globs = (ra, rb, ca, cb)
            for m, n in [(4, 4), (3, 5), (1, 1)]:
                for p0, key0 in itertools.product(range(-6, 16), range(0, 16)):
                    got = partial(p0, m, key0, n, back, ahead, globs + (0, 0), True)
                    whole = _kept(p0, m, key0, n, back, ahead) or \
                        (ra <= p0 and p0 + m <= rb) or (ca <= key0 and key0 + n <= cb)
                    if not _kept(p0, m, key0, n, back, ahead, globs):
                        assert got, (back, ahead, globs, m, n, p0, key0)
                    elif whole:
                        assert not got, (back, ahead, globs, m, n, p0, key0)


@pytest.mark.parametrize("back, ahead", [(3, 3), (0, 0), (12, -2), (None, 0), (-3, 9)])
@pytest.mark.parametrize("lengths", [(150, 150), (70, 131), (130, 90)])
def test_the_gluon_forward_masks_a_global_blocks_pairs_exactly(back, ahead, lengths):
    """`gluon_forward._masked` with GLOBAL on every block of a warpgroup's 64 rows, run on
    tensors: a masked block keeps exactly the band's pairs and its global rows' and columns',
    with keys before Lk (the keys past Lk a TMA reads as zeros: scores of 0, not -inf), and
    every pair of a block it leaves unmasked is one; on the rows that are queries."""
    Lq, Lk = lengths
    off = Lk - Lq
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    masked = as_python(gf._masked, gl=TENSOR_GL)
    BN = 16
    for ra, rb, ca, cb in [(0, 0, 0, 20), (off + 70, off + 75, 0, 0), (off + 3, off + 9, 40, 47),
                           (-300, off + 2, Lk - 5, 400)]:
        globs = (ra, rb, ca, cb, 0, 0)
        band = (Lk, off, back, ahead, globs, (0, 0, 0), Lq)
        for tile, key0 in itertools.product(range(-(-Lq // 64)), range(0, Lk + BN, BN)):
            rows = tile * 64 + torch.arange(64)
            got = masked(torch.zeros(64, BN), rows, key0, band, tile * 64, (False, (0, 0)), BN,
                         None, True, False, 0)
            p = rows[:, None] + off
            k = key0 + torch.arange(BN)[None, :]
            want = ((p - k <= back) & (p - k >= -ahead) | ((p >= ra) & (p < rb)) |
                    ((k >= ca) & (k < cb))) & (k < Lk)
            query = rows < Lq
            assert torch.equal((got == 0)[query], want[query]), (globs, tile, key0)
            assert not (got > float("-inf"))[query[:, None] & ~want].any()


def test_the_gluon_forward_takes_a_heads_longest_rows_first():
    """`gluon_forward._tile_of` without GLOBAL or GATHER (its docstring: a group's tiles
    longest rows first): on a causal band each head's query tiles come last tile first -- the
    rows that keep the most keys -- and each tile's blocks are those up to its last row's."""
    tile_of = as_python(gf._tile_of)
    Lq = Lk = 200
    BM, BN, BH, group = 32, 16, 3, 2
    n_q = -(-Lq // BM)
    back, ahead = gh.band_bounds(None, 0, Lq, Lk)
    shape = (n_q * BH, BH, BH, n_q, group, Lq, Lk, back, ahead, (0,) * 6, (0, 0, 0))
    seen = {bh: [] for bh in range(BH)}
    for index in range(n_q * BH):
        _, _, bh, m0, seq, n, _ = tile_of(index, shape, BM, BN, False, False, 0)
        assert seq[0] == 0 and n == -(-min(m0 + BM, Lq) // BN), (index, m0, seq, n)
        seen[bh].append(m0)
    for bh, starts in seen.items():
        assert starts == [t * BM for t in reversed(range(n_q))], (bh, starts)


def test_the_hosts_bounds_stay_within_the_kernels_int32():
    """`band_bounds` and `global_bounds` (the kernels' int32 arguments): a bound of any size,
    below or above the sequences' reach, is clamped to within -(Lq + Lk) ... Lq + Lk, and what
    it keeps is unchanged (no distance or position of the sequences lies beyond the reach)."""
    Lq, Lk = 10, 20
    reach = Lq + Lk
    huge = 2 ** 40
    assert gh.band_bounds(-huge, huge, Lq, Lk) == (-reach, reach)
    assert gh.band_bounds(huge, -huge, Lq, Lk) == (reach, -reach)
    assert gh.global_bounds((-huge, huge), (-huge, huge), Lq, Lk) == (-reach, reach, 0, reach)
    assert gh.global_bounds((-huge, huge), (huge, huge), Lq, Lk) == (-reach, reach, 0, 0)
    assert gh.global_bounds((huge, huge), (-huge, -huge), Lq, Lk) == (10, 10, 0, 0)  # empty
    assert gh.global_bounds((None, -huge), (None, -huge), Lq, Lk) == (10, 10, 0, 0)
    for bounds in (gh.band_bounds(-huge, huge, Lq, Lk),
                   gh.global_bounds((-huge, huge), (-huge, huge), Lq, Lk)):
        assert all(-INT32 <= x <= INT32 for x in bounds)


GLOBAL_CASES = [  # (Lq, Lk, BM, BN, (back, ahead), rows, cols): `band.banded_of`'s spans
    (40, 40, 8, 4, (3, 0), (0, 5), (0, 5)),
    (40, 40, 8, 16, (None, 0), (9, 17), None),
    (30, 50, 8, 4, (2, 2), None, (13, 22)),
    (50, 30, 12, 8, (-2, 5), (30, 41), (3, None)),
    (37, 45, 8, 8, (4, 4), (None, 12), (40, 44)),
    (45, 37, 12, 4, (0, 6), (20, None), (None, 6)),
    (30, 30, 8, 8, (3, 0), (31, 41), (31, 40)),  # both past the last partial tile's positions
    (50, 30, 12, 8, (2, 0), None, (3, 9)),  # no global rows, queries from position -20 on
]


def _spans(case):
    """(back, ahead, globs, band, wide band, n_q, n_k, off) of a GLOBAL_CASES case as the host
    gives the kernels (`band_bounds`, `global_bounds`; no spans of long tiles yet): the band's
    pairs, and the same over the key blocks' whole width (keys past Lk counted)."""
    Lq, Lk, BM, BN, (back, ahead), rows, cols = case
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    off, n_k = Lk - Lq, -(-Lk // BN)
    d = torch.arange(Lq)[:, None] + off - torch.arange(n_k * BN)[None, :]
    wide = (d <= back) & (d >= -ahead)
    globs = gh.global_bounds(rows, cols, Lq, Lk)
    return back, ahead, globs, wide[:, :Lk], wide, -(-Lq // BM), n_k, off


def _assert_visits(got, every, banded, extra, where):
    """A tile's key blocks (a key block's query tiles) with globals: all of them (``every``) where
    it is a long one, else exactly those of its band and the global ones (``extra``), or where
    its band has none, those and at most one more (an empty band interval: known)."""
    if every is not None:
        assert got == every, where
    elif banded:
        assert set(got) == banded | extra, (where, banded, extra)
    else:
        assert extra <= set(got) and len(set(got) - extra) <= 1, where


@pytest.mark.parametrize("case", GLOBAL_CASES)
def test_the_forward_tiles_with_globals_visit_exactly_their_blocks(case):
    """`_tile_of` with GLOBAL: a tile with a global row among its queries (`heavy_span`'s)
    visits every key block; any other tile exactly the blocks where its rows keep a band pair,
    and those of the global columns within the keys -- no block of a tile of ordinary rows more
    (an empty band interval aside: at most one block, known)."""
    Lq, Lk, BM, BN = case[:4]
    back, ahead, globs, band, _, n_q, n_k, off = _spans(case)
    t0, t1 = gh.heavy_span(globs[0], globs[1], off, Lq, BM)
    shape = (n_q, 1, 1, n_q, 1, Lq, Lk, back, ahead, globs + (t0, t1), (0, 0, 0))
    tile_of, block_at = as_python(gf._tile_of), as_python(gh.block_at)
    ca, cb = (None, 0) if case[6] is None else case[6]  # the pattern's own, not the host's
    k = torch.arange(Lk)
    column = (k >= (0 if ca is None else ca)) & (k < (Lk if cb is None else cb))
    columns = {j for j in range(n_k) if column[j * BN:(j + 1) * BN].any()}
    for index in range(n_q):
        _, _, _, m0, seq, n, _ = tile_of(index, shape, BM, BN, True, False, 0)
        blocks = [block_at(seq, i, True) for i in range(n)]
        heavy = globs[0] <= min(m0 + BM, Lq) - 1 + off and m0 + off < globs[1]
        assert heavy == (t0 <= m0 // BM < t1), (m0, t0, t1)
        rows = band[m0:m0 + BM]
        banded = {j for j in range(n_k) if rows[:, j * BN:(j + 1) * BN].any()}
        _assert_visits(blocks, list(range(n_k)) if heavy else None, banded, columns,
                       (m0, blocks))


@pytest.mark.parametrize("case", GLOBAL_CASES)
def test_the_backward_query_tiles_with_globals_are_exactly_their_tiles(case):
    """`_query_tiles` with GLOBAL: a key block of global columns (`heavy_span`'s blocks) meets
    every query tile; any other block exactly the tiles whose rows keep a band pair among its
    keys (keys past Lk counted, as the band alone: known) and the tiles of global rows among
    the queries."""
    Lq, Lk, BM, BN = case[:4]
    back, ahead, globs, _, wide, n_q, n_k, off = _spans(case)
    c0, c1 = gh.heavy_span(globs[2], globs[3], 0, Lk, BN)
    query_tiles, block_at = as_python(gb._query_tiles), as_python(gh.block_at)
    p = torch.arange(Lq) + off
    global_rows = (p >= globs[0]) & (p < globs[1])
    row_tiles = {t for t in range(n_q) if global_rows[t * BM:(t + 1) * BM].any()}
    for block in range(n_k):
        seq, n = query_tiles(block, Lq, Lk, back, ahead, globs + (c0, c1), BM, BN, True)
        tiles = [block_at(seq, i, True) for i in range(n)]
        every = globs[2] < min((block + 1) * BN, Lk) and block * BN < globs[3]
        assert every == (c0 <= block < c1), (block, c0, c1)
        keys = wide[:, block * BN:(block + 1) * BN]
        banded = {t for t in range(n_q) if keys[t * BM:(t + 1) * BM].any()}
        _assert_visits(tiles, list(range(n_q)) if every else None, banded, row_tiles,
                       (block, tiles))


@pytest.mark.parametrize("ahead", [0, 5, None])
def test_the_gluon_forward_masks_a_band_block_whose_last_row_alone_leaves_a_pair(ahead):
    """`_masked` without GLOBAL on the warpgroups of a causal-like band at every back distance
    around the block edges: where only a warpgroup's last row (or first) has a pair outside the
    band, the block is still masked -- exactly the band's pairs (the kernel's partial test
    spans all 64 rows)."""
    Lq = Lk = 200
    masked = as_python(gf._masked, gl=TENSOR_GL)
    BN = 16
    for back in range(-3, 140, 1):
        b, a = gh.band_bounds(back, ahead, Lq, Lk)
        if b + a < 0:
            continue
        band = (Lk, 0, b, a, (0,) * 6, (0, 0, 0), Lq)
        for tile, key0 in [(1, 0), (1, 48), (2, 64), (0, 0), (2, 112)]:
            rows = tile * 64 + torch.arange(64)
            got = masked(torch.zeros(64, BN), rows, key0, band, tile * 64, (False, (0, 0)), BN,
                         None, False, False, 0)
            d = rows[:, None] - (key0 + torch.arange(BN)[None, :])
            want = (d <= b) & (d >= -a)
            assert torch.equal(got == 0, want), (back, ahead, tile, key0)


def test_the_backward_takes_a_last_partial_key_block_of_global_columns_first():
    """`gluon_backward.backward`'s launch with global columns at the keys' end: the span of
    long key blocks (c0, c1) is every block that meets the columns [ca, min(cb, Lk)) -- the
    last, partial block included, which must visit every query tile (a global column's
    pairs with every query)."""
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append(dict(zip(kernel.arg_names, args)))
    B, H, L, D = 1, 1, 1000, 128
    q, k, v, out, do = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(5))
    gb.backward(q, k, v, out, do, torch.zeros(B, H, L), 0.1, 8, 8, cols=(900, None), launch=launch)
    args = launches[-1]
    bn = gb.BN
    meets = [j for j in range(-(-L // bn))
             if j * bn < min(args["cb"], L) and args["ca"] < (j + 1) * bn]
    assert (args["c0"], args["c1"]) == (meets[0], meets[-1] + 1) == (900 // bn, -(-L // bn))


def test_the_gather_grids_model_counts_a_blocks_last_partial_query_tile():
    """`gather_group`'s model (`grid_finish`) takes each key block's length as the query tiles
    from its keys' least first query to the end, the last partial tile counted: 93 queries
    (tiles of 64 at d = 128: two tiles), 512 keys, five heads on six multiprocessors, where
    every head at once ends the model's grid more than GATHER_GAIN times earlier."""
    Lq, BH, slots, D = 93, 5, 6, 128
    first = torch.linspace(0, Lq - 1, 512).to(torch.int32)
    bm = gb.tile_config(gb.BN, D)[0]
    tiles = []
    for j in range(0, first.numel(), gb.BN):
        least = int(first[j:j + gb.BN].min())
        tiles.append(sum(1 for t in range(-(-Lq // bm)) if (t + 1) * bm > least))
    group = min(gb.HEAD_GROUP, BH)
    every = gb.grid_finish(tiles, group, BH, slots) > gb.GATHER_GAIN * \
        gb.grid_finish(tiles, BH, BH, slots)
    assert every  # (the case is one where the last partial tile decides)
    assert gb.gather_group(first, Lq, BH, slots, D) == BH


def test_the_backwards_tile_config_is_wide_only_for_128_key_blocks():
    """`tile_config`: WIDE's query tile and stages at its head dimensions for key blocks of BN
    only; 64-key blocks (documents, DOCS_BN) keep BM (their query ids are read in tiles of BM:
    `SEGQ_LAYOUT`'s descriptor) and STAGES' stages."""
    for D in (64, 128):
        assert gb.tile_config(gb.DOCS_BN, D) == (gb.BM, gb.STAGES[D])
        assert gb.tile_config(gb.BN, D) == gb.WIDE.get(D, (gb.BM, gb.STAGES[D]))
    assert gb.tile(True) == (gb.BM, gb.DOCS_BN)
