"""A lean copy of the documents' `tl` forward (`causal & segment`, sorted ids: per query block
the bounds lo, full_lo, full_hi, hi of `bounds`, full blocks unmasked, partial ones masked by
ids and causality), timed beside attnlang's own forward on the benchmark's inputs (32k tokens,
16 heads, its 64 random documents, d = 64 and 128; five interleaved rounds).  Round 41: on the
module's 64x32:4:3 tile the copy gives attnlang's output bit for bit, so a gap in time is
overhead of the generated kernel, not arithmetic (benchmarks/NOTES.md, round 41, item 5).

    python benchmarks/ab_docs_copy.py

VARIANTS: LOOP 0 is the module's two loops (partial blocks joined), 1 one loop with the mask in
a branch, 2 `docs_forward_flat` (G query blocks a program in one flat loop); G > 1 with LOOP 1,
G blocks a program in nested loops; results/docs_proto_r41.log ran those (flat: 1.4-3.3x
slower), results/docs_ab_r41.log the ones listed now.
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from ab_band_loop import _step  # one online-softmax step (benchmarks/ on the path)


@triton.jit
def _mask(s, offs_m, sq, SEG, n, N, BLOCK_N: tl.constexpr):
    offs_n = n * BLOCK_N + tl.arange(0, BLOCK_N)
    sk = tl.load(SEG + offs_n, mask=offs_n < N, other=-1)
    keep = (sq[:, None] == sk[None, :]) & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _key_block(q, offs_m, sq, SEG, k_desc, v_desc, n, flo, fhi, N, m_i, l_i, acc, qk_scale,
               BLOCK_N: tl.constexpr):
    """Key block n's step, masked where it lies outside the full blocks [flo, fhi)."""
    k = k_desc.load([n * BLOCK_N, 0])
    v = v_desc.load([n * BLOCK_N, 0])
    s = tl.dot(q, tl.trans(k))
    if (n < flo) | (n >= fhi):
        s = _mask(s, offs_m, sq, SEG, n, N, BLOCK_N)
    return _step(s, m_i, l_i, acc, v, qk_scale)


@triton.jit
def _kv_descriptors(K, V, base, N, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One head's K and V ([N, D] from ``base``) as descriptors of BLOCK_N-key tiles."""
    k_desc = tl.make_tensor_descriptor(K + base, shape=[N, D], strides=[D, 1],
                                       block_shape=[BLOCK_N, D])
    v_desc = tl.make_tensor_descriptor(V + base, shape=[N, D], strides=[D, 1],
                                       block_shape=[BLOCK_N, D])
    return k_desc, v_desc


@triton.jit
def _query_block(Q, SEG, BOUNDS, base, m, N, BLOCK_M: tl.constexpr, D: tl.constexpr):
    """Query block m's rows, Q tile, segment ids and key-block bounds (`bounds`)."""
    offs_m = m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < N,
                other=0.0)
    sq = tl.load(SEG + offs_m, mask=offs_m < N, other=-2)
    lo = tl.load(BOUNDS + 4 * m)
    flo = tl.load(BOUNDS + 4 * m + 1)
    fhi = tl.load(BOUNDS + 4 * m + 2)
    hi = tl.load(BOUNDS + 4 * m + 3)
    return offs_m, q, sq, lo, flo, fhi, hi


@triton.jit
def _store_block(O, base, offs_m, acc, l_i, N, D: tl.constexpr):
    """Query block offs_m's output, acc / l_i."""
    offs_d = tl.arange(0, D)
    out = acc / l_i[:, None]
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < N)


@triton.jit
def docs_forward(Q, K, V, O, SEG, BOUNDS, N, NQB, qk_scale, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, D: tl.constexpr, LOOP: tl.constexpr, G: tl.constexpr,
                 FLATTEN: tl.constexpr, REV: tl.constexpr = True):
    base = tl.program_id(1).to(tl.int64) * N * D
    k_desc, v_desc = _kv_descriptors(K, V, base, N, BLOCK_N, D)
    for g in tl.range(0, G, flatten=FLATTEN):
        m = tl.program_id(0) * G + g
        if REV:
            m = tl.maximum(NQB - 1 - m, 0)  # longest rows first (past the end: block 0 again)
        offs_m, q, sq, lo, flo, fhi, hi = _query_block(Q, SEG, BOUNDS, base, m, N, BLOCK_M, D)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        if LOOP == 0:
            for n in range(flo, fhi):
                k = k_desc.load([n * BLOCK_N, 0])
                v = v_desc.load([n * BLOCK_N, 0])
                m_i, l_i, acc = _step(tl.dot(q, tl.trans(k)), m_i, l_i, acc, v, qk_scale)
            before = flo - lo
            for t in range(0, before + hi - fhi):
                n = lo + t + (t >= before).to(tl.int32) * (fhi - flo)
                k = k_desc.load([n * BLOCK_N, 0])
                v = v_desc.load([n * BLOCK_N, 0])
                s = _mask(tl.dot(q, tl.trans(k)), offs_m, sq, SEG, n, N, BLOCK_N)
                m_i, l_i, acc = _step(s, m_i, l_i, acc, v, qk_scale)
        else:
            for n in range(lo, hi):
                m_i, l_i, acc = _key_block(q, offs_m, sq, SEG, k_desc, v_desc, n, flo, fhi, N,
                                           m_i, l_i, acc, qk_scale, BLOCK_N)
        _store_block(O, base, offs_m, acc, l_i, N, D)


