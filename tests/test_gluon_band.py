"""The Gluon forward and backward of band patterns, as far as a machine without a GPU can check
them.

Their kernels run on sm_90 GPUs only (Triton's interpreter cannot run Gluon): they are checked
against the float64 reference by `benchmarks/gpu_check.py --gluon`.  Here: which patterns are
bands (`band.band_of`, against the dense masks), the `tl` kernel that prepares the backward's
rows (in the interpreter), which calls a generated module sends to them, their fallback to the
`tl` kernels when they cannot run, the backward that follows a Gluon forward, and that they
compile for sm_90 with this machine's Triton."""
import math
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import attnlang
from attnlang import ir
from attnlang.band import band_of
from attnlang.cache import load_module
from attnlang.reference import mask as dense_mask

from strategies import bound_patterns, primitives
from budget import scaled

ROOT = Path(__file__).resolve().parents[1]


def _band_mask(back, ahead, Lq, Lk):
    d = torch.arange(Lq)[:, None] + (Lk - Lq) - torch.arange(Lk)[None, :]
    return (d <= (Lq + Lk if back is None else back)) & (d >= -(Lq + Lk if ahead is None else ahead))


def _bands():
    """Expressions over all, causal and windows, joined by & and |."""
    leaves = st.one_of(st.just(ir.All()), st.just(ir.Causal()), primitives("window"))
    return st.recursive(leaves, lambda kids: st.one_of(st.builds(ir.Intersect, kids, kids),
                                                         st.builds(ir.Union, kids, kids)),
                        max_leaves=5)


@settings(max_examples=scaled(150))
@given(st.one_of(_bands(), bound_patterns(max_leaves=4)), st.integers(1, 40), st.integers(0, 30))
def test_band_of_names_exactly_the_kept_pairs(expr, Lq, extra):
    """Where band_of finds (back, ahead), the pattern keeps exactly that band, at any lengths
    (bottom-right aligned queries included); intersections of bands are always found."""
    Lk = Lq + extra
    found = band_of(expr)
    if found is not None:
        assert torch.equal(dense_mask(expr, Lq, Lk)[0], _band_mask(*found, Lq, Lk))
    only_meets = all(isinstance(n, (ir.All, ir.Causal, ir.Window, ir.Intersect))
                     for n in _pattern_nodes(expr))
    if only_meets and dense_mask(expr, 80, 80).any():
        assert found is not None


@settings(max_examples=scaled(300), deadline=None)
@given(st.one_of(st.none(), st.integers(-40, 300)), st.one_of(st.none(), st.integers(-40, 300)),
       st.integers(1, 300), st.integers(-60, 60), st.sampled_from([0, 8, 16, 64]),
       st.integers(0, 9), st.integers(0, 30), st.sampled_from([16, 32, 64]))
