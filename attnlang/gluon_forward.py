"""The warp-specialised forward of band patterns on Hopper, written in Gluon.

For a pattern that is one band of distances (``band.band_of``), the generated modules compute
the output and log-sum-exp with this kernel on an sm_90 GPU where it beats their ``tl`` forward
(the template's ``_gluon_forward_ok``: d = 64 on long rows, d = 128 on every band), and for a
band with global rows and columns (``band.banded_of``, Longformer's; GLOBAL: a tile's key blocks
are the band's and the global columns', or every block where the tile has global rows, and
those tiles of every head come first, one program a tile), and for a band with ``stride(s)``
(``band.strided_band_of``, the dilated window: each residue class of s a band of its own, read
as a head of its own through descriptors of a strided view, `gluon_hopper.residue_classes`;
CLASSES: the log-sum-exp stored in the rows' natural order).  A program takes tiles of 64 *
NUM_WG queries of one head (a head's tiles in turn -- on causal rows HEAD_GROUP heads' in turn --
the longest rows first):

* a loader warp reads the tile's Q once (TMA, rank-4 descriptors over [B, H, L, D], so that rows
  past a sequence's end read zeros), then streams blocks of BN keys and values through a ring of
  STAGES, each block released when every warpgroup is done with it -- with EARLY, its K when
  every warpgroup has its scores and its V when every warpgroup has added P V;
* NUM_WG warpgroups, one partition each, own 64 query rows apiece: S = Q K^T, the online
  softmax (base 2; the band and the lengths masked on partial blocks only) and O += P V with P
  from registers.  With OVERLAP, a warpgroup issues S_j = Q K_j^T and O += P_{j-1} V_{j-1}
  together and computes the softmax of S_j while the second product runs (FlashAttention-3's
  intra-warpgroup overlap; EARLY: O is rescaled while S_j runs, before P_{j-1} V_{j-1} is
  issued, as there); at the end it writes O / l through a shared buffer of its own by a
  TMA store (clipped at the sequence's end) and the natural log-sum-exp, -inf (and O = 0) on rows
  that keep nothing.
* PINGPONG (two warpgroups): the warpgroups take turns to issue their products (two named
  barriers), so that one computes its softmax while the other's products run
  (FlashAttention-3's inter-warpgroup ping-pong).
* PERSISTENT: one program per multiprocessor, taking the tiles in turn, so that the loader brings
  the next tile's Q, K and V while the warpgroups finish the last one -- on bands whose rows
  have about one length (`all`, windows).  Where they grow along the sequence (causal), one
  program a tile, which the GPU hands out as multiprocessors free up, was faster
  (results/gluon_fwd_r31a.log: causal 32k d = 128 7.12 ms against 8.08 persistent) -- except
  a gather pattern's (GATHER): persistent, every head's tiles longest first and each program's
  picks going back and forth (`gluon_hopper.snake`), it beat one program a tile
  (GATHER_HEAD_GROUP).
* EARLY_Q: each warpgroup releases the tile's Q once its last S = Q K^T is done, not after its
  last P V, so that the loader (which brings a tile's Q before its first K and V) starts the
  next tile's Q, K and V under the last block's softmax, P V and the epilogue (persistent
  launches only: with one tile a program there is no next tile, and with GLOBAL it spilled).

Queries sit at ``p = q + (Lk - Lq)`` in key coordinates (LANGUAGE.md's bottom-right alignment).
CONFIGS are per head dimension, the fastest of the variants measured in benchmarks/NOTES.md
rounds 21 and 31.  Triton's interpreter cannot run Gluon, so the kernel is checked on the GPU
(``benchmarks/gpu_check.py``); ``benchmarks/gluon_compile.py`` compiles it for sm_90 anywhere.
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from .gluon_hopper import DTYPES, HEAD_DIMS, LOG2E, band_bounds, barrier, block_at, \
    block_layout, class_band, descriptor, global_bounds, grouped, heavy_first, heavy_span, \
    host_descriptor, jit_launch, kept, mergeable, named_barrier, partial_tile, reinterpret, \
    residue_classes, row_offset, snake, tma_load, tma_store, two_ranges, wgmma_layout

ROWS = gl.constexpr(64)  # query rows per warpgroup (one wgmma M)
TURNS = gl.constexpr(14)  # the ping-pong's named barriers: 14, 15 (Triton's own take the first)
# per head dimension: three warpgroups at d = 64 (192 queries per K/V block read: causal 8k
# 0.679 -> 0.611 ms against the `tl` forward, results/gluon_fwd_r21c.log); two at d = 128, their
# products overlapped with their softmax and taken in turns, one program per multiprocessor
# (`all` 8k 1.96 -> 1.82 ms against the `tl` forward, `window(512)` 0.337 -> 0.301;
# results/gluon_fwd_r31a.log), with EARLY (at d = 64 its three warpgroups ran 1.025x slower
# with it: causal and `all` at 32k, results/ab_fwd_r31c.log) and EARLY_Q, which only a
# persistent launch feels (outputs bit for bit; results/ab_qearly_r58b.log, ab_early_q_r58c.log:
# `all` 8k 1.026-1.059x, 32k 1.034x, bands of 128-2048 keys at 8k and 32k 1.02-1.08x).  At
# d = 64 persistent launches lost with it (3 warpgroups `all` 8k 1.075 -> 1.102 ms) and the
# `tl` forward still beats two warpgroups in turns on ~1k-key bands (0.182 against 0.215).
CONFIGS = {
    64: dict(NUM_WG=3, BN=128, STAGES=3, OVERLAP=True, PINGPONG=False, EARLY=False,
             PERSISTENT=False, REGS=160),
    128: dict(NUM_WG=2, BN=128, STAGES=2, OVERLAP=True, PINGPONG=True, EARLY=True,
              PERSISTENT=True, REGS=240, EARLY_Q=True),
}
# ... but a band with global rows and columns (GLOBAL) at d = 64 takes two warpgroups, with EARLY:
# Longformer's `window(512) | global(0..128)` at 32k 0.617 -> 0.546 ms, at 8k 0.315 -> 0.273
# (results/ab_wg64_r38b.log, five variants alternated over three rounds in one process).  Its
# tile of global rows is then exactly the 128 global rows: with three warpgroups the third one's
# rows (128-191) visited every key block too, masked all but a few.  (Without EARLY 0.548.  A
# band alone gained too, `window(512)` 0.499 -> 0.459, but its `tl` forward takes 0.390.)
# A gather pattern's forward (GATHER) at d = 64 would take it too: 128-query tiles, which align
# with the fixed pattern's 128-token chunks (three warpgroups spilled 568 bytes in GATHER mode,
# Triton 3.6); the generated modules take that forward at d = 128 only (GLUON_GATHER_FWD_DIMS:
# d = 64 not measured; `benchmarks/ab_gather_forward.py --d 64` times it).
CONFIGS_GLOBAL = {64: dict(CONFIGS[64], NUM_WG=2, EARLY=True, REGS=240)}


def config_of(D, glob, gather=False):
    """The configuration of the forward at head dimension D, ``glob``: with global rows and
    columns, ``gather``: of a gather pattern (GATHER)."""
    return CONFIGS_GLOBAL.get(D, CONFIGS[D]) if glob or gather else CONFIGS[D]


__all__ = ["CONFIGS", "CONFIGS_GLOBAL", "DTYPES", "HEAD_DIMS", "band_forward_kernel", "forward",
           "reads_runs", "runs_descriptor"]


@gluon.jit
def _tile_of(tile, shape, BM: gl.constexpr, BN: gl.constexpr, GLOBAL: gl.constexpr,
             GATHER: gl.constexpr, CHUNK: gl.constexpr):
    """(b, h, bh, m0, seq, n, cnt): the tile's batch and head, first query row and its n key
    blocks (`_block` of seq: the band's blocks [lo, hi), and with GLOBAL the global columns' too,
    or every block where the tile has global rows; with GATHER the blocks of packed keys that
    some row of the tile keeps first, then the band's; with CHUNK the band's within the rows'
    chunks), and with GATHER the packed keys (the first ones) that the tile's first row keeps
    and those its last row keeps (cnt: c_lo, c_hi).  Heads come ``group`` at a time (they share
    their K and V in L2: ordered by tile first, the heads' K and V did not fit and `all` at
    d = 128 ran 15% slower), a group's tiles longest rows (causal) first, its heads in turn;
    with GLOBAL, the tiles of global rows of every head first (`heavy_first`)."""
    tiles, BH, H, n_q, group, Lq, Lk, back, ahead, globs, gath = shape
    ra, rb, ca, cb, t0, t1 = globs  # tiles [t0, t1) have global rows (`gluon_hopper.heavy_span`)
    if GLOBAL:
        bh, j = heavy_first(tile, n_q, group, BH, t0, t1)
        m0 = j * BM
    else:
        bh, j = grouped(tile, n_q, group, BH)
        m0 = (n_q - 1 - j) * BM
    off = Lk - Lq
    rows_end = gl.minimum(m0 + BM, Lq)
    k_lo = gl.maximum(m0 + off - back, 0)
    k_hi = gl.minimum(rows_end - 1 + off + ahead + 1, Lk)
    if CHUNK > 0:  # the rows' chunks (positions from 0 on: Lk >= Lq)
        k_lo = gl.maximum(k_lo, (m0 + off) // CHUNK * CHUNK)
        k_hi = gl.minimum(k_hi, ((rows_end - 1 + off) // CHUNK + 1) * CHUNK)
    lo = k_lo // BN
    hi = gl.maximum(gl.cdiv(k_hi, BN), lo)
    cnt = (0, 0)
    if GLOBAL:
        every = (j >= t0) & (j < t1)  # the tile has global rows: every key block
        seq, n = two_ranges(gl.where(every, 0, lo), gl.where(every, gl.cdiv(Lk, BN), hi),
                            ca // BN, gl.cdiv(gl.minimum(cb, Lk), BN))
    elif GATHER:  # `gather_counts`: the packed keys the tile's first row keeps, and its last
        counts_ptr, first_ptr, P = gath
        c_hi = gl.load(counts_ptr + 2 * (m0 // BM) + 1)
        cnt = (gl.load(counts_ptr + 2 * (m0 // BM)), c_hi)
        n_p = gl.cdiv(c_hi, BN)
        seq = (0, n_p, lo)
        n = n_p + hi - lo
    else:
        seq = (lo, 0, 0)
        n = hi - lo
    return bh // H, bh % H, bh, m0, seq, n, cnt


@gluon.jit
def _order(pick, tiles, GATHER: gl.constexpr):
    """The tile of a program's pick: with GATHER back and forth (`gluon_hopper.snake`: tiles of
    many lengths, longest first), else in turn -- persistent bands, whose tiles have about one
    length, ran 1.005-1.10x slower with the snake (results/ab_band_order_r59f.log: `all` at 8k
    and 32k 1.024x and 1.040x, `window(2048) & stride(4)` 1.104x and 1.053x); one program a
    tile takes its own tile either way."""
    if GATHER:
        return snake(pick, gl.num_programs(0), tiles)
    else:
        return pick


@gluon.jit
def _block(seq, i, GLOBAL: gl.constexpr, GATHER: gl.constexpr):
    """The i-th key block of a tile's `_tile_of` sequence: with GATHER, of the packed keys for
    i < seq[1], else of the keys."""
    if GATHER:
        return block_at(seq, i, True)
    else:
        return block_at(seq, i, GLOBAL)


@gluon.jit
def _load_block(desc, packed_desc, bufs, runs_bufs, bar, s, head, key0, packed,
                GATHER: gl.constexpr, RUNS: gl.constexpr):
    """TMA-load ring slot s (of K or of V: ``bufs``) with the block of keys from key0 of ``head``
    (b, h, bh): the band's (``desc``), or with GATHER where ``packed`` the packed keys'
    (``packed_desc``; with RUNS a view of runs of RUNS keys, BN // RUNS of them, written through
    ``runs_bufs``, the same bytes)."""
    b, h, bh = head
    if GATHER:
        if packed:
            if RUNS > 0:
                tma_load(packed_desc, [bh, key0 // RUNS, 0, 0], bar, runs_bufs.index(s))
            else:
                tma_load(packed_desc, [b, h, key0, 0], bar, bufs.index(s))
        else:
            tma_load(desc, [b, h, key0, 0], bar, bufs.index(s))
    else:
        tma_load(desc, [b, h, key0, 0], bar, bufs.index(s))


@gluon.jit
def _loader(descs, bufs, bars, shape, BN: gl.constexpr, EARLY: gl.constexpr,
            GLOBAL: gl.constexpr, GATHER: gl.constexpr, CHUNK: gl.constexpr,
            RUNS: gl.constexpr):
    tiles = shape[0]
    q_desc, k_desc, v_desc, kp_desc, vp_desc = descs
    q_bufs, k_bufs, v_bufs, kr_bufs, vr_bufs = bufs
    q_bar, q_empty, k_ready, v_ready, k_empty, v_empty = bars
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    NUM_WG: gl.constexpr = q_bufs.type.shape[0]
    c = 0  # blocks loaded so far: the ring's position
    t = 0  # tiles so far
    for pick in range(gl.program_id(0), tiles, gl.num_programs(0)):
        b, h, bh, m0, seq, n, cnt = _tile_of(_order(pick, tiles, GATHER), shape, ROWS * NUM_WG,
                                             BN, GLOBAL, GATHER, CHUNK)
        mbarrier.wait(q_empty, (t & 1) ^ 1)  # every warpgroup is done with the last tile's Q
        mbarrier.expect(q_bar, NUM_WG * q_desc.block_type.nbytes)
        for w in gl.static_range(NUM_WG):
            tma_load(q_desc, [b, h, m0 + ROWS * w, 0], q_bar, q_bufs.index(w))
        for i in range(n):
            j = c + i
            s = j % STAGES
            phase = ((j // STAGES) & 1) ^ 1
            key0 = _block(seq, i, GLOBAL, GATHER) * BN
            if EARLY:  # K's slot is free once S has been computed
                mbarrier.wait(k_empty.index(s), phase)
            else:  # once P V has
                mbarrier.wait(v_empty.index(s), phase)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            _load_block(k_desc, kp_desc, k_bufs, kr_bufs, k_ready.index(s), s, (b, h, bh), key0,
                        i < seq[1], GATHER, RUNS)
            if EARLY:
                mbarrier.wait(v_empty.index(s), phase)  # V's once P V has
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            _load_block(v_desc, vp_desc, v_bufs, vr_bufs, v_ready.index(s), s, (b, h, bh), key0,
                        i < seq[1], GATHER, RUNS)
        c += n
        t += 1


@gluon.jit
def _masked(sc, rows, key0, band, r0, src, BN: gl.constexpr, s_layout: gl.constexpr,
            GLOBAL: gl.constexpr, GATHER: gl.constexpr, CHUNK: gl.constexpr):
    """S with the pairs outside the band (with GLOBAL: and outside the global rows and
    columns; with CHUNK: and outside the rows' chunks), and keys past Lk, at -inf (partial
    blocks only); with GATHER, on a block of packed keys (``src``: (packed, (c_lo, c_hi)), the
    `_tile_of` counts), the pairs of keys whose first query (`gather_counts`' ``first``) comes
    after the row -- keys from c_hi on where c_lo = c_hi (every row keeps the same: the fixed
    pattern's tiles, its chunks), without reading ``first``."""
    Lk, off, back, ahead, globs, gath, Lq = band
    keys = key0 + gl.arange(0, BN, layout=gl.SliceLayout(0, s_layout))
    if GATHER:
        packed, cnt = src
        c_lo, c_hi = cnt
        counts_ptr, first_ptr, P = gath
        if packed:
            if key0 + BN > c_lo:  # keys some row of the tile does not keep yet
                if c_lo == c_hi:  # (no row keeps them)
                    sc = gl.where((keys < c_hi)[None, :], sc, float("-inf"))
                else:
                    first = gl.load(first_ptr + keys, mask=keys < P, other=Lq)
                    sc = gl.where(first[None, :] <= rows[:, None], sc, float("-inf"))
        else:
            sc = _band_masked(sc, rows, keys, key0, band, r0, BN, GLOBAL, CHUNK)
    else:
        sc = _band_masked(sc, rows, keys, key0, band, r0, BN, GLOBAL, CHUNK)
    return sc


@gluon.jit
def _band_masked(sc, rows, keys, key0, band, r0, BN: gl.constexpr, GLOBAL: gl.constexpr,
                 CHUNK: gl.constexpr):
    """`_masked` on a block of the band's keys: without GLOBAL, each row's keys kept as one
    interval [lo, hi] (the band's, within the row's chunk and before Lk), so that a pair takes
    two comparisons (the distance, the chunks and the end compared pair by pair took 2.5x the
    instructions: the softmax warpgroups' issue slots are what the other one's products
    hide)."""
    Lk, off, back, ahead, globs, gath, Lq = band
    p = rows + off
    if CHUNK > 0:  # (every block: few of a chunked band's blocks are whole)
        start = p // CHUNK * CHUNK
        lo = gl.maximum(p - back, start)
        hi = gl.minimum(gl.minimum(p + ahead, start + CHUNK - 1), Lk - 1)
        sc = gl.where((keys[None, :] >= lo[:, None]) & (keys[None, :] <= hi[:, None]), sc,
                      float("-inf"))
    elif partial_tile(r0 + off, ROWS, key0, BN, back, ahead, globs, GLOBAL) | (key0 + BN > Lk):
        if GLOBAL:
            keep = kept(p[:, None], keys[None, :], back, ahead, globs, GLOBAL)
            sc = gl.where(keep & (keys < Lk)[None, :], sc, float("-inf"))
        else:
            lo = p - back
            hi = gl.minimum(p + ahead, Lk - 1)
            sc = gl.where((keys[None, :] >= lo[:, None]) & (keys[None, :] <= hi[:, None]), sc,
                          float("-inf"))
    return sc


@gluon.jit
def _softmax(sc, m_i, l_i, qk_scale):
    """(p, alpha, m, l): the block's probabilities in the new running maximum m (of the raw
    scores), the factor alpha that brings the old sums to it, and the new row sums l."""
    m_new = gl.maximum(m_i, gl.max(sc, axis=1))
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new) * qk_scale  # rows with nothing yet
    p = gl.exp2(sc * qk_scale - m_use[:, None])
    alpha = gl.exp2(m_i * qk_scale - m_use)
    return p, alpha, m_new, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def _scores(q_s, k_bufs, s, BN: gl.constexpr, D: gl.constexpr, s_layout: gl.constexpr):
    """S = Q K^T of ring slot s, issued (not waited for)."""
    return warpgroup_mma(q_s, k_bufs.index(s).reshape([BN, D]).permute((1, 0)),
                         gl.zeros([ROWS, BN], gl.float32, s_layout), use_acc=False,
                         is_async=True)


@gluon.jit
def _turn(wg: gl.constexpr, take: gl.constexpr):
    """FlashAttention-3's ping-pong of two warpgroups around their products: with ``take``,
    wait until it is warpgroup ``wg``'s turn to issue them (named barrier TURNS + wg, met by the
    other warpgroup's pass); else pass the turn to the other warpgroup."""
    if take:
        named_barrier(TURNS + wg, 256, False)
    else:
        named_barrier(TURNS + 1 - wg, 256, True)


@gluon.jit
def _block_alone(wg: gl.constexpr, j, key0, q_s, k_bufs, k_ready, k_empty, rows, band, r0, src,
                 m_i, l_i, qk_scale, BN: gl.constexpr, D: gl.constexpr, PINGPONG: gl.constexpr,
                 EARLY: gl.constexpr, GLOBAL: gl.constexpr, GATHER: gl.constexpr,
                 CHUNK: gl.constexpr):
    """(p, alpha, m, l) of the j-th block the warpgroup reads (keys from key0), its S = Q K^T
    issued alone (in the warpgroup's turn) and waited for, its K released with EARLY, then
    masked and through the online softmax (`_softmax`)."""
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    s_layout: gl.constexpr = wgmma_layout(4, 1, BN)
    s = j % STAGES
    mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
    if PINGPONG:
        _turn(wg, True)
    sc = _scores(q_s, k_bufs, s, BN, D, s_layout)
    if PINGPONG:
        _turn(wg, False)
    sc = warpgroup_mma_wait(0, deps=(sc,))
    if EARLY:
        mbarrier.arrive(k_empty.index(s), count=1)
    sc = _masked(sc, rows, key0, band, r0, src, BN, s_layout, GLOBAL, GATHER, CHUNK)
    return _softmax(sc, m_i, l_i, qk_scale)


@gluon.jit
def _consumer(wg: gl.constexpr, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN: gl.constexpr,
              D: gl.constexpr, OVERLAP: gl.constexpr, PINGPONG: gl.constexpr,
              EARLY: gl.constexpr, GLOBAL: gl.constexpr, CLASSES: gl.constexpr,
              EARLY_Q: gl.constexpr, GATHER: gl.constexpr, CHUNK: gl.constexpr):
    tiles, BH, H, n_q, group, Lq, Lk, back, ahead, globs, gath = shape
    q_bufs, o_bufs, k_bufs, v_bufs = bufs
    q_bar, q_empty, k_ready, v_ready, k_empty, v_empty = bars
    dtype: gl.constexpr = q_bufs.dtype
    STAGES: gl.constexpr = k_bufs.type.shape[0]
    NUM_WG: gl.constexpr = q_bufs.type.shape[0]
    s_layout: gl.constexpr = wgmma_layout(4, 1, BN)
    o_layout: gl.constexpr = wgmma_layout(4, 1, D)
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_s = q_bufs.index(wg).reshape([ROWS, D])
    o_buf = o_bufs.index(wg)
    band = (Lk, Lk - Lq, back, ahead, globs, gath, Lq)
    if PINGPONG:
        if wg == 1:
            _turn(1, False)  # warpgroup 0 issues first
    c = 0
    t = 0
    for pick in range(gl.program_id(0), tiles, gl.num_programs(0)):
        b, h, bh, m0, seq, n, cnt = _tile_of(_order(pick, tiles, GATHER), shape, ROWS * NUM_WG,
                                             BN, GLOBAL, GATHER, CHUNK)
        r0 = m0 + wg * ROWS
        rows = r0 + gl.arange(0, ROWS, layout=row_s)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, row_s)
        l_i = gl.zeros([ROWS], gl.float32, row_s)
        acc = gl.zeros([ROWS, D], gl.float32, o_layout)
        mbarrier.wait(q_bar, t & 1)
        if OVERLAP:
            # S_j = Q K_j^T and O += P_{j-1} V_{j-1} issued together, the softmax of S_j while
            # the second runs.  EARLY: O is brought to the running maximum of block j - 1 (alpha)
            # while S_j runs, before P_{j-1} V_{j-1} is added; else to that of block j after
            p = gl.zeros([ROWS, BN], dtype, p_layout)
            alpha = gl.full([ROWS], 1.0, gl.float32, row_s)
            if n > 0:
                pf, alpha, m_i, l_i = _block_alone(
                    wg, c, _block(seq, 0, GLOBAL, GATHER) * BN, q_s, k_bufs, k_ready, k_empty,
                    rows, band, r0, (0 < seq[1], cnt), m_i, l_i, qk_scale, BN, D, PINGPONG,
                    EARLY, GLOBAL, GATHER, CHUNK)
                if EARLY_Q:
                    if n == 1:  # the tile's last S: its Q is free
                        mbarrier.arrive(q_empty, count=1)
                p = gl.convert_layout(pf.to(dtype), p_layout)
            for i in range(1, n):
                j = c + i
                s = j % STAGES
                sp = (j - 1) % STAGES
                mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
                if PINGPONG:
                    _turn(wg, True)
                sc = _scores(q_s, k_bufs, s, BN, D, s_layout)
                if EARLY:
                    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
                acc = warpgroup_mma(p, v_bufs.index(sp).reshape([BN, D]), acc, is_async=True)
                if PINGPONG:
                    _turn(wg, False)
                sc = warpgroup_mma_wait(1, deps=(sc,))  # S_j done, P_{j-1} V_{j-1} running
                if EARLY:
                    mbarrier.arrive(k_empty.index(s), count=1)
                if EARLY_Q:
                    if i == n - 1:  # the tile's last S: its Q is free
                        mbarrier.arrive(q_empty, count=1)
                sc = _masked(sc, rows, _block(seq, i, GLOBAL, GATHER) * BN, band, r0,
                             (i < seq[1], cnt), BN, s_layout, GLOBAL, GATHER, CHUNK)
                pf, alpha, m_i, l_i = _softmax(sc, m_i, l_i, qk_scale)
                acc, p = warpgroup_mma_wait(0, deps=(acc, p))
                mbarrier.arrive(v_empty.index(sp), count=1)
                if not EARLY:
                    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p = gl.convert_layout(pf.to(dtype), p_layout)
            if n > 0:
                j = c + n - 1
                if EARLY:
                    acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                mbarrier.wait(v_ready.index(j % STAGES), (j // STAGES) & 1)
                if PINGPONG:
                    _turn(wg, True)
                acc = warpgroup_mma(p, v_bufs.index(j % STAGES).reshape([BN, D]), acc,
                                    is_async=True)
                if PINGPONG:
                    _turn(wg, False)
                acc, p = warpgroup_mma_wait(0, deps=(acc, p))
                mbarrier.arrive(v_empty.index(j % STAGES), count=1)
        else:
            for i in range(n):
                j = c + i
                s = j % STAGES
                pf, alpha, m_i, l_i = _block_alone(
                    wg, j, _block(seq, i, GLOBAL, GATHER) * BN, q_s, k_bufs, k_ready, k_empty,
                    rows, band, r0, (i < seq[1], cnt), m_i, l_i, qk_scale, BN, D, PINGPONG,
                    EARLY, GLOBAL, GATHER, CHUNK)
                if EARLY_Q:
                    if i == n - 1:
                        mbarrier.arrive(q_empty, count=1)
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p = gl.convert_layout(pf.to(dtype), p_layout)
                mbarrier.wait(v_ready.index(s), (j // STAGES) & 1)
                acc = warpgroup_mma(p, v_bufs.index(s).reshape([BN, D]), acc, is_async=True)
                acc, p = warpgroup_mma_wait(0, deps=(acc, p))
                mbarrier.arrive(v_empty.index(s), count=1)
        if not EARLY_Q:
            mbarrier.arrive(q_empty, count=1)  # Q read: the loader may bring the next tile's
        elif n == 0:
            mbarrier.arrive(q_empty, count=1)
        c += n
        t += 1
        empty_row = l_i == 0.0
        m_use = gl.where(m_i == float("-inf"), 0.0, m_i) * qk_scale
        lse = gl.where(empty_row, float("-inf"), (m_use + gl.log2(l_i)) * 0.6931471805599453)
        inv = gl.convert_layout(gl.where(empty_row, 0.0, 1.0 / l_i), row_o)
        gl.store(lse_ptr + row_offset(b, h, bh, rows, H, Lq, CLASSES), lse, mask=rows < Lq)
        tma.store_wait(0)  # the last tile's store has read the buffer
        o_buf.reshape([ROWS, D]).store((acc * inv[:, None]).to(dtype))
        fence_async_shared()
        barrier()
        tma_store(o_desc, [b, h, r0, 0], o_buf)
    if PINGPONG:
        if wg == 0:
            _turn(0, True)  # meets warpgroup 1's last pass: no arrival left at the exit
    tma.store_wait(0)


@gluon.jit
def band_forward_kernel(q_desc, k_desc, v_desc, o_desc, lse_ptr, BH, H, group, Lq, Lk, back,
                        ahead, ra, rb, ca, cb, t0, t1, qk_scale, kp_desc, vp_desc, counts_ptr,
                        first_ptr, P, BN: gl.constexpr, D: gl.constexpr, STAGES: gl.constexpr,
                        NUM_WG: gl.constexpr, OVERLAP: gl.constexpr, PINGPONG: gl.constexpr,
                        EARLY: gl.constexpr, GLOBAL: gl.constexpr, CLASSES: gl.constexpr,
                        REGS: gl.constexpr, EARLY_Q: gl.constexpr, GATHER: gl.constexpr,
                        CHUNK: gl.constexpr, RUNS: gl.constexpr):
    """O and the natural log-sum-exp (lse_ptr: [B * H, Lq]) of the pairs (query q, key k) with
    -ahead <= p - k <= back (p = q + Lk - Lq), and with GLOBAL those with ra <= p < rb or
    ca <= k < cb (the tiles [t0, t1) of each head have such rows: `gluon_hopper.heavy_span`);
    programs take the tiles of ROWS * NUM_WG queries in turn.  With CLASSES the descriptors read
    residue classes (`gluon_hopper.residue_classes`: H the step, Lq and Lk a class's lengths)
    and the log-sum-exp goes to the rows' natural order (`gluon_hopper.row_offset`).  With CHUNK
    only the band's pairs in one chunk of CHUNK positions (p div CHUNK = k div CHUNK; Lk >= Lq).
    With GATHER, also the pairs of packed keys (kp_desc, vp_desc: P keys a head; with RUNS,
    `runs_descriptor`s, P = count * RUNS keys read in place) and the queries from each one's
    first on (first_ptr), a tile's packed keys first (counts_ptr: `gather_counts`)."""
    n_q = gl.cdiv(Lq, ROWS * NUM_WG)
    dtype: gl.constexpr = k_desc.block_type.element_ty
    q_bufs = gl.allocate_shared_memory(dtype, [NUM_WG, 1, 1, ROWS, D], q_desc.layout)
    o_bufs = gl.allocate_shared_memory(dtype, [NUM_WG, 1, 1, ROWS, D], o_desc.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BN, D], k_desc.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, 1, 1, BN, D], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(q_empty, count=NUM_WG)
    for j in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(j), count=1)
        mbarrier.init(v_ready.index(j), count=1)
        mbarrier.init(k_empty.index(j), count=NUM_WG)
        mbarrier.init(v_empty.index(j), count=NUM_WG)

    bars = (q_bar, q_empty, k_ready, v_ready, k_empty, v_empty)
    if GLOBAL:
        globs = (ra, rb, ca, cb, t0, t1)
    else:  # (not handed to the partitions: each of their arguments takes shared memory)
        globs = (0, 0, 0, 0, 0, 0)
    if GATHER:
        gath = (counts_ptr, first_ptr, P)
    else:
        gath = (0, 0, 0)
    shape = (n_q * BH, BH, H, n_q, group, Lq, Lk, back, ahead, globs, gath)
    bufs = (q_bufs, o_bufs, k_bufs, v_bufs)
    descs = (q_desc, k_desc, v_desc, kp_desc, vp_desc)
    if RUNS > 0:  # the same bytes as tiles of BN // RUNS runs of RUNS keys
        kr_bufs = reinterpret(k_bufs, dtype, [STAGES, 1, BN // RUNS, RUNS, D], kp_desc.layout)
        vr_bufs = reinterpret(v_bufs, dtype, [STAGES, 1, BN // RUNS, RUNS, D], vp_desc.layout)
    else:
        kr_bufs, vr_bufs = k_bufs, v_bufs
    loads = (q_bufs, k_bufs, v_bufs, kr_bufs, vr_bufs)
    gl.static_assert((NUM_WG == 2) | (not PINGPONG))  # the ping-pong is of two warpgroups
    if NUM_WG == 2:
        gl.warp_specialize([
            (_consumer, (0, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN, D, OVERLAP,
                         PINGPONG, EARLY, GLOBAL, CLASSES, EARLY_Q, GATHER, CHUNK)),
            (_consumer, (1, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN, D, OVERLAP,
                         PINGPONG, EARLY, GLOBAL, CLASSES, EARLY_Q, GATHER, CHUNK)),
            (_loader, (descs, loads, bars, shape, BN, EARLY, GLOBAL, GATHER, CHUNK, RUNS))],
            [4, 1], [REGS, 24])
    else:
        gl.static_assert(NUM_WG == 3)
        gl.warp_specialize([
            (_consumer, (0, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN, D, OVERLAP,
                         PINGPONG, EARLY, GLOBAL, CLASSES, EARLY_Q, GATHER, CHUNK)),
            (_consumer, (1, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN, D, OVERLAP,
                         PINGPONG, EARLY, GLOBAL, CLASSES, EARLY_Q, GATHER, CHUNK)),
            (_consumer, (2, o_desc, bufs, bars, lse_ptr, shape, qk_scale, BN, D, OVERLAP,
                         PINGPONG, EARLY, GLOBAL, CLASSES, EARLY_Q, GATHER, CHUNK)),
            (_loader, (descs, loads, bars, shape, BN, EARLY, GLOBAL, GATHER, CHUNK, RUNS))],
            [4, 4, 1], [REGS, REGS, 24])


_SMS = {}  # multiprocessors per device
# heads at a time (`_tile_of`) where rows grow along the sequence (causal: one program a tile),
# so that the last head's longest tiles do not start last.  Medians of five interleaved rounds
# (results/group_fwd_r31d.log, `python benchmarks/head_order.py gluon-forward`): causal d = 128
# 1.046x with two at 8k, 1.013x at 32k (four: 1.030x, 1.004x); d = 64 1.013x / 1.007x with two,
# within the rounds' spread, and 0.977x at 32k in round 23 (results/ab_fwd_r23d.log): one.
HEAD_GROUP = {64: 1, 128: 2}
# A gather component's tiles (`forward`'s ``packed``: the fixed pattern's) in a persistent launch
# from GATHER_PERSISTENT_MIN queries on (else one program a tile), GATHER_HEAD_GROUP heads at a
# time (None: every head), the programs' picks going back and forth (`gluon_hopper.snake`), so
# that each program's tiles, longest first across the heads, add up to about the same time.  The
# fixed pattern's forward, d = 128, 16 heads, 16k tokens a batch, at 8k / 16k / 32k tokens
# (results/ab_gather_forward_r59a.log): one program a tile 0.239 / 0.356 / 1.140 ms; persistent
# two heads at a time 0.243 / 0.422 / 1.202; every head 0.205 / 0.323 / 1.088.  (Round 58's
# persistent launch, two heads at a time in a fixed stride, lost at 8k and 16k; NOTES round 59's
# schedule model puts it down to uneven sums: program 0 took the longest tile of every turn.)
GATHER_PERSISTENT_MIN = 0
GATHER_HEAD_GROUP = None


def forward(q, k, v, scale, back, ahead, rows=None, cols=None, step=1, chunk=0, packed=None,
            launch=jit_launch):
    """(out, lse) of softmax(scale Q K^T over the band -ahead <= p - k <= back) V, with
    ``back``/``ahead`` None for no bound, and with the global ``rows`` and ``cols`` where given
    (`band.banded_of`'s intervals of positions: queries at p in rows keep every key, keys in
    cols every query), or with ``step`` > 1 only the pairs whose distance p - k is a multiple of
    it (`band.strided_band_of`: each residue class a band of its own, read through
    `gluon_hopper.residue_classes`; Lq and Lk multiples of the step, and B and H of q, k and v
    one dimension in memory); lse [B, H, Lq] float32, natural log, -inf (and out 0) on rows
    that keep nothing.  q, k, v: [B, H, L, D] of one dtype in DTYPES, D in HEAD_DIMS, as many
    key heads as query heads, on an sm_90 GPU, read by TMA descriptors (the head dimension
    contiguous, base addresses and other strides multiples of 16 bytes: the generated modules
    check it with their `_descriptors_ok`); ``launch``: how to launch the kernel
    (`gluon_hopper.jit_launch`'s arguments).

    With ``chunk`` > 0 the band's pairs are only those of one chunk (p div chunk = k div chunk;
    Lk >= Lq); with ``packed`` = (kp, vp, first, counts), also the pairs of the packed keys kp,
    vp ([B, H, P, D], the same dtype and layout rules; or views [B, H, count, W, D] of runs of
    W keys, where `reads_runs`) and the queries from each one's
    ``first`` on (int32 [P], nondecreasing: a gather component's, the fixed pattern's summary
    columns), ``counts`` `gather_counts`' (the tiles' packed keys, read first)."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    o_view = out
    if step > 1:  # the classes as heads of their own: B * H "batches" of step "heads"
        q, k, v, o_view = (residue_classes(t, step) for t in (q, k, v, out))
        back, ahead = class_band(back, ahead, step)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    # rows whose lengths grow along the sequence (a gather component's keys: the fixed pattern's)
    grows = (back is None) != (ahead is None) or packed is not None
    glob = rows is not None or cols is not None
    config = config_of(D, glob, packed is not None)
    # (global rows make a few tiles long: one program a tile, those first, evens out the end)
    persistent = config["PERSISTENT"] and not glob and (not grows or (
        packed is not None and Lq >= GATHER_PERSISTENT_MIN))
    back, ahead = band_bounds(back, ahead, Lq, Lk)
    ra, rb, ca, cb = global_bounds(rows, cols, Lq, Lk)
    n_q = triton.cdiv(Lq, ROWS.value * config["NUM_WG"])
    programs = n_q * B * H
    if persistent:
        device = q.device.index if q.device.index is not None else torch.cuda.current_device()
        if device not in _SMS:
            _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
        programs = min(programs, _SMS[device])
    BN = config["BN"]
    group = min(HEAD_GROUP[D], B * H) if grows else 1
    if packed is not None and persistent:
        group = min(GATHER_HEAD_GROUP or B * H, B * H)
    k_desc, v_desc = descriptor(k, BN), descriptor(v, BN)
    runs = 0
    if packed is not None:
        kp, vp, first, counts = packed
        if kp.dim() == 5:  # runs of keys, in place
            runs = kp.shape[3]
            gather = (runs_descriptor(kp, BN), runs_descriptor(vp, BN))
        else:
            gather = (descriptor(kp, BN), descriptor(vp, BN))
        gather += (counts, first, first.numel())
    else:  # (read only with GATHER)
        gather = (k_desc, v_desc, lse, lse, 0)
    launch(band_forward_kernel, (programs,),
           (descriptor(q, ROWS.value), k_desc, v_desc, descriptor(o_view, ROWS.value), lse,
            B * H, H, group, Lq, Lk, back, ahead, ra, rb, ca, cb,
            *heavy_span(ra, rb, Lk - Lq, Lq, ROWS.value * config["NUM_WG"]), scale * LOG2E,
            *gather),
           dict(BN=BN, D=D, STAGES=config["STAGES"], NUM_WG=config["NUM_WG"],
                OVERLAP=config["OVERLAP"], PINGPONG=config["PINGPONG"], EARLY=config["EARLY"],
                GLOBAL=glob, CLASSES=step > 1, REGS=config["REGS"],
                EARLY_Q=config.get("EARLY_Q", False) and persistent, GATHER=packed is not None,
                CHUNK=chunk, RUNS=runs, num_warps=4), (q.dtype,))
    return out, lse


def reads_runs(k, v, width):
    """Whether `forward` can read a gather component's keys of k and v ([B, H, L, D], their
    descriptors readable) in place where they come in runs of ``width`` at a period (the fixed
    pattern's summary columns): a tile's blocks of packed keys whole runs, and B and H one
    dimension in memory (`runs_descriptor`)."""
    BN = config_of(k.shape[3], False, True)["BN"]
    return BN % width == 0 and mergeable(k) and mergeable(v)


def runs_descriptor(t, rows):
    """A TMA descriptor over the [B, H, count, W, D] view ``t`` (each head's keys in count runs
    of W: the template's `_strided_keys`) as [B * H, count, W, D], reading tiles of rows // W
    runs -- the bytes of a [rows, D] tile of `descriptor`'s layout."""
    B, H, count, W, D = t.shape
    block = (1, rows // W, W, D)
    return host_descriptor(t.view(B * H, count, W, D), block, block_layout(block, t.dtype))


def tile_rows(D, gather=False):
    """The queries of a forward tile at head dimension D (``gather``: a gather pattern's,
    `gather_counts`' ``bm``)."""
    return ROWS.value * config_of(D, False, gather)["NUM_WG"]


def gather_counts(first, Lq, bm):
    """int32 [tiles, 2] on first's device: for each tile of ``bm`` queries of Lq, the packed keys
    its first row keeps and those its last row keeps -- counts from the start, as the keys'
    first queries (``first``, int32) are nondecreasing; None where they are not."""
    if first.numel() > 1 and not bool((first[1:] >= first[:-1]).all()):
        return None
    starts = torch.arange(0, Lq, bm, device=first.device, dtype=torch.int32)
    ends = torch.clamp(starts + bm, max=Lq) - 1
    return torch.stack([torch.searchsorted(first, starts, right=True),
                        torch.searchsorted(first, ends, right=True)], 1).to(torch.int32)
