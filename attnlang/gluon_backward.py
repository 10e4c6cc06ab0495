"""The warp-specialised backward of band patterns and document masks on Hopper, written in
Gluon.

For a pattern that is one band of distances (``band.band_of``: causal, ``all``, windows and their
intersections), the generated modules compute dQ, dK and dV with this kernel on an sm_90 GPU
instead of their two-kernel ``tl`` backward (a dK/dV kernel and a dQ kernel, seven matrix
products per tile; this kernel does five); document masks (a band and one document) too, with
each key block's query tiles taken from their layout kernel's bounds (``SEGMENTS``); and bands
with global rows and columns (``band.banded_of``, Longformer's; GLOBAL: a key block's query
tiles are the band's and the global rows', or every tile for a block of global columns, and
those blocks of every head come first); and bands with ``stride(s)`` (``band.strided_band_of``:
each residue class a head of its own, `gluon_hopper.residue_classes`, dQ's float32 sums kept in
the rows' natural order); and (FIRST, `gather_backward`) a gather component's packed keys, each
seen by the queries from its first one on (the fixed pattern's summary columns: the template's
GLUON_GATHER), that component's share of the gradients.  One program per (block of BN keys,
batch and head), BN = 128 for bands and 64 for documents (and for bands where the caller asks:
the generated modules' narrow bands and bands with global rows at d = 64, `backward`'s
``keys``):

* a loader warp reads the key block's K and V once, then streams the (Q, dO) tiles of BM queries
  whose band meets the block through a ring of stages (`tile_config`: 128 queries and two
  stages for 128-key blocks at d = 64, else 64 queries and STAGES: three at d = 64, two at
  d = 128, where a third does not fit in shared memory), by TMA (rank-4 descriptors
  over the [B, H, L, D] tensors, so that a tile past a sequence's end reads zeros, never another
  head's rows), each with its rows' terms (below) and a document call's query ids, so that the
  compute warps read no global memory in their loop;
* one compute warpgroup per 64 keys does S^T = K Q^T and dP^T = V dO^T, P^T (the band, and the
  lengths, masked only on partial tiles), dV += P^T dO, dK += dS^T Q and dQ_part = dS K (dS
  through shared memory), hands dQ_part (float32) to the writer through shared memory, and at
  the end writes dK and dV (TMA stores clip at the sequence's end);
* a writer warp adds each dQ_part to a float32 dQ by a TMA reduction (`cp.reduce.async.bulk.
  tensor` from one thread, one per 32 columns, where vector ``red`` instructions from the warp's
  registers took 64 per tile at d = 128; ``atomic_add`` compiles to ``atom``, which made the
  d = 64 backward 0.55x slower: benchmarks/NOTES.md rounds 19 and 27).

With 128-key blocks (bands) dQ_part goes through a float32 buffer a stage of its own, and the
warps meet through two mbarriers per stage: tile i's ``ready[i % STAGES]`` completes when its
(Q, dO) have landed and the writer has freed its dQ buffer (same index), ``done[i % STAGES]``
when the compute warps are through with both; so a tile costs the compute warps one wait, one
arrive and two barriers among themselves (one before dQ_part's product reads dS, one closing the
tile).

Documents take key blocks of 64 and one compute warpgroup: on the benchmark's 64 random
documents per sequence a block of 128 keys meets more of the pairs between documents.  So do
bands at d = 64 where the caller asks (``keys=64``): there two programs per multiprocessor ran
training steps on bands of ~1k keys at 16k-32k tokens 1.06-1.09x faster than 128-key blocks, but
at d = 128 1.15-1.28x slower (NOTES rounds 28 and 40).  With 64-key blocks dQ_part goes into
the bytes of its tile's (Q, dO) stage (exactly its size) once every product has read them, so
that without dQ buffers a program's 104 KiB of shared memory (57 KiB at d = 64) and 232
registers per compute thread (MAXNREG) let two programs share a multiprocessor, which hides one
program's waits for its stages behind the other's products (NOTES round 28).  A third mbarrier
per stage, ``free``, tells the loader that the writer's TMA has read the stage; a tile costs one
barrier more (before dQ_part overwrites Q and dO).  At d = 128 the warpgroup computes dQ_part in
two halves of 64 columns, so that it fits in its registers.

Its inputs are the forward's output and log-sum-exp (natural log; -inf for rows that keep
nothing); a small `tl` kernel first computes delta = rowsum(O * dO) and the log-sum-exp in base
2, padded to whole query tiles so that the band kernel loads them without masks, and zeroes the
float32 dQ.  Queries sit
at ``p = q + (Lk - Lq)`` in key coordinates (LANGUAGE.md's bottom-right alignment).

Triton's interpreter cannot run Gluon, so the band kernel is checked on the GPU only
(``benchmarks/gpu_check.py``: random bands and lengths against the float64 reference);
``benchmarks/gluon_compile.py`` compiles it for sm_90 anywhere.  Its Gluon calls are Triton
3.6's, with the renames of later Tritons handled in ``gluon_hopper`` (CI's compiles it too).
``attnlang compile`` copies this module into generated modules, which load it only when they
are about to use it (an import error there means: no Gluon, use the ``tl`` backward).
"""
import collections
import heapq

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from .gluon_hopper import DTYPES, HEAD_DIMS, LOG2E, band_bounds, barrier, block_at, class_band, \
    descriptor, descriptor_fields, global_bounds, grouped, heavy_first, heavy_span, \
    class_view, head_tile, host_descriptor, jit_launch, mergeable, with_base, \
    kept, partial_tile, reinterpret, tma_add, tma_load, tma_store, two_ranges, \
    wgmma_layout

__all__ = ["BM", "BN", "DOCS_BN", "DTYPES", "HEAD_DIMS", "STAGES", "WIDE", "backward",
           "band_backward_kernel", "gather_backward", "gather_terms", "row_terms",
           "rows_descriptor", "tile", "tile_config"]