@triton.jit
def docs_forward_flat(Q, K, V, O, SEG, BOUNDS, N, NQB, qk_scale, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, D: tl.constexpr, G: tl.constexpr):
    """G query blocks a program in one flat loop over all their key blocks: the pipeline runs on
    across the blocks' boundaries."""
    base = tl.program_id(1).to(tl.int64) * N * D
    k_desc, v_desc = _kv_descriptors(K, V, base, N, BLOCK_N, D)
    first = tl.program_id(0) * G
    last = tl.minimum(first + G, NQB)
    total = 0
    for g in range(first, last):
        mm = NQB - 1 - g
        total += tl.load(BOUNDS + 4 * mm + 3) - tl.load(BOUNDS + 4 * mm)
    m = NQB - 1 - first
    offs_m, q, sq, lo, flo, fhi, hi = _query_block(Q, SEG, BOUNDS, base, m, N, BLOCK_M, D)
    n = lo
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for t in range(0, total):
        m_i, l_i, acc = _key_block(q, offs_m, sq, SEG, k_desc, v_desc, n, flo, fhi, N,
                                   m_i, l_i, acc, qk_scale, BLOCK_N)
        if n == hi - 1:  # this query block is done: its output, then the next block's start
            _store_block(O, base, offs_m, acc, l_i, N, D)
            m = tl.maximum(m - 1, 0)
            offs_m, q, sq, lo, flo, fhi, hi = _query_block(Q, SEG, BOUNDS, base, m, N, BLOCK_M,
                                                           D)
            n = lo
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D], tl.float32)
        else:
            n += 1


def bounds(seg, block_m, block_n):
    N = seg.numel()
    idx = torch.arange(N, device=seg.device)
    change = torch.ones(N, dtype=torch.bool, device=seg.device)
    change[1:] = seg[1:] != seg[:-1]
    start = torch.cummax(torch.where(change, idx, 0), 0).values
    nqb = (N + block_m - 1) // block_m
    r0 = torch.arange(nqb, device=seg.device) * block_m
    r1 = torch.clamp(r0 + block_m, max=N) - 1
    lo = start[r0] // block_n
    hi = r1 // block_n + 1
    one = seg[r0] == seg[r1]
    flo = torch.minimum(torch.maximum((start[r0] + block_n - 1) // block_n, lo),
                        (r0 + 1) // block_n)
    fhi = torch.maximum((r0 + 1) // block_n, flo)
    flo = torch.where(one, flo, lo)
    fhi = torch.where(one, fhi, lo)
    return torch.stack([lo, flo, fhi, hi], 1).to(torch.int32).contiguous(), nqb


def forward(q, k, v, seg, bnd, nqb, loop, g, flatten, bm=64, bn=64, stages=2, maxnreg=None,
            warps=4, rev=True):
    B, H, N, D = q.shape
    o = torch.empty_like(q)
    opts = dict(num_warps=warps, num_stages=stages)
    if maxnreg:
        opts["maxnreg"] = maxnreg
    if loop == 2:
        docs_forward_flat[(triton.cdiv(nqb, g), H)](q, k, v, o, seg, bnd, N, nqb,
                                                    D ** -0.5 * 1.4426950408889634, bm, bn, D,
                                                    g, **opts)
        return o
    docs_forward[(triton.cdiv(nqb, g), H)](q, k, v, o, seg, bnd, N, nqb,
                                           D ** -0.5 * 1.4426950408889634, bm, bn, D, loop, g,
                                           flatten, rev, **opts)
    return o


VARIANTS = [("two loops", 0, 1, False, {}), ("two loops natural", 0, 1, False, dict(rev=False)),
            ("64x32 s3", 0, 1, False, dict(bn=32, stages=3)),
            ("64x32 s3 natural", 0, 1, False, dict(bn=32, stages=3, rev=False))]


def main():
    import attnlang
    from attnlang.bench import random_documents
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8,
                                                                 device="cuda"))
    for D in (64, 128):
        N = 32768
        seg = random_documents(N, 64, "cuda", torch.Generator().manual_seed(0))
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, 16, N, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(3))
        module = attnlang.parse("pattern x = causal & segment")["x"].module(backend="triton")
        ref = module(q, k, v, segments=seg)
        fns = {"attnlang": lambda: module(q, k, v, segments=seg)}
        for name, loop, g, flat, kw in VARIANTS:
            bnd, nqb = bounds(seg, 64, kw.get("bn", 64))
            o = forward(q, k, v, seg, bnd, nqb, loop, g, flat, **kw)
            diff = (o.float() - ref.float()).abs().max().item()
            print(f"D={D} {name:14s} max |diff| to attnlang {diff:.2e}", flush=True)
            fns[name] = (lambda loop=loop, g=g, flat=flat, kw=kw, bnd=bnd, nqb=nqb:
                         forward(q, k, v, seg, bnd, nqb, loop, g, flat, **kw))
        times = {n: [] for n in fns}
        for _ in range(5):
            for n, f in fns.items():
                times[n].append(do_bench(f, warmup=30, rep=200))
        for n, ts in times.items():
            print(f"D={D} {n:14s} " + " ".join(f"{t:.3f}" for t in ts) + f"  best {min(ts):.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
