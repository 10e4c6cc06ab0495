"""The order in which a launch's programs take the heads (NOTES round 23): the `tl` query
programs of causal-like patterns take two heads at a time on short sequences (`_interleaved`,
INTERLEAVE), the Gluon backward's grid takes HEAD_GROUP heads at a time except where every
block has the same rows, and the Gluon forward's takes heads in pairs at d = 128 where rows grow
(NOTES round 31) but a gather pattern's every head at once, persistent, each program's picks
going back and forth (`gluon_hopper.snake`, NOTES round 59).  Outputs and gradients must not
depend on it."""
import types

import pytest
import torch
from hypothesis import given, settings, strategies as st

import attnlang
from attnlang import reference
from attnlang.cache import load_module
from attnlang.reference import mask as dense_mask
from budget import scaled


def _interleaves(text, monkeypatch, H=3, L=200, max_blocks=None):
    """(INTERLEAVE of each forward and dQ launch, largest gradient error) of a training step of
    ``text`` with H heads, against the float64 reference."""
    pattern = attnlang.parse(f"pattern x = {text}")["x"]
    module = load_module(pattern)
    for cache in ("_CALLS", "_SHAPES", "_BOUNDS", "_SEG_MEMO"):
        monkeypatch.setattr(module, cache, {})
    if max_blocks is not None:
        monkeypatch.setattr(module, "INTERLEAVE_MAX_BLOCKS", max_blocks)
    seen = []
    order = module._program_order

    def spy(options, all_tables, keys=False):
        result = order(options, all_tables, keys)
        if not keys:
            seen.append(result[1]["INTERLEAVE"])
        return result
    monkeypatch.setattr(module, "_program_order", spy)
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(2, H, L, 16) for _ in range(4))
    got = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = module.attention(*got)
    out.backward(do)
    want = [t.double().requires_grad_(True) for t in (q, k, v)]
    keep = dense_mask(pattern.ir, L, L, num_heads=H)
    ref = reference.attention(*want, mask=keep)[0]
    ref.backward(do.double())
    errors = [(out.double() - ref).abs().max().item()] + \
        [(a.grad.double() - b.grad).abs().max().item() for a, b in zip(got, want)]
    return seen, max(errors)


def test_causal_query_programs_take_heads_in_pairs(monkeypatch):
    """Causal rows grow: forward and dQ take two heads at a time (with an odd number of heads,
    so that the last turn has one), and compute what the reference does."""
    seen, error = _interleaves("causal", monkeypatch)
    assert seen and set(seen) == {2}
    assert error < 1e-4


@pytest.mark.parametrize("text,max_blocks", [("causal", 1), ("window(20)", None)])
def test_heads_one_at_a_time_on_long_sequences_and_even_rows(monkeypatch, text, max_blocks):
    """Past INTERLEAVE_MAX_BLOCKS query blocks (here forced to 1), and on rows that do not grow,
    each head's programs come together, as before."""
    seen, error = _interleaves(text, monkeypatch, max_blocks=max_blocks)
    assert seen and set(seen) == {1}
    assert error < 1e-4


@pytest.mark.parametrize("back,ahead,group,reverse", [
    (None, 0, 3, 0),        # causal: 3 heads, fewer than HEAD_GROUP
    (127, 0, 3, 0),         # a window
    (0, None, 3, 1),        # rows that reach ahead: the last key blocks are the longest
    (None, None, 1, 0),     # every pair: every block alike
    (10 ** 6, 10 ** 6, 1, 0)])  # ... however the bounds say it