def test_the_gluon_forward_masks_exactly_a_band_blocks_pairs(back, ahead, Lq, extra, chunk,
                                                              tile, block, BN):
    """`gluon_forward._masked` on a block of a band's keys, run on tensors: a block it masks
    keeps exactly the pairs in the band (with ``chunk``, whose position and key share a chunk
    too) with keys before Lk, and every pair of a block it leaves is one -- on the rows of a
    warpgroup's 64 that are queries (Lk >= Lq with chunks)."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    gh = pytest.importorskip("attnlang.gluon_hopper")
    from gluon_python import TENSOR_GL, as_python
    Lk = max(1, Lq + (abs(extra) if chunk else extra))
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    rows = tile * 64 + torch.arange(64)
    key0 = block * BN
    band = (Lk, Lk - Lq, back, ahead, (0,) * 6, (0, 0, 0), Lq)
    masked = as_python(gf._masked, gl=TENSOR_GL)
    got = masked(torch.zeros(64, BN), rows, key0, band, tile * 64, (False, (0, 0)), BN, None,
                 False, False, chunk)
    p = rows[:, None] + (Lk - Lq)
    k = key0 + torch.arange(BN)[None, :]
    want = (p - k <= back) & (p - k >= -ahead) & (k < Lk)
    if chunk:
        want &= p // chunk == k // chunk
    query = rows < Lq
    assert torch.equal((got == 0)[query], want[query])
    assert not (got > float("-inf"))[query[:, None] & ~want].any()


def _band_case(back, ahead, Lq, extra, tile):
    """(Lk, query tiles, key blocks, kept pairs, back, ahead as the kernels take them) of a
    drawn band case; bands that keep no distance are not drawn (`band.band_of` gives None)."""
    gh = pytest.importorskip("attnlang.gluon_hopper")
    Lk = max(1, Lq + extra)
    kept = _band_mask(back, ahead, Lq, Lk)
    back, ahead = gh.band_bounds(back, ahead, Lq, Lk)
    assume(back + ahead >= 0)
    return Lk, -(-Lq // tile[0]), -(-Lk // tile[1]), kept, back, ahead


@settings(max_examples=scaled(300), deadline=None)
@given(st.one_of(st.none(), st.integers(-40, 300)), st.one_of(st.none(), st.integers(-40, 300)),
       st.integers(1, 300), st.integers(-60, 60), st.sampled_from([(16, 8), (16, 16), (24, 8),
                                                                    (32, 16), (48, 32)]),
       st.integers(1, 3), st.integers(1, 3))
def test_the_gluon_forward_tiles_of_a_band_cover_its_kept_pairs(back, ahead, Lq, extra, tile, BH,
                                                                group):
    """The band forward's tiles without global rows (`gluon_forward._tile_of` and `_block` run
    as Python; the benchmark's causal and window forwards): every (head, query tile) once, each
    tile's key blocks distinct and within the keys, every key block where a row of the tile
    keeps a pair among them, and each of them with such a pair -- but a tile whose rows keep no
    key, which holds at most one block (an empty interval not at a block's start: wasted work,
    masked by `_masked`; branch r63-empty-band).  Lk of any size beside Lq."""
    gf = pytest.importorskip("attnlang.gluon_forward")
    from gluon_python import as_python
    Lk, n_q, n_k, kept, back, ahead = _band_case(back, ahead, Lq, extra, tile)
    BM, BN = tile
    shape = (n_q * BH, BH, BH, n_q, group, Lq, Lk, back, ahead, (0,) * 6, (0, 0, 0))
    tile_of, block = as_python(gf._tile_of), as_python(gf._block)
    seen = []
    for index in range(n_q * BH):
        _, _, bh, m0, seq, n, _ = tile_of(index, shape, BM, BN, False, False, 0)
        seen.append((bh, m0))
        blocks = [block(seq, i, False, False) for i in range(n)]
        assert len(set(blocks)) == n and all(0 <= j < n_k for j in blocks), (m0, blocks)
        rows = kept[m0:m0 + BM]
        needed = [j for j in range(n_k) if rows[:, j * BN:(j + 1) * BN].any()]
        assert set(needed) <= set(blocks), (m0, needed, blocks)
        if needed:
            assert set(blocks) == set(needed), (m0, needed, blocks)
        else:
            assert len(blocks) <= 1, (m0, blocks)
    assert sorted(seen) == [(bh, t * BM) for bh in range(BH) for t in range(n_q)]


@settings(max_examples=scaled(300), deadline=None)
@given(st.one_of(st.none(), st.integers(-40, 300)), st.one_of(st.none(), st.integers(-40, 300)),
       st.integers(1, 300), st.integers(-60, 60), st.sampled_from([(8, 16), (16, 16), (8, 24),
                                                                    (16, 32), (32, 48)]))
def test_the_gluon_backward_query_tiles_of_a_band_cover_its_kept_pairs(back, ahead, Lq, extra,
                                                                       tile):
    """The band backward's query tiles of a key block without global rows
    (`gluon_backward._query_tiles` run as Python): distinct tiles within the queries, every
    tile where one of the block's keys is kept by a row of it, and each of them with such a
    pair if the block's keys past Lk counted: where keys ahead are kept (back < 0) the last
    block's tiles reach the rows that would keep those keys, all their pairs masked (wasted
    work); a block whose keys no row keeps meets at most one tile (an empty interval of queries
    not at a tile's start).  Lk of any size beside Lq."""
    gb = pytest.importorskip("attnlang.gluon_backward")
    gh = pytest.importorskip("attnlang.gluon_hopper")
    from gluon_python import as_python
    Lk, n_q, n_k, kept, back, ahead = _band_case(back, ahead, Lq, extra, tile)
    BM, BN = tile
    query_tiles, block_at = as_python(gb._query_tiles), as_python(gh.block_at)
    d = torch.arange(Lq)[:, None] + (Lk - Lq) - torch.arange(n_k * BN)[None, :]
    wide = (d <= back) & (d >= -ahead)
    for j in range(n_k):
        seq, n = query_tiles(j, Lq, Lk, back, ahead, (0,) * 6, BM, BN, False)
        tiles = [block_at(seq, i, False) for i in range(n)]
        assert len(set(tiles)) == n and all(0 <= t < n_q for t in tiles), (j, tiles)
        cols = kept[:, j * BN:(j + 1) * BN]
        needed = [t for t in range(n_q) if cols[t * BM:(t + 1) * BM].any()]
        assert set(needed) <= set(tiles), (j, needed, tiles)
        whole = wide[:, j * BN:(j + 1) * BN]  # (the block's keys past Lk counted as keys)
        reach = [t for t in range(n_q) if whole[t * BM:(t + 1) * BM].any()]
        if reach:
            assert set(tiles) == set(reach), (j, reach, tiles)
        else:
            assert len(tiles) <= 1, (j, tiles)


def _pattern_nodes(expr):
    yield expr
    if isinstance(expr, (ir.Intersect, ir.Union, ir.Difference)):
        yield from _pattern_nodes(expr.left)
        yield from _pattern_nodes(expr.right)
    elif isinstance(expr, ir.Complement):
        yield from _pattern_nodes(expr.operand)


def test_band_of_examples():
    def of(text):
        return band_of(attnlang.parse(f"pattern x = {text}")["x"].ir)
    assert of("causal") == (None, 0)
    assert of("all") == (None, None)
    assert of("causal & window(1023, 0)") == (1023, 0)
    assert of("window(512)") == (512, 512)
    assert of("window(-1, 3)") == (-1, 3)
    assert of("window(10, 0) | window(0, 4)") == (10, 4)
    assert of("window(4, 1) | window(7, -5)") == (7, 1)  # distances -1..4 and 5..7 touch
    assert of("window(3, 1) | window(7, -5)") is None  # -1..3 and 5..7: distance 4 is not kept

    assert of("window(3, -2) | window(-5, 9)") is None  # distances 2..3 and -9..-5: a gap
    assert of("window(512) | global(0..128)") is None
    assert of("causal & stride(4)") is None
    assert of("causal & segment") is None


@pytest.mark.parametrize("bshd", [False, True])
def test_row_terms_pad_delta_and_base_two_lse(bshd):
    """`row_terms` (a `tl` kernel, run here in the interpreter): delta = rowsum(O * dO) and
    lse * log2(e) per row, padded to whole query tiles, +inf where the row keeps nothing or is
    padding (so the band kernel's P is 0 there), and a float32 dQ of whole query tiles, zeroed
    (the band kernel adds into it)."""
    gb = pytest.importorskip("attnlang.gluon_backward")
    torch.manual_seed(0)
    B, H, Lq, D = 2, 3, 70, 64

    def tensor():
        if bshd:
            return torch.randn(B, Lq, H, D, dtype=torch.bfloat16).transpose(1, 2)
        return torch.randn(B, H, Lq, D, dtype=torch.bfloat16)
    out, do = tensor(), tensor()
    lse = torch.randn(B, H, Lq)
    lse[0, 1, 5] = lse[1, 2, 69] = float("-inf")
    rows, dq = gb.row_terms(out, do, lse)
    lse2, delta = rows
    pad = math.ceil(Lq / gb.BM) * gb.BM
    assert lse2.shape == delta.shape == (B * H, pad)
    assert dq.shape == (B, H, pad, D) and dq.dtype == torch.float32
    assert torch.all(dq == 0)
    want_delta = (out.float() * do.float()).sum(-1).reshape(B * H, Lq)
    torch.testing.assert_close(delta[:, :Lq], want_delta, rtol=1e-5, atol=1e-5)
    assert torch.all(delta[:, Lq:] == 0)
    want_lse2 = (lse * math.log2(math.e)).reshape(B * H, Lq)
    want_lse2[torch.isinf(want_lse2)] = float("inf")
    torch.testing.assert_close(lse2[:, :Lq], want_lse2)
    assert torch.all(lse2[:, Lq:] == float("inf"))


def test_host_descriptors_of_a_checked_geometry_are_the_checked_ones_over_a_new_base():
    """`gluon_hopper.host_descriptor` checks a geometry once (Triton's own checks): a later
    descriptor of the same geometry has every field of a freshly checked one, its own base; a
    geometry that fails the checks fails every time, and an unaligned base is not taken for an
    aligned one's geometry."""
    gh = pytest.importorskip("attnlang.gluon_hopper")
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    def fields(desc):
        return {name: value for name, value in vars(desc).items() if name != "base"}
    a, b = (torch.randn(2, 3, 70, 64, dtype=torch.bfloat16) for _ in range(2))
    layout = gh.shared_layout(64, 64, torch.bfloat16)
    first, second = gh.descriptor(a, 64), gh.descriptor(b, 64)
    fresh = TensorDescriptor(b, list(b.shape), list(b.stride()), [1, 1, 64, 64], layout)
    assert first.base is a and second.base is b and type(second) is TensorDescriptor
    assert fields(second) == fields(fresh) == fields(first)
    other = type(layout)(swizzle_byte_width=64, element_bitwidth=16, rank=4)  # one field apart
    assert gh.host_descriptor(b, (1, 1, 64, 64), other).layout == other != layout
    gb = pytest.importorskip("attnlang.gluon_backward")
    flat = torch.zeros(40, dtype=torch.int32)
    for _ in range(2):  # the rank-1 ids' descriptor of the document backward
        assert gh.host_descriptor(flat, (16,), gb.SEGQ_LAYOUT).shape == [40]
        with pytest.raises(AssertionError, match="aligned"):
            gh.host_descriptor(flat[1:], (16,), gb.SEGQ_LAYOUT)
    rows = torch.zeros(1, 1, 64, 68, dtype=torch.bfloat16)[..., :64]  # rows 136 bytes apart
    for _ in range(2):
        with pytest.raises(AssertionError, match="aligned"):
            gh.descriptor(rows, 64)


def _module(text):
    return load_module(attnlang.parse(f"pattern x = {text}")["x"])


def _fake(dtype=torch.bfloat16, D=128, L=8192, Hk=None):
    q = types.SimpleNamespace(is_cuda=True, shape=(1, 4, L, D), dtype=dtype, device="cuda:0")
    k = types.SimpleNamespace(shape=(1, 4 if Hk is None else Hk, L, D))
    return q, k


NO_EXTRAS = dict(HAS_KPM=False, HAS_AM=False, HAS_BIAS=False, HAS_DROPOUT=False)


def test_which_calls_take_the_gluon_backward(monkeypatch):
    """Band patterns (and bands with global rows and columns) on sm_90 with 16-bit inputs at
    d = 128, and at d = 64 on rows of at least GLUON_MIN_KEYS_64 keys (the band's); not other
    patterns, GPUs, dtypes, head dimensions, grouped heads, dropout, masks or bias, sequences of
    more than GLUON_MAX_QUERIES queries (long context keeps the `tl` backward's memory), nor
    with ATTNLANG_GLUON=0."""
    causal, window, other = _module("causal"), _module("window(100, 0)"), \
        _module("causal & (window(127, 0) | stride(128))")
    longformer, wide = _module("window(512) | global(0..128)"), \
        _module("window(2048) | rows(0..64) | cols(..32)")
    assert causal.BAND == (None, 0) and window.BAND == (100, 0) and other.BAND is None
    assert causal.BANDED is None and other.BANDED is None and longformer.BAND is None
    assert longformer.BANDED == ((512, 512), (0, 128), (0, 128))
    assert longformer.GLUON_BAND == (512, 512)
    assert longformer.GLUON_GLOBALS == dict(rows=(0, 128), cols=(0, 128))
    assert wide.GLUON_GLOBALS == dict(rows=(0, 64), cols=(None, 32))
    assert causal.GLUON_GLOBALS == {}
    assert "gluon_backward" in causal._LAZY_SUPPORT and other._LAZY_SUPPORT == []
    assert longformer._LAZY_SUPPORT == causal._LAZY_SUPPORT
    capability = [(9, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability[0])
    monkeypatch.delenv("ATTNLANG_GLUON", raising=False)
    if causal._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    assert causal._gluon_ok(*_fake(), NO_EXTRAS, False)
    assert causal._gluon_ok(*_fake(torch.float16, 64), NO_EXTRAS, False)  # 8192 keys per row
    assert window._gluon_ok(*_fake(), NO_EXTRAS, False)
    assert not window._gluon_ok(*_fake(D=64), NO_EXTRAS, False)  # rows of 101 keys at d = 64
    # ... from GLUON_NARROW_BWD_64 queries on (16k), with 64-key blocks (`_gluon_keys`)
    assert window._gluon_ok(*_fake(D=64, L=16384), NO_EXTRAS, False)
    assert not window._gluon_ok(*_fake(D=64, L=16383), NO_EXTRAS, False)
    assert not other._gluon_ok(*_fake(), NO_EXTRAS, False)
    assert not other._gluon_ok(*_fake(D=64), NO_EXTRAS, False)
    assert longformer._gluon_ok(*_fake(), NO_EXTRAS, False)
    # d = 64: a band with global rows and columns, whatever its band's width or the length
    assert longformer._gluon_ok(*_fake(D=64, L=1000), NO_EXTRAS, False)
    assert wide._gluon_ok(*_fake(D=64), NO_EXTRAS, False)
    for flag in NO_EXTRAS:
        assert not longformer._gluon_ok(*_fake(), dict(NO_EXTRAS, **{flag: True}), False)
        assert not causal._gluon_ok(*_fake(), dict(NO_EXTRAS, **{flag: True}), False)
    assert not causal._gluon_ok(*_fake(), NO_EXTRAS, True)  # dBias
    assert not causal._gluon_ok(*_fake(torch.float32), NO_EXTRAS, False)
    assert not causal._gluon_ok(*_fake(D=80), NO_EXTRAS, False)
    assert not causal._gluon_ok(*_fake(Hk=2), NO_EXTRAS, False)
    assert causal._gluon_ok(*_fake(L=causal.GLUON_MAX_QUERIES), NO_EXTRAS, False)
    assert not causal._gluon_ok(*_fake(L=causal.GLUON_MAX_QUERIES + 1), NO_EXTRAS, False)
    capability[0] = (10, 0)
    assert not causal._gluon_ok(*_fake(), NO_EXTRAS, False)
    capability[0] = (9, 0)
    monkeypatch.setenv("ATTNLANG_GLUON", "0")
    assert not causal._gluon_ok(*_fake(), NO_EXTRAS, False)
    cpu = torch.zeros(1, 4, 64, 128, dtype=torch.bfloat16)
    monkeypatch.delenv("ATTNLANG_GLUON")
    assert not causal._gluon_ok(cpu, cpu, NO_EXTRAS, False)


def test_the_gluon_backward_key_block():
    """`_gluon_keys`: 64-key blocks at d = 64 on rows of fewer than GLUON_KEYS_64 keys (a strided
    band: its classes' rows) and on bands with global rows and columns, else 128."""
    causal, window = _module("causal"), _module("window(100, 0)")
    longformer, dilated = _module("window(512) | global(0..128)"), \
        _module("window(2048) & stride(4)")
    assert window.GLUON_KEYS_64 == 4096
    assert window._gluon_keys(*_fake(D=64, L=32768)) == 64
    assert window._gluon_keys(*_fake(D=128, L=32768)) == 128
    assert causal._gluon_keys(*_fake(D=64, L=4095)) == 64  # rows clipped to the keys
    assert causal._gluon_keys(*_fake(D=64, L=4096)) == 128
    assert longformer._gluon_keys(*_fake(D=64, L=32768)) == 64
    assert longformer._gluon_keys(*_fake(D=128, L=32768)) == 128
    assert dilated._row_keys(_fake(D=64, L=32768)[1]) == 1025  # classes' band (512, 512)
    assert dilated._gluon_keys(*_fake(D=64, L=32768)) == 64


def _grads(module, q, k, v, do):
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    module.attention(qs, ks, vs).backward(do)
    return qs.grad, ks.grad, vs.grad


def _with_warnings(*steps):
    """Each step's result, and the RuntimeWarnings the steps raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [step() for step in steps]
    return results, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("failure", ["unreadable", "compile", "memory"])
def test_the_tl_backward_takes_over_where_gluon_cannot_run(monkeypatch, failure):
    """A call the Gluon backward was planned for gets the `tl` kernels' gradients when
    descriptors cannot read its tensors (silently, that call only) or when the kernel does not
    compile (with one warning, and for every later call); running out of memory is raised to the
    caller and does not turn Gluon off."""
    module = _module("causal & window(20, 3)")
    torch.manual_seed(1)
    # rows of 18 float32 (72 bytes): not a multiple of 16 bytes, which descriptors cannot read
    D = 18 if failure == "unreadable" else 32
    q, k, v, do = (torch.randn(1, 2, 45, D) for _ in range(4))
    want = _grads(module, q, k, v, do)
    calls = []

    class Fake:
        @staticmethod
        def backward(*args, launch, keys):
            calls.append(args)
            assert keys == 128  # (d = 32)
            if failure == "memory":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            raise RuntimeError("PassManager::run failed\nmore lines")
    monkeypatch.setattr(module, "_GLUON", {"gluon_backward": Fake})
    monkeypatch.setattr(module, "_gluon_ok",
                        lambda *args: module._GLUON["gluon_backward"] is not None)
    monkeypatch.setattr(module, "_CALLS", {})
    if failure == "memory":
        with pytest.raises(torch.cuda.OutOfMemoryError):
            _grads(module, q, k, v, do)
        assert len(calls) == 1 and module._GLUON == {"gluon_backward": Fake}
        return
    (got, again), messages = _with_warnings(lambda: _grads(module, q, k, v, do),
                                            lambda: _grads(module, q, k, v, do))
    for a, b in zip(got + again, want + want):
        torch.testing.assert_close(a, b)
    if failure == "compile":
        assert len(calls) == 1 and module._GLUON == {"gluon_backward": None}
        assert len(messages) == 1 and "PassManager::run failed" in messages[0] \
            and "more lines" not in messages[0] and "tl kernels" in messages[0]
    else:
        assert not calls and not messages and module._GLUON == {"gluon_backward": Fake}


def test_which_calls_take_the_gluon_forward(monkeypatch):
    """The forward's rule is the backward's checks less its own (dBias, long context), with the
    widths where the Gluon forward was faster: d = 64 on rows of at least GLUON_MIN_KEYS_64 keys,
    d = 128 on every band; bands with global rows and columns at d = 64 from
    GLUON_GLOBALS_FWD_64 keys."""
    causal, window, other = _module("causal"), _module("window(100, 0)"), \
        _module("causal & (window(127, 0) | stride(128))")
    longformer = _module("window(512) | global(0..128)")
    assert "gluon_forward" in causal._LAZY_SUPPORT and "gluon_hopper" in causal._LAZY_SUPPORT
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("ATTNLANG_GLUON", raising=False)
    if causal._gluon_module("gluon_forward") is None:
        pytest.skip("this Triton has no Gluon")
    assert causal._gluon_forward_ok(*_fake(D=64), NO_EXTRAS)  # 8192 keys per row
    assert causal._gluon_forward_ok(*_fake(torch.float16, D=64, L=200_000), NO_EXTRAS)
    assert not causal._gluon_forward_ok(*_fake(D=64, L=4095), NO_EXTRAS)
    assert causal._gluon_forward_ok(*_fake(), NO_EXTRAS)  # d = 128, 8192 keys
    assert causal._gluon_forward_ok(*_fake(L=4095), NO_EXTRAS)
    assert causal._gluon_forward_ok(*_fake(torch.float16, L=200_000), NO_EXTRAS)
    assert window._gluon_forward_ok(*_fake(), NO_EXTRAS)  # rows of 101 keys at d = 128
    assert not window._gluon_forward_ok(*_fake(D=64), NO_EXTRAS)
    assert not other._gluon_forward_ok(*_fake(), NO_EXTRAS)
    assert not other._gluon_forward_ok(*_fake(D=64), NO_EXTRAS)
    assert longformer._gluon_forward_ok(*_fake(), NO_EXTRAS)
    assert longformer._gluon_forward_ok(*_fake(L=1000), NO_EXTRAS)
    # d = 64: from GLUON_GLOBALS_FWD_64 keys (since round 39 none: the `tl` forward's global
    # rows in pieces were faster), whatever its band's width
    assert not longformer._gluon_forward_ok(*_fake(D=64, L=1 << 20), NO_EXTRAS)
    monkeypatch.setattr(longformer, "GLUON_GLOBALS_FWD_64", 16384)
    assert not longformer._gluon_forward_ok(*_fake(D=64, L=16383), NO_EXTRAS)
    assert longformer._gluon_forward_ok(*_fake(D=64, L=16384), NO_EXTRAS)
    assert not longformer._gluon_forward_ok(*_fake(D=80), NO_EXTRAS)
    for flag in NO_EXTRAS:
        assert not window._gluon_forward_ok(*_fake(), dict(NO_EXTRAS, **{flag: True}))
    assert not window._gluon_forward_ok(*_fake(torch.float32), NO_EXTRAS)
    assert not window._gluon_forward_ok(*_fake(D=80), NO_EXTRAS)
    assert not window._gluon_forward_ok(*_fake(Hk=2), NO_EXTRAS)
    monkeypatch.setenv("ATTNLANG_GLUON", "0")
    assert not window._gluon_forward_ok(*_fake(), NO_EXTRAS)


def _dense_forward(q, k, v, scale, back, ahead):
    """(out, lse) of the band in float64, cast as the forward returns them."""
    keep = _band_mask(back, ahead, q.shape[2], k.shape[2])
    s = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    return (p @ v.double()).to(q.dtype), lse.float()


@pytest.mark.parametrize("failure", [None, "unreadable", "compile", "memory"])
def test_the_gluon_forward_and_its_fallback(monkeypatch, failure):
    """A call the Gluon forward takes returns its output and log-sum-exp, and the backward that
    follows (here the `tl` kernels, from the plan the Gluon path keeps) gives the gradients of the
    `tl` forward's; where descriptors cannot read the tensors (silently, that call only) or the
    kernel does not compile (one warning, then every call), the `tl` forward runs instead; running
    out of memory is raised to the caller and does not turn Gluon off."""
    module = _module("causal & window(20, 3)")
    torch.manual_seed(2)
    D = 18 if failure == "unreadable" else 32  # rows of 72 bytes: descriptors cannot read them
    q, k, v, do = (torch.randn(1, 2, 45, D) for _ in range(4))
    want_out = module.attention(q, k, v)
    want = _grads(module, q, k, v, do)
    calls = []

    class Fake:
        @staticmethod
        def forward(q, k, v, scale, back, ahead, launch):
            calls.append((back, ahead))
            if failure == "compile":
                raise RuntimeError("PassManager::run failed\nmore lines")
            if failure == "memory":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return _dense_forward(q, k, v, scale, back, ahead)
    monkeypatch.setattr(module, "_GLUON", {"gluon_forward": Fake})
    monkeypatch.setattr(module, "_gluon_forward_ok",
                        lambda *args: module._GLUON["gluon_forward"] is not None)
    monkeypatch.setattr(module, "_CALLS", {})
    if failure == "memory":  # raised to the caller; Gluon stays in use
        with pytest.raises(torch.cuda.OutOfMemoryError):
            module.attention(q, k, v)
        assert module._GLUON == {"gluon_forward": Fake}
        return
    (out, got, again), messages = _with_warnings(lambda: module.attention(q, k, v),
                                                 lambda: _grads(module, q, k, v, do),
                                                 lambda: _grads(module, q, k, v, do))
    torch.testing.assert_close(out, want_out)
    for a, b in zip(got + again, want + want):
        torch.testing.assert_close(a, b)
    if failure == "compile":
        assert len(calls) == 1 and module._GLUON == {"gluon_forward": None}
        assert len(messages) == 1 and "Gluon forward" in messages[0] \
            and "PassManager::run failed" in messages[0] and "more lines" not in messages[0]
    elif failure == "unreadable":
        assert not calls and not messages
    else:
        assert calls == [(20, 0)] * 3 and not messages  # causal caps the window
        # the backward's plan is kept with the call (under the Gluon forward's own key)
        assert sum(1 for key in module._CALLS if key[0] == "gluon forward") == 1


def test_which_document_calls_take_the_gluon_backward(monkeypatch):
    """Document masks (one band and one document: SEG_BOUNDS) take the Gluon backward at the head
    dimensions of GLUON_DOCS on sequences of at least as many queries as it gives, under the
    band patterns' other rules, and carry the backward's module but not the forward's; other
    patterns with `segment` do not."""
    docs, window, other = _module("causal & segment"), _module("window(70, 20) & segment"), \
        _module("segment & stride(4)")
    assert docs.BAND is None and docs.SEG_BOUNDS and docs.GLUON_DOCS == {64: 32768, 128: 8192}
    assert sorted(docs._LAZY_SUPPORT) == ["gluon_backward", "gluon_hopper"]
    assert other._LAZY_SUPPORT == []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("ATTNLANG_GLUON", raising=False)
    if docs._gluon_module("gluon_backward") is None:
        pytest.skip("this Triton has no Gluon")
    assert docs._gluon_ok(*_fake(L=32768), NO_EXTRAS, False)
    assert window._gluon_ok(*_fake(torch.float16, L=40000), NO_EXTRAS, False)
    assert docs._gluon_ok(*_fake(L=8192), NO_EXTRAS, False)  # d = 128: from 8k
    assert not docs._gluon_ok(*_fake(L=8191), NO_EXTRAS, False)
    assert docs._gluon_ok(*_fake(D=64, L=32768), NO_EXTRAS, False)  # d = 64: from 32k
    assert not docs._gluon_ok(*_fake(D=64, L=32767), NO_EXTRAS, False)
    assert not docs._gluon_ok(*_fake(D=96, L=32768), NO_EXTRAS, False)  # not in GLUON_DOCS
    assert not other._gluon_ok(*_fake(L=32768), NO_EXTRAS, False)
    for flag in NO_EXTRAS:
        assert not docs._gluon_ok(*_fake(L=32768), dict(NO_EXTRAS, **{flag: True}), False)
    assert not docs._gluon_ok(*_fake(L=docs.GLUON_MAX_QUERIES + 1), NO_EXTRAS, False)
    assert docs._keys_tile(*_fake(), True) == (64, 64)


class _EmulatedDocumentKernel:
    """`gluon_backward.backward` for document masks, emulated in float64 the way its kernel
    visits tiles: per key block of BN keys, the query tiles [lo, hi) of the bounds it is given,
    the ids and the band applied only outside [full_lo, full_hi) (every tile, masked, where the
    order flag marks the batch's ids unsorted).  Wrong bounds -- a tile missed, or one called
    full that is not -- give wrong gradients."""
    BM, BN = 64, 64

    def __init__(self):
        self.calls = []

    def tile(self, segments):
        return self.BM, self.BN

    def backward(self, q, k, v, out, do, lse, scale, back, ahead, docs=None, launch=None):
        self.calls.append(docs)
        bounds, flag, seg_q, seg_k, per_batch = docs
        B, H, Lq, D = q.shape
        Lk = k.shape[2]
        back, ahead = min(back, Lq + Lk), min(ahead, Lq + Lk)
        n_qb, n_kb = -(-Lq // self.BM), -(-Lk // self.BN)
        q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
        delta = (out.double() * do64).sum(-1)
        dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float64) for t in (q, k, v))
        for b in range(B):
            bb = b * per_batch
            unsorted = bool(flag[2 * bb + 1] == flag[2 * bb])
            for kb in range(n_kb):
                lo, full_lo, full_hi, hi = (0, 0, 0, n_qb) if unsorted else \
                    bounds[(bb * n_kb + kb) * 4:(bb * n_kb + kb) * 4 + 4].tolist()
                keys = torch.arange(kb * self.BN, min(kb * self.BN + self.BN, Lk))
                for t in range(lo, hi):
                    rows = torch.arange(t * self.BM, min(t * self.BM + self.BM, Lq))
                    s = q64[b][:, rows] @ k64[b][:, keys].transpose(-1, -2) * scale
                    row_lse = lse[b][:, rows, None].double()
                    p = torch.where(torch.isinf(row_lse), 0.0, torch.exp(s - row_lse))
                    if not full_lo <= t < full_hi:
                        dist = rows[:, None] + (Lk - Lq) - keys[None, :]
                        p = p * ((dist <= back) & (dist >= -ahead)
                                 & (seg_q[bb, rows][:, None] == seg_k[bb, keys][None, :]))
                    dv[b][:, keys] += p.transpose(-1, -2) @ do64[b][:, rows]
                    dp = do64[b][:, rows] @ v64[b][:, keys].transpose(-1, -2)
                    ds = p * (dp - delta[b][:, rows, None])
                    dk[b][:, keys] += ds.transpose(-1, -2) @ q64[b][:, rows] * scale
                    dq[b][:, rows] += ds @ k64[b][:, keys] * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _documents(B, L, seed, shuffle=False):
    """[B, L] int64 ids of random-length documents, sorted (unless ``shuffle``)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.sort(torch.randint(0, 6, (B, L), generator=gen), dim=-1).values
    if shuffle:
        ids[:, :40] = ids[:, :40].flip(-1)
    return ids


@pytest.mark.parametrize("text,ids", [
    ("causal & segment", "per batch"), ("causal & segment", "unsorted"),
    ("window(70, 20) & segment", "shared"), ("segment", "per batch")])
def test_the_document_backward_visits_the_right_tiles(monkeypatch, text, ids):
    """The Gluon backward of a document mask, given the bounds the forward built at its tile
    (`_keys_tile`) and the ids as the generated module passes them, computes the dense float64
    reference's gradients when it visits tiles as its kernel does (`_EmulatedDocumentKernel`):
    sorted ids per batch, ids out of order (the flag: every tile, masked), and one row of ids
    for both batches; a second step with the same ids takes the arguments the first built
    (kept with the ids), a step with new ids (per batch) their own."""
    from attnlang import reference
    module = _module(text)
    kernel = _EmulatedDocumentKernel()
    monkeypatch.setattr(module, "_GLUON", {"gluon_backward": kernel})
    monkeypatch.setattr(module, "_gluon_ok", lambda *args: True)
    monkeypatch.setattr(module, "_CALLS", {})
    monkeypatch.setattr(module, "_SEG_MEMO", {})
    monkeypatch.setattr(module, "_SHAPES", {})
    torch.manual_seed(3)
    B, H, L, D = 2, 2, 300, 16
    first = _documents(1 if ids == "shared" else B, L, seed=4, shuffle=ids == "unsorted")
    q, k, v, do = (torch.randn(B, H, L, D) for _ in range(4))
    expr = attnlang.parse(f"pattern x = {text}")["x"].ir
    steps = [first, first] + ([_documents(B, L, seed=5)] if ids == "per batch" else [])
    for step, seg in enumerate(steps):
        got = [t.clone().requires_grad_(True) for t in (q, k, v)]
        module.attention(*got, segments=seg).backward(do)
        assert len(kernel.calls) == step + 1
        bounds, flag, seg_q, seg_k, per_batch = kernel.calls[step]
        assert per_batch == (0 if ids == "shared" else 1) and seg_q.dtype == torch.int32
        same = [a is b for a, b in zip(kernel.calls[step], kernel.calls[step - 1])]
        assert step == 0 or all(same[:4]) == (step == 1), same
        want = [t.double().requires_grad_(True) for t in (q, k, v)]
        keep = torch.stack([dense_mask(expr, L, L, num_heads=H,
                                       segments=seg[min(b, len(seg) - 1)]) for b in range(B)])
        reference.attention(*want, mask=keep)[0].backward(do.double())
        for a, b in zip(got, want):
            torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-4)


def test_the_gluon_kernels_compile_for_sm90():
    """`benchmarks/gluon_compile.py` with this machine's Triton (CI's), outside the
    interpreter: the three kernels compile to cubins at both head dimensions in bf16 (fp16
    differs in the element type alone: `--fp16` compiles it too; the GPU checks run both), the
    band kernels with global rows and columns too; the forward's warpgroups take turns (named
    barriers) at d = 128, not at d = 64; the backward of a gather component's keys (FIRST)
    too, and the forward of a gather pattern (GATHER, CHUNK; one program a tile and
    persistent); at d = 64 the bands' backward with 64-key blocks (with and without global rows); each
    within an sm_90 multiprocessor's 227 KB of shared memory (the script fails a kernel that
    asks for more, which Triton compiles and only a launch on the GPU refuses: a (Q, dO) ring
    deeper than `gluon_backward.STAGES` allows at d = 128 would)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    pytest.importorskip("triton.experimental.gluon")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/gluon_compile.py")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("cubins ") == 2, result.stdout
    for line in result.stdout.splitlines()[1:]:
        turns = int(line.split("; forward ")[1].split("ping-pong barriers ")[1].split(";")[0])
        assert (turns > 0) == (" D=128:" in line), line
        assert ("with global rows and columns: backward shared" in line) == \
            line.startswith("bfloat16"), line
        assert ("the backward of a gather component's keys shared" in line) == \
            line.startswith("bfloat16"), line
        assert ("the forward of a gather pattern shared" in line and
                ", persistent shared" in line) == line.startswith("bfloat16"), line
        assert ("bands' backward with 64-key blocks shared" in line and
                "with global rows and columns shared" in line.split("64-key blocks")[1]) == \
            line.startswith("bfloat16 D=64:"), line