BM, BN = 64, 128  # query tile (but WIDE's), key block: bands
# the (Q, dO) ring's stages by head dimension.  At d = 64 a third stage (149 KB of shared memory
# with 128-key blocks, 76 KB with 64) made every training step that runs this kernel 0.3-1.8%
# faster (`all` at 8k 4.520 -> 4.437 ms, causal 2.413 -> 2.386, documents at 32k 1.139 -> 1.125;
# a fourth lost on 128-key blocks; results/ab_gluon_stages_r54*.log, NOTES round 54); at d = 128
# three stages of 128-key blocks take 280 KB, more than a multiprocessor has.
STAGES = {64: 3, 128: 2}
# (query tile, stages) of 128-key blocks by head dimension where not (BM, STAGES): at d = 64
# tiles of 128 queries (each warpgroup's S^T and dP^T products 64 x 128, half the tiles' waits,
# barriers and dQ reductions a key block; 199 KB of shared memory with two stages, 64 bytes of
# spills) made training steps 1.05-1.08x faster: `all` 4.470 -> 4.196 ms at 8k and 34.25 ->
# 32.69 at 32k, causal 2.392 -> 2.238 and 17.90 -> 16.64, the fixed pattern's gather path 0.945
# -> 0.925 at 16k and 2.889 -> 2.753 at 32k (results/ab_tile_r57a.log, ab_tile_gather_r57b.log;
# NOTES round 57).  Not at d = 128 (128-query tiles take more registers and shared memory than
# a multiprocessor has) nor with 64-key blocks, whose two programs a multiprocessor 128-query
# tiles would cut to one (232 registers a thread): their bands' steps ran 1.23-1.34x slower
# (results/ab_k64wide_r57i.log).
WIDE = {64: (128, 2)}
# documents: 64-key blocks, one compute warpgroup (the docstring).  Training steps on the
# benchmark's documents at 32k, d = 128: 1.03-1.05x round 27's 128-key kernel (which had a dQ
# buffer of its own), 1.12x the 128-key kernel with its dQ in the stages, 1.05x this one with
# one program per multiprocessor (results/ab_docs_r28a.log, ab_docs_r28e.log, ab_docs_r28f.log).
# For bands the 64-key blocks were 1.15-1.28x slower (ab_bands_r28f.log).
DOCS_BN = 64
# registers per thread by key block: 8 compute warps (BN = 128) take 240 of them, the loader
# and writer 24; at BN = 64 the 4 compute warps take 232, so that two programs (8 warps each,
# two of them idle: setmaxnreg's warpgroups) fit a multiprocessor's 64k registers
MAXNREG = {128: 168, 64: 128}
# heads whose key blocks the grid interleaves (band_backward_kernel): training steps of
# documents at 32k 1.06x faster, causal at d = 64 1.02-1.04x, bands the same (NOTES round 23)
HEAD_GROUP = 4
# `gather_backward`'s grid over every head instead (longest key blocks first) where the model of
# its schedule (`gather_group`) ends more than this many times earlier than HEAD_GROUP's: the
# fixed pattern's steps at 8k and 16k tokens 1.11-1.18x faster (its key blocks 1.28x and 1.22x
# faster at d = 128); at 32k, where the model has HEAD_GROUP's order end as early, every head
# made the key blocks 1.13x slower at d = 128 (their rows no longer shared L2: NOTES round 55)
GATHER_GAIN = 1.1
# past this many programs a multiprocessor (waves) the grid's tail is a small share of its time:
# `gather_group` keeps HEAD_GROUP without running its model
GATHER_MODEL_WAVES = 8


def tile(segments):
    """(query tile, key block) of the kernel for document masks (``segments``: at any head
    dimension), or for bands at d = 128 (`tile_config` gives a band's query tile at any)."""
    return BM, DOCS_BN if segments else BN


def tile_config(bn, D):
    """(query tile, stages of the (Q, dO) ring) of the kernel for key blocks of ``bn`` at head
    dimension ``D``: WIDE's, else BM and STAGES' (two at a head dimension outside HEAD_DIMS,
    which only the tests' emulated kernel sees)."""
    if bn == BN and D in WIDE:
        return WIDE[D]
    return BM, STAGES.get(D, 2)


@gluon.jit
def _loader(descs, bufs, bars, b, h, key0, seq, n, BM: gl.constexpr, IN_STAGE: gl.constexpr,
            SEGMENTS: gl.constexpr, GLOBAL: gl.constexpr):
    q_desc, k_desc, v_desc, do_desc, rows_desc, bh, segq_desc, segq0 = descs
    k_smem, v_smem, qdo, rows_smem, segq_smem = bufs
    kv_bar, ready, done, free = bars
    STAGES: gl.constexpr = ready.type.shape[0]
    mbarrier.expect(kv_bar, 2 * k_desc.block_type.nbytes)
    tma_load(k_desc, [b, h, key0, 0], kv_bar, k_smem)
    tma_load(v_desc, [b, h, key0, 0], kv_bar, v_smem)
    # the stage of tile i - STAGES is free once its dQ_part has been read out of it (IN_STAGE),
    # else once the compute warps are through with it
    empty = free if IN_STAGE else done
    NBYTES: gl.constexpr = 2 * q_desc.block_type.nbytes + rows_desc.block_type.nbytes + (
        segq_desc.block_type.nbytes if SEGMENTS else 0)
    for i in range(n):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        bar = ready.index(s)
        mbarrier.expect(bar, NBYTES)
        m0 = block_at(seq, i, GLOBAL) * BM
        tma_load(q_desc, [b, h, m0, 0], bar, qdo.index(2 * s))
        tma_load(do_desc, [b, h, m0, 0], bar, qdo.index(2 * s + 1))
        tma_load(rows_desc, [0, bh, m0], bar, rows_smem.index(s))
        if SEGMENTS:  # the queries' document ids (rows past the batch's end: P is 0 there)
            tma_load(segq_desc, [segq0 + m0], bar, segq_smem.index(s))


