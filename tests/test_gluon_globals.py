"""Bands with global rows and columns (Longformer's ``window(w) | global(0..g)``) on the Gluon
kernels, as far as a machine without a GPU can check them.

Which patterns are such bands (`band.banded_of`, against the dense masks); and the kernels' own
index arithmetic -- the pairs they keep, the tiles they leave unmasked, the blocks each tile
visits, the order of the tiles -- run as Python: the Gluon helpers' own code, with the few
scalar calls of ``gl`` they make (where, minimum, maximum, cdiv) given by Python's.  Every
division there has operands of 0 or more, where Python's floor and the GPU's truncation agree.
The kernels themselves run on sm_90 GPUs only: `benchmarks/gpu_check.py --gluon` checks them
against the float64 reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import ir
from attnlang.band import band_of, banded_of
from attnlang.reference import mask as dense_mask

from strategies import band_intersections as _bands
from budget import scaled

gh = pytest.importorskip("attnlang.gluon_hopper")
gf = pytest.importorskip("attnlang.gluon_forward")
gb = pytest.importorskip("attnlang.gluon_backward")
from gluon_python import TENSOR_GL, as_python as _python  # noqa: E402


def _bound():
    return st.one_of(st.none(), st.integers(-6, 40))


@st.composite
def _banded(draw, starting=False):
    """A band's union with one to three rows/cols/global ranges (``starting``: ranges that
    count from the start, nonempty)."""
    expr = draw(_bands())
    for _ in range(draw(st.integers(1, 3))):
        if starting:
            lo = draw(st.one_of(st.none(), st.integers(0, 40)))
            hi = draw(st.one_of(st.none(), st.integers((lo or 0) + 1, 60)))
        else:
            lo, hi = draw(_bound()), draw(_bound())
        kind = draw(st.sampled_from([ir.Rows, ir.Cols, ir.Global]))
        rng = ir.Range(None if lo is None else ir.Int(lo), None if hi is None else ir.Int(hi))
        expr = ir.Union(expr, kind(rng)) if draw(st.booleans()) else ir.Union(kind(rng), expr)
    return expr


def _lengths():
    return st.tuples(st.integers(1, 70), st.integers(1, 70))


def _expected(found, Lq, Lk):
    """The dense mask of band | rows | cols."""
    (back, ahead), rows, cols = found
    p = torch.arange(Lq)[:, None] + (Lk - Lq)
    k = torch.arange(Lk)[None, :]
    d = p - k
    keep = (d <= (Lq + Lk if back is None else back)) & (d >= -(Lq + Lk if ahead is None else ahead))
    for span, x in ((rows, p), (cols, k)):
        if span is not None:
            start, stop = (-Lq - Lk if span[0] is None else span[0]), \
                (Lq + Lk if span[1] is None else span[1])
            keep = keep | ((x >= start) & (x < stop))
    return keep


@settings(max_examples=scaled(200), deadline=None)
@given(_banded(), _lengths())
def test_banded_of_names_exactly_the_kept_pairs(expr, lengths):
    """Where banded_of finds (band, rows, cols), the pattern keeps exactly those pairs at any
    lengths (bottom-right aligned queries included)."""
    found = banded_of(expr)
    if found is not None:
        assert torch.equal(dense_mask(expr, *lengths)[0], _expected(found, *lengths))


@settings(max_examples=scaled(100), deadline=None)
@given(_banded(starting=True))
def test_banded_of_finds_every_band_with_one_range_of_each_kind(expr):
    """A band with ranges that count from the start is found whenever the ranges of each kind
    are one interval (a single term of each kind, with global counting as both)."""
    terms = []
    node = expr
    while isinstance(node, ir.Union):
        is_range = isinstance(node.right, (ir.Rows, ir.Cols, ir.Global))
        terms.append(node.right if is_range else node.left)
        node = node.left if is_range else node.right
    terms.append(node)
    kinds = [type(t) for t in terms if isinstance(t, (ir.Rows, ir.Cols, ir.Global))]
    rows = sum(k in (ir.Rows, ir.Global) for k in kinds)
    cols = sum(k in (ir.Cols, ir.Global) for k in kinds)
    band = [t for t in terms if not isinstance(t, (ir.Rows, ir.Cols, ir.Global))]
    if rows <= 1 and cols <= 1 and band and band_of(band[0]) is not None:
        assert banded_of(expr) is not None


def test_banded_of_examples():
    def of(text):
        return banded_of(attnlang.parse(f"pattern x = {text}")["x"].ir)
    assert of("window(512) | global(0..128)") == ((512, 512), (0, 128), (0, 128))
    assert of("causal & window(64) | rows(..16) | cols(3..)") == ((64, 0), (None, 16), (3, None))
    assert of("causal | cols(0..4) | cols(4..9)") == ((None, 0), None, (0, 9))
    assert of("causal | cols(0..4) | cols(5..9)") is None  # key 4 is not a global column
    assert of("window(8) | global(-4..)") is None  # the last 4: where depends on Lk
    assert of("window(8) | cols(every(4))") is None
    assert of("window(8)") is None  # a band alone: band_of's
    assert of("rows(0..4) | cols(0..4)") is None  # no band
    assert of("causal & stride(4) | global(0..4)") is None


def _globs(found, Lq, Lk, spans=None):
    (back, ahead), rows, cols = found
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    bounds = gh.global_bounds(rows, cols, Lq, Lk)
    return back, ahead, bounds + (spans or (0, 0))


@settings(max_examples=scaled(200), deadline=None)
@given(_banded(starting=True), _lengths())
def test_the_kernels_keep_exactly_the_patterns_pairs(expr, lengths):
    """`gluon_hopper.kept`, with the bounds the host gives the kernels (`band_bounds`,
    `global_bounds`), keeps exactly the pattern's pairs."""
    found = banded_of(expr)
    if found is None:
        return
    Lq, Lk = lengths
    back, ahead, globs = _globs(found, Lq, Lk)
    p = torch.arange(Lq)[:, None] + (Lk - Lq)
    k = torch.arange(Lk)[None, :]
    keep = _python(gh.kept)(p, k, back, ahead, globs, True)
    assert torch.equal(keep, dense_mask(expr, Lq, Lk)[0])