def test_the_gluon_backward_grid(back, ahead, group, reverse):
    """The Gluon backward's one-dimensional grid (a program per key block, batch and head) and
    the heads it interleaves, launched through the modules' ``launch`` (recorded here)."""
    gb = pytest.importorskip("attnlang.gluon_backward")
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append((kernel, grid, args))
    B, H, L, D = 1, 3, 300, 64
    q, k, v, out, do = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(5))
    gb.backward(q, k, v, out, do, torch.zeros(B, H, L), 0.1, back, ahead, launch=launch)
    (_, _, _), (kernel, grid, args) = launches
    assert kernel is gb.band_backward_kernel
    assert grid == (-(-L // gb.BN) * B * H,)
    named = dict(zip(gb.band_backward_kernel.arg_names, args))
    assert named["group"] == group
    assert named["reverse"] == reverse
    assert gb.HEAD_GROUP == 4
    six = (torch.randn(2, 3, L, D, dtype=torch.bfloat16) for _ in range(5))
    launches.clear()
    gb.backward(*six, torch.zeros(2, 3, L), 0.1, None, 0, launch=launch)
    # six heads: groups of four (and a last one of two)
    assert dict(zip(gb.band_backward_kernel.arg_names, launches[1][2]))["group"] == 4


@pytest.mark.parametrize("D,back,ahead,persistent,group", [
    (128, None, 0, False, 2),      # causal: one program a tile, heads in pairs
    (128, 0, None, False, 2),      # rows that reach ahead grow too
    (128, None, None, True, 1),    # `all`: rows of one length, a program per multiprocessor
    (128, 127, 0, True, 1),        # a window
    (64, None, 0, False, 1),       # d = 64: one program a tile, one head at a time
    (64, None, None, False, 1)])
def test_the_gluon_forward_grid(monkeypatch, D, back, ahead, persistent, group):
    """The Gluon forward's grid (one program a tile of 64 * NUM_WG queries, or one per
    multiprocessor) and the heads a group takes, launched through ``launch`` (recorded here):
    persistent programs only where rows have about one length, heads in groups only where they
    grow (NOTES round 31)."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(gf, "_SMS", {0: 7})  # fewer multiprocessors than tiles
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append((kernel, grid, args, options))
    B, H, L = 1, 3, 1000
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(3))
    gf.forward(q, k, v, 0.1, back, ahead, launch=launch)
    [(kernel, grid, args, options)] = launches
    assert kernel is gf.band_forward_kernel
    tiles = -(-L // (64 * gf.CONFIGS[D]["NUM_WG"])) * B * H
    assert grid == ((7,) if persistent else (tiles,))
    named = dict(zip(gf.band_forward_kernel.arg_names, args))
    assert named["group"] == min(group, B * H)
    assert options["PINGPONG"] == (D == 128) and options["EARLY"] == (D == 128)


def test_the_d64_gluon_forward_gives_global_rows_tiles_of_their_own(monkeypatch):
    """At d = 64 a band with global rows and columns takes tiles of two warpgroups (128 queries)
    where a band alone takes three (192): Longformer's 128 global rows are then one tile, the
    only one that visits every key block (`gluon_forward.CONFIGS_GLOBAL`)."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(gf, "_SMS", {0: 7})
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append((grid, dict(zip(kernel.arg_names, args)), options))
    B, H, L, D = 2, 3, 1000, 64
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(3))
    gf.forward(q, k, v, 0.1, 512, 512, rows=(0, 128), cols=(0, 128), launch=launch)
    gf.forward(q, k, v, 0.1, 512, 512, launch=launch)
    (grid, args, options), (band_grid, _, band_options) = launches
    assert options["NUM_WG"] == 2 and options["EARLY"] and options["GLOBAL"]
    assert grid == (-(-L // 128) * B * H,) and (args["t0"], args["t1"]) == (0, 1)
    assert band_options["NUM_WG"] == 3 and not band_options["EARLY"]
    assert band_grid == (-(-L // 192) * B * H,)  # one program a tile (not persistent) at d = 64


@pytest.mark.parametrize("rows,cols", [((0, 128), (0, 128)), (None, (None, 200)), ((300, None), None)])
def test_the_gluon_grids_of_global_rows_and_columns(monkeypatch, rows, cols):
    """With global rows or columns (`band.banded_of`) the Gluon forward takes one program a tile
    (never persistent: a few tiles are long) and both kernels are given the bounds and the spans
    of long tiles (key blocks) that they take first (`gluon_hopper.heavy_span`)."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    gb = pytest.importorskip("attnlang.gluon_backward")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(gf, "_SMS", {0: 7})
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append((kernel, grid, dict(zip(kernel.arg_names, args)), options))
    B, H, L, D = 1, 3, 1000, 128
    q, k, v, out, do = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(5))
    gf.forward(q, k, v, 0.1, 512, 512, rows=rows, cols=cols, launch=launch)
    gb.backward(q, k, v, out, do, torch.zeros(B, H, L), 0.1, 512, 512, rows=rows, cols=cols,
                launch=launch)
    (_, fgrid, fwd, fopt), _, (_, bgrid, bwd, bopt) = launches
    rows_bounds = {((0, 128)): (0, 128), None: (0, 0), ((300, None)): (300, 2000)}[rows]
    cols_bounds = {((0, 128)): (0, 128), None: (0, 0), ((None, 200)): (0, 200)}[cols]
    tile = 64 * gf.CONFIGS[D]["NUM_WG"]
    assert fgrid == (-(-L // tile) * B * H,) and fopt["GLOBAL"] and bopt["GLOBAL"]
    assert (fwd["ra"], fwd["rb"], fwd["ca"], fwd["cb"]) == rows_bounds + cols_bounds
    assert (bwd["ra"], bwd["rb"], bwd["ca"], bwd["cb"]) == rows_bounds + cols_bounds
    assert (fwd["t0"], fwd["t1"]) == {(0, 128): (0, 1), (0, 0): (0, 0),
                                      (300, 2000): (300 // tile, -(-L // tile))}[rows_bounds]
    assert (bwd["c0"], bwd["c1"]) == {(0, 128): (0, 1), (0, 0): (0, 0), (0, 200): (0, 2)}[
        cols_bounds]
    launches.clear()
    gf.forward(q, k, v, 0.1, 512, 512, launch=launch)  # a band alone: as before
    [(_, grid, args, options)] = launches
    assert grid == (7,) and not options["GLOBAL"]


def test_the_gather_grids_schedule_model():
    """`grid_finish`, by hand: key blocks of 5 and 1 tiles, three heads, two multiprocessors.
    One head at a time: 5 and 1 start together, the second head's 5 at 1 and its 1 at 5, the
    third head's 5 at 6: 11.  Every head at once: the three 5s at 0, 0 and 5, the 1s after the
    first two: 10."""
    gb = pytest.importorskip("attnlang.gluon_backward")
    assert gb.grid_finish([5, 1], 1, 3, 2) == 11
    assert gb.grid_finish([5, 1], 2, 3, 2) == 11  # (the last group: one head)
    assert gb.grid_finish([5, 1], 3, 3, 2) == 10


def _fixed_firsts(L):
    """The fixed pattern's summary keys' first queries (its gather component is the columns
    less the chunks: each key is seen from the next chunk on; the last chunk's by none, L)."""
    positions = torch.arange(L)
    keys = positions[positions % 128 >= 112]
    return ((keys // 128 + 1) * 128).clamp(max=L).to(torch.int32)


def test_the_gather_grid_takes_every_head_where_groups_end_late(monkeypatch):
    """`gather_group` on the fixed pattern's keys at d = 128 (64-query tiles) and the H200's 132
    multiprocessors: at 8k tokens (B = 2, 16 heads) and 16k (B = 1) groups of four would end at
    204 and 380 tiles, every head at 140 and 268, so the grid takes every head; at 32k (1020
    against 1032) it keeps groups of four.  Heads no more than HEAD_GROUP, and grids past
    GATHER_MODEL_WAVES programs a multiprocessor, keep HEAD_GROUP without the model."""
    gb = pytest.importorskip("attnlang.gluon_backward")
    assert gb.HEAD_GROUP == 4
    finish = gb.grid_finish
    seen = []

    def spy(tiles, group, BH, slots):
        seen.append((group, finish(tiles, group, BH, slots)))
        return seen[-1][1]
    monkeypatch.setattr(gb, "grid_finish", spy)
    for L, BH, group, ends in ((8192, 32, 32, [204, 140]), (16384, 16, 16, [380, 268]),
                               (32768, 16, 4, [1020, 1032])):
        seen.clear()
        assert gb.gather_group(_fixed_firsts(L), L, BH, 132, 128) == group
        assert seen == [(4, ends[0]), (BH, ends[1])]
    seen.clear()
    assert gb.gather_group(_fixed_firsts(8192), 8192, 3, 132, 128) == 3
    assert gb.gather_group(_fixed_firsts(8192), 8192, 32, 3, 128) == 4  # 256 programs on 3
    assert not seen
    # keys no query keeps (first = Lq) visit no tile: nothing to even out
    assert gb.gather_group(torch.full((1024,), 8192, dtype=torch.int32), 8192, 32, 132,
                           128) == 4


def _snake():
    gh = pytest.importorskip("attnlang.gluon_hopper")
    from gluon_python import as_python
    return as_python(gh.snake)


@settings(max_examples=scaled(200), deadline=None)
@given(st.integers(1, 300), st.integers(1, 300))
def test_snake_picks_every_item_once(programs, items):
    """`gluon_hopper.snake` (a persistent program's picks, the Gluon forward's tiles): the picks
    of ``programs`` programs (each its id, then every ``programs``-th) name every item once;
    rounds go forward and back, a round's reversal over the items it has; one program an item
    keeps the order."""
    snake = _snake()
    programs = min(programs, items)  # (a launch has at most one program an item)
    named = {}
    for p in range(programs):
        for pick in range(p, items, programs):
            r = pick // programs
            named[pick] = snake(pick, programs, items)
            left = min(programs, items - r * programs)
            assert named[pick] == r * programs + (left - 1 - p if r % 2 else p)
    assert sorted(named.values()) == list(range(items))
    if programs == items:
        assert all(named[i] == i for i in named)


def test_snake_by_hand():
    """Eight items on three programs: 0 1 2 | 5 4 3 | 6 7, so program 0 takes the items 0, 5
    and 6 and program 2 the items 2 and 3; five items: 0 1 2 | 4 3."""
    snake = _snake()
    assert [[snake(i, 3, 8) for i in range(p, 8, 3)] for p in range(3)] == \
        [[0, 5, 6], [1, 4, 7], [2, 3]]
    assert [snake(i, 3, 5) for i in range(5)] == [0, 1, 2, 4, 3]


def test_only_gather_forwards_pick_back_and_forth():
    """`gluon_forward._order`: a gather pattern's persistent forward takes its tiles through
    `gluon_hopper.snake`, every other forward in turn (bands of one length ran slower with the
    snake: NOTES round 59)."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    from gluon_python import SCALAR_GL, as_python
    programs = 3
    scalar = types.SimpleNamespace(**vars(SCALAR_GL), num_programs=lambda axis: programs)
    order = as_python(gf._order, gl=scalar)
    assert [order(i, 8, False) for i in range(8)] == list(range(8))
    assert [order(i, 8, True) for i in range(8)] == [0, 1, 2, 5, 4, 3, 6, 7]


@pytest.mark.parametrize("D,minimum,head_group,grid,group", [
    (128, 0, None, (7,), 6),           # the default: persistent, every head at once
    (128, 0, 2, (7,), 2),              # persistent, two heads at a time
    (128, 1 << 30, None, (48,), 2),    # one program a tile: HEAD_GROUP's pairs
    (64, 0, None, (48,), 1)])          # d = 64: one program a tile, a head at a time
def test_the_gluon_gather_forward_grid(monkeypatch, D, minimum, head_group, grid, group):
    """The Gluon forward of a gather pattern (`packed`): persistent from GATHER_PERSISTENT_MIN
    queries at d = 128, its tiles GATHER_HEAD_GROUP heads at a time (None: every head; NOTES
    round 59), and one program a tile at d = 64 (128-query tiles, as `config_of` gives gather
    patterns) and below GATHER_PERSISTENT_MIN."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(gf, "_SMS", {0: 7})
    monkeypatch.setattr(gf, "GATHER_PERSISTENT_MIN", minimum)
    monkeypatch.setattr(gf, "GATHER_HEAD_GROUP", head_group)
    launches = []

    def launch(kernel, grid, args, options, key=()):
        launches.append((grid, dict(zip(kernel.arg_names, args)), options))
    B, H, L, P = 2, 3, 1000, 100
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.bfloat16) for _ in range(3))
    kp, vp = (torch.randn(B, H, P, D, dtype=torch.bfloat16) for _ in range(2))
    first = torch.arange(P, dtype=torch.int32) * 10
    packed = (kp, vp, first, gf.gather_counts(first, L, gf.tile_rows(D, True)))
    gf.forward(q, k, v, 0.1, 0, 0, chunk=128, packed=packed, launch=launch)
    [(got, args, options)] = launches
    assert -(-L // gf.tile_rows(D, True)) * B * H == 48
    assert got == grid and args["group"] == group and options["GATHER"]
    assert options["EARLY_Q"] == (grid == (7,))
