"""The forward of a gather pattern on the Gluon kernel (the template's GLUON_GATHER_FWD: each tile
reads the gather component's packed keys that its rows keep, then the blocks of its one other
component, a band or a band within chunks -- the fixed pattern), as far as a machine without a
GPU can check it.

Which modules take it (codegen's (back, ahead, chunk)), `band.chunked_band_of` against the dense
masks, `gluon_forward.gather_counts`, the kernel's tiles (`gluon_forward._tile_of` and `_block`
run as Python) covering every pair the pattern keeps, and generated modules' training steps with
the kernel emulated in float64 on the tensors its descriptors read and write -- against the
dense float64 reference, with the routing rules.  The kernel itself runs on sm_90 GPUs only:
`benchmarks/gpu_check.py --only "cols("` checks it there."""
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

import attnlang
from attnlang import ir
from attnlang.band import band_of, chunked_band_of
from attnlang.cache import load_module
from attnlang.plan import decompose
from attnlang.predicate import evaluate
from attnlang.reference import mask as dense_mask

from strategies import band_intersections
from budget import scaled

gf = pytest.importorskip("attnlang.gluon_forward")
from gluon_python import TENSOR_GL, Pointer, as_python  # noqa: E402
from test_gluon_strided import _check_step, _kept  # noqa: E402

FIXED = "causal & (chunk({c}) | cols(every({c}, {a}..{c})))"


def _module(text):
    return load_module(attnlang.parse(f"pattern x = {text}")["x"])


def test_which_modules_take_the_gluon_gather_forward():
    """A gather component beside one band (chunk 0) or band within chunks; not a pattern without
    a gather component, nor one whose other component is neither."""
    assert _module(FIXED.format(c=128, a=112)).GLUON_GATHER_FWD == (None, 0, 128)
    assert _module("window(4, 0) | cols(every(16, 12..16))").GLUON_GATHER_FWD == (4, 0, 0)
    assert _module("chunk(64) | cols(every(64, 0..8))").GLUON_GATHER_FWD == (None, None, 64)
    for text in ("causal & window(1023, 0)", "causal & (window(127, 0) | stride(128))",
                 "causal & (chunk(16, 1, 0) | cols(every(16, 12..16)))",
                 "causal & segment"):
        assert _module(text).GLUON_GATHER_FWD is None, text