TILES = st.sampled_from([(4, 4), (8, 4), (4, 8), (8, 16), (12, 8)])  # (query tile, key block)


def _case(expr, lengths, tile, forward):
    """(mask, back, ahead, globs, n_q, n_k, off) of a drawn case as a kernel gets it -- globs' last
    two the span of long tiles the host gives it: the forward's query tiles of global rows, the
    backward's key blocks of global columns (`heavy_span`) -- or None where the pattern is not
    such a band."""
    found = banded_of(expr)
    if found is None:
        return None
    (Lq, Lk), (BM, BN) = lengths, tile
    off, n_q, n_k = Lk - Lq, -(-Lq // BM), -(-Lk // BN)
    back, ahead, globs = _globs(found, Lq, Lk)
    span = gh.heavy_span(globs[0], globs[1], off, Lq, BM) if forward else \
        gh.heavy_span(globs[2], globs[3], 0, Lk, BN)
    return dense_mask(expr, Lq, Lk)[0], back, ahead, globs[:4] + span, n_q, n_k, off


@settings(max_examples=scaled(150), deadline=None)
@given(_banded(starting=True), _lengths(), TILES, st.integers(1, 3), st.integers(1, 2))
def test_forward_tiles_visit_every_kept_block_once_global_rows_first(expr, lengths, tile, BH,
                                                                     group):
    """The forward's `_tile_of` over every tile of BH heads: each (head, tile) once, the tiles of
    global rows of every head first; each tile's key blocks distinct, within the keys, and every
    block with a pair the tile keeps among them; and `partial_tile` false (the block unmasked)
    only where every pair of the warpgroup's rows and the block's keys is kept."""
    case = _case(expr, lengths, tile, forward=True)
    if case is None:
        return
    mask, back, ahead, globs, n_q, n_k, off = case
    (Lq, Lk), (BM, BN), (t0, t1) = lengths, tile, globs[4:]
    shape = (n_q * BH, BH, BH, n_q, group, Lq, Lk, back, ahead, globs, (0, 0, 0))
    tile_of = _python(gf._tile_of)
    block_at = _python(gh.block_at)
    partial = _python(gh.partial_tile)
    seen = []
    for index in range(n_q * BH):
        b, h, bh, m0, seq, n, _ = tile_of(index, shape, BM, BN, True, False, 0)
        seen.append((bh, m0))
        rows = mask[m0:m0 + BM]
        if index < (t1 - t0) * BH:  # a tile of global rows: one of them among its queries
            assert globs[0] <= min(m0 + BM, Lq) - 1 + off and m0 + off < globs[1]
        blocks = [block_at(seq, i, True) for i in range(n)]
        assert len(set(blocks)) == n and all(0 <= j < n_k for j in blocks)
        needed = {j for j in range(n_k) if rows[:, j * BN:(j + 1) * BN].any()}
        assert needed <= set(blocks)
        for j in blocks:
            for r0 in range(m0, m0 + BM, BM // 2):  # two "warpgroups" of BM / 2 rows
                if not partial(r0 + off, BM // 2, j * BN, BN, back, ahead, globs, True):
                    assert mask[r0:r0 + BM // 2, j * BN:(j + 1) * BN].all()
    assert sorted(seen) == [(bh, t * BM) for bh in range(BH) for t in range(n_q)]


@settings(max_examples=scaled(150), deadline=None)
@given(_banded(starting=True), _lengths(), TILES, st.integers(1, 3), st.integers(1, 4))
def test_backward_key_blocks_visit_every_kept_tile_once_global_columns_first(
        expr, lengths, tile, BH, group):
    """The backward's grid order (`heavy_first` with the global columns' key blocks) takes each
    (head, key block) once, those blocks of every head first; `_query_tiles` gives each block
    distinct query tiles within the queries, every tile with a kept pair among them, and
    `partial_tile` is false only where the tile's pairs with the block are all kept."""
    case = _case(expr, lengths, tile, forward=False)
    if case is None:
        return
    mask, back, ahead, globs, n_q, n_k, off = case
    (Lq, Lk), (BM, BN), (c0, c1) = lengths, tile, globs[4:]
    order = _python(gh.heavy_first)
    query_tiles = _python(gb._query_tiles)
    block_at = _python(gh.block_at)
    partial = _python(gh.partial_tile)
    seen = [order(index, n_k, group, BH, c0, c1) for index in range(n_k * BH)]
    assert sorted(seen) == [(bh, j) for bh in range(BH) for j in range(n_k)]
    assert {j for _, j in seen[:(c1 - c0) * BH]} == set(range(c0, c1))
    for block in range(n_k):
        keys = mask[:, block * BN:(block + 1) * BN]
        seq, n = query_tiles(block, Lq, Lk, back, ahead, globs, BM, BN, True)
        tiles = [block_at(seq, i, True) for i in range(n)]
        assert len(set(tiles)) == n and all(0 <= t < n_q for t in tiles)
        assert {t for t in range(n_q) if keys[t * BM:(t + 1) * BM].any()} <= set(tiles)
        for t in tiles:
            if not partial(t * BM + off, BM, block * BN, BN, back, ahead, globs, True):
                assert keys[t * BM:(t + 1) * BM].all()


@settings(max_examples=scaled(200), deadline=None)
@given(st.one_of(_bands(), _banded(starting=True)), _lengths(), st.sampled_from([4, 8, 16]))
def test_the_backward_keeps_exactly_a_key_blocks_pairs(expr, lengths, BN):
    """`gluon_backward._band_keep` (an S^T tile: a block of keys as rows, the queries as
    columns), run on tensors over every key block: exactly the pattern's pairs and none of keys
    past Lk -- a band without GLOBAL, a band with global rows and columns with it."""
    Lq, Lk = lengths
    found = banded_of(expr)
    if found is not None:
        back, ahead, globs = _globs(found, Lq, Lk)
    elif band_of(expr) is not None:
        back, ahead = gh.band_bounds(*band_of(expr), Lq, Lk)
        globs = (0,) * 6
    else:
        return
    keep = _python(gb._band_keep, gl=TENSOR_GL)
    band = (Lq, Lk, Lk - Lq, back, ahead, globs)
    got = torch.cat([keep(torch.arange(Lq), key0, band, BN, None, found is not None)
                     for key0 in range(0, Lk, BN)])
    assert not got[Lk:].any()
    assert torch.equal(got[:Lk], dense_mask(expr, Lq, Lk)[0].T)


def test_heavy_spans():
    """The tiles (key blocks) that meet global rows (columns) among the positions: none for an
    empty range, nor for one wholly in a last partial tile's padding."""
    assert gh.heavy_span(0, 128, 0, 8192, 128) == (0, 1)
    assert gh.heavy_span(0, 129, 0, 8192, 128) == (0, 2)
    assert gh.heavy_span(100, 300, 50, 640, 64) == (0, 4)  # positions 50 + 64 i ...
    assert gh.heavy_span(0, 10, 100, 640, 64) == (0, 0)  # rows before the first query
    assert gh.heavy_span(5, 5, 0, 640, 64) == (0, 0)
    assert gh.heavy_span(0, 10 ** 6, 0, 640, 64) == (0, 10)
    assert gh.heavy_span(31, 41, 0, 30, 8) == (0, 0)  # past Lq = 30, in tile 3's padding
    assert gh.heavy_span(29, 41, 0, 30, 8) == (3, 4)  # position 29 is tile 3's
    assert gh.heavy_span(34, 45, 5, 30, 8) == (3, 4)  # the same from offset 5
    assert gh.heavy_span(35, 45, 5, 30, 8) == (0, 0)
    assert gh.global_bounds(None, (3, None), 10, 20) == (10, 10, 3, 30)  # [Lk - Lq, Lk - Lq)
    assert gh.global_bounds((21, 25), (20, None), 10, 20) == (10, 10, 0, 0)  # past the ends
    assert gh.global_bounds((-5, 11), (19, 22), 10, 20) == (-5, 11, 19, 22)  # reach into them
    assert gh.global_bounds((0, 10 ** 9), None, 10, 20) == (0, 30, 0, 0)
    assert gh.global_bounds((None, 4), (None, 4), 10, 20) == (10, 10, 0, 4)  # rows before p 10


def test_partial_tile_is_false_only_where_every_pair_is_kept():
    """Exhaustively on small tiles: a tile `partial_tile` leaves unmasked keeps all its pairs
    (`kept`, checked against the patterns above), around every edge of the band and of the
    global rows and columns."""
    partial, keep = _python(gh.partial_tile), _python(gh.kept)
    unmasked = 0
    for back, ahead in [(3, 0), (0, 2), (5, 5), (-1, 3), (40, 40)]:
        for globs in [(0, 4, 0, 4), (2, 7, 5, 9), (-40, 3, 0, 0), (0, 0, 6, 40)]:
            globs += (0, 0)
            for m, n in [(4, 4), (3, 5)]:
                for p0 in range(-6, 20):
                    p = torch.arange(p0, p0 + m)[:, None]
                    for key0 in range(0, 20):
                        if not partial(p0, m, key0, n, back, ahead, globs, True):
                            unmasked += 1
                            k = torch.arange(key0, key0 + n)[None, :]
                            assert keep(p, k, back, ahead, globs, True).all()
    assert unmasked > 1000