@gluon.jit
def _dq_writer(dq_desc, dq_bufs, bars, b, h, seq, n, BM: gl.constexpr, IN_STAGE: gl.constexpr,
               GLOBAL: gl.constexpr):
    """Adds each query tile's dQ_part into the float32 dQ (a TMA clips a tile past its end) by one
    TMA reduction, from ``dq_bufs.index(i % STAGES)``.  IN_STAGE: those are the bytes of the
    tile's (Q, dO) stage, which the writer frees for the loader (``free``) once the TMA has read
    them.  Else they are buffers of their own, one a stage, and the writer's arrival on ``ready``
    for tile i + STAGES says that its buffer is free (the loader's is the other of ``ready``'s
    two; before the first STAGES tiles the writer gives it at once)."""
    kv_bar, ready, done, free = bars
    STAGES: gl.constexpr = done.type.shape[0]
    if not IN_STAGE:
        for j in gl.static_range(STAGES):
            mbarrier.arrive(ready.index(j), count=1, pred=j < n)
    for i in range(n):
        s = i % STAGES
        mbarrier.wait(done.index(s), (i // STAGES) & 1)
        tma_add(dq_desc, [b, h, block_at(seq, i, GLOBAL) * BM, 0], dq_bufs.index(s))
        tma.store_wait(0)
        if IN_STAGE:
            mbarrier.arrive(free.index(s), count=1)
        else:
            mbarrier.arrive(ready.index(s), count=1, pred=i + STAGES < n)


@gluon.jit
def _band_keep(rows, key0, band, BN: gl.constexpr, layout: gl.constexpr,
               GLOBAL: gl.constexpr):
    """The pairs of an S^T tile (keys key0... as rows, queries ``rows`` as columns, in
    ``layout``) that the band keeps (with GLOBAL: and its global rows and columns), keys past
    the end dropped."""
    Lq, Lk, off, back, ahead, globs = band
    keys = key0 + gl.arange(0, BN, layout=gl.SliceLayout(1, layout))
    return kept((rows + off)[None, :], keys[:, None], back, ahead, globs, GLOBAL) & \
        (keys < Lk)[:, None]


@gluon.jit
def _query_tiles(block, Lq, Lk, back, ahead, globs, BM: gl.constexpr, BN: gl.constexpr,
                 GLOBAL: gl.constexpr):
    """(seq, n): the n query tiles (`gluon_hopper.block_at` of seq) that key block ``block``
    meets -- those whose band meets keys [key0, key0 + BN) (p in [key0 - ahead, key0 + BN - 1 +
    back]), and with GLOBAL those of global rows too, or every tile for a block of global
    columns (globs' blocks [c0, c1))."""
    key0 = block * BN
    off = Lk - Lq
    q_lo = gl.maximum(key0 - ahead - off, 0)
    q_hi = gl.minimum(key0 + BN + back - off, Lq)
    lo = q_lo // BM
    hi = gl.maximum(gl.cdiv(q_hi, BM), lo)
    if GLOBAL:
        ra, rb, ca, cb, c0, c1 = globs
        every = (block >= c0) & (block < c1)
        return two_ranges(gl.where(every, 0, lo), gl.where(every, gl.cdiv(Lq, BM), hi),
                          gl.minimum(gl.maximum(ra - off, 0), Lq) // BM,
                          gl.cdiv(gl.minimum(gl.maximum(rb - off, 0), Lq), BM))
    else:
        return (lo, 0, 0), hi - lo


@gluon.jit
def _dpt(v_smem, do_s, BN: gl.constexpr, BM: gl.constexpr, layout: gl.constexpr):
    """dP^T = V dO^T of a tile, issued."""
    return warpgroup_mma(v_smem, do_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, layout),
                         use_acc=False, is_async=True)


@gluon.jit
def _tile(i, seq, dk, dv, bufs, bars, key0, band, docs, qk_scale, sm_scale,
          BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr, SEGMENTS: gl.constexpr,
          GLOBAL: gl.constexpr, FIRST: gl.constexpr):
    """Query tile i of this key block: its five products, dQ_part handed to the writer warp (in
    the bytes of the tile's (Q, dO) stage where BN = 64: `band_backward_kernel`).  (Issuing the
    next tile's S^T before waiting for this tile's products, carried across iterations, made
    ptxas serialise every wgmma: C7514, NOTES round 19.)"""
    k_smem, v_smem, qdo, ds_smem, dq_bufs, rows_smem, segq_smem = bufs
    kv_bar, ready, done, free = bars
    dtype: gl.constexpr = k_smem.dtype
    STAGES: gl.constexpr = ready.type.shape[0]
    WARPS: gl.constexpr = BN // 16  # four per warpgroup of 64 keys
    # dQ_part = dS K in PARTS products of D // PARTS columns: one warpgroup at d = 128 holds
    # half of it at a time (dK, dV, S^T and dP^T take 192 of its 232 registers)
    PARTS: gl.constexpr = 2 if (WARPS == 4) & (D == 128) else 1
    # LEAN (the same warpgroup): S^T's product alone, dP^T's issued after dV's, so that fewer
    # accumulators are live at once; with S^T and dP^T together ptxas serialised every wgmma of
    # the kernel for want of registers (C7512, `benchmarks/gluon_compile.py`; NOTES round 29)
    LEAN: gl.constexpr = PARTS == 2
    s_layout: gl.constexpr = wgmma_layout(WARPS, 1, BM)
    kv_layout: gl.constexpr = wgmma_layout(WARPS, 1, D)
    dq_layout: gl.constexpr = wgmma_layout(4, WARPS // 4, D // PARTS // (WARPS // 4))
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kv_layout, k_width=2)
    s = i % STAGES
    tile = block_at(seq, i, GLOBAL)
    m0 = tile * BM
    rows = m0 + gl.arange(0, BM, layout=gl.SliceLayout(0, s_layout))  # queries: S^T's columns
    q_s = qdo.index(2 * s).reshape([BM, D])
    do_s = qdo.index(2 * s + 1).reshape([BM, D])
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)  # (Q, dO...) loaded (and dQ buffer s free)
    st = warpgroup_mma(k_smem, q_s.permute((1, 0)), gl.zeros([BN, BM], gl.float32, s_layout),
                       use_acc=False, is_async=True)
    if LEAN:
        st = warpgroup_mma_wait(0, deps=(st,))
    else:
        dpt = _dpt(v_smem, do_s, BN, BM, s_layout)
        st = warpgroup_mma_wait(1, deps=(st,))
    # the tile's lse2 and delta (`_rows_kernel`), loaded with Q and dO
    lse = rows_smem.index(2 * s).load(gl.SliceLayout(0, s_layout))
    pt = gl.exp2(st * qk_scale - lse[None, :])
    if SEGMENTS:  # documents: tiles outside the table's full ones are masked
        full_lo, full_hi, kseg = docs
        if (tile < full_lo) | (tile >= full_hi):
            qseg = segq_smem.index(s).load(gl.SliceLayout(0, s_layout))
            keep = _band_keep(rows, key0, band, BN, s_layout, False) & \
                (qseg[None, :] == kseg[:, None])
            pt = gl.where(keep, pt, 0.0)
    elif FIRST:  # a gather component's keys: tiles before full_lo are masked
        full_lo, _, kfirst = docs
        if tile < full_lo:
            pt = gl.where(rows[None, :] >= kfirst[:, None], pt, 0.0)
    else:  # partial: some pair of the tile not kept, or past the keys' end
        Lq, Lk, off, back, ahead, globs = band
        if partial_tile(m0 + off, BM, key0, BN, back, ahead, globs, GLOBAL) | (key0 + BN > Lk):
            pt = gl.where(_band_keep(rows, key0, band, BN, s_layout, GLOBAL), pt, 0.0)
    pa = gl.convert_layout(pt.to(dtype), a_layout)
    dv = warpgroup_mma(pa, do_s, dv, is_async=True)
    if LEAN:
        dpt = _dpt(v_smem, do_s, BN, BM, s_layout)
        delta = rows_smem.index(2 * s + 1).load(gl.SliceLayout(0, s_layout))
        dv, dpt, pa = warpgroup_mma_wait(0, deps=(dv, dpt, pa))
    else:
        dpt = warpgroup_mma_wait(1, deps=(dpt,))
        delta = rows_smem.index(2 * s + 1).load(gl.SliceLayout(0, s_layout))
    ds = (pt * (dpt - delta[None, :])).to(dtype)
    dsa = gl.convert_layout(ds, a_layout)
    dk = warpgroup_mma(dsa, q_s, dk, is_async=True)
    # (every warpgroup's dQ product of the previous tile has read ds_smem: that tile's closing
    # barrier)
    ds_smem.store(ds)
    fence_async_shared()
    barrier()
    dq_s = dq_bufs.index(s).reshape([BM, D])
    for c in gl.static_range(PARTS):
        dq = warpgroup_mma(ds_smem.permute((1, 0)), k_smem.slice(c * (D // PARTS), D // PARTS, 1),
                           gl.zeros([BM, D // PARTS], gl.float32, dq_layout), use_acc=False,
                           is_async=True)
        if c == 0:
            if LEAN:  # (dV and P^T waited for above)
                dk, dq, dsa = warpgroup_mma_wait(0, deps=(dk, dq, dsa))
            else:
                dv, dk, dq, pa, dsa = warpgroup_mma_wait(0, deps=(dv, dk, dq, pa, dsa))
            if BN == 64:  # dQ_part in Q and dO's bytes: every warpgroup's products have read them
                barrier()
        else:
            dq = warpgroup_mma_wait(0, deps=(dq,))
        dq_s.slice(c * (D // PARTS), D // PARTS, 1).store(dq * sm_scale)
    fence_async_shared()  # the writer's TMA reads it
    barrier()  # closing: every warpgroup's products read their buffers, dQ_part is stored
    mbarrier.arrive(done.index(s), count=1)  # to the writer (and the loader, BN = 128)
    return dk, dv


@gluon.jit
def _compute(bufs, bars, dk_desc, dv_desc, b, h, key0, seq, n, band, docs,
             qk_scale, sm_scale, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
             SEGMENTS: gl.constexpr, GLOBAL: gl.constexpr, FIRST: gl.constexpr):
    k_smem, v_smem, qdo, ds_smem, dq_bufs, rows_smem, segq_smem = bufs
    kv_bar, ready, done, free = bars
    dtype: gl.constexpr = k_smem.dtype
    kv_layout: gl.constexpr = wgmma_layout(BN // 16, 1, D)
    dk = gl.zeros([BN, D], gl.float32, kv_layout)
    dv = gl.zeros([BN, D], gl.float32, kv_layout)
    if SEGMENTS:  # the key block's ids, read once: (full_lo, full_hi, kseg) to _tile
        full_lo, full_hi, segk_ptr = docs
        s_layout: gl.constexpr = wgmma_layout(BN // 16, 1, BM)
        keys = key0 + gl.arange(0, BN, layout=gl.SliceLayout(1, s_layout))
        Lk = band[1]
        docs = (full_lo, full_hi, gl.load(segk_ptr + keys, mask=keys < Lk, other=-1))
    if FIRST:  # the key block's first queries, read once (keys past the end: none)
        full_lo, unused, first_ptr = docs
        s_layout: gl.constexpr = wgmma_layout(BN // 16, 1, BM)
        keys = key0 + gl.arange(0, BN, layout=gl.SliceLayout(1, s_layout))
        Lq, Lk = band[0], band[1]
        docs = (full_lo, unused, gl.load(first_ptr + keys, mask=keys < Lk, other=Lq))
    mbarrier.wait(kv_bar, 0)
    for i in range(n):
        dk, dv = _tile(i, seq, dk, dv, bufs, bars, key0, band, docs, qk_scale,
                       sm_scale, BM, BN, D, SEGMENTS, GLOBAL, FIRST)
    dk = dk * sm_scale
    # K and V are no longer read: their buffers stage dK and dV for the TMA stores
    k_out = k_smem.reshape([1, 1, BN, D])
    v_out = v_smem.reshape([1, 1, BN, D])
    k_smem.store(dk.to(dtype))
    v_smem.store(dv.to(dtype))
    fence_async_shared()
    barrier()
    tma_store(dk_desc, [b, h, key0, 0], k_out)
    tma_store(dv_desc, [b, h, key0, 0], v_out)
    tma.store_wait(0)


# (not `do_not_specialize` on the lengths and bounds, which would save compiles: it made the
# kernel 20% slower, causal at 8k d = 128 3.12 -> 3.82 ms, results/gluon_ab_r20c.log)
@gluon.jit
def band_backward_kernel(q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, dq_desc, rows_desc,
                         BH, H, Lq, Lk, back, ahead, ra, rb, ca, cb, c0, c1, group, reverse,
                         qk_scale, sm_scale, bounds_ptr, flag_ptr, segq_desc, segk_ptr,
                         per_batch, BM: gl.constexpr, BN: gl.constexpr, D: gl.constexpr,
                         STAGES: gl.constexpr, SEGMENTS: gl.constexpr, GLOBAL: gl.constexpr,
                         FIRST: gl.constexpr):
    """dQ (added into dq_desc's float32 [B, H, Lq or more, D]), dK and dV of the pairs
    (query q, key k) with -ahead <= q + Lk - Lq - k <= back; rows_desc reads `_rows_kernel`'s
    [2, BH, Lq rounded up to BM] lse2 and delta.  One program per key block of BN keys (64 or
    128: one warpgroup of compute warps per 64) of one batch and head, the grid taking ``group``
    heads (of the BH batches and heads) at a time, their first key blocks, then their second
    ones... (last first where ``reverse``), so that a head's long blocks (causal: its first) do
    not start last, and the group's (Q, dO) rows stay in L2.  With SEGMENTS, only pairs of one
    document too: segq_desc reads int32 query ids [batches * Lq] (BM at a time), segk_ptr points
    to key ids [batches, Lk] (batch b's ids: row b * per_batch of each), and each key block's
    query tiles come from bounds_ptr, the template's `_segment_bounds` table for BN-key blocks
    and BM-query blocks (lo, full_lo, full_hi, hi per block; tiles outside [full_lo, full_hi)
    masked), unless flag_ptr's pair marks the batch's ids unsorted: then every tile, masked.
    With FIRST, the pairs (q, k) with q >= first[k] instead, segk_ptr pointing to int32 first
    [Lk] (a gather component's packed keys, each seen by the queries from its first on: Lq for
    none); a key block's query tiles are those from its least first, the tiles before its
    greatest first masked.
    With GLOBAL, the pairs with ra <= p < rb or ca <= k < cb too, the key blocks [c0, c1) (those
    of global columns, which every query tile meets: `gluon_hopper.heavy_span`) of every head
    first."""
    n_k = gl.cdiv(Lk, BN)
    if GLOBAL:
        globs = (ra, rb, ca, cb, c0, c1)
        bh, block = heavy_first(gl.program_id(0), n_k, group, BH, c0, c1)
    else:
        globs = (0, 0, 0, 0, 0, 0)  # (not handed to the partitions as arguments: shared memory)
        bh, block = grouped(gl.program_id(0), n_k, group, BH)
        if reverse:
            block = n_k - 1 - block
    b = bh // H
    h = bh % H
    key0 = block * BN
    off = Lk - Lq
    if SEGMENTS:
        bb = b * per_batch
        row = bounds_ptr + (bb * n_k + block) * 4
        flag = flag_ptr + 2 * bb
        unsorted = gl.load(flag + 1) == gl.load(flag)
        lo = gl.where(unsorted, 0, gl.load(row))
        full_lo = gl.where(unsorted, 0, gl.load(row + 1))
        full_hi = gl.where(unsorted, 0, gl.load(row + 2))
        hi = gl.where(unsorted, gl.cdiv(Lq, BM), gl.load(row + 3))
        docs = (full_lo, full_hi, segk_ptr + bb.to(gl.int64) * Lk)
        segq0 = bb * Lq
        seq = (lo, 0, 0)
        n = hi - lo
    elif FIRST:
        keys = key0 + gl.arange(0, BN, layout=gl.BlockedLayout([1], [32], [BN // 16], [0]))
        first = gl.load(segk_ptr + keys, mask=keys < Lk, other=Lq)
        lo = gl.min(first, 0) // BM
        last = gl.max(gl.where(keys < Lk, first, 0), 0)  # tiles from cdiv(last, BM): all kept
        docs = (gl.cdiv(last, BM), 0, segk_ptr)
        segq0 = 0
        seq = (lo, 0, 0)
        n = gl.cdiv(Lq, BM) - lo
    else:
        seq, n = _query_tiles(block, Lq, Lk, back, ahead, globs, BM, BN, GLOBAL)
        docs = (0, 0, segk_ptr)
        segq0 = 0
    band = (Lq, Lk, off, back, ahead, globs)

    dtype: gl.constexpr = k_desc.block_type.element_ty
    k_smem = gl.allocate_shared_memory(dtype, [1, 1, BN, D], k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [1, 1, BN, D], v_desc.layout)
    # the (Q, dO) ring, stage s at 2s and 2s + 1.  IN_STAGE (64-key blocks, one warpgroup: two
    # programs per multiprocessor, which shared memory would not hold with dQ buffers of their
    # own): a stage's bytes then hold its tile's float32 dQ_part (the same size) until the
    # writer's TMA has read them.  128-key blocks have a dQ buffer a stage: with dQ_part in them
    # the documents' steps were 0.89x as fast, and d = 64 causal 0.97-0.98x (NOTES round 28)
    IN_STAGE: gl.constexpr = BN == 64
    gl.static_assert(q_desc.layout == do_desc.layout)
    gl.static_assert(STAGES >= 2)
    qdo = gl.allocate_shared_memory(dtype, [2 * STAGES, 1, 1, BM, D], q_desc.layout)
    if IN_STAGE:
        dq_bufs = reinterpret(qdo, gl.float32, [STAGES, 1, 1, BM, D], dq_desc.layout)
    else:
        dq_bufs = gl.allocate_shared_memory(gl.float32, [STAGES, 1, 1, BM, D], dq_desc.layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BM], dtype)
    ds_smem = gl.allocate_shared_memory(dtype, [BN, BM], ds_layout)
    rows_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 2, 1, BM], rows_desc.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    # tile i: ready[i % STAGES] when its (Q, dO) are loaded (and, not IN_STAGE, its dQ buffer
    # is free: the writer's arrival), done[...] when the compute warps have put its dQ_part in
    # place, free[...] (IN_STAGE; unused otherwise) when the writer's TMA has read it
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for j in gl.static_range(STAGES):
        mbarrier.init(ready.index(j), count=1 if IN_STAGE else 2)
        mbarrier.init(done.index(j), count=1)
        mbarrier.init(free.index(j), count=1)

    k_flat = k_smem.reshape([BN, D])
    v_flat = v_smem.reshape([BN, D])
    # (unswizzled: the same bytes as [lse2, delta] rows of stage 0, then of stage 1)
    rows_flat = reinterpret(rows_smem, gl.float32, [2 * STAGES, BM],
                            gl.SwizzledSharedLayout(1, 1, 1, [0]))
    if SEGMENTS:  # the queries' ids of each stage's tile
        segq_smem = gl.allocate_shared_memory(gl.int32, [STAGES, BM], segq_desc.layout)
    else:  # (unread)
        segq_smem = rows_flat
    bars = (kv_bar, ready, done, free)
    gl.warp_specialize([
        (_compute, ((k_flat, v_flat, qdo, ds_smem, dq_bufs, rows_flat, segq_smem), bars, dk_desc,
                    dv_desc, b, h, key0, seq, n, band, docs, qk_scale, sm_scale, BM, BN, D,
                    SEGMENTS, GLOBAL, FIRST)),
        (_loader, ((q_desc, k_desc, v_desc, do_desc, rows_desc, bh, segq_desc, segq0),
                   (k_smem, v_smem, qdo, rows_smem, segq_smem), bars, b, h, key0, seq, n, BM,
                   IN_STAGE, SEGMENTS, GLOBAL)),
        (_dq_writer, (dq_desc, dq_bufs, bars, b, h, seq, n, BM, IN_STAGE, GLOBAL)),
    ], [1, 1], [24, 24])


@triton.jit
def _rows_kernel(O, DO, LSE, LSE2, DELTA, DQ, sob, soh, som, sdob, sdoh, sdom, slb, slh, slm,
                 sqb, sqh, sqm, H, Lq, lq_pad, dq_rows, ROWS: tl.constexpr, D: tl.constexpr):
    """Per query row, padded to lq_pad rows per head: delta = rowsum(O * dO) (0 on padding) and
    lse2 = lse * log2(e), +inf where the row keeps nothing (lse -inf) or is padding, so that
    the band kernel's P is 0 there without masks; and the first dq_rows rows of the float32
    dQ (DQ: [B, H, dq_rows, D] at strides sqb, sqh, sqm), zeroed for the band kernel's sums."""
    bh = tl.program_id(1)
    b, h = bh // H, bh % H
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, D)
    valid = rows < Lq
    o = tl.load(O + b.to(tl.int64) * sob + h * soh + rows[:, None] * som + cols[None, :],
                mask=valid[:, None], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdob + h * sdoh + rows[:, None] * sdom + cols[None, :],
                 mask=valid[:, None], other=0.0)
    lse = tl.load(LSE + b.to(tl.int64) * slb + h * slh + rows * slm, mask=valid,
                  other=float("-inf"))
    out = bh.to(tl.int64) * lq_pad + rows
    tl.store(DELTA + out, tl.sum(o.to(tl.float32) * do.to(tl.float32), 1))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(LSE2 + out, lse2)
    tl.store(DQ + b.to(tl.int64) * sqb + h * sqh + rows[:, None] * sqm + cols[None, :],
             tl.zeros([ROWS, D], tl.float32), mask=(rows < dq_rows)[:, None])


def row_terms(out, do, lse, launch=jit_launch, dq=None, bm=BM):
    """`_rows_kernel`'s lse2 and delta, as one [2, B * H, Lq rounded up to ``bm``, the query
    tile of the kernel that reads them] float32 tensor, and the float32 dQ zeroed: ``dq`` (a
    [B, H, Lq, D] float32 tensor of any strides, the head dimension contiguous) where given,
    else a new [B, H, Lq rounded up to bm, D], or none (``dq`` False: the terms only);
    ``launch``: as `backward`'s; out, do [B, H, Lq, D] and lse [B, H, Lq] of any strides (the
    head dimension contiguous)."""
    B, H, Lq, D = out.shape
    lq_pad = triton.cdiv(Lq, bm) * bm
    rows = torch.empty((2, B * H, lq_pad), dtype=torch.float32, device=out.device)
    if dq is None:
        dq = torch.empty((B, H, lq_pad, D), dtype=torch.float32, device=out.device)
    sums = rows if dq is False else dq  # (rows: unwritten, as dQ's 0 rows)
    launch(_rows_kernel, (lq_pad // BM, B * H),
           (out, do, lse, rows[0], rows[1], sums, out.stride(0), out.stride(1), out.stride(2),
            do.stride(0), do.stride(1), do.stride(2), *lse.stride(), *sums.stride()[:3], H, Lq,
            lq_pad, 0 if dq is False else dq.shape[2]), dict(ROWS=BM, D=D))
    return rows, (None if dq is False else dq)


# the rows' tiles in shared memory: [2, 1, query tile] float32 (lse2 and delta of a query
# tile), read into a wgmma layout's columns, unswizzled
ROWS_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=3)


def rows_descriptor(rows, bm=BM):
    """The band kernel's descriptor over `row_terms`'s [2, B * H, Lq rounded up to ``bm``] rows:
    a query tile's (of ``bm``) lse2 and delta in one TMA."""
    return host_descriptor(rows, (2, 1, bm), ROWS_LAYOUT)


# a document call's query ids in shared memory: [BM] int32 tiles of the flat [batches * Lq] ids,
# unswizzled
SEGQ_LAYOUT = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=1)


def backward(q, k, v, out, do, lse, scale, back, ahead, docs=None, rows=None, cols=None,
             step=1, launch=jit_launch, keys=BN):
    """(dq, dk, dv) of out = softmax(scale Q K^T over the band -ahead <= p - k <= back) V, with
    ``back``/``ahead`` None for no bound, the global ``rows`` and ``cols`` or the ``step`` where
    given (as `gluon_forward.forward` takes them; not with ``docs``), and ``lse`` [B, H, Lq]
    float32 the forward's natural log-sum-exp.  q, k, v, out, do: [B, H, L, D] of
    one dtype in DTYPES, D in HEAD_DIMS, as many key heads as query heads, on an sm_90 GPU,
    with the head dimension contiguous and the base addresses and every other stride multiples
    of 16 bytes (what TMA descriptors read; the generated modules check it with their
    `_descriptors_ok`), and with ``step`` each tensor's batches following one another at H
    times its heads' stride (`residue_classes`).
    ``docs``: for a document mask (the band and one document), (bounds, flag, seg_q, seg_k,
    per_batch) as `band_backward_kernel` takes them with SEGMENTS (int32 tensors); ``launch``:
    how to launch a kernel (`gluon_hopper.jit_launch`'s arguments); ``keys``: a band's key block,
    BN or DOCS_BN (documents always take DOCS_BN).
    What depends only on the call's geometry -- the residue classes' shapes and strides, the
    bounds, the descriptors' checked fields, both launches' arguments but the tensors -- is
    worked out once per geometry (`_plan`); a call then makes its outputs and descriptors and
    launches."""
    if keys not in (BN, DOCS_BN):
        raise ValueError(f"keys: a band's key block is {BN} or {DOCS_BN}, not {keys!r}")
    tensors = (q, k, v, out, do)
    if step > 1 and not mergeable(lse):  # (a class view of lse needs B and H as one)
        lse = lse.contiguous()
    geometry = (tuple((t.shape, t.stride(), t.data_ptr() % 16) for t in tensors), lse.stride(),
                q.dtype, scale, back, ahead, rows, cols, step, keys, docs is None)
    plan = _PLANS.get(geometry)
    if plan is None:
        plan = _plan(tensors, lse, scale, back, ahead, rows, cols, step, keys, docs is not None)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dq = torch.empty(plan.dq_shape, dtype=torch.float32, device=q.device)
    terms = torch.empty(plan.terms_shape, dtype=torch.float32, device=q.device)
    bases = (q, k, v, do, dk, dv, dq, terms)
    if plan.fields is None:  # a new geometry: its descriptors checked once, then kept
        if len(_PLANS) >= 64:  # the geometries of a few shapes in use
            _PLANS.clear()
        plan = _PLANS[geometry] = plan._replace(fields=[
            descriptor_fields(t, *spec) for t, spec in zip(bases, plan.specs)])
    # (terms itself for lse2: the same address as its first row)
    launch(_rows_kernel, plan.rows_grid, (out, do, lse, terms, terms[1], dq, *plan.rows_args),
           plan.rows_options)
    descs = [with_base(fields, t) for fields, t in zip(plan.fields, bases)]
    if docs is None:  # (unread)
        docs = (terms, terms, descs[7], terms, 0)
    else:  # the query ids by TMA (rows past a batch's end read the next batch's)
        bounds, flag, seg_q, seg_k, per_batch = docs
        flat = seg_q.reshape(-1)
        if flat.data_ptr() % 16:  # (a descriptor's base: 16-byte aligned)
            flat = flat.clone()
        docs = (bounds, flag, host_descriptor(flat, (BM,), SEGQ_LAYOUT), seg_k, per_batch)
    launch(band_backward_kernel, plan.grid, (*descs, *plan.args, *docs), plan.options,
           (q.dtype,))
    if step > 1:  # dQ's float32 sums in the rows' natural order
        return dq.to(q.dtype), dk, dv
    return dq[:, :, :q.shape[2]].to(q.dtype), dk, dv


# a call's geometry (`backward`) -> its `_Plan`
_PLANS = {}

_Plan = collections.namedtuple("_Plan", "dq_shape terms_shape rows_grid rows_args rows_options "
                                        "specs fields grid args options")


def _plan(tensors, lse, scale, back, ahead, rows, cols, step, keys, documents):
    """`backward`'s `_Plan` for these tensors' geometry: the shapes of dQ's float32 sums and of
    the rows' terms, the rows kernel's grid, arguments after its tensors and options, the
    descriptors' geometries (shape, strides, block, layout) over q, k, v, do, dk, dv, dQ and the
    terms (their checked fields, ``fields``, are the first call's to fill in), and the band
    kernel's grid, arguments between its descriptors and the documents' and options."""
    q, k, v, out, do = tensors
    q_view, k_view, v_view, out_view, do_view = (class_view(t.shape, t.stride(), step)
                                                 for t in tensors)
    B, H, Lq, D = q_view[0]
    Lk = k_view[0][2]
    bn = DOCS_BN if documents else keys
    bm = tile_config(bn, D)[0]
    lq_pad = triton.cdiv(Lq, bm) * bm
    # dK, dV: new contiguous tensors in k's shape; dQ's sums: contiguous, in q's shape with a
    # step (the rows' natural order, cast as they are at the end), else [B, H, Lq rounded up to
    # bm, D]; the rows' terms: [2, B * H, Lq rounded up to bm] (`row_terms`)
    natural = tuple(q.shape) if step > 1 else (B, H, lq_pad, D)
    dq_view = class_view(natural, _contiguous(natural), step)
    kv_view = class_view(k.shape, _contiguous(k.shape), step)
    terms_shape = (2, B * H, lq_pad)
    lse_view = class_view(lse.shape, lse.stride(), step)
    if step > 1:
        back, ahead = class_band(back, ahead, step)
    back, ahead = band_bounds(back, ahead, Lq, Lk)
    glob = rows is not None or cols is not None
    assert not (glob and documents)
    ra, rb, ca, cb = global_bounds(rows, cols, Lq, Lk)
    # (a band that keeps every pair: every block has the same rows, nothing to even out, and a
    # group's rows are whole heads: 0.97-0.99x with 2 or 4 at d = 64, results/ab_group64_r23c.log)
    group = 1 if min(back, ahead) >= Lq + Lk else min(HEAD_GROUP, B * H)
    specs = [(shape, strides, *head_tile(block, D, dtype))
             for (shape, strides), block, dtype in zip(
                 (q_view, k_view, v_view, do_view, kv_view, kv_view, dq_view),
                 (bm, bn, bn, bm, bn, bn, bm), (q.dtype,) * 6 + (torch.float32,))]
    specs.append((terms_shape, _contiguous(terms_shape), (2, 1, bm), ROWS_LAYOUT))
    return _Plan(
        dq_shape=natural, terms_shape=terms_shape, rows_grid=(lq_pad // BM, B * H),
        rows_args=(*out_view[1][:3], *do_view[1][:3], *lse_view[1], *dq_view[1][:3], H, Lq,
                   lq_pad, dq_view[0][2]),
        rows_options=dict(ROWS=BM, D=D), specs=specs, fields=None,
        grid=(triton.cdiv(Lk, bn) * B * H,),
        args=(B * H, H, Lq, Lk, back, ahead, ra, rb, ca, cb,
              *heavy_span(ca, cb, 0, Lk, bn), group, int(back < ahead),
              scale * LOG2E, scale),
        options=_options(bn, D, SEGMENTS=documents, GLOBAL=glob, FIRST=False))


def _options(bn, D, **modes):
    """`band_backward_kernel`'s launch options for key blocks of ``bn`` at head dimension ``D``
    with ``modes`` (its SEGMENTS, GLOBAL and FIRST; a head dimension outside HEAD_DIMS, which
    only the tests' emulated kernel sees, takes two stages)."""
    bm, stages = tile_config(bn, D)
    return dict(BM=bm, BN=bn, D=D, STAGES=stages, **modes, num_warps=bn // 16,
                maxnreg=MAXNREG[bn])


def _contiguous(shape):
    """The strides of a contiguous tensor of ``shape``."""
    strides, size = [], 1
    for n in reversed(shape):
        strides.append(size)
        size *= n
    return tuple(reversed(strides))


def grid_finish(tiles, group, BH, slots):
    """When the last program of `gather_backward`'s grid ends, in its query tiles, by a model of
    its schedule: the programs start in `grouped`'s order over ``group`` heads, each on the
    first of ``slots`` multiprocessors to come free, and the program of a head's key block j
    takes ``tiles[j]`` units (the query tiles it visits; every head's alike)."""
    free = [0] * slots  # (a heap of the times the multiprocessors come free)
    for first in range(0, BH, group):
        for t in tiles:
            for _ in range(min(group, BH - first)):
                heapq.heapreplace(free, free[0] + t)
    return max(free)


def gather_group(first, Lq, BH, slots, D):
    """The heads `gather_backward`'s grid takes at a time for keys whose first queries are
    ``first`` (int32 [keys], as it takes them) and ``BH`` batches and heads at head dimension
    ``D`` (its query tile: `tile_config`) on ``slots`` multiprocessors: every head (``BH``:
    each head's longest key blocks first) where the model (`grid_finish`) has that order end
    more than GATHER_GAIN times earlier than HEAD_GROUP's, else HEAD_GROUP (a group's rows share
    L2).  A key block's tiles run from its keys' least
    first query to the end, so the earliest keys' blocks are the longest, and in groups of
    HEAD_GROUP heads the last group's long blocks start last where the grid is a wave or two
    (the fixed pattern at 8k tokens: 204 tiles against every head's 140).  One program a
    multiprocessor: 128-key blocks take more than half its shared memory at either head
    dimension.  Reads ``first`` (a host synchronisation): its caller's plan keeps the answer."""
    group = min(HEAD_GROUP, BH)
    if group == BH or gather_programs(first.numel(), BH) > GATHER_MODEL_WAVES * slots:
        return group
    n_k, bm = triton.cdiv(first.numel(), BN), tile_config(BN, D)[0]
    least = torch.nn.functional.pad(first.to(torch.int64), (0, n_k * BN - first.numel()),
                                    value=Lq).view(n_k, BN).amin(1)
    tiles = (triton.cdiv(Lq, bm) - torch.div(least, bm, rounding_mode="floor")).tolist()
    if grid_finish(tiles, group, BH, slots) > GATHER_GAIN * grid_finish(tiles, BH, BH, slots):
        return BH
    return group


def gather_programs(keys, BH):
    """The programs of `gather_backward`'s grid over ``keys`` packed keys of ``BH`` batches and
    heads: one a block of BN keys."""
    return triton.cdiv(keys, BN) * BH


def gather_terms(out, do, lse, launch=jit_launch):
    """`row_terms`' lse2 and delta (no dQ) padded to `gather_backward`'s query tile, which its
    caller computes first (the other components' kernels read delta too)."""
    return row_terms(out, do, lse, launch, False, tile_config(BN, out.shape[3])[0])[0]


def gather_backward(q, kp, vp, do, scale, first, dq, terms, launch=jit_launch, group=None):
    """dK and dV of a gather component's packed keys, its share of dQ added into ``dq``: the
    pairs (query q, packed key j) with q >= first[j], of a pattern whose output and log-sum-exp
    gave ``terms`` (`gather_terms`': every component's; this is one component's share of the
    gradients).  kp, vp: [B, H, keys, D], the keys' K and V in order (the template's
    `_packed`); ``first``: int32 [keys], the first query that keeps each key (Lq for none; the
    caller has checked that each key's queries are exactly those from it on); ``dq``: float32
    [B, H, Lq, D] (any strides, the head dimension contiguous) holding the other components'
    dQ; ``group``: the heads the grid takes at a time (`gather_group`'s; None: HEAD_GROUP).
    Other arguments as `backward`'s."""
    dk = torch.empty(kp.shape, dtype=kp.dtype, device=kp.device)
    dv = torch.empty(vp.shape, dtype=vp.dtype, device=vp.device)
    B, H = q.shape[:2]
    # (the key blocks of the earliest keys visit the most tiles, and start first in key order)
    group = min(HEAD_GROUP, B * H) if group is None else group
    _launch_kernel(launch, (q, kp, vp, do, dk, dv, dq), terms, BN,
                   (0, 0, 0, 0, 0, 0, 0, 0, group, 0),
                   (terms, terms, None, first, 0), scale,
                   dict(SEGMENTS=False, GLOBAL=False, FIRST=True))
    return dk, dv


def _launch_kernel(launch, tensors, terms, bn, bounds, docs, scale, modes):
    """One launch of `band_backward_kernel` over ``tensors`` (q, k, v, do, dk, dv, dq), the
    rows kernel's ``terms``, BN = ``bn``: ``bounds`` (back, ahead, ra, rb, ca, cb, c0, c1,
    group, reverse), ``docs`` (bounds_ptr, flag_ptr, segq_desc, segk_ptr, per_batch; segq_desc
    None where no query ids are read) and ``modes`` its SEGMENTS, GLOBAL and FIRST (`backward`
    launches from its plan; this is `gather_backward`'s)."""
    q, k, v, do, dk, dv, dq = tensors
    B, H, Lq, D = q.shape
    options = _options(bn, D, **modes)
    bm = options["BM"]
    rows_desc = rows_descriptor(terms, bm)
    if docs[2] is None:  # (no query ids: unread)
        docs = (*docs[:2], rows_desc, *docs[3:])
    launch(band_backward_kernel, (triton.cdiv(k.shape[2], bn) * B * H,),
           (descriptor(q, bm), descriptor(k, bn), descriptor(v, bn), descriptor(do, bm),
            descriptor(dk, bn), descriptor(dv, bn), descriptor(dq, bm), rows_desc, B * H, H,
            Lq, k.shape[2], *bounds, scale * LOG2E, scale, *docs),
           options, (q.dtype,))