@settings(max_examples=scaled(60), deadline=None)
@given(band_intersections(), st.integers(1, 9), st.integers(1, 40), st.integers(0, 12))
def test_chunked_band_of_names_exactly_the_kept_pairs(band, size, Lq, extra):
    """Where `chunked_band_of` finds ((back, ahead), size), the pattern keeps exactly the band's
    pairs whose position and key share a chunk of that size (Lk >= Lq: positions from 0 on)."""
    expr = ir.Intersect(band, ir.Chunk(ir.Int(size), ir.Int(0), ir.Int(0)))
    found = chunked_band_of(expr)
    if band_of(band) is None:
        assert found is None
        return
    (back, ahead), got_size = found
    assert got_size == size and (back, ahead) == band_of(band)
    Lk = Lq + extra
    p = torch.arange(Lq)[:, None] + extra
    key = torch.arange(Lk)[None, :]
    d = p - key
    want = (d <= (Lk if back is None else back)) & (d >= -(Lk if ahead is None else ahead)) & \
        (p // size == key // size)
    assert torch.equal(dense_mask(expr, Lq, Lk)[0], want)
    assert chunked_band_of(ir.Intersect(band, ir.Chunk(ir.Int(size), ir.Int(1), ir.Int(0)))) \
        is None


def test_gather_counts():
    """The packed keys kept by each tile's first and last rows: counts from the start of
    nondecreasing first queries; None where they decrease."""
    first = torch.tensor([0, 0, 3, 5, 5, 9], dtype=torch.int32)
    assert gf.gather_counts(first, 10, 4).tolist() == [[2, 3], [3, 5], [5, 6]]
    assert gf.gather_counts(first[:0], 7, 4).tolist() == [[0, 0], [0, 0]]
    assert gf.gather_counts(torch.tensor([0, 4, 2], dtype=torch.int32), 8, 4) is None


def _tiles(module, Lq, Lk, bm, bn, heads=3, programs=None):
    """The module's gather keys, their first queries and each tile of `band_forward_kernel` for its
    GLUON_GATHER_FWD at tiles of bm queries and bn keys -- (head, m0, packed key blocks, key
    blocks, (c_lo, c_hi)) -- `_tile_of` and `_block` run as Python on the counts and first
    queries the module gives the kernel, in the order a launch of ``programs`` programs
    (default: one a tile) takes them: each program's picks, `gluon_hopper.snake`."""
    back, ahead, chunk = module.GLUON_GATHER_FWD
    keys = module._prepare(torch.zeros(1, 1, Lq, 64), torch.zeros(1, 1, Lk, 64), "dq", None, None,
                           None)[3][module.GLUON_GATHER]["kindex"]
    module._FIRSTS.clear()
    first = module._gather_first(keys, Lq, Lk)
    counts = gf.gather_counts(first, Lq, bm)
    back, ahead = gf.band_bounds(back, ahead, Lq, Lk)
    n_q = -(-Lq // bm)
    shape = (n_q * heads, heads, heads, n_q, 2, Lq, Lk, back, ahead, (0,) * 6,
             (Pointer(counts), Pointer(first), first.numel()))
    tile_of, block, snake = as_python(gf._tile_of), as_python(gf._block), as_python(gf.snake)
    tiles = n_q * heads
    programs = programs or tiles
    out = []
    for pick in (i for p in range(programs) for i in range(p, tiles, programs)):
        tile = snake(pick, programs, tiles)
        _, _, bh, m0, seq, n, cnt = tile_of(tile, shape, bm, bn, False, True, chunk)
        blocks = [block(seq, i, False, True) for i in range(n)]
        out.append((bh, m0, blocks[:seq[1]], blocks[seq[1]:], cnt))
    return keys, first, out


SHAPES = {  # the other component: causal & chunk(c), a band, bands within chunks (the last
    # keeps 1-3 keys behind in the chunk, so a chunk's first row keeps none of them)
    "fixed": FIXED, "window": "causal & (window({c}, 0) | cols(every({c}, {a}..{c})))",
    "chunked window": "(window({h}, {h}) & chunk({c})) | (causal & cols(every({c}, {a}..{c})))",
    "keys behind": "(window(3, -1) & chunk({c})) | (causal & cols(every({c}, {b}..{c})))"}


@settings(max_examples=scaled(60), deadline=None)
@given(st.sampled_from([4, 8, 16]), st.integers(1, 4), st.integers(1, 90), st.integers(0, 20),
       st.sampled_from([(8, 8), (16, 8), (8, 16), (32, 16)]), st.sampled_from(sorted(SHAPES)),
       st.integers(1, 40))
@example(4, 1, 1, 4, (8, 8), "keys behind", 1)  # (a tile whose rows keep none of the band's keys,
# its empty interval [4, 4) not at a block's start: one block, found by CI)
def test_the_forward_tiles_cover_every_kept_pair(c, width, Lq, extra, tile, shape, programs):
    """Every tile of every head once, one program a tile or persistent (``programs``, each
    taking its picks through `gluon_hopper.snake`); a tile's packed blocks are those its last
    row's keys need (0 .. cdiv(count, bn)), the packed keys below c_lo are kept by its first
    row and those below c_hi by its last, and `_masked` (run on tensors: its count-only mask
    where c_lo = c_hi, else `first`) keeps exactly the pairs of their keys that the rows keep;
    its key blocks cover each of its rows' pairs of the other component and each holds some of
    them: so with the band and chunk masks on key blocks (`test_gluon_band`'s test of
    `_masked`) it reads every pair the pattern keeps.  Lengths of any size, Lk >= Lq.  A tile
    whose rows keep none of the band's keys may hold one block of them, all its pairs masked
    (`_tile_of` gives an empty interval not at a block's start one block: wasted work, no wrong
    output; the fix, branch r63-empty-band, is not measured on a GPU yet)."""
    text = SHAPES[shape].format(c=c, a=c - width, h=c // 2, b=c - 1)
    module = _module(text)
    Lk = Lq + extra
    bm, bn = tile
    programs = min(programs, -(-Lq // bm) * 3)  # (a launch has at most one program a tile)
    keys, first, tiles = _tiles(module, Lq, Lk, bm, bn, programs=programs)
    assert sorted((bh, m0) for bh, m0, *_ in tiles) == \
        [(bh, m0) for bh in range(3) for m0 in range(0, Lq, bm)]
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    other = decompose(expr)[1 - module.GLUON_GATHER].predicate
    rows = torch.arange(Lq)[:, None]
    local = evaluate(other, rows, torch.arange(Lk)[None, :], q_len=Lq, k_len=Lk)
    masked = as_python(gf._masked, gl=TENSOR_GL)
    P = first.numel()
    band = (Lk, Lk - Lq, 0, 0, (0,) * 6, (None, Pointer(first), P), Lq)
    for bh, m0, packed, blocks, (c_lo, c_hi) in tiles:
        last = min(m0 + bm, Lq) - 1
        assert packed == list(range(-(-int((first <= last).sum()) // bn)))
        assert (c_lo, c_hi) == (int((first <= m0).sum()), int((first <= last).sum()))
        r = torch.arange(m0, last + 1)
        for b in packed:
            got = masked(torch.zeros(len(r), bn), r, b * bn, band, m0, (True, (c_lo, c_hi)), bn,
                         None, False, True, module.GLUON_GATHER_FWD[2])
            kk = torch.arange(b * bn, (b + 1) * bn)
            want = (kk < P) & (first[kk.clamp(max=P - 1)][None, :] <= r[:, None])
            assert torch.equal(got == 0, want) and not (got > float("-inf"))[~want].any()
        covered = torch.zeros(Lk, dtype=torch.bool)
        for b in blocks:
            covered[b * bn:(b + 1) * bn] = True
        need = local[m0:last + 1].any(0)
        assert not (need & ~covered).any(), (m0, blocks)
        if not need.any():  # (the band's interval is empty: at most its one block)
            assert len(blocks) <= 1, (m0, blocks)
            continue
        for b in blocks:
            assert local[m0:last + 1, b * bn:(b + 1) * bn].any(), (m0, b)


def _emulate_forward(kernel, grid, args, options, extra=()):
    """`band_forward_kernel` with GATHER emulated in float64 on the tensors its descriptors read
    and write: softmax over the packed keys (kept from each one's first query on) and the keys
    of the band within chunks; lse in natural log, -inf (out 0) on rows that keep nothing."""
    assert options["GATHER"] and not options["GLOBAL"] and not options["CLASSES"]
    a = dict(zip(kernel.arg_names, args))
    q, k, v, o, kp, vp = (a[n].base for n in ("q_desc", "k_desc", "v_desc", "o_desc", "kp_desc",
                                                "vp_desc"))
    runs = options["RUNS"]
    if runs:  # views of k and v, [B * H, count, runs, D], read in tiles of whole runs
        assert kp.dim() == 4 and kp.shape[2] == runs and kp.shape[0] == q.shape[0] * q.shape[1]
        assert a["kp_desc"].block_shape == [1, options["BN"] // runs, runs, q.shape[3]]
        assert kp.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()
    kp, vp = (t.reshape(*q.shape[:2], -1, q.shape[3]) for t in (kp, vp))
    first = a["first_ptr"].long()
    assert a["P"] == first.numel() <= kp.shape[2]
    assert torch.equal(a["counts_ptr"], gf.gather_counts(a["first_ptr"], a["Lq"],
                                                         64 * options["NUM_WG"]))
    Lq, Lk, chunk = a["Lq"], a["Lk"], options["CHUNK"]
    rows = torch.arange(Lq)[:, None]
    p, key = rows + (Lk - Lq), torch.arange(Lk)[None, :]
    keep = _kept(a["back"], a["ahead"], Lq, Lk)
    if chunk:
        keep &= p // chunk == key // chunk
    keep = torch.cat([rows >= first[None, :], keep], 1)
    kk = torch.cat([kp[:, :, :first.numel()], k], 2).double()
    vv = torch.cat([vp[:, :, :first.numel()], v], 2).double()
    s = (q.double() @ kk.transpose(-1, -2)) * (a["qk_scale"] / gf.LOG2E)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    o.copy_(torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None]) @ vv)
    a["lse_ptr"].copy_(lse.float())


@pytest.mark.parametrize("text,runs", [
    (FIXED.format(c=16, a=12), 4), ("causal & (window(5, 0) | cols(every(16, 13..16)))", 0),
    ("(window(3, -1) & chunk(16)) | (causal & cols(every(16, 15..16)))", 1)])  # (row 0: none)
def test_a_training_step_through_the_gluon_gather_forward(monkeypatch, text, runs):
    """A generated gather pattern's forward runs the Gluon kernel (emulated) where
    `_gluon_forward_ok` allows it -- head dims of GLUON_GATHER_FWD_DIMS, Lk >= Lq -- and its
    backward follows it (the `tl` kernels); output and gradients are the reference's at lengths
    that are and are not multiples of the tiles, Lk > Lq included, and (the third pattern) a row
    that keeps nothing.  At d = 128 the launch is persistent (here on 3 multiprocessors), every
    head at once (`gluon_forward.GATHER_HEAD_GROUP`); where the keys come in runs of a width
    that divides the key blocks (``runs``: 3 does not) at lengths where every run is whole,
    and k's and v's batches and heads are one dimension in memory, it reads them in place
    (RUNS), else from `_packed`'s copies."""
    module = _module(text)
    kernels = module._gluon_module("gluon_forward")
    if kernels is None:
        pytest.skip("this Triton has no Gluon")
    monkeypatch.setattr(kernels, "_SMS", {0: 3})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ran = []
    launch = module._launch

    def emulate(kernel, grid, args, options, extra=()):
        if getattr(getattr(kernel, "fn", None), "__name__", "") == "band_forward_kernel":
            a = dict(zip(kernel.arg_names, args))
            tiles = -(-a["Lq"] // (64 * options["NUM_WG"])) * a["BH"]
            persistent = options["NUM_WG"] == 2 and a["q_desc"].base.shape[-1] == 128
            assert grid == ((min(tiles, 3),) if persistent else (tiles,))
            assert a["group"] == (a["BH"] if persistent else 1)
            _emulate_forward(kernel, grid, args, options)  # (a failure: the `tl` forward, warned)
            ran.append((options["CHUNK"], options["RUNS"]))
            return None
        return launch(kernel, grid, args, options, extra)
    monkeypatch.setattr(module, "_launch", emulate)
    monkeypatch.setattr(module, "_gluon_usable", lambda *a: True)
    monkeypatch.setattr(module, "_gluon_gather_ok", lambda *a: False)  # (`tl` backward)
    monkeypatch.setattr(module, "_CALLS", {})
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    chunk = module.GLUON_GATHER_FWD[2]
    # (Lq, Lk, D, what the forward runs: None the `tl` one, else its RUNS; heads first in memory;
    # at 61 keys the last run is cut short, unless runs are of one key)
    for Lq, Lk, D, how, swap in ((64, 64, 128, runs, False), (64, 64, 128, 0, True),
                                 (50, 61, 128, runs if runs == 1 else 0, False),
                                 (40, 40, 64, None, False),
                                 (61, 50, 128, None, False)):
        torch.manual_seed(Lq + Lk)
        ran.clear()
        k, v = (torch.randn(2, 2, Lk, D).transpose(0, 1) if swap else torch.randn(2, 2, Lk, D)
                for _ in range(2))
        _check_step(module, expr, torch.randn(2, 2, Lq, D), k, v, torch.randn(2, 2, Lq, D))
        assert ran == ([] if how is None else [(chunk, how)]), (Lq, Lk, D)
    # d = 64 where a caller lets it in (`benchmarks/ab_gather_forward.py --d 64`): its own tiles
    monkeypatch.setattr(module, "GLUON_GATHER_FWD_DIMS", (64, 128))
    ran.clear()
    _check_step(module, expr, *(torch.randn(1, 2, 160, 64) for _ in range(4)))
    assert ran == [(chunk, runs)]
